"""The shape of the code (issue 22): phases, the final recipe, the tasks and the benchmarks hand off through files
only, so none imports another, and the library imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: top-level packages that are stages or front ends, not library
FRONT_ENDS = ("phase0", "phase1", "phase2", "phase3", "phase4", "phase5", "phase6", "final", "tasks", "benchmarks")


def _owner(path: Path) -> str:
    """What a file belongs to: ``msa``, ``phase3``, ``tasks.trend``, ``benchmarks``."""
    parts = path.relative_to(REPO).parts
    return ".".join(parts[:2]) if parts[0] == "tasks" else parts[0]


def _imports(path: Path, source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source, filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            # "from tasks import trend" names the sub-package in the alias
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "tasks"]
    return found


def _code_files() -> list[Path]:
    folders = ["msa", *(p.name for p in REPO.glob("phase[0-9]")), "final", "tasks", "benchmarks"]
    return sorted(f for d in folders for f in (REPO / d).rglob("*.py") if ".venv" not in f.parts)


def _violations(files: list[Path], read=lambda f: f.read_text(encoding="utf-8")) -> list[str]:
    bad = []
    for f in files:
        owner = _owner(f)
        for line, module in _imports(f, read(f)):
            top = module.split(".")[0]
            if top not in FRONT_ENDS:
                continue
            target = ".".join(module.split(".")[:2]) if top == "tasks" else top
            if target in ("tasks", owner):
                continue
            bad.append(f"{f.relative_to(REPO)}:{line} imports {module}")
    return bad


def test_no_stage_imports_another_and_the_library_imports_none():
    files = _code_files()
    assert len(files) > 40 and _violations(files) == []


@pytest.mark.parametrize("source, message", [
    ("from phase3.run_phase3 import parse_list\n", "phase4/x.py:1 imports phase3.run_phase3"),
    ("import phase4.predict_test\n", "msa/x.py:1 imports phase4.predict_test"),
    ("from tasks.trend import run_trend\n", "tasks/mosi/x.py:1 imports tasks.trend"),
])
def test_the_walk_finds_a_violation(source, message):
    fake = REPO / message.split(":")[0]
    assert _violations([fake], read=lambda _f: source) == [message]
