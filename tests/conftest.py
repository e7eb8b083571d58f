"""Shared fixtures: synthetic datasets (clean and with every failure kind) and the real data when present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from msa.synthetic import add_faulty_samples, make_dataset

REPO = Path(__file__).resolve().parents[1]

# The suite checks exact float32 results (sentence-transformers equivalence, resume = uninterrupted run, ...):
# text encoders run in float32 unless a test asks for bf16 (tests/test_backbones.py covers the bf16 path).
os.environ["MSA_TEXT_PRECISION"] = "fp32"

#: the fast tier (`make test-fast`, `pytest -m "not slow"`): unit tests of the library, well under a minute;
#: every other test file runs phases, tasks, the demo or the real data end to end and is marked slow
FAST_FILES = frozenset({
    "test_cli.py", "test_data.py", "test_metrics.py", "test_losses.py", "test_stamp.py", "test_layout.py",
    "test_errors.py", "test_captioning.py", "test_pretrained.py", "test_report.py", "test_features.py",
    "test_registries.py", "test_core.py", "test_splits.py",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name not in FAST_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), n_train=90, n_test=15, seed=0)


@pytest.fixture(scope="session")
def faulty_dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = make_dataset(tmp_path_factory.mktemp("faulty"), n_train=60, n_test=10, seed=3)
    return root, add_faulty_samples(root)


@pytest.fixture()
def faulty_copy(faulty_dataset, tmp_path) -> tuple[Path, dict]:
    root, expect = faulty_dataset
    dst = tmp_path / "data_root"
    shutil.copytree(root, dst)
    return dst, expect


def real_data_root() -> Path | None:
    """``$MSA_REAL_DATA`` (set by `make test DATA=...`) or ../shared/mvsa, when it holds train.txt."""
    for cand in (os.environ.get("MSA_REAL_DATA"), REPO.parent / "shared" / "mvsa"):
        if cand and (Path(cand) / "train.txt").is_file() and (Path(cand) / "data").is_dir():
            return Path(cand).resolve()
    return None


@pytest.fixture(scope="session")
def real_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("the real MVSA data (../shared/mvsa) is not present")
    return root


def assert_refused(call, message: str, capsys) -> None:
    """``call()`` refuses its input clearly: a :class:`msa.cli.UserError` whose text matches ``message``, or an
    argparse usage error (exit status 2) that names it on stderr (flag values checked by their type)."""
    import re

    from msa.cli import UserError

    with pytest.raises((UserError, SystemExit)) as exc:
        call()
    if isinstance(exc.value, SystemExit):
        err = capsys.readouterr().err
        assert exc.value.code == 2 and re.search(message, err), err
    else:
        assert re.search(message, str(exc.value)), str(exc.value)
