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
