"""Incremental re-runs: a phase records the hashes of its inputs when it finishes, and skips when they match.

A phase calls :func:`inputs_of` with what determines its outputs (its arguments, the files it reads, the code it
runs), then :func:`check` at the start: up to date means the stamp file exists and records the same inputs.
Otherwise it removes the stamp *before* writing anything (so a run killed halfway is never mistaken for a
finished one) and writes it with :func:`write` as its very last step. ``--force`` skips the check.
Stamps are named ``inputs*.json`` and live next to the phase's results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from msa.io import file_sha256, write_json

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: arguments that never change what a phase computes
VOLATILE_ARGS = ("verbose", "force", "resume", "jobs", "cache_dir", "caption_cache", "feature_batch_size",
                 "batch_size_features", "progress")


#: environment variables that change what a phase computes (msa.backbones.PRECISION_ENV: the text encoders'
#: precision; msa.trainer.MIXED_PRECISION_ENV: the heads'); recorded in every stamp when set, so that e.g.
#: MSA_TEXT_PRECISION=fp32 make run recomputes
RESULT_ENV = ("MSA_TEXT_PRECISION", "MSA_MIXED_PRECISION")


#: library modules that cannot change what a phase computes (the report reads results, stamps are bookkeeping,
#: the demo only runs the phases)
NOT_RESULTS = ("report.py", "stamp.py", "demo.py")


def code_sha256(*paths: str | Path) -> str:
    """One hash over the shared library (less :data:`NOT_RESULTS`) and the given scripts/folders (``*.py``)."""
    h = hashlib.sha256()
    files: list[Path] = sorted(f for f in (REPO_ROOT / "msa").glob("*.py") if f.name not in NOT_RESULTS)
    for p in paths:
        p = Path(p)
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def inputs_of(args: Mapping | object, files: Iterable[str | Path] = (), code: Iterable[str | Path] = (),
              extra: Mapping | None = None, ignore: Iterable[str] = ()) -> dict:
    """The inputs of a phase: its arguments (less the volatile ones), the sha256 of each file (``None`` when
    missing), the code hash, and anything else in ``extra``."""
    from msa.cli import args_record

    raw = args_record(dict(vars(args)) if not isinstance(args, Mapping) else dict(args))  # no secret in a stamp
    skip = set(VOLATILE_ARGS) | set(ignore)
    arguments = {k: _jsonable(v) for k, v in sorted(raw.items()) if k not in skip}
    hashed = {}
    for f in files:
        f = Path(f)
        hashed[str(f)] = file_sha256(f) if f.is_file() else None
    env = {k: os.environ[k] for k in RESULT_ENV if os.environ.get(k)}
    return {"arguments": arguments, "files": hashed, "code": code_sha256(*code),
            **({"extra": _jsonable(dict(extra))} if extra else {}), **({"environment": env} if env else {})}


def check(path: str | Path, inputs: dict, force: bool = False, what: str = "this phase") -> bool:
    """True when the stamp ``path`` records a finished run of exactly these inputs whose recorded outputs are
    still there unchanged (and not ``force``). Otherwise the stamp is removed and False returned: the caller
    recomputes and calls :func:`write` at the end."""
    path = Path(path)
    if not force and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        outputs_ok = isinstance(old, dict) and all(
            Path(f).is_file() and file_sha256(f) == sha for f, sha in (old.get("outputs") or {}).items())
        if isinstance(old, dict) and old.get("inputs") == _jsonable(inputs) and not outputs_ok:
            log.info("%s: an output recorded in %s is missing or changed: recomputing", what, path)
        elif isinstance(old, dict) and old.get("inputs") == _jsonable(inputs):
            log.info("%s is up to date (inputs unchanged since %s): nothing to do; --force recomputes", what, path)
            return True
        elif isinstance(old, dict):
            log.info("%s: inputs changed since the last run (%s): recomputing", what, ", ".join(
                _changed(old.get("inputs") or {}, _jsonable(inputs))) or "format")
    path.unlink(missing_ok=True)
    return False


def _changed(old: dict, new: dict) -> list[str]:
    if not isinstance(old, dict):
        return ["stamp format"]
    out = []
    for section, what in (("arguments", "argument"), ("files", "file"), ("extra", "extra"),
                          ("environment", "environment variable")):
        a, b = old.get(section) or {}, new.get(section) or {}
        if not isinstance(a, dict):
            a = {}
        out += [f"{what} {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if old.get("code") != new.get("code"):
        out.append("code")
    return out[:6]


def write(path: str | Path, inputs: dict, outputs: Iterable[str | Path] = ()) -> Path:
    """Record ``inputs`` (and the sha256 of the main outputs) in the stamp ``path``: a finished run's last step."""
    outs = {str(p): file_sha256(p) for p in map(Path, outputs) if p.is_file()}
    return write_json(Path(path), {"inputs": _jsonable(inputs), "outputs": outs,
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def listing_digest(folder: str | Path) -> str:
    """A cheap fingerprint of a folder's files: names, sizes and modification times (no content read)."""
    h = hashlib.sha256()
    folder = Path(folder)
    if folder.is_dir():
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:  # a symlink loop or a dangling name: listed as such, read by nobody
                h.update(f"{entry.name}\0unreadable\n".encode())
                continue
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def add_force_arg(p) -> None:
    p.add_argument("--force", action="store_true",
                   help="recompute even when the outputs are up to date with the inputs (arguments, input files, "
                        "code) recorded by the last finished run")


def phase0_files(work_dir: str | Path, split: str) -> list[Path]:
    """The phase-0 outputs every training phase depends on: manifest, cleaned index, the split file."""
    from msa.splits import split_path

    work_dir = Path(work_dir)
    return [work_dir / "phase0_manifest.json", work_dir / "train_cleaned.txt", split_path(work_dir, split)]
