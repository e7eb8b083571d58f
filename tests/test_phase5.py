"""Phase 5 (modality ablation) end to end on synthetic data with tiny local Hugging Face models.

The model is a phase-3 grid's best (cross_attention over text tokens, seeds 1 and 2, best.json with seed runs):
masking its text (pooled vector and tokens) or image by zeros and by the training mean; retrained text-only and
image-only models (concat, since cross_attention needs two modalities) and a text+image model with its recipe
and seeds; a single checkpoint (n = 1); a fine-tuned model's recipe; clean errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from msa import cli
from msa.ablation import only, recipe, recipe_config, seed_checkpoints, substitute, unimodal_fusion
from msa.checkpoint import read_checkpoint_config
from msa.experiment import load_labelled
from msa.features import FeatureSet
from msa.fusions import FUSIONS, ModalitySpec, MultimodalClassifier
from phase0 import data_cleaner
from phase3 import run_phase3 as phase3
from phase5 import run_phase5 as phase5
from tests.conftest import REPO, assert_refused
from tests.tiny_models import tiny_bert, tiny_vit

MASKING = ["full model", "text masked (zeros)", "text masked (train mean)", "image masked (zeros)",
           "image masked (train mean)"]
RETRAINED = ["retrained text + image", "retrained text only", "retrained image only"]
METRICS = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1", "macro_f1", "f1_neutral")
SEEDS = (1, 2)


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    """Phase 0 (30% validation) and a phase-3 grid: cross_attention, ce, no sampler, seeds 1 and 2."""
    tmp = tmp_path_factory.mktemp("phase5")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(synthetic_root), "--work-dir", str(work), "--folds", "0",
                       "--val-ratio", "0.3"])
    data = ["--data-root", str(synthetic_root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache")]
    models = ["--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit"))]
    p3 = tmp / "phase3"
    assert phase3.main(data + models + [
        "--feature-fusion", "cross_attention", "--hidden", "32", "--losses", "ce", "--samplers", "none",
        "--seeds", ",".join(map(str, SEEDS)), "--num-epochs", "6", "--batch-size", "16", "--learning-rate", "3e-3",
        "--jobs", "1",
        "--best-config", str(tmp / "no_phase2.json"), "--results-dir", str(p3 / "results"),
        "--figures-dir", str(p3 / "figures")]) == 0
    return {"tmp": tmp, "work": work, "data": data, "p3": p3 / "results"}


def _out(tmp, name: str) -> list[str]:
    return ["--results-dir", str(tmp / name / "results"), "--figures-dir", str(tmp / name / "figures")]


@pytest.fixture(scope="module")
def ablation(setup):
    """Phase 5 on phase 3's best checkpoint with the default seeds (those of best.json's seed runs)."""
    argv = setup["data"] + ["--checkpoint", str(setup["p3"] / "best" / "checkpoint"), "--jobs", "1"]
    assert phase5.main(argv + _out(setup["tmp"], "p5")) == 0
    return setup["tmp"] / "p5"


def test_table_has_every_row_with_mean_and_std_over_seeds(ablation):
    table = pd.read_csv(ablation / "results" / "ablation.csv")
    assert table["model"].tolist() == MASKING + RETRAINED
    assert table["section"].tolist() == ["masking"] * 5 + ["retrained"] * 3
    assert (table["n"] == len(SEEDS)).all()
    runs = pd.read_csv(ablation / "results" / "masking_runs.csv")
    assert len(runs) == len(SEEDS) * len(MASKING) and sorted(set(runs["seed"])) == list(SEEDS)
    for i, cond in enumerate(MASKING):
        grp = runs[runs["condition"] == cond]
        for m in METRICS:
            assert table.loc[i, f"{m}_mean"] == pytest.approx(grp[m].mean()), (cond, m)
            assert table.loc[i, f"{m}_std"] == pytest.approx(grp[m].std(ddof=1)), (cond, m)
    assert table.loc[1, "delta_weighted_f1"] == pytest.approx(table.loc[1, "weighted_f1_mean"]
                                                              - table.loc[0, "weighted_f1_mean"])
    by = table.set_index("model")
    assert by.loc["full model", "fusion"] == by.loc["retrained text + image", "fusion"] == "cross_attention"
    assert by.loc["retrained text only", "fusion"] == by.loc["retrained image only", "fusion"] == "concat"
    assert "cross_attention needs two modalities, so concat" in by.loc["retrained image only", "note"]
    md = (ablation / "results" / "ablation.md").read_text()
    for name in MASKING + RETRAINED:
        assert f"| {name} |" in md, name
    assert "each of the 2 seed runs listed in" in md and "token sequences of text become one such token" in md
    js = json.loads((ablation / "results" / "ablation.json").read_text())
    assert [r["model"] for r in js["table"]] == MASKING + RETRAINED and js["seeds"] == list(SEEDS)
    for name in ("ablation_radar.png", "ablation_bars.png"):
        assert (ablation / "figures" / name).stat().st_size > 20_000, name


def test_masking_changes_predictions_and_the_full_model_matches_its_run(ablation, setup):
    preds = pd.read_csv(ablation / "results" / "masking_predictions.csv", dtype={"guid": str})
    p_cols = ["p_negative", "p_neutral", "p_positive"]
    changed = {}
    for seed, by_seed in preds.groupby("seed"):
        full = by_seed[by_seed["condition"] == "full model"].set_index("guid")
        for cond in MASKING[1:]:
            other = by_seed[by_seed["condition"] == cond].set_index("guid").loc[full.index]
            assert (other[p_cols] - full[p_cols]).abs().to_numpy().max() > 1e-3, (seed, cond)  # it reached the model
            changed[(seed, cond)] = int((other["pred"] != full["pred"]).sum())
    for seed in SEEDS:
        assert changed[(seed, "text masked (zeros)")] + changed[(seed, "image masked (zeros)")] > 0, changed
    runs = pd.read_csv(ablation / "results" / "masking_runs.csv")
    for seed in SEEDS:  # the full model, evaluated here, scores exactly what its own run recorded
        recorded = json.loads((setup["p3"] / "runs" / f"ce-none-s{seed}" / "metrics.json").read_text())
        row = runs[(runs["condition"] == "full model") & (runs["seed"] == seed)].iloc[0]
        assert row["weighted_f1"] == pytest.approx(recorded["weighted_f1"], abs=1e-9)
        assert row["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)


def test_validation_guids_are_the_splits(ablation, setup):
    data = load_labelled(setup["work"], "default")
    val = [data.guids[i] for i in data.val_idx]
    assert 0 < len(val) < len(data.guids)
    preds = pd.read_csv(ablation / "results" / "masking_predictions.csv", dtype={"guid": str})
    assert len(preds) == len(SEEDS) * len(MASKING) * len(val)
    for key, grp in preds.groupby(["seed", "condition"]):
        assert grp["guid"].tolist() == val, key
    for run in (ablation / "results" / "runs").iterdir():
        got = pd.read_csv(run / "val_predictions.csv", dtype={"guid": str})["guid"].tolist()
        assert sorted(got) == sorted(val), run.name


def test_retrained_rows_follow_the_recipe_for_each_seed(ablation, setup):
    runs = pd.read_csv(ablation / "results" / "retrained_runs.csv")
    assert sorted(zip(runs["model"], runs["seed"])) == sorted((m, s) for m in RETRAINED for s in SEEDS)
    source = json.loads((setup["p3"] / "best" / "config.json").read_text())
    for kind, mods in (("multimodal", ["text", "image"]), ("text", ["text"]), ("image", ["image"])):
        for seed in SEEDS:
            run = ablation / "results" / "runs" / f"{kind}-s{seed}"
            cfg = json.loads((run / "config.json").read_text())
            assert cfg["seed"] == seed and cfg["loss"] == source["loss"] and cfg["loss_kw"] == source["loss_kw"]
            assert cfg["fusion"] == ("cross_attention" if kind == "multimodal" else "concat")
            assert {k: v for k, v in cfg["train"].items() if k != "seed"} == \
                {k: v for k, v in source["train"].items() if k != "seed"}
            ck = read_checkpoint_config(run / "checkpoint")
            assert [s["name"] for s in ck["model"]["specs"]] == mods and ck["model"]["hidden"] == 32
    # the retrained text+image runs are phase 3's own runs (same recipe, seeds and features): copied, not trained
    # again; the one-modality runs are trained
    for seed in SEEDS:
        run = ablation / "results" / "runs" / f"multimodal-s{seed}"
        mine = json.loads((run / "metrics.json").read_text())
        theirs = json.loads((setup["p3"] / "runs" / f"ce-none-s{seed}" / "metrics.json").read_text())
        assert mine["weighted_f1"] == pytest.approx(theirs["weighted_f1"], abs=1e-6)
        same = json.loads((run / "config.json").read_text())["same_as"]
        assert Path(same).resolve() == (setup["p3"] / "runs" / f"ce-none-s{seed}").resolve()
        for kind in ("text", "image"):
            assert "same_as" not in json.loads((ablation / "results" / "runs" / f"{kind}-s{seed}" / "config.json")
                                               .read_text())
    assert runs.loc[runs["model"] == "retrained text + image", "same_as"].notna().all()


def test_a_single_checkpoint_is_n_1_and_said_so(setup, tmp_path):
    """A best.json without "seed_runs" (as phase 3 wrote before): one checkpoint, std 0; masking only."""
    phase = tmp_path / "old" / "results"
    shutil.copytree(setup["p3"] / "best", phase / "best")
    best = json.loads((setup["p3"] / "best.json").read_text())
    best.pop("seed_runs")
    best.update(checkpoint=str(phase / "best" / "checkpoint"), copied_to=str(phase / "best"))
    (phase / "best.json").write_text(json.dumps(best))
    assert phase5.main(setup["data"] + ["--checkpoint", str(phase / "best" / "checkpoint"), "--skip-retrain"]
                       + _out(tmp_path, "p5")) == 0
    table = pd.read_csv(tmp_path / "p5" / "results" / "ablation.csv")
    assert table["model"].tolist() == MASKING and (table["n"] == 1).all()
    assert (table[[f"{m}_std" for m in METRICS]] == 0).all().all()
    md = (tmp_path / "p5" / "results" / "ablation.md").read_text()
    assert "n = 1, so std is 0" in md and "has no \"seed_runs\"" in md and "skipped (--skip-retrain)" in md
    assert not (tmp_path / "p5" / "results" / "retrained_runs.csv").exists()


def test_seed_runs_are_found_by_relative_path(setup, tmp_path):
    phase = tmp_path / "phaseX" / "results"
    for seed in SEEDS:
        shutil.copytree(setup["p3"] / "runs" / f"ce-none-s{seed}", phase / "runs" / f"ft-s{seed}")
    shutil.copytree(setup["p3"] / "runs" / "ce-none-s2", phase / "best")
    (phase / "best.json").write_text(json.dumps({"checkpoint": str(phase / "best" / "checkpoint"),
                                                 "seed_runs": ["runs/ft-s1", str(phase / "runs" / "ft-s2")]}))
    assert seed_checkpoints(phase / "best" / "checkpoint") == (
        [phase / "runs" / "ft-s1" / "checkpoint", phase / "runs" / "ft-s2" / "checkpoint"], phase / "best.json")
    # a checkpoint that best.json does not describe is evaluated alone
    assert seed_checkpoints(phase / "runs" / "ft-s1" / "checkpoint") == (
        [phase / "runs" / "ft-s1" / "checkpoint"], None)
    (phase / "best.json").write_text(json.dumps({"seed_runs": ["runs/missing"]}))
    with pytest.raises(cli.UserError, match="runs/missing"):
        seed_checkpoints(phase / "best" / "checkpoint")


def test_a_fine_tuned_model_is_retrained_with_the_recipe_it_started_from(setup, tmp_path):
    start = setup["p3"] / "runs" / "ce-none-s1"
    ft = tmp_path / "ft-s1"
    shutil.copytree(start, ft)
    cfg = json.loads((ft / "config.json").read_text())
    cfg["init_from"] = str(start / "checkpoint")
    cfg["train"] = {**cfg["train"], "num_epochs": 99, "warmup_ratio": 0.0}
    (ft / "config.json").write_text(json.dumps(cfg))
    config, path, notes = recipe_config(ft / "checkpoint")
    assert path == start / "config.json" and "fine-tuned" in notes[0]
    rec = recipe(config, read_checkpoint_config(ft / "checkpoint"))
    assert rec["settings"]["num_epochs"] == 6 and rec["settings"]["warmup_ratio"] == 0.1 and rec["seeds"] == [1, 2]
    assert rec["settings"]["feature_fusion"] == "cross_attention" and rec["settings"]["hidden"] == 32
    assert recipe(cfg)["settings"]["num_epochs"] == 99  # the fine-tuning recipe itself, when asked for it


# ------------------------------------------------------------------------------------------ library pieces
def _features() -> FeatureSet:
    g = torch.Generator().manual_seed(0)
    return FeatureSet(guids=[f"g{i}" for i in range(6)],
                      pooled={"text": torch.randn(6, 4, generator=g), "image": torch.randn(6, 3, generator=g)},
                      tokens={"text": [torch.randn(n, 4, generator=g) for n in (2, 3, 1, 4, 2, 5)]},
                      backbones={"text": {"name": "t"}, "image": {"name": "i"}})


def test_substitutes_replace_only_the_chosen_modality():
    fs = _features()
    train = [0, 1, 2]
    mean = substitute(fs, "text", "train_mean", train)
    assert torch.allclose(mean.pooled["text"], fs.pooled["text"][train].mean(0).expand(6, 4))
    want_tok = torch.cat([fs.tokens["text"][i] for i in train]).mean(0, keepdim=True)
    assert all(t.shape == (1, 4) and torch.allclose(t, want_tok) for t in mean.tokens["text"])
    assert mean.pooled["image"] is fs.pooled["image"] and fs.tokens["text"][3].shape == (4, 4)  # original untouched
    zeros = substitute(fs, "image", "zeros", train)
    assert not zeros.pooled["image"].any() and zeros.tokens["text"] is fs.tokens["text"]
    assert fs.pooled["image"].any()
    assert list(only(fs, ["image"]).pooled) == ["image"] and not only(fs, ["image"]).tokens
    with pytest.raises(ValueError, match="substitute"):
        substitute(fs, "text", "noise", train)


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_every_fusion_has_a_unimodal_fallback_that_builds(fusion):
    uni = unimodal_fusion(fusion)
    assert uni == (fusion if fusion != "cross_attention" else "concat")
    model = MultimodalClassifier([ModalitySpec("image", 3)], uni, hidden=8)
    assert model({"image": torch.randn(2, 3)}).shape == (2, 3)


# ------------------------------------------------------------------------------------------------- errors
def test_missing_checkpoint_is_one_error_line(setup, tmp_path):
    out = subprocess.run([sys.executable, "phase5/run_phase5.py", *setup["data"], "--checkpoint",
                          str(tmp_path / "nope"), *_out(tmp_path, "p5")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: checkpoint folder") and "nope" in out.stderr
    assert not (tmp_path / "p5").exists()


def test_missing_phase0_outputs_and_bad_flags_are_clear_errors(setup, tmp_path, capsys):
    ck = str(setup["p3"] / "best" / "checkpoint")
    assert cli.run_main(phase5.main, ["--work-dir", str(tmp_path / "empty"), "--checkpoint", ck]) == 2
    assert "run phase 0 first" in capsys.readouterr().err
    for flags, message in ((["--seeds", "1,x"], "--seeds"), (["--jobs", "0"], "--jobs")):
        assert_refused(lambda f=flags: phase5.main(setup["data"] + ["--checkpoint", ck] + f + _out(tmp_path, "p5")),
                       message, capsys)
    assert not (tmp_path / "p5").exists()


def test_help_says_what_it_does_reads_and_writes(capsys):
    with pytest.raises(SystemExit) as exc:
        phase5.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    first = text.split("\n\n")[1].replace("\n", " ")
    assert first.startswith("Phase 5: modality ablation:") and "reading" in first and "writing" in first
    for flag in ("--checkpoint", "--seeds", "--skip-retrain", "--jobs", "--cache-dir", "--results-dir",
                 "--figures-dir", "--recipe-run", "--split", "--data-root", "--work-dir"):
        assert flag in text, flag
