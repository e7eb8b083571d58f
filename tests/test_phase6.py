"""Phase 6 on synthetic data with a tiny random CLIP folder: probes, zero-shot rows, the embedding cache, the
fallback without CLIP, the reference row, and that C is chosen on the training split alone."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from msa import clip as cc
from msa import probe_stage, probes
from msa.cli import run_main
from msa.features import FeatureStore, image_content_key
from msa.splits import load_split
from phase0 import data_cleaner
from phase6 import run_phase6 as phase6
from tests.tiny_models import quiet_transformers, tiny_bert, tiny_clip, tiny_vit

GRID = "0.01,0.1,1,10"
CLIP_ROWS = ["probe_image", "probe_text", "probe_image+text", "zero_shot_image", "zero_shot_text",
             "zero_shot_image+text"]


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phase6")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(synthetic_root), "--work-dir", str(work), "--folds", "0"])
    base = ["--data-root", str(synthetic_root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"),
            "--cv-folds", "3", "--c-grid", GRID, "--device", "cpu"]
    return {"root": synthetic_root, "work": work, "tmp": tmp, "base": base, "clip": tiny_clip(tmp / "clip")}


def fake_reference(folder, split_sha: str) -> None:
    """A phase-4-like results folder: best/metrics.json + best/config.json, and best.json with method_mean."""
    best = folder / "best"
    best.mkdir(parents=True)
    (best / "metrics.json").write_text(json.dumps({"n": 9, "accuracy": 0.61, "weighted_f1": 0.62, "macro_f1": 0.5,
                                                   "f1_neutral": 0.33, "ece": 0.1}))
    (best / "config.json").write_text(json.dumps({"split": {"name": "default", "sha256": split_sha},
                                                  "fusion": "concat", "backbones": {"text": {"name": "minilm"}}}))
    (folder / "best.json").write_text(json.dumps({"mode": "extra", "seeds": [1, 2, 3], "method_mean": {
        k: {"mean": 0.5, "std": 0.05} for k in ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece")}}))


def run(setup, name: str, *extra: str) -> dict:
    out = setup["tmp"] / name
    argv = setup["base"] + ["--results-dir", str(out / "results"), "--figures-dir", str(out / "figures"), *extra]
    assert phase6.main(argv) == 0
    return {"dir": out, "summary": json.loads((out / "results" / "summary.json").read_text()),
            "table": pd.read_csv(out / "results" / "summary.csv"),
            "md": (out / "results" / "summary.md").read_text(),
            "preds": pd.read_csv(out / "results" / "val_predictions.csv", dtype={"guid": str})}


@pytest.fixture(scope="module")
def clip_runs(setup):
    """The CLIP path twice on one cache (the second must compute nothing), with a reference on another split."""
    split = load_split(setup["work"], "default")
    ref = setup["tmp"] / "phase4_results"
    fake_reference(ref, "0" * 64)
    first = run(setup, "clip1", "--clip-model", str(setup["clip"]), "--reference", str(ref / "best"))
    second = run(setup, "clip2", "--clip-model", str(setup["clip"]), "--reference", str(ref / "best"))
    return {"first": first, "second": second, "split": split}


def test_clip_path_writes_every_row(clip_runs):
    first = clip_runs["first"]
    table = first["table"]
    assert table["id"].tolist() == CLIP_ROWS + ["reference", "reference_mean"]
    assert first["summary"]["mode"] == "clip" and first["summary"]["warning"] is None
    for metric in ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece"):
        assert table[metric].between(0, 1).all(), metric
    probes_ = table[table["kind"] == "linear probe"].set_index("id")
    assert probes_.loc[["probe_image", "probe_text", "probe_image+text"], "dim"].tolist() == [16, 16, 32]
    assert set(probes_["C"]) <= {0.01, 0.1, 1.0, 10.0}
    assert table.set_index("id").loc[CLIP_ROWS, "label"].str.contains("CLIP").all()
    for name in ("CLIP linear probe, image+text", "CLIP zero-shot, image", "neutral F1"):
        assert name in first["md"]
    png = first["dir"] / "figures" / "comparison.png"
    assert png.is_file() and png.stat().st_size > 10_000
    zs = first["summary"]["features"]["zero_shot"]
    assert zs["prompts"]["neutral"][0] == "a neutral photo." and len(zs["prompts"]["positive"]) >= 3


def test_reference_rows_and_split_mismatch(clip_runs):
    table = clip_runs["first"]["table"].set_index("id")
    assert table.loc["reference", "weighted_f1"] == pytest.approx(0.62)
    assert table.loc["reference_mean", "f1_neutral_std"] == pytest.approx(0.05)
    assert "mean ± std over 3 seeds" in table.loc["reference_mean", "label"]
    assert not bool(table.loc["reference", "same_split"])
    assert table.loc["reference", "features"] == "'concat' fusion head trained on frozen minilm features"
    assert "Best phase-6 row by validation weighted F1" in clip_runs["first"]["md"]
    assert "Δ weighted F1" not in clip_runs["first"]["md"]  # no difference to a reference on another split
    assert "Caution" in clip_runs["first"]["md"] and "not on the same validation posts" in clip_runs["first"]["md"]


def test_embeddings_are_clips_normalised_projections(setup, clip_runs):
    """The cached entries equal CLIPModel's own projected embeddings, L2-normalised."""
    from transformers import CLIPModel, CLIPProcessor

    from msa.data import load_image
    from msa.features import model_text

    clip = cc.load_clip(setup["clip"])
    with quiet_transformers():
        model = CLIPModel.from_pretrained(str(setup["clip"])).eval()
        processor = CLIPProcessor.from_pretrained(str(setup["clip"]))
    data_dir = setup["root"] / "data"
    guids = clip_runs["split"].val[:3]
    istore = FeatureStore(setup["tmp"] / "cache", clip.store_key("image"), clip.dim)
    tstore = FeatureStore(setup["tmp"] / "cache", clip.store_key("text"), clip.dim)
    with torch.no_grad():
        for g in guids:
            pix = processor(images=[load_image(data_dir, g).image], return_tensors="pt")["pixel_values"]
            want = cc._tensor(model.get_image_features(pixel_values=pix))[0]
            got = istore.load(image_content_key(data_dir, g)[0])
            assert got is not None and torch.allclose(got, want / want.norm(), atol=1e-5)
            text = model_text(data_dir, g)
            enc = processor.tokenizer([text], truncation=True, max_length=32, return_tensors="pt")
            want = cc._tensor(model.get_text_features(**enc))[0]
            got = tstore.load(cc._sha(text.encode("utf-8")))
            assert got is not None and torch.allclose(got, want / want.norm(), atol=1e-5)
    long = clip.tokenizer(["word " * 500], truncation=True, max_length=clip.max_length)["input_ids"][0]
    assert clip.max_length == 32 and len(long) == 32  # tiny CLIP's 32 positions (77 for real CLIP)


