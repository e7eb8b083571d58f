"""Crash safety and incremental re-runs, with real subprocesses killed by SIGKILL: a phase killed mid-training
and phase 4 killed mid-caption-cache both finish on rerun, leave no half-written file under a final name, and
match an uninterrupted run's outputs; an unchanged phase is skipped and a changed flag reruns only what depends
on it; nothing is loaded with code execution."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from phase0 import data_cleaner
from phase3 import run_phase3 as phase3
from phase4 import run_phase4 as phase4
from tests.conftest import REPO
from tests.tiny_models import tiny_bert, tiny_vit

KEY = "sk-crash-test-0123456789"


@pytest.fixture(scope="module")
def setup(faulty_dataset, tmp_path_factory):
    root, _ = faulty_dataset
    tmp = tmp_path_factory.mktemp("crash")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "0"])
    common = ["--data-root", str(root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"), "--jobs", "1"]
    models = ["--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit"))]
    p3 = tmp / "phase3"
    p3_args = common + models + ["--losses", "ce", "--samplers", "none", "--seeds", "1", "--num-epochs", "3",
                                 "--learning-rate", "3e-3", "--best-config", str(tmp / "none.json"),
                                 "--results-dir", str(p3 / "results"), "--figures-dir", str(p3 / "figures")]
    assert phase3.main(p3_args) == 0
    return {"root": root, "work": work, "tmp": tmp, "common": common, "models": models, "phase3": p3 / "results",
            "p3_args": p3_args}


def _script(name: str) -> list[str]:
    return [sys.executable, str(REPO / name)]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` (and its children) as soon as ``ready()`` is true; fail if it finished first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the process finished before it could be killed: make it slower"
        assert time.time() < deadline, "timed out waiting for the kill point"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _check_intact(folder: Path, temporaries_allowed: bool = False) -> None:
    """Every file under a final name parses: JSON, CSV, safetensors; with ``temporaries_allowed`` False (after a
    finished run) no temporary file is left behind either."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        temporary = re.search(r"\.tmp|\.old-|(^|/)\.checkpoint\.", str(path.relative_to(folder)))
        assert temporaries_allowed or not temporary, f"leftover temporary file {path}"
        if temporary:
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".csv", ".txt") and path.stat().st_size:
            pd.read_csv(path)
        elif path.suffix == ".safetensors":
            load_file(str(path))


def _tree(folder: Path) -> set[str]:
    skip = {"inputs.json", "SOURCE"}
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in skip}


