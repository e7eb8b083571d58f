"""Run folders and checkpoints: self-describing, safe to load, never half-written.

A run folder ``phaseN/results/<run>/`` holds ``config.json`` (resolved arguments, backbones, label map,
split file and hash, seed), ``history.csv``, ``metrics.json``, ``val_predictions.csv`` and
``checkpoint/model.safetensors`` + ``checkpoint/config.json``. The checkpoint folder alone rebuilds the model:
its config names the model architecture, the labels and the backbones whose features it was trained on.
Checkpoints are written to a temporary folder and renamed into place, so a crash never leaves a partial
checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from msa.cli import UserError
from msa.io import write_json

if TYPE_CHECKING:  # torch and safetensors are imported by the functions that read or write weights:
    import torch  # read_checkpoint_config serves the up-to-date checks, which answer without torch

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LOSS_FILE = "loss.safetensors"


def save_checkpoint(directory: str | Path, model: torch.nn.Module, config: dict,
                    loss_fn: torch.nn.Module | None = None) -> Path:
    """Write ``model``'s weights and ``config`` (must include ``model``: the constructor arguments) atomically.

    A loss with state (ACB's running per-class difficulty) is saved beside it as ``loss.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": str(CHECKPOINT_FORMAT)})
        loss_state = {k: v.detach().cpu().contiguous() for k, v in (loss_fn.state_dict() if loss_fn else {}).items()}
        if loss_state:
            save_file(loss_state, str(tmp / LOSS_FILE))
        write_json(tmp / CONFIG_FILE, {"format": CHECKPOINT_FORMAT, **config})
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_checkpoint_config(directory: str | Path) -> dict:
    directory = Path(directory)
    missing = [n for n in (MODEL_FILE, CONFIG_FILE) if not (directory / n).is_file()]
    if not directory.is_dir() or missing:
        raise UserError(f"checkpoint folder {directory} is missing or incomplete (lacks {', '.join(missing) or 'all'}):"
                        " train a model first (python phase1/main.py) or pass --checkpoint DIR")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from None
    if config.get("format") != CHECKPOINT_FORMAT or "model" not in config:
        raise UserError(f"{directory} is not a checkpoint of this project (format {config.get('format')!r})")
    return config


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from its folder alone; returns ``(model in eval mode, config)``."""
    from safetensors.torch import load_file

    from msa.fusions import MultimodalClassifier

    directory = Path(directory)
    config = read_checkpoint_config(directory)
    model = MultimodalClassifier(**config["model"])
    try:
        state = load_file(str(directory / MODEL_FILE), device=map_location)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing condition
        raise UserError(f"{directory / MODEL_FILE} could not be loaded: {exc}") from None
    model.eval()
    return model, config


def load_loss_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """The saved loss state of a checkpoint (empty when its loss had none)."""
    from safetensors.torch import load_file

    path = Path(directory) / LOSS_FILE
    return load_file(str(path)) if path.is_file() else {}


def copy_run_dir(src: str | Path, dst: str | Path, names: Sequence[str] | None = None) -> Path:
    """Copy a run folder to ``dst`` atomically (temporary copy, then rename over the old one); ``dst/SOURCE``
    names where it came from. ``names``: only these entries of ``src`` (e.g. a light run's files), not all."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if names is None:
        shutil.copytree(src, tmp)
    else:
        tmp.mkdir(parents=True)
        for name in names:
            shutil.copy2(src / name, tmp / name)
    (tmp / "SOURCE").write_text(f"{src.resolve()}\n", encoding="utf-8")
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst
