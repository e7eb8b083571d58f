"""Phase 0 end to end on the real MVSA-Single data (skipped when ../shared/mvsa is absent)."""

from __future__ import annotations

import json

import pandas as pd

from msa.splits import load_split
from phase0 import data_analysis, data_cleaner


def test_phase0_on_the_real_data(real_root, tmp_path):
    work, figs, res = tmp_path / "work", tmp_path / "figures", tmp_path / "results"
    assert data_cleaner.main(["--data-root", str(real_root), "--work-dir", str(work)]) == 0
    manifest = json.loads((work / "phase0_manifest.json").read_text())
    s = manifest["summary"]
    train = pd.read_csv(real_root / "train.txt", dtype=str)
    test = pd.read_csv(real_root / "test_without_label.txt", dtype=str)
    assert s["labelled_rows"] == len(train) and s["test_rows"] == len(test)
    cleaned = pd.read_csv(work / "train_cleaned.txt", dtype=str)
    # duplicates exist in MVSA-Single, but cleaning must not throw away more than a few percent
    assert 0.9 * len(train) < len(cleaned) < len(train)
    assert s["encodings"].get("gb18030", 0) > 0.15 * (len(train) + len(test))  # about a quarter is not UTF-8
    inv = pd.read_csv(work / "data_inventory.csv", dtype=str, keep_default_na=False)
    assert set(test["guid"]) <= set(inv["guid"])
    assert (inv["text_encoding"] != "cp1252-replace").all()  # every real text decodes without loss
    split = load_split(work, "default")
    assert abs(len(split.val) / len(cleaned) - 0.1) < 0.02
    shares = cleaned.merge(split.frame).groupby("split")["tag"].value_counts(normalize=True).unstack()
    assert (shares.loc["train"] - shares.loc["val"]).abs().max() < 0.02  # stratified
    assert data_analysis.main(["--data-root", str(real_root), "--work-dir", str(work), "--figures-dir", str(figs),
                               "--results-dir", str(res)]) == 0
    assert len(list(figs.glob("*.png"))) == 4 and (res / "data_summary.md").is_file()


def test_phase1_and_predict_on_a_slice_of_the_real_data(real_root, tmp_path):
    """The default offline backbones end to end on 200 real posts and 40 test posts (cold cache)."""
    from phase1 import main as phase1
    from phase4 import predict_test

    work = tmp_path / "work"
    # a slice of the index files, cleaned by phase 0 (a hand-cut train_cleaned.txt would not match its manifest)
    pd.read_csv(real_root / "train.txt", dtype=str).head(210).to_csv(tmp_path / "train.txt", index=False)
    test = pd.read_csv(real_root / "test_without_label.txt", dtype=str).head(40)
    test.to_csv(tmp_path / "test.txt", index=False)
    assert data_cleaner.main(["--data-root", str(real_root), "--work-dir", str(work), "--folds", "0",
                              "--train-index", str(tmp_path / "train.txt"),
                              "--test-index", str(tmp_path / "test.txt")]) == 0
    cleaned = pd.read_csv(work / "train_cleaned.txt", dtype=str)
    split = pd.read_csv(work / "splits" / "default.csv", dtype=str)
    assert 190 <= len(cleaned) <= 210
    cache, res = tmp_path / "cache", tmp_path / "results"
    assert phase1.main(["--data-root", str(real_root), "--work-dir", str(work), "--cache-dir", str(cache),
                        "--results-dir", str(res), "--figures-dir", str(tmp_path / "figures"), "--num-epochs", "3",
                        "--no-probe"]) == 0
    metrics = json.loads((res / "Phase1_Baseline-s42" / "metrics.json").read_text())
    assert 0.0 <= metrics["weighted_f1"] <= 1.0 and metrics["n"] == (split["guid"].isin(cleaned["guid"])
                                                                      & (split["split"] == "val")).sum()
    out = tmp_path / "predict.txt"
    assert predict_test.main(["--checkpoint", str(res / "best" / "checkpoint"), "--data-root", str(real_root),
                              "--test-file", str(tmp_path / "test.txt"), "--output", str(out),
                              "--cache-dir", str(cache)]) == 0
    pred = pd.read_csv(out, dtype=str)
    assert pred["guid"].tolist() == test["guid"].tolist()
    assert set(pred["tag"]) <= {"negative", "neutral", "positive"}
