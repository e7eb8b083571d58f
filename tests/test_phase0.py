"""Phase 0 end to end on synthetic data: cleaning, audit reasons, persisted split, analysis outputs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import msa.io
from msa import cleaning
from msa.io import atomic_files
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


def _handoff_set(work: Path) -> dict[str, bytes]:
    """Every file phase 0 hands on (all but its own stamp), hidden temporaries included, by relative path."""
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in sorted(work.rglob("*"))
            if p.is_file() and p.name != "phase0_inputs.json"}


def _no_temps(work: Path) -> None:
    assert not [p for p in work.rglob("*") if p.name.endswith(".tmp")], "a temporary was left behind"


# another seed changes only the splits; the other two change the cleaned set, the audit and the splits too
@pytest.mark.parametrize("change", [["--seed", "7"], ["--keep-partial"], ["--no-dedup"]])
def test_a_refused_rerun_writes_nothing_and_leaves_the_old_set_whole(cleaned_faulty, change):
    root, work, _ = cleaned_faulty
    before = _handoff_set(work)
    assert {"train_cleaned.txt", "data_audit.csv", "data_inventory.csv", "phase0_manifest.json",
            "splits/default.csv", "splits/cv3-0.csv", "splits/cv3-2.csv"} <= set(before)
    argv = ["--data-root", str(root), "--work-dir", str(work), "--folds", "3", *change]
    with pytest.raises(data_cleaner.cli.UserError, match="--force"):
        data_cleaner.main(argv)
    assert data_cleaner.cli.run_main(data_cleaner.main, argv) == 2  # exit status 2 as a script
    assert _handoff_set(work) == before
    _no_temps(work)


@pytest.mark.parametrize("fail_at", [1, 4, -1])  # the first rename, one in the middle, the manifest's (last)
@pytest.mark.parametrize("change", [["--seed", "7"], ["--folds", "4"]])  # replaced files / also new files
def test_a_crash_during_the_renames_leaves_the_old_set_whole(cleaned_faulty, monkeypatch, fail_at, change):
    root, work, _ = cleaned_faulty
    before = _handoff_set(work)
    argv = ["--data-root", str(root), "--work-dir", str(work), "--folds", "3", *change, "--force"]
    n_targets = 4 + 1 + (4 if "--folds" in change else 3)  # 4 files, default split, the folds
    fail_at = fail_at % n_targets if fail_at < 0 else fail_at - 1  # index of the failing rename
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == fail_at + 1:
            raise OSError(28, "No space left on device (simulated)", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(msa.io.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        data_cleaner.main(argv)
    monkeypatch.undo()
    assert len(calls) > fail_at and (fail_at < n_targets - 1 or calls[fail_at] == "phase0_manifest.json")
    assert _handoff_set(work) == before
    _no_temps(work)


def test_a_crash_while_writing_the_temporaries_leaves_the_old_set_whole(cleaned_faulty, monkeypatch):
    root, work, _ = cleaned_faulty
    before = _handoff_set(work)
    real_write, written = cleaning._write_csv, []

    def failing_write(path, frame):
        if len(written) == 3:  # inventory, audit and one split are written by now
            raise MemoryError("simulated crash")
        real_write(path, frame)
        written.append(path)

    monkeypatch.setattr(cleaning, "_write_csv", failing_write)
    with pytest.raises(MemoryError):
        data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "3", "--seed", "7",
                           "--force"])
    assert written and all(p.name.endswith(".tmp") for p in written)
    assert _handoff_set(work) == before
    _no_temps(work)


def test_manifest_records_the_hashes_of_the_files_it_hands_on(cleaned_faulty):
    _, work, _ = cleaned_faulty
    manifest = json.loads((work / "phase0_manifest.json").read_text(encoding="utf-8"))

    def sha(name):
        return hashlib.sha256((work / name).read_bytes()).hexdigest()

    assert manifest["train_cleaned_sha256"] == sha("train_cleaned.txt")
    assert manifest["audit_sha256"] == sha("data_audit.csv")
    assert manifest["inventory_sha256"] == sha("data_inventory.csv")
    assert manifest["splits"] == {p.stem: sha(f"splits/{p.name}") for p in (work / "splits").glob("*.csv")}
    assert set(manifest["splits"]) == {"default", "cv3-0", "cv3-1", "cv3-2"}


def test_atomic_files_replaces_all_in_order_or_none(tmp_path, monkeypatch):
    paths = [tmp_path / "a.txt", tmp_path / "sub" / "b.txt", tmp_path / "manifest.json"]
    paths[0].write_text("old a")
    with pytest.raises(KeyError), atomic_files(paths) as temps:
        for t in temps:
            t.write_text("new")
        raise KeyError("crash in the block")
    assert paths[0].read_text() == "old a" and not paths[1].exists() and not paths[2].exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]
    order, real_replace = [], os.replace
    monkeypatch.setattr(msa.io.os, "replace", lambda s, d: (order.append(Path(d)), real_replace(s, d)))
    with atomic_files(paths) as temps:
        assert [t.parent for t in temps] == [p.parent for p in paths]
        assert all(t.name.startswith(f".{p.name}.") and t.name.endswith(".tmp") for t, p in zip(temps, paths))
        for t, p in zip(temps, paths):
            t.write_text(f"new {p.name}")
    assert order == paths and [p.read_text() for p in paths] == [f"new {p.name}" for p in paths]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_help_says_what_the_up_to_date_check_reads():
    text = " ".join(data_cleaner.build_parser().format_help().split())
    assert "names, sizes and modification times" in text and "--force" in text


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


def test_inspection_in_threads_gives_the_rows_of_one_thread_in_order(faulty_copy):
    """Phase 0 inspects the posts in threads (one per core): the same rows, in the index's order, as one thread
    gives, broken files included."""
    root, _ = faulty_copy
    guids = sorted(p.stem for p in (root / "data").iterdir() if p.suffix == ".txt") + ["no-such-guid"]
    one = cleaning.inspect_all(root / "data", guids, "one", workers=1)
    three = cleaning.inspect_all(root / "data", guids, "three", workers=3)
    pd.testing.assert_frame_equal(one, three)
    assert one["guid"].tolist() == guids and set(one["image_status"]) > {"ok"}
