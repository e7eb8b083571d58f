"""Input stamps for incremental re-runs: up to date only with the same arguments, input files, code and outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from msa import stamp


def _inputs(tmp_path: Path, **args):
    return stamp.inputs_of(Namespace(**{"lr": 0.1, "verbose": False, "jobs": 2, **args}),
                           files=[tmp_path / "in.txt"], code=[])


def test_stamp_cycle(tmp_path):
    (tmp_path / "in.txt").write_text("a")
    out = tmp_path / "out.txt"
    path = tmp_path / "inputs.json"
    inputs = _inputs(tmp_path)
    assert not stamp.check(path, inputs)  # never run
    out.write_text("result")
    stamp.write(path, inputs, [out])
    assert stamp.check(path, _inputs(tmp_path))
    assert stamp.check(path, _inputs(tmp_path, verbose=True, jobs=1))  # volatile arguments do not count
    assert not stamp.check(path, inputs, force=True)
    assert not path.exists()  # a forced or stale run removes the stamp before recomputing


def test_changed_argument_file_or_output_recomputes(tmp_path):
    (tmp_path / "in.txt").write_text("a")
    out = tmp_path / "out.txt"
    out.write_text("result")
    path = tmp_path / "inputs.json"
    stamp.write(path, _inputs(tmp_path), [out])
    assert not stamp.check(path, _inputs(tmp_path, lr=0.2))

    stamp.write(path, _inputs(tmp_path), [out])
    (tmp_path / "in.txt").write_text("b")
    assert not stamp.check(path, _inputs(tmp_path))

    stamp.write(path, _inputs(tmp_path), [out])
    out.write_text("tampered")
    assert not stamp.check(path, _inputs(tmp_path))

    stamp.write(path, _inputs(tmp_path), [out])
    out.unlink()
    assert not stamp.check(path, _inputs(tmp_path))


def test_a_corrupt_stamp_means_recompute(tmp_path):
    (tmp_path / "in.txt").write_text("a")
    path = tmp_path / "inputs.json"
    path.write_text("{not json")
    assert not stamp.check(path, _inputs(tmp_path))
    stamp.write(path, _inputs(tmp_path))
    assert json.loads(path.read_text())["inputs"]["files"][str(tmp_path / "in.txt")]


def test_code_hash_follows_the_library(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("x = 1\n")
    a = stamp.code_sha256(script)
    script.write_text("x = 2\n")
    assert stamp.code_sha256(script) != a


def test_listing_digest_sees_added_and_resized_files(tmp_path):
    (tmp_path / "1.txt").write_text("a")
    a = stamp.listing_digest(tmp_path)
    (tmp_path / "2.txt").write_text("b")
    b = stamp.listing_digest(tmp_path)
    (tmp_path / "2.txt").write_text("bb")
    assert len({a, b, stamp.listing_digest(tmp_path)}) == 3


def test_a_result_changing_environment_variable_recomputes(tmp_path, monkeypatch):
    from msa.backbones import PRECISION_ENV
    from msa.trainer import MIXED_PRECISION_ENV

    assert PRECISION_ENV in stamp.RESULT_ENV and MIXED_PRECISION_ENV in stamp.RESULT_ENV
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    path = tmp_path / "inputs.json"
    plain = _inputs(tmp_path)
    stamp.write(path, plain)
    assert stamp.check(path, _inputs(tmp_path))
    monkeypatch.setenv(PRECISION_ENV, "fp32")  # e.g. MSA_TEXT_PRECISION=fp32 make run: other features
    changed = _inputs(tmp_path)
    assert changed["environment"] == {PRECISION_ENV: "fp32"}
    assert not stamp.check(path, changed)
    stamp.write(path, changed)
    assert stamp.check(path, _inputs(tmp_path))


HEAVY = ("torch", "sklearn", "optuna", "matplotlib", "transformers", "onnxruntime")


@pytest.mark.parametrize("module", ["phase0.data_cleaner", "phase0.data_analysis", "phase1.main", "phase2.run_phase2",
                                    "phase2.search_hyperparam", "phase3.run_phase3", "phase4.run_phase4",
                                    "phase5.run_phase5", "phase6.run_phase6", "final.run_final",
                                    "phase4.predict_test"])
def test_a_stage_parses_its_flags_without_the_heavy_libraries(module):
    """The up-to-date answer of a stage comes after its flags are parsed: building the parser (choices and help
    read from the registries lazily, msa.config.LazyChoices) must not import torch, sklearn, optuna..."""
    code = (f"import sys, importlib; m = importlib.import_module({module!r}); m.build_parser().parse_args([]); "
            f"print(','.join(x for x in {HEAVY!r} if x in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=stamp.REPO_ROOT,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = set(filter(None, res.stdout.strip().split(",")))
    assert not loaded, (module, loaded)
