"""A newcomer's path: `make demo` (smallest preset, as CI runs it) goes from nothing to predictions and a
self-contained HTML report; `make run` without a dataset says what to do, without a traceback."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MSA_CACHE_DIR"}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_make_run_without_data_is_one_clear_message(tmp_path):
    res = _make("run", f"DATA={tmp_path / 'nothing'}", timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "no dataset at DATA=" in out and "train.txt" in out and "make demo" in out and "data/<guid>.jpg" in out
    assert "Traceback" not in out


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").is_file(), reason="needs `make setup`'s .venv")
def test_make_demo_smallest_preset(tmp_path):
    out = tmp_path / "demo"
    res = _make("demo", f"DEMO_DIR={out}", "DEMO_PRESET=smallest", timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    pipeline = out / "pipeline"
    report = pipeline / "results" / "REPORT.html"
    assert res.stdout.strip().splitlines()[-1].endswith(str(report))
    test = pd.read_csv(out / "dataset" / "test_without_label.txt", dtype=str, skipinitialspace=True)
    pred = pd.read_csv(pipeline / "predict.txt", dtype=str)
    assert list(pred.columns) == ["guid", "tag"] and len(pred) >= len(test) - 5
    assert set(pred["tag"]) <= {"positive", "neutral", "negative"}
    audit = pd.read_csv(pipeline / "dataset" / "data_audit.csv")
    assert len(audit) >= 5  # the deliberately faulty posts are reported
    html = report.read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert len(srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert html.count("How to read it:") == 8 and "Not run yet" not in html
    # nothing of the demo lands in the project's own folders
    assert not (REPO / "demo").exists() or out == REPO / "demo"

    # the same `make demo` again: every stage is up to date, and answers before importing torch or the other heavy
    # libraries; the import log (PYTHONPROFILEIMPORTTIME) says what each step loaded
    env = {k: v for k, v in os.environ.items() if k != "MSA_CACHE_DIR"} | {"PYTHONPROFILEIMPORTTIME": "1"}
    again = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "demo", f"DEMO_DIR={out}",
                            "DEMO_PRESET=smallest"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    steps = [step for step in re.split(r"^\S*bin/python ", again.stdout, flags=re.M)[1:]
             if step.split()[0].endswith(".py")]  # the stages' scripts (not -m msa.demo / msa.report)
    scripts = [step.split()[0] for step in steps]
    assert len(scripts) == 11 and scripts[-1] == "phase4/predict_test.py", scripts
    for script, step in zip(scripts, steps):
        assert "up to date" in step, (script, step[-1500:])
        assert not re.search(r"\|\s*(torch|sklearn|optuna|matplotlib|onnxruntime|transformers)$", step,
                             flags=re.M), script


def test_one_post_without_a_trained_model_says_how_to_train_one(tmp_path, monkeypatch):
    from msa.cli import UserError
    from phase4 import predict_test

    monkeypatch.setattr(predict_test, "REPO", tmp_path)  # a checkout with no results at all
    with pytest.raises(UserError, match="no trained model found.*make run DATA="):
        predict_test.main(["--text", "what a day", "--image", str(tmp_path / "x.jpg")])
