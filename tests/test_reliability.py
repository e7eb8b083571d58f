"""Issue 21, one test (or one parametrised test) per class of bad input: a wrong data folder, a secret inside a
URL, unbounded inputs, lost rows, half-updated hand-off files (see also tests/test_phase0.py) and tracebacks instead
of one-line errors. Each is a clear ``error:`` with exit status 2 found before any work, and nothing is replaced."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import threading
import time

import pandas as pd
import pytest
from PIL import Image

from msa import cli, stamp
from msa.cli import UserError
from msa.data import MAX_GUID_CHARS, MAX_IMAGE_BYTES, MAX_TEXT_BYTES, load_image, read_index, read_text
from phase0 import data_cleaner
from phase1 import main as phase1
from phase4 import predict_test
from tests.tiny_models import tiny_bert, tiny_vit


@pytest.fixture(scope="module")
def trained(faulty_dataset, tmp_path_factory):
    root, _ = faulty_dataset
    tmp = tmp_path_factory.mktemp("reliability")
    work = tmp / "work"
    assert data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "0"]) == 0
    base = ["--work-dir", str(work), "--cache-dir", str(tmp / "cache"),
            "--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit")),
            "--results-dir", str(tmp / "results"), "--figures-dir", str(tmp / "figures")]
    assert phase1.main(["--data-root", str(root)] + base + ["--name", "m", "--seeds", "1", "--num-epochs", "2",
                                                             "--no-probe"]) == 0
    return {"root": root, "tmp": tmp, "base": base, "ckpt": tmp / "results" / "m-s1" / "checkpoint"}


def _run(main, argv, capsys, out: bool = False):
    """(exit status, stderr) of a script's main as its command line runs it (through cli.run_main); with ``out``
    (exit status, stdout, stderr)."""
    code = cli.run_main(main, argv)
    captured = capsys.readouterr()
    return (code, captured.out, captured.err) if out else (code, captured.err)


# ----------------------------------------------------------------------------- 1. a wrong data folder
def test_predict_against_a_root_without_data_leaves_predict_txt_unchanged(trained, tmp_path, capsys):
    out = tmp_path / "predict.txt"
    out.write_text("guid,tag\n1,positive\n")
    prov = tmp_path / "prov.json"
    prov.write_text("{}")
    empty_root = tmp_path / "dataset"  # like the project's dataset/ folder: no data/ inside
    empty_root.mkdir()
    code, err = _run(predict_test.main, ["--checkpoint", str(trained["ckpt"]), "--data-root", str(empty_root),
                                         "--test-file", str(trained["root"] / "test_without_label.txt"),
                                         "--output", str(out), "--provenance", str(prov),
                                         "--cache-dir", str(trained["tmp"] / "cache")], capsys)
    assert code == 2 and "data folder" in err and str(empty_root / "data") in err and "Traceback" not in err
    assert out.read_text() == "guid,tag\n1,positive\n" and prov.read_text() == "{}"


def test_predict_refuses_a_folder_missing_most_posts(trained, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(trained["root"], root)
    test = read_index(root / "test_without_label.txt", labelled=False).guids
    for g in test[: len(test) * 2 // 3]:  # two thirds of the test posts lose their files
        for f in (root / "data").glob(f"{g}.*"):
            f.unlink()
    out = tmp_path / "p.txt"
    code, err = _run(predict_test.main, ["--checkpoint", str(trained["ckpt"]), "--data-root", str(root),
                                         "--output", str(out), "--cache-dir", str(trained["tmp"] / "cache")], capsys)
    assert code == 2 and "posts have no" in err and "--data-root" in err and not out.exists()


def test_training_on_a_missing_data_root_is_an_error_not_a_majority_model(trained, tmp_path, capsys):
    results = trained["tmp"] / "results"
    before = sorted(p.name for p in results.iterdir())
    code, err = _run(phase1.main, ["--data-root", str(tmp_path / "nonexistent")] + trained["base"]
                     + ["--name", "wrong", "--seeds", "1", "--num-epochs", "1", "--no-probe"], capsys)
    assert code == 2 and "nonexistent" in err and "Traceback" not in err
    assert sorted(p.name for p in results.iterdir()) == before  # no run folder, no summary


# ------------------------------------------------------------------------------- 2. a secret in a URL
@pytest.mark.parametrize("url, secret", [
    ("http://user:sk-SECRET123@host:8000/v1", "sk-SECRET123"),
    ("https://sk-SECRET123@api.example.com/v1", "sk-SECRET123"),
    ("https://api.example.com/v1?api_key=sk-SECRET123&x=1", "sk-SECRET123"),
    ("https://api.example.com/v1?token=sk-SECRET123", "sk-SECRET123"),
])
def test_credentials_in_urls_are_never_recorded(url, secret, tmp_path):
    from msa.captioning import OpenAICaptioner

    args = argparse.Namespace(vlm_base_url=url, data_root=tmp_path, seeds="1", nested={"u": [url]})
    record = json.dumps(cli.args_record(args))
    stamped = json.dumps(stamp.inputs_of(args))
    assert secret not in record and secret not in stamped and "***" in record
    assert "api.example.com" in record or "host:8000" in record  # the rest of the URL is kept
    cap = OpenAICaptioner(url, "m", "p", "other-key", tmp_path, tmp_path / "f.jsonl")
    assert secret not in repr(cap) and secret not in cap.scrub(f"connection to {url} failed ({secret})")


# ------------------------------------------------------------------------------- 3. unbounded inputs
def _finishes(fn, seconds: float):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    return box["v"]


def test_texts_are_capped_and_only_regular_files_are_read(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "big.txt").write_text("happy " * 200_000)  # 1.2 MB
    res = _finishes(lambda: read_text(d, "big"), 5)
    assert res.ok and res.truncated and len(res.raw.encode()) <= MAX_TEXT_BYTES and "cut" in res.detail
    os.mkfifo(d / "fifo.txt")
    res = _finishes(lambda: read_text(d, "fifo"), 5)  # opening a FIFO would block for ever
    assert res.status == "missing" and "FIFO" in res.detail
    os.symlink("/dev/zero", d / "zero.txt")
    res = _finishes(lambda: read_text(d, "zero"), 5)
    assert res.status == "missing" and "device" in res.detail
    os.symlink("loop2.txt", d / "loop1.txt")
    os.symlink("loop1.txt", d / "loop2.txt")
    assert read_text(d, "loop1").status == "missing"
    (d / "multi.txt").write_bytes(("é" * MAX_TEXT_BYTES).encode())  # a cut inside a 2-byte character
    res = read_text(d, "multi")
    assert res.encoding == "utf-8" and set(res.raw) == {"é"}


def test_vader_on_a_megabyte_text_is_bounded(tmp_path):
    from msa.side import compute

    d = tmp_path / "data"
    d.mkdir()
    (d / "1.txt").write_text("what a great awful day " * 50_000)  # 1.15 MB: about an hour uncapped
    t0 = time.time()
    out = _finishes(lambda: compute("vader", ["1"], d, tmp_path / "cache", progress=False), 30)
    assert time.time() - t0 < 30 and out is not None


def test_oversized_image_files_are_not_read(tmp_path, monkeypatch):
    import msa.data

    d = tmp_path / "data"
    d.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(d / "1.jpg")
    assert load_image(d, "1").ok
    monkeypatch.setattr(msa.data, "MAX_IMAGE_BYTES", 100)
    res = load_image(d, "1")
    assert not res.ok and "over the limit" in res.detail
    assert MAX_IMAGE_BYTES >= 10 * 1024 * 1024


def test_phase0_audits_a_cut_text_and_survives_fifos_and_loops(faulty_copy, tmp_path):
    root, _ = faulty_copy
    guids = read_index(root / "train.txt").guids
    (root / "data" / f"{guids[0]}.txt").write_text("so happy today " * 5000)
    (root / "data" / f"{guids[1]}.txt").unlink()
    os.mkfifo(root / "data" / f"{guids[1]}.txt")
    (root / "data" / f"{guids[2]}.txt").unlink()
    os.symlink(f"{guids[2]}.txt", root / "data" / f"{guids[2]}.txt")  # a link to itself: a loop
    work = tmp_path / "work"
    assert _finishes(lambda: data_cleaner.main(["--data-root", str(root), "--work-dir", str(work),
                                                "--folds", "0"]), 120) == 0
    audit = pd.read_csv(work / "data_audit.csv", dtype=str, keep_default_na=False).set_index("guid")
    assert audit.loc[guids[0], "reason"] == "text_truncated"
    assert audit.loc[guids[1], "reason"] == "missing_text" and "FIFO" in audit.loc[guids[1], "detail"]
    assert audit.loc[guids[2], "reason"] == "missing_text"


# ------------------------------------------------------------------------------------ 4. lost rows
def test_every_test_guid_keeps_its_row(tmp_path):
    f = tmp_path / "test.txt"
    f.write_text("guid,tag\n1,null\n2320,null,extra\n7\n8,null\n")
    index = read_index(f, labelled=False)
    assert index.guids == ["1", "2320", "7", "8"]
    assert any(p.guid == "2320" and p.action == "kept" for p in index.problems)
    labelled = tmp_path / "train.txt"
    labelled.write_text("guid,tag\n1,positive\n2,negative,extra\n")
    assert read_index(labelled).guids == ["1"]  # a labelled row with an extra column is still not trusted


@pytest.mark.parametrize("name, content, usable", [
    ("page.jpg", b"<html><body>not an image</body></html>", False),
    ("photo.tiff", "TIFF", True),
    ("photo.jfif", "JPEG", True),
    ("bomb.png", "bomb", False),
])
def test_one_post_says_when_its_image_is_not_used(trained, tmp_path, capsys, name, content, usable):
    path = tmp_path / name
    if content == "bomb":  # 90 Mpx, over the decompression-bomb limit, in 11 KB
        Image.new("1", (9500, 9500)).save(path)
    elif isinstance(content, str):
        Image.new("RGB", (48, 40), (10, 200, 30)).save(path, format=content)
    else:
        path.write_bytes(content)
    code, out, err = _run(predict_test.main, ["--checkpoint", str(trained["ckpt"]), "--image", str(path),
                                              "--text", "what a day", "--json",
                                              "--cache-dir", str(trained["tmp"] / "cache")], capsys, out=True)
    assert code == 0, err
    result = json.loads(out)
    assert result["image_used"] is usable and result["label"] in ("negative", "neutral", "positive")
    assert bool(result["warnings"]) is (not usable) and ("warning:" in err) is (not usable)


# ------------------------------------------------------------------------- 5. hand-off files together
def test_a_mixed_phase0_set_is_refused_by_the_next_phase(trained, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(trained["tmp"] / "work", work)
    cleaned = work / "train_cleaned.txt"
    lines = cleaned.read_text().splitlines()
    cleaned.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer: not the file the manifest recorded
    base = [a if a != str(trained["tmp"] / "work") else str(work) for a in trained["base"]]
    code, err = _run(phase1.main, ["--data-root", str(trained["root"])] + base
                     + ["--name", "mixed", "--seeds", "1", "--num-epochs", "1", "--no-probe"], capsys)
    assert code == 2 and "train_cleaned.txt" in err and "phase 0" in err


# ------------------------------------------------------------------ 6. one-line errors, not tracebacks
SCRIPTS = {
    "phase1": "phase1.main", "phase2": "phase2.run_phase2", "search": "phase2.search_hyperparam",
    "phase3": "phase3.run_phase3", "phase4": "phase4.run_phase4", "phase5": "phase5.run_phase5",
    "phase6": "phase6.run_phase6", "final": "final.run_final", "predict": "phase4.predict_test",
    "phase0": "phase0.data_cleaner",
}
BAD_FLAGS = [
    *[(s, flag, v) for s in ("phase1", "phase2", "phase3") for flag, v in (
        ("--num-epochs", "0"), ("--num-epochs", "-1"), ("--patience", "-2"), ("--learning-rate", "-1"),
        ("--learning-rate", "nan"), ("--learning-rate", "inf"), ("--batch-size", "0"), ("--dropout", "1.5"),
        ("--hidden", "0"), ("--weight-decay", "-0.1"), ("--feature-batch-size", "0"))],
    ("phase2", "--jobs", "0"), ("search", "--n-trials", "0"), ("search", "--timeout", "-5"),
    ("search", "--jobs", "0"), ("phase3", "--jobs", "0"),
    ("phase4", "--num-epochs", "0"), ("phase4", "--patience", "-2"), ("phase4", "--learning-rate", "nan"),
    ("phase4", "--feature-batch-size", "0"), ("phase4", "--sample-ratio", "0"), ("phase4", "--jobs", "0"),
    ("phase4", "--vlm-concurrency", "0"), ("phase5", "--jobs", "0"), ("phase5", "--feature-batch-size", "0"),
    ("phase6", "--batch-size", "0"), ("final", "--folds", "0"), ("final", "--inner-val", "0"),
    ("final", "--jobs", "0"), ("final", "--feature-batch-size", "0"), ("final", "--num-epochs", "0"),
    ("predict", "--batch-size", "0"), ("predict", "--batch-size", "x"),
    ("phase0", "--val-ratio", "0"), ("phase0", "--val-ratio", "nan"), ("phase0", "--folds", "-1"),
]


@pytest.mark.parametrize("script, flag, value", BAD_FLAGS)
def test_nonsense_flag_values_are_usage_errors(script, flag, value, capsys):
    import importlib

    mod = importlib.import_module(SCRIPTS[script])
    with pytest.raises(SystemExit) as exc:
        mod.build_parser().parse_args([f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and "Traceback" not in err


def test_a_preset_with_a_nonsense_value_names_the_file_and_key(trained, tmp_path, capsys):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"num_epochs": 0}))
    code, err = _run(phase1.main, ["--data-root", str(trained["root"]), "--preset", str(preset)] + trained["base"]
                     + ["--name", "bad", "--no-probe"], capsys)
    assert code == 2 and str(preset) in err and "num_epochs" in err


def test_paths_of_the_wrong_kind_are_usage_errors(trained, tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exc:
        phase1.build_parser().parse_args(["--work-dir", str(a_file)])
    assert exc.value.code == 2 and "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        predict_test.build_parser().parse_args(["--output", str(tmp_path)])
    assert exc.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_overlong_guids_are_rejected_not_a_traceback(faulty_copy, tmp_path, capsys):
    root, _ = faulty_copy
    long = "9" * (MAX_GUID_CHARS + 100)
    with open(root / "train.txt", "a") as fh:
        fh.write(f"{long},positive\n")
    with open(root / "test_without_label.txt", "a") as fh:
        fh.write(f"{long},null\n")
    assert read_text(root / "data", long).status == "bad_guid" and load_image(root / "data", long).status == "bad_guid"
    code, err = _run(data_cleaner.main, ["--data-root", str(root), "--work-dir", str(tmp_path / "w"), "--folds", "0"],
                     capsys)
    assert code == 0, err
    audit = pd.read_csv(tmp_path / "w" / "data_audit.csv", dtype=str)
    assert (audit.loc[audit["guid"] == long, "reason"] == "bad_guid").all()


def test_a_full_disk_is_one_line_and_predict_txt_is_unchanged(trained, tmp_path, capsys, monkeypatch):
    import msa.io

    out = tmp_path / "predict.txt"
    out.write_text("old\n")

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(msa.io.os, "fsync", full)
    code, err = _run(predict_test.main, ["--checkpoint", str(trained["ckpt"]), "--data-root", str(trained["root"]),
                                         "--output", str(out), "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and "No space left" in err and "Traceback" not in err
    assert out.read_text() == "old\n" and not list(tmp_path.glob(".*.tmp"))


def test_a_killed_onnx_export_leaves_nothing_behind(tmp_path):
    from msa.onnx_accel import STALE_TEMP_SECONDS, remove_stale_exports

    old = tmp_path / ".lite0.onnx.abc123.tmp"
    old.write_bytes(b"")
    fresh = tmp_path / ".lite0.onnx.def456.tmp"
    fresh.write_bytes(b"")
    past = time.time() - STALE_TEMP_SECONDS - 5
    os.utime(old, (past, past))
    assert remove_stale_exports(tmp_path) == 1
    assert not old.exists() and fresh.exists()  # one still being written by a live run is left alone


def test_user_error_and_environment_errors_are_one_line(capsys):
    def boom(_argv):
        raise OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300)

    assert cli.run_main(boom, []) == 2
    assert capsys.readouterr().err.count("\n") == 1

    def bug(_argv):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):  # not the environment: a real traceback for a real bug
        cli.run_main(bug, [])


def test_user_errors_surface_from_library_code():
    with pytest.raises(UserError):
        read_index("/nonexistent/train.txt")


def test_a_preset_with_an_unknown_key_is_refused_and_old_spellings_warn(trained, tmp_path, capsys, caplog):
    preset = tmp_path / "typo.json"
    preset.write_text(json.dumps({"name": "x", "learnig_rate": 0.1}))
    code, err = _run(phase1.main, ["--data-root", str(trained["root"]), "--preset", str(preset)] + trained["base"]
                     + ["--name", "typo", "--no-probe"], capsys)
    assert code == 2 and "learnig_rate" in err and str(preset) in err
    from msa.settings import resolve

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"fusion": "add", "loss": "focal"}))
    s = resolve(argparse.Namespace(preset=str(old)))
    assert (s["feature_fusion"], s["loss_type"]) == ("add", "focal") and "old spelling" in caplog.text
