"""Phase 3 end to end on synthetic data with tiny local Hugging Face models: losses x samplers x seeds, the
tables, figures and best checkpoint, ACB's saved difficulty, and the hand-off from phase 2's best_config.json."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pandas as pd
import pytest
import torch

from msa.checkpoint import load_checkpoint, load_loss_state
from phase0 import data_cleaner
from phase3 import run_phase3 as phase3
from tests.conftest import REPO, assert_refused
from tests.tiny_models import tiny_bert, tiny_vit

LOSSES, SAMPLERS, SEEDS = ("ce", "acb"), ("none", "balanced"), (1, 2)


@pytest.fixture(scope="module")
def setup(faulty_dataset, tmp_path_factory):
    root, _ = faulty_dataset
    tmp = tmp_path_factory.mktemp("phase3")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "0"])
    base = ["--data-root", str(root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"),
            "--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit")),
            "--jobs", "1"]
    return {"root": root, "work": work, "tmp": tmp, "base": base}


@pytest.fixture(scope="module")
def grid(setup):
    """ce and acb, both samplers, two seeds; phase 2 not run (its best_config.json does not exist)."""
    out = setup["tmp"] / "grid"
    argv = setup["base"] + ["--losses", ",".join(LOSSES), "--samplers", ",".join(SAMPLERS),
                            "--seeds", ",".join(map(str, SEEDS)), "--num-epochs", "3", "--learning-rate", "3e-3",
                            "--best-config", str(setup["tmp"] / "no_phase2" / "best_config.json"),
                            "--results-dir", str(out / "results"), "--figures-dir", str(out / "figures")]
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("phase3").addHandler(handler)
    try:
        assert phase3.main(argv) == 0
    finally:
        logging.getLogger("phase3").removeHandler(handler)
    (out / "warnings.txt").write_text("\n".join(r.getMessage() for r in records))
    return out


def test_every_run_writes_a_full_run_folder(grid):
    for loss in LOSSES:
        for sampler in SAMPLERS:
            for seed in SEEDS:
                run = grid / "results" / "runs" / f"{loss}-{sampler}-s{seed}"
                for name in ("config.json", "history.csv", "metrics.json", "val_predictions.csv",
                             "checkpoint/model.safetensors", "checkpoint/config.json"):
                    assert (run / name).is_file(), f"{run.name}/{name}"
                cfg = json.loads((run / "config.json").read_text())
                assert cfg["loss"] == loss and cfg["train"]["sampler"] == sampler and cfg["seed"] == seed
                assert "phase 2 was not run" in cfg["arguments"]["started_from"]["source"]
                if loss == "acb":
                    assert cfg["loss_kw"] == {"a": 5.0, "b": 1.5, "c": 3.0, "k": 2.0, "alpha": 1.0, "beta": 0.1,
                                              "momentum": 0.9, "class_balance": None}


def test_tables_have_one_row_per_loss_and_sampler(grid):
    runs = pd.read_csv(grid / "results" / "runs.csv")
    assert len(runs) == len(LOSSES) * len(SAMPLERS) * len(SEEDS)
    table = pd.read_csv(grid / "results" / "summary.csv")
    assert table["method"].tolist() == [f"{loss}-{s}" for loss in LOSSES for s in SAMPLERS]
    assert (table["n_seeds"] == len(SEEDS)).all()
    for metric in ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece"):
        grp = runs[(runs["loss"] == "acb") & (runs["sampler"] == "balanced")][metric]
        row = table.set_index("method").loc["acb-balanced"]
        assert row[f"{metric}_mean"] == pytest.approx(grp.mean())
        assert row[f"{metric}_std"] == pytest.approx(grp.std(ddof=1))
    md = (grid / "results" / "summary.md").read_text()
    assert "built-in defaults (phase 2 was not run" in md and "±" in md
    assert md.count("| acb |") + md.count("| **acb** |") == len(SAMPLERS)
    assert "acb-none | ce-none" in md  # neutral F1 against ce with the same sampler
    summary = json.loads((grid / "results" / "summary.json").read_text())
    assert {c["method"] for c in summary["vs_ce"]} == {"acb-none", "acb-balanced"}
    for name in ("losses.png", "reliability.png", "confusion.png"):
        assert (grid / "figures" / name).stat().st_size > 10_000, name


def test_best_run_is_the_best_mean_then_the_best_seed(grid):
    runs = pd.read_csv(grid / "results" / "runs.csv")
    best = json.loads((grid / "results" / "best.json").read_text())
    means = runs.groupby(["loss", "sampler"], sort=False)["weighted_f1"].mean()
    assert best["select_metric"] == "weighted_f1"
    assert means[(best["loss"], best["sampler"])] == pytest.approx(means.max())
    cand = runs[(runs["loss"] == best["loss"]) & (runs["sampler"] == best["sampler"])]
    assert best["seed"] == int(cand.loc[cand["weighted_f1"].idxmax(), "seed"])
    best_dir = grid / "results" / "best"
    assert (best_dir / "SOURCE").read_text().strip().endswith(f"{best['loss']}-{best['sampler']}-s{best['seed']}")
    model, cfg = load_checkpoint(best_dir / "checkpoint")
    assert cfg["loss"]["name"] == best["loss"] and sum(p.numel() for p in model.parameters()) > 0
    assert json.loads((best_dir / "metrics.json").read_text())["weighted_f1"] == pytest.approx(best["value"])


def test_acb_checkpoints_keep_the_learned_difficulty(grid):
    for sampler in SAMPLERS:
        for seed in SEEDS:
            ck = grid / "results" / "runs" / f"acb-{sampler}-s{seed}" / "checkpoint"
            state = load_loss_state(ck)
            assert set(state) == {"difficulty", "prior_weight"}
            assert state["difficulty"].shape == (3,)
            assert not torch.allclose(state["difficulty"], torch.full((3,), 2 / 3))  # updated from 1 - 1/C
            assert ((state["difficulty"] >= 0) & (state["difficulty"] <= 1)).all()
    assert load_loss_state(grid / "results" / "runs" / "ce-none-s1" / "checkpoint") == {}  # ce has no state


def test_phase3_starts_from_phase2s_best_config(setup, tmp_path):
    best_config = tmp_path / "best_config.json"
    best_config.write_text(json.dumps({
        "source": "hand-written phase 2 result", "selected_by": "the test", "split": "default", "seeds": [1],
        "settings": {"feature_fusion": "add", "hidden": 16, "dropout": 0.1, "learning_rate": 5e-3,
                     "num_epochs": 7, "loss_type": "focal", "sampler": "balanced"}}))
    assert phase3.main(setup["base"] + ["--best-config", str(best_config), "--losses", "weighted_ce",
                                        "--samplers", "none", "--seeds", "3", "--num-epochs", "2",
                                        "--wce-weights", "effective_number", "--cb-beta", "0.99",
                                        "--select-metric", "f1_neutral", "--results-dir", str(tmp_path / "r"),
                                        "--figures-dir", str(tmp_path / "f")]) == 0
    cfg = json.loads((tmp_path / "r" / "runs" / "weighted_ce-none-s3" / "config.json").read_text())
    assert cfg["fusion"] == "add" and cfg["arguments"]["resolved"]["hidden"] == 16
    assert cfg["train"]["learning_rate"] == 5e-3 and cfg["train"]["num_epochs"] == 2  # the file, then the flag
    assert cfg["loss"] == "weighted_ce" and cfg["train"]["sampler"] == "none"  # the grid, not the file
    assert cfg["loss_kw"] == {"weights": "effective_number", "cb_beta": 0.99}
    assert cfg["arguments"]["started_from"]["path"] == str(best_config.resolve())
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    assert best["started_from"]["source"] == "hand-written phase 2 result" and best["select_metric"] == "f1_neutral"
    assert "hand-written phase 2 result" in (tmp_path / "r" / "summary.md").read_text()
    load_checkpoint(tmp_path / "r" / "best" / "checkpoint")


def test_missing_best_config_is_a_logged_warning(grid):
    assert "phase 2 was not run" in (grid / "warnings.txt").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--losses", "ce,dice"], "unknown value.*dice"),
    (["--samplers", "none,oversample"], "unknown value.*oversample"),
    (["--losses", ","], "none given"),
    (["--acb-momentum", "1.5"], "momentum"),
    (["--seeds", "1,x"], "--seeds"),
])
def test_bad_input_is_a_clear_error(setup, tmp_path, flags, message, capsys):
    assert_refused(lambda: phase3.main(setup["base"] + flags + ["--best-config", str(tmp_path / "none.json"),
                                                                "--results-dir", str(tmp_path / "r"),
                                                                "--figures-dir", str(tmp_path)]), message, capsys)
    assert not (tmp_path / "r").exists()


def test_a_best_config_without_settings_is_refused(setup, tmp_path):
    bad = tmp_path / "best_config.json"
    bad.write_text(json.dumps({"fusion": "concat"}))
    out = subprocess.run([sys.executable, "phase3/run_phase3.py", *setup["base"], "--best-config", str(bad),
                          "--results-dir", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "settings" in out.stderr and "Traceback" not in out.stderr


def test_help():
    out = subprocess.run([sys.executable, "phase3/run_phase3.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True)
    for flag in ("--losses", "--samplers", "--select-metric", "--best-config", "--acb-a", "--acb-beta",
                 "--acb-momentum", "--focal-gamma", "--wce-weights"):
        assert flag in out.stdout, flag