def test_second_run_computes_no_embeddings(clip_runs):
    first, second = clip_runs["first"]["summary"]["embeddings"], clip_runs["second"]["summary"]["embeddings"]
    assert first["image"]["computed"] > 0 and first["text"]["computed"] > 0 and first["prompts"]["computed"] == 18
    assert {k: v["computed"] for k, v in second.items()} == {"image": 0, "text": 0, "prompts": 0}
    assert second["image"]["total"] == first["image"]["total"] == len(clip_runs["split"].frame)
    pd.testing.assert_frame_equal(clip_runs["first"]["preds"], clip_runs["second"]["preds"])


def test_unchanged_inputs_skip_and_force_recomputes(setup, clip_runs, capsys):
    out = clip_runs["first"]["dir"]
    ref = setup["tmp"] / "phase4_results" / "best"
    argv = setup["base"] + ["--clip-model", str(setup["clip"]), "--reference", str(ref),
                            "--results-dir", str(out / "results"), "--figures-dir", str(out / "figures")]
    capsys.readouterr()
    before = (out / "results" / "summary.json").stat().st_mtime_ns
    assert phase6.main(argv) == 0
    assert "phase 6: up to date" in capsys.readouterr().out
    assert (out / "results" / "summary.json").stat().st_mtime_ns == before
    assert phase6.main(argv + ["--force"]) == 0
    assert "up to date" not in capsys.readouterr().out
    after = json.loads((out / "results" / "summary.json").read_text())
    assert after["rows"] == clip_runs["first"]["summary"]["rows"]
    assert {k: v["computed"] for k, v in after["embeddings"].items()} == {"image": 0, "text": 0, "prompts": 0}


def test_validation_rows_are_the_splits_val_guids(clip_runs):
    val = clip_runs["split"].val
    preds = clip_runs["first"]["preds"]
    assert set(preds["row"]) == set(CLIP_ROWS)
    for _, grp in preds.groupby("row"):
        assert sorted(grp["guid"]) == sorted(val) and len(grp) == len(val)
    labels = dict(zip(*pd.read_csv(clip_runs["split"].path.parents[1] / "train_cleaned.txt", dtype=str).values.T))
    assert all(labels[g] == lab for g, lab in zip(preds["guid"], preds["label"]))
    for row in clip_runs["first"]["summary"]["rows"]:
        if row["kind"] == "linear probe":
            assert row["cv"]["n_train"] == len(clip_runs["split"].train) and row["n_val"] == len(val)


def test_fallback_without_clip_never_says_clip(setup, monkeypatch, caplog):
    """No CLIP folder: a warning naming it and how to get it, the same probes on the default backbones (here tiny
    stand-ins, so that the test stays fast), no zero-shot rows, exit 0."""
    monkeypatch.setattr(probe_stage, "FALLBACK_BACKBONES", (str(tiny_bert(setup["tmp"] / "bert")),
                                                       str(tiny_vit(setup["tmp"] / "vit"))))
    missing = setup["tmp"] / "no_such_clip"
    with caplog.at_level(logging.WARNING, logger="phase6"):
        res = run(setup, "fallback", "--clip-model", str(missing), "--reference", "none")
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert str(missing) in warning and "download_seed_models.py" in warning and "does not exist" in warning
    assert str(missing) in res["md"] and res["summary"]["mode"] == "fallback"
    table = res["table"]
    assert table["id"].tolist() == ["probe_image", "probe_text", "probe_image+text"]
    for col in ("label", "short", "features"):
        for text in table[col]:
            assert "CLIP" not in text.replace("not CLIP", ""), text
    assert (table["features"] == probe_stage.FALLBACK_FEATURES).all()
    assert "| CLIP zero-shot" not in res["md"] and set(res["preds"]["row"]) == set(table["id"])
    assert "No reference row" in res["md"]


def test_incomplete_clip_folder_names_what_it_lacks(setup, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    problem = cc.clip_problem(folder)
    assert str(folder) in problem and "weights file" in problem and "preprocessor_config.json" in problem
    assert cc.clip_problem(setup["clip"]) is None


def test_reference_auto_order_and_absence(setup, tmp_path):
    split = load_split(setup["work"], "default")
    rows, notes = probe_stage.find_reference("auto", split, root=tmp_path)
    assert rows == [] and all(f"phase{n}/results/best/metrics.json" in notes[0] for n in (4, 3, 1))
    fake_reference(tmp_path / "phase3" / "results", split.sha256)
    fake_reference(tmp_path / "phase1" / "results", split.sha256)
    rows, notes = probe_stage.find_reference("auto", split, root=tmp_path)
    assert rows[0]["phase"] == "phase3" and "phase 4 not run" in rows[0]["label"] and rows[0]["same_split"]
    assert len(rows) == 2 and not any("Caution" in n for n in notes)


# ------------------------------------------------------------------------------- C from the training split
def test_evaluate_probe_passes_only_training_rows_to_the_cv(monkeypatch):
    rng = np.random.default_rng(0)
    n = 120
    y = np.arange(n) % 3
    x = np.c_[np.arange(n, dtype=float), rng.normal(size=(n, 4)) + y[:, None]]  # column 0 = row id
    train, val = list(range(0, n, 4)) + list(range(1, n, 4)) + list(range(2, n, 4)), list(range(3, n, 4))
    seen = []
    real = probes.fit_logreg_cv

    def spy(x_train, y_train, **kw):
        seen.append((x_train[:, 0].astype(int).tolist(), np.asarray(y_train).tolist()))
        return real(x_train, y_train, **kw)

    monkeypatch.setattr(probes, "fit_logreg_cv", spy)
    fit, proba, metrics = probes.evaluate_probe(x, y, train, val, cs=[0.01, 1.0], folds=3, seed=0)
    assert len(seen) == 1
    assert seen[0][0] == train and seen[0][1] == y[train].tolist() and not set(seen[0][0]) & set(val)
    assert proba.shape == (len(val), 3) and metrics["n"] == len(val)
    with pytest.raises(ValueError, match="both"):
        probes.evaluate_probe(x, y, train, val + train[:1], cs=[1.0], folds=3)


def test_chosen_c_ignores_the_validation_rows():
    """Scrambling the validation rows' features and labels changes nothing about the CV or the chosen C."""
    rng = np.random.default_rng(1)
    n = 150
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6)) + 0.8 * np.eye(3)[y] @ rng.normal(size=(3, 6))
    train, val = list(range(100)), list(range(100, n))
    kw = {"cs": [1e-3, 1e-2, 0.1, 1.0, 10.0], "folds": 4, "seed": 7}
    fit_a, _, _ = probes.evaluate_probe(x, y, train, val, **kw)
    x2, y2 = x.copy(), y.copy()
    x2[val] = rng.normal(size=(len(val), 6)) * 50
    y2[val] = (y[val] + 1) % 3
    fit_b, _, _ = probes.evaluate_probe(x2, y2, train, val, **kw)
    assert fit_a.C == fit_b.C and fit_a.cv == fit_b.cv
    # ... while the training rows do matter: the CV scores move when those are scrambled
    x3 = x.copy()
    x3[train] = rng.normal(size=(len(train), 6))
    fit_c, _, _ = probes.evaluate_probe(x3, y, train, val, **kw)
    assert fit_c.cv != fit_a.cv


def test_fit_logreg_cv_picks_the_best_mean_cv_score_and_is_seeded():
    rng = np.random.default_rng(2)
    y = np.arange(90) % 3
    x = rng.normal(size=(90, 5)) + np.eye(3)[y] @ rng.normal(size=(3, 5))
    fit = probes.fit_logreg_cv(x, y, cs=[10.0, 1e-4, 1.0], folds=3, seed=3)
    means = [r["mean"] for r in fit.cv]
    assert [r["C"] for r in fit.cv] == [1e-4, 1.0, 10.0] and fit.C == fit.cv[int(np.argmax(means))]["C"]
    assert all(len(r["folds"]) == 3 for r in fit.cv)
    again = probes.fit_logreg_cv(x, y, cs=[10.0, 1e-4, 1.0], folds=3, seed=3)
    assert again.cv == fit.cv and np.allclose(again.predict_proba(x), fit.predict_proba(x))
    # folds fitted in parallel threads give exactly the scores of one after the other
    for threads in (1, 3):
        assert probes.fit_logreg_cv(x, y, cs=[10.0, 1e-4, 1.0], folds=3, seed=3, n_threads=threads).cv == fit.cv


def test_bad_flags_are_one_line_errors(setup, capsys):
    assert run_main(phase6.main, setup["base"] + ["--cv-folds", "1"]) == 2
    assert "--cv-folds must be at least 2" in capsys.readouterr().err
    assert run_main(phase6.main, setup["base"] + ["--cv-folds", "50"]) == 2
    assert "smallest class" in capsys.readouterr().err
    assert run_main(phase6.main, setup["base"] + ["--c-grid", "0,1"]) == 2
    assert "positive" in capsys.readouterr().err


def test_help_starts_with_what_it_does():
    text = phase6.build_parser().format_help()
    description = text.split("\n\n", 1)[1]
    assert description.startswith("Phase 6: linear probes") and "--clip-model" in text and "--cv-folds" in text
    first_sentence = description.split(".\n")[0]
    assert "reads" in first_sentence and "writes" in first_sentence
