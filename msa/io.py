"""Crash-safe file output: nothing is ever half-written under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    ``durable``: the data is on disk (fsync) before the rename, so a power cut leaves the old file or the new one.
    ``False`` skips the fsync (~1 ms per file here) for files whose reader checks them and recomputes a bad one,
    such as the feature cache's entries: a crash can then leave an unreadable entry, never a wrong one read as
    right."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _temp_next_to(path: Path) -> Path:
    """A new empty file named like :func:`atomic_path`'s temporaries (``.<name>.<random>.tmp``) next to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system (or OS) can fsync a folder; the renames are done either way
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_files(paths: Iterable[str | os.PathLike]) -> Iterator[list[Path]]:
    """Write several files as one unit: yield a temporary path next to each of ``paths`` (same order).

    When the block returns, every temporary is fsynced, then renamed onto its final name in the order given, so
    put a manifest that records the others' hashes last: it changes only once they all have. If the block
    raises, nothing is renamed. If a rename fails, the files already replaced get their old contents back (from
    hard-link, or copy, backups taken just before the renames). Either way the temporaries are removed and the
    old files stay whole. Only a process killed during the renames themselves can leave a mix, which a reader
    detects by comparing the files with the manifest's hashes. The temporaries and backups are named like
    :func:`atomic_path`'s, so :func:`remove_stale_temps` cleans what a killed writer leaves.
    """
    import shutil

    targets = [Path(p) for p in paths]
    if len({os.path.abspath(t) for t in targets}) != len(targets):
        raise ValueError("atomic_files: the same path is given twice")
    temps: list[Path] = []
    backups: dict[Path, Path | None] = {}  # final path -> backup of its old content (None: it did not exist)
    kept: set[Path] = set()  # backups a failed restore still needs: never deleted
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_temp_next_to(target))
        yield list(temps)
        for tmp in temps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        for target in targets:
            backup = None
            if target.exists():
                backup = _temp_next_to(target)
                try:
                    backup.unlink()
                    os.link(target, backup)  # the old inode stays reachable after the rename
                except OSError:
                    shutil.copy2(target, backup)  # a file system without hard links
            backups[target] = backup
        replaced: list[Path] = []
        try:
            for target, tmp in zip(targets, temps):
                os.replace(tmp, target)
                replaced.append(target)
        except BaseException:
            for target in reversed(replaced):
                backup = backups[target]
                try:
                    if backup is None:
                        target.unlink(missing_ok=True)
                    else:
                        os.replace(backup, target)
                except OSError as exc:
                    if backup is not None:
                        kept.add(backup)
                    warnings.warn(f"could not restore {target} (its old content is in {backup}): {exc}",
                                  RuntimeWarning, stacklevel=3)
            raise
        for folder in dict.fromkeys(t.parent for t in targets):
            _fsync_dir(folder)
    finally:
        for p in [*temps, *(b for b in backups.values() if b is not None and b not in kept)]:
            p.unlink(missing_ok=True)


def remove_stale_temps(folder: str | os.PathLike, dir_prefixes: tuple[str, ...] = ()) -> int:
    """Delete what a killed writer left in ``folder``: :func:`atomic_path` temporaries (``.<name>.*.tmp``) and
    hidden folders starting with one of ``dir_prefixes``. Only for a folder this process alone writes to."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            if entry.is_file() and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
                n += 1
            elif entry.is_dir() and entry.name.startswith(dir_prefixes):
                shutil.rmtree(entry, ignore_errors=True)
                n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj):
    """Typed records (settings, hand-off records) as their ``to_dict()``; anything else (paths) as text."""
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else str(obj)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as UTF-8 CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save ``fig`` atomically; characters the font lacks (CJK in post texts) are drawn as boxes, silently."""
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
