"""Phase 0 end to end on synthetic data: cleaning, audit reasons, persisted split, analysis outputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from msa.splits import load_split
from phase0 import data_analysis, data_cleaner
from tests.conftest import REPO


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture()
def cleaned_faulty(faulty_copy, tmp_path):
    root, expect = faulty_copy
    before = _tree_hash(root)
    work = tmp_path / "work"
    assert data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "3"]) == 0
    assert _tree_hash(root) == before, "phase 0 must never modify the user's files"
    return root, work, expect


def test_every_failure_kind_is_audited_with_its_reason(cleaned_faulty):
    root, work, expect = cleaned_faulty
    audit = _read(work / "data_audit.csv")
    assert list(audit.columns[:4]) == ["guid", "reason", "label", "detail"]
    for guid, exp in expect.items():
        rows = audit[audit["guid"] == guid]
        if exp["reason"] is None:
            assert rows.empty, f"{guid} should be clean, audit says {rows.to_dict('records')}"
            continue
        match = rows[rows["reason"] == exp["reason"]]
        assert len(match), f"{guid}: expected {exp['reason']}, audit has {rows['reason'].tolist()}"
        assert match["action"].iloc[0] == exp["action"], (guid, match.to_dict("records"))
        assert match["detail"].iloc[0], guid


def test_cleaned_index_keeps_exactly_the_usable_rows(cleaned_faulty):
    root, work, expect = cleaned_faulty
    cleaned = _read(work / "train_cleaned.txt")
    kept = set(cleaned["guid"])
    for guid, exp in expect.items():
        if exp.get("test"):
            assert guid not in kept
        elif exp["reason"] is None or exp["action"] in ("kept", "repaired") or exp.get("kept"):
            assert guid in kept, guid
        else:
            assert guid not in kept, guid
    assert set(cleaned["tag"]) <= {"negative", "neutral", "positive"}
    assert len(cleaned) == cleaned["guid"].nunique()


def test_inventory_records_encodings_formats_and_hashes(cleaned_faulty):
    _, work, expect = cleaned_faulty
    inv = _read(work / "data_inventory.csv").set_index("guid")
    for guid, exp in expect.items():
        if "encoding" in exp:
            assert inv.loc[guid, "text_encoding"] == exp["encoding"], guid
    assert inv.loc["img_cmyk", "image_mode"] == "CMYK" and inv.loc["img_png_as_jpg", "image_format"] == "PNG"
    assert inv.loc["img_exif", "image_width"] == "40"
    assert inv.loc["1", "image_sha256"] and len(inv.loc["1", "phash"]) == 16
    assert set(inv["source"]) == {"train", "test"}
    assert "test/../bad" in inv.index  # every test guid is accounted for


def test_split_is_stratified_persisted_and_covers_the_cleaned_rows(cleaned_faulty):
    _, work, _ = cleaned_faulty
    cleaned = _read(work / "train_cleaned.txt")
    split = load_split(work, "default")
    assert set(split.frame["guid"]) == set(cleaned["guid"])
    val_share = len(split.val) / len(cleaned)
    assert 0.05 < val_share < 0.2
    merged = cleaned.merge(split.frame)
    for lab in ("negative", "positive"):
        assert (merged[merged["tag"] == lab]["split"] == "val").any()
    folds = [load_split(work, f"cv3-{i}") for i in range(3)]
    vals = [set(f.val) for f in folds]
    assert set.union(*vals) == set(cleaned["guid"]) and sum(map(len, vals)) == len(cleaned)


def test_rerun_reuses_the_split_and_refuses_a_silent_change(cleaned_faulty):
    root, work, _ = cleaned_faulty
    first = load_split(work, "default").sha256
    assert data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "3"]) == 0
    assert load_split(work, "default").sha256 == first
    with pytest.raises(data_cleaner.cli.UserError, match="--force"):
        data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "3", "--seed", "7"])
    assert load_split(work, "default").sha256 == first
    assert data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "3", "--seed", "7",
                              "--force"]) == 0
    assert load_split(work, "default").sha256 != first


def test_keep_partial_keeps_rows_with_one_modality(faulty_copy, tmp_path):
    root, _ = faulty_copy
    work = tmp_path / "w"
    data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--keep-partial", "--folds", "0"])
    kept = set(_read(work / "train_cleaned.txt")["guid"])
    assert {"img_missing", "text_empty", "img_truncated"} <= kept
    audit = _read(work / "data_audit.csv")
    assert audit.loc[audit["guid"] == "img_missing", "action"].tolist() == ["placeholder"]


def test_clean_synthetic_data_has_no_problem(synthetic_root, tmp_path):
    work = tmp_path / "w"
    data_cleaner.main(["--data-root", str(synthetic_root), "--work-dir", str(work)])
    assert _read(work / "data_audit.csv").empty
    assert len(_read(work / "train_cleaned.txt")) == 90


def test_analysis_writes_figures_and_summary(cleaned_faulty, tmp_path):
    root, work, _ = cleaned_faulty
    figs, res = tmp_path / "figures", tmp_path / "results"
    assert data_analysis.main(["--data-root", str(root), "--work-dir", str(work), "--figures-dir", str(figs),
                               "--results-dir", str(res)]) == 0
    pngs = sorted(p.name for p in figs.glob("*.png"))
    assert pngs == ["audit_reasons.png", "image_sizes.png", "label_distribution.png", "text_length_and_encodings.png"]
    for p in figs.glob("*.png"):
        assert p.stat().st_size > 10_000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (res / "data_summary.md").read_text()
    assert "near_duplicate" in md and "decompression_bomb" in md and "gb18030" in md
    for p in pngs:
        assert f"../figures/{p}" in md


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)


def test_bad_data_root_is_a_clear_error_not_a_traceback(tmp_path):
    out = _run("phase0/data_cleaner.py", "--data-root", str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nowhere" in out.stderr and "data folder" in out.stderr
    (tmp_path / "d" / "data").mkdir(parents=True)
    out = _run("phase0/data_cleaner.py", "--data_root", str(tmp_path / "d"), "--work_dir", str(tmp_path / "w"))
    assert out.returncode == 2 and "train.txt" in out.stderr and "Traceback" not in out.stderr
    out = _run("phase0/data_analysis.py", "--work-dir", str(tmp_path / "empty"))
    assert out.returncode == 2 and "data_cleaner.py" in out.stderr and "Traceback" not in out.stderr


def test_cleaner_runs_as_a_script_with_a_summary(synthetic_root, tmp_path):
    out = _run("phase0/data_cleaner.py", "--data-root", str(synthetic_root), "--work-dir", str(tmp_path / "w"))
    assert out.returncode == 0, out.stderr
    assert "kept" in out.stdout and "split 'default'" in out.stdout