def test_phase3_killed_mid_training_resumes_to_the_uninterrupted_result(setup):
    tmp = setup["tmp"]
    args = [a for a in setup["p3_args"]]
    args[args.index("--num-epochs") + 1] = "400"
    args += ["--patience", "0"]

    def with_out(name):
        a = list(args)
        a[a.index("--results-dir") + 1] = str(tmp / name / "results")
        a[a.index("--figures-dir") + 1] = str(tmp / name / "figures")
        return a

    ref = subprocess.run(_script("phase3/run_phase3.py") + with_out("p3ref"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp / "p3kill" / "results"
    state = out / "runs" / "ce-none-s1" / "resume_state.pt"
    proc = subprocess.Popen(_script("phase3/run_phase3.py") + with_out("p3kill"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: state.is_file())
    assert not (out / "inputs.json").exists()  # never taken for a finished run
    _check_intact(out, temporaries_allowed=True)  # a kill mid-write may leave a temporary, never a final name

    again = subprocess.run(_script("phase3/run_phase3.py") + with_out("p3kill") + ["--resume"], capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr
    _check_intact(out)
    assert _tree(out) == _tree(tmp / "p3ref" / "results")
    a = pd.read_csv(tmp / "p3ref" / "results" / "runs.csv")
    b = pd.read_csv(out / "runs.csv")
    assert list(a.columns) == list(b.columns)
    for col in ("accuracy", "weighted_f1", "f1_neutral", "best_epoch"):
        assert b[col].tolist() == pytest.approx(a[col].tolist(), abs=1e-9)
    va = pd.read_csv(tmp / "p3ref" / "results" / "runs" / "ce-none-s1" / "val_predictions.csv", dtype=str)
    vb = pd.read_csv(out / "runs" / "ce-none-s1" / "val_predictions.csv", dtype=str)
    assert va["guid"].tolist() == vb["guid"].tolist() and va["pred"].tolist() == vb["pred"].tolist()


class _SlowVLM:
    def __init__(self, delay: float):
        self.delay = delay
        self.requests = 0
        self.lock = threading.Lock()

    def handler(self):
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with state.lock:
                    state.requests += 1
                time.sleep(state.delay)
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": "A photo of a few objects on a table."}}]})
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


@pytest.fixture()
def vlm():
    state = _SlowVLM(delay=0.25)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_phase4_killed_mid_caption_cache_asks_only_for_the_rest(setup, vlm):
    tmp = setup["tmp"]
    env = {**os.environ, "VLM_API_KEY": KEY}

    def argv(name, cache):
        return _script("phase4/run_phase4.py") + setup["common"] + [
            "--phase3-dir", str(setup["phase3"]), "--captioner", "openai", "--vlm-base-url", vlm.base_url,
            "--vlm-model", "fake-vl", "--vlm-concurrency", "1", "--neutral-threshold", "1.0", "--modes", "extra",
            "--num-epochs", "2", "--caption-cache", str(tmp / cache), "--results-dir", str(tmp / name / "results"),
            "--figures-dir", str(tmp / name / "figures")]

    vlm.delay = 0.0
    ref = subprocess.run(argv("p4ref", "captions_ref"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    hard = pd.read_csv(tmp / "p4ref" / "results" / "captions.csv", dtype=str)
    total = len(hard)
    assert total >= 4 and vlm.requests == total

    vlm.requests, vlm.delay = 0, 0.25
    cache = tmp / "captions_kill" / "openai"
    proc = subprocess.Popen(argv("p4kill", "captions_kill"), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: cache.is_dir() and len(list(cache.glob("*.json"))) >= 2)
    cached = len(list(cache.glob("*.json")))
    assert 2 <= cached < total
    for entry in cache.glob("*.json"):  # every cache entry under a final name is a whole answer
        assert json.loads(entry.read_text())["caption"]
    assert not (tmp / "p4kill" / "results" / "inputs.json").exists()

    vlm.requests, vlm.delay = 0, 0.0
    again = subprocess.run(argv("p4kill", "captions_kill"), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert vlm.requests == total - cached  # only the missing images were asked for
    out = tmp / "p4kill" / "results"
    _check_intact(out)
    assert _tree(out) == _tree(tmp / "p4ref" / "results")
    for name in ("captions.csv", "hard_samples.csv"):
        a = pd.read_csv(tmp / "p4ref" / "results" / name, dtype=str)
        b = pd.read_csv(out / name, dtype=str)
        assert list(a.columns) == list(b.columns) and sorted(a["guid"]) == sorted(b["guid"])
    for folder in (out, tmp / "captions_kill", tmp / "p4kill" / "figures"):  # the key is written nowhere
        for path in folder.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in again.stdout + again.stderr


def test_unchanged_phases_are_skipped_and_a_changed_flag_reruns_its_dependents(setup, tmp_path, capsys):
    # phase 0: same inputs -> skipped, outputs untouched
    cleaned = setup["work"] / "train_cleaned.txt"
    before = cleaned.stat().st_mtime_ns
    assert data_cleaner.main(["--data-root", str(setup["root"]), "--work-dir", str(setup["work"]),
                              "--folds", "0"]) == 0
    assert "up to date" in capsys.readouterr().out and cleaned.stat().st_mtime_ns == before

    # phase 3 with its own results folder: first run computes, the same command skips
    p3 = [a for a in setup["p3_args"]]
    p3[p3.index("--results-dir") + 1] = str(tmp_path / "p3" / "results")
    p3[p3.index("--figures-dir") + 1] = str(tmp_path / "p3" / "figures")
    assert phase3.main(p3) == 0
    capsys.readouterr()
    best = tmp_path / "p3" / "results" / "best.json"
    stamp_before = best.stat().st_mtime_ns
    assert phase3.main(p3) == 0
    assert "phase 3: up to date" in capsys.readouterr().out and best.stat().st_mtime_ns == stamp_before

    p4 = setup["common"] + ["--phase3-dir", str(tmp_path / "p3" / "results"), "--modes", "none", "--num-epochs",
                            "1", "--caption-cache", str(tmp_path / "cap"), "--results-dir", str(tmp_path / "p4"),
                            "--figures-dir", str(tmp_path / "p4f")]
    assert phase4.main(p4) == 0
    capsys.readouterr()
    assert phase4.main(p4) == 0
    assert "phase 4: up to date" in capsys.readouterr().out

    # one phase-3 flag changes: phase 3 recomputes, so phase 4 (which reads its best.json) does too
    assert phase3.main(p3 + ["--learning-rate", "2e-3"]) == 0
    assert "up to date" not in capsys.readouterr().out and best.stat().st_mtime_ns != stamp_before
    assert phase4.main(p4) == 0
    assert "up to date" not in capsys.readouterr().out
    # --force recomputes an up-to-date phase
    assert phase4.main(p4) == 0
    assert "up to date" in capsys.readouterr().out
    assert phase4.main(p4 + ["--force"]) == 0
    assert "up to date" not in capsys.readouterr().out


def test_nothing_is_loaded_with_code_execution():
    """Checkpoints, caches and states are safetensors/JSON or torch.load(weights_only=True); no pickle, no
    remote code."""
    offenders = []
    for path in sorted([*REPO.glob("msa/*.py"), *REPO.glob("phase*/*.py"), *REPO.glob("tasks/**/*.py")]):
        text = path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bpickle\.loads?\(|\bjoblib\.load\(|trust_remote_code\s*=\s*True|allow_pickle\s*=\s*True",
                         code):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert not offenders, offenders
