"""Modality ablation (phase 5): a trained model with one modality replaced, and the recipe to retrain without it.

* :func:`substitute`: a :class:`~msa.features.FeatureSet` whose features of one modality are replaced by zeros or
  by the mean of that modality's training-split features (the pooled vector; for a token modality a single
  mean token with mask True: every fusion here pools token sequences by attention or a masked mean, so one
  token gives the same result as a sequence of that token repeated);
* :func:`only`: a FeatureSet restricted to some modalities (what a unimodal model is trained on);
* :func:`seed_checkpoints`: the checkpoints of every seed behind a phase's best model (``best.json``'s
  ``"seed_runs"``), or the one checkpoint when there are none;
* :func:`recipe_config` / :func:`recipe`: the run config whose recipe a retrain follows (for a fine-tuned model,
  the from-scratch run it started from) and the settings, loss keywords and seeds in it;
* :func:`unimodal_fusion`: the fusion a one-modality model uses (the recipe's own, unless it needs two).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from msa import cli

if TYPE_CHECKING:  # torch where features are replaced: seed_checkpoints serves phase 5's up-to-date check
    from msa.features import FeatureSet

SUBSTITUTES = {"zeros": "zeros", "train_mean": "train mean"}


def substitute(fs: FeatureSet, modality: str, how: str, reference_rows: Sequence[int]) -> FeatureSet:
    """A copy of ``fs`` in which every row's ``modality`` features are ``how``: ``"zeros"`` or ``"train_mean"``
    (the mean over ``reference_rows``, the training split). Other modalities are shared, not copied."""
    import torch

    if modality not in fs.pooled:
        raise ValueError(f"no {modality!r} features to replace; the feature set has {sorted(fs.pooled)}")
    if how not in SUBSTITUTES:
        raise ValueError(f"substitute must be one of {sorted(SUBSTITUTES)}, got {how!r}")
    rows = list(reference_rows)
    if how == "train_mean" and not rows:
        raise ValueError("a mean substitute needs at least one reference (training) row")
    x = fs.pooled[modality]
    n, dim = x.shape
    # nanmean: numeric side features mark a missing value as NaN (msa.side)
    vec = torch.zeros(dim) if how == "zeros" else x[torch.as_tensor(rows)].float().nanmean(dim=0)
    pooled = {**fs.pooled, modality: vec.to(x.dtype).unsqueeze(0).expand(n, dim)}
    tokens = dict(fs.tokens)
    if modality in fs.tokens:
        seqs = fs.tokens[modality]
        tdim = int(seqs[0].shape[1])
        if how == "zeros":
            tok = torch.zeros(1, tdim)
        else:
            tok = torch.cat([seqs[i].float() for i in rows]).mean(dim=0, keepdim=True)
        tokens[modality] = [tok] * len(seqs)
    return dataclasses.replace(fs, pooled=pooled, tokens=tokens, stats={})


def only(fs: FeatureSet, modalities: Sequence[str]) -> FeatureSet:
    """``fs`` restricted to ``modalities`` (pooled vectors, token sequences and backbone records)."""
    missing = [m for m in modalities if m not in fs.pooled]
    if missing:
        raise ValueError(f"no features for {missing}; the feature set has {sorted(fs.pooled)}")
    return dataclasses.replace(fs, pooled={m: fs.pooled[m] for m in modalities},
                               tokens={m: t for m, t in fs.tokens.items() if m in modalities},
                               backbones={m: b for m, b in fs.backbones.items() if m in modalities}, stats={})


def unimodal_fusion(fusion: str) -> str:
    """``fusion`` when it works with a single modality, else ``concat`` (e.g. ``cross_attention`` needs two)."""
    from msa.fusions import FUSIONS

    cls = FUSIONS[fusion]
    return fusion if getattr(cls, "min_modalities", 1) <= 1 else "concat"


# ------------------------------------------------------------------------------------ the model's own phase
def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise cli.UserError(f"{what} {path} could not be read as JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise cli.UserError(f"{what} {path} is not a JSON object")
    return obj


def _as_checkpoint(path: Path) -> Path:
    """A run folder or a checkpoint folder -> the checkpoint folder."""
    return path if (path / "model.safetensors").is_file() else path / "checkpoint"


def seed_checkpoints(checkpoint: Path) -> tuple[list[Path], Path | None]:
    """The checkpoints to evaluate and the ``best.json`` that listed them (``None``: just ``checkpoint``).

    When ``checkpoint`` is ``<phase>/results/<best>/checkpoint`` and ``<phase>/results/best.json`` describes it
    and has ``"seed_runs"`` (run folders, each with ``checkpoint/``; absolute, or relative to the working
    directory, to best.json's folder or to the repository), those are the checkpoints, one per seed."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent
    best_json = run_dir.parent / "best.json"
    if not best_json.is_file():
        return [checkpoint], None
    best = _read_json(best_json, "best.json")
    here = run_dir.name == "best"
    for key, target in (("checkpoint", checkpoint), ("copied_to", run_dir)):
        if best.get(key) and Path(best[key]).resolve() == target.resolve():
            here = True
    runs = best.get("seed_runs")
    if not here or not runs:
        return [checkpoint], best_json if here else None
    if not isinstance(runs, list):
        raise cli.UserError(f"{best_json}: 'seed_runs' must be a list of run folders, got {type(runs).__name__}")
    found: list[Path] = []
    for entry in runs:
        name = (entry.get("run_dir") or entry.get("path")) if isinstance(entry, dict) else entry
        if not isinstance(name, str) or not name:
            raise cli.UserError(f"{best_json}: seed_runs entry {entry!r} is not a run folder path")
        p = Path(name)
        cands = [p] if p.is_absolute() else [p, best_json.parent / p, cli.REPO_ROOT / p]
        hit = next((_as_checkpoint(c) for c in cands if (_as_checkpoint(c) / "model.safetensors").is_file()), None)
        if hit is None:
            raise cli.UserError(f"{best_json}: seed run {name} has no checkpoint/model.safetensors (looked in "
                                f"{', '.join(str(c) for c in cands)})")
        found.append(hit)
    return found, best_json


def run_config(checkpoint: Path) -> tuple[dict | None, Path]:
    """The run folder's ``config.json`` next to ``checkpoint`` (``None`` when the folder has none)."""
    path = Path(checkpoint).parent / "config.json"
    return (_read_json(path, "run config") if path.is_file() else None), path


def recipe_config(checkpoint: Path) -> tuple[dict | None, Path, list[str]]:
    """The run config a from-scratch retrain of ``checkpoint``'s model follows, its path, and notes.

    That is the ``config.json`` of the checkpoint's run folder; for a model fine-tuned from another checkpoint
    (its config names ``init_from``, e.g. phase 4 starting from phase 3), the config of the run at the start of
    that chain, whose schedule trained the weights from scratch (a fine-tuning schedule, a few epochs at a
    reduced learning rate without warm-up, would under-train a new model)."""
    config, path = run_config(checkpoint)
    notes: list[str] = []
    seen = {path.resolve()}
    while config is not None and config.get("init_from"):
        start = Path(config["init_from"])
        parent, parent_path = run_config(start)
        if parent is None or parent_path.resolve() in seen:
            break  # recipe() says that this fine-tuning recipe is then used from scratch
        notes.append(f"`{path}` fine-tuned `{start}`: the retrained models follow the from-scratch recipe of "
                     f"`{parent_path}`; the fine-tuning stage (its schedule and any extra training data it used) is "
                     "not reproduced")
        seen.add(parent_path.resolve())
        config, path = parent, parent_path
    return config, path, notes


def recipe(config: dict, checkpoint_config: dict | None = None) -> dict:
    """How a run was trained, from its ``config.json``: ``settings`` (as :func:`msa.settings.resolve` returns
    them, with ``feature_fusion``, ``loss_type`` and ``sampler`` as trained), ``loss_kw``, ``mixed_precision``,
    ``seeds`` (the phase's ``--seeds``, or ``None``) and ``notes`` (what a retrain cannot reproduce).

    Sources, later wins: built-in defaults, the recorded ``settings`` (in a run folder written before they were
    recorded: ``arguments.resolved``), ``train`` (optimiser, schedule, epochs, sampler as used), ``fusion`` /
    ``loss``, and the checkpoint's ``hidden`` / ``dropout``."""
    from msa.fusions import FUSIONS
    from msa.losses import LOSSES
    from msa.settings import Settings, parse_seeds

    if not isinstance(config.get("train"), dict) or "fusion" not in config or "loss" not in config:
        raise cli.UserError("the run config has no 'train', 'fusion' and 'loss' entries: it was not written by "
                            "msa.experiment.train_run, so the recipe is unknown")
    if config["fusion"] not in FUSIONS or config["loss"] not in LOSSES:
        raise cli.UserError(f"the run config names fusion {config['fusion']!r} and loss {config['loss']!r}; "
                            f"this version knows fusions {sorted(FUSIONS)} and losses {sorted(LOSSES)}")
    args = config.get("arguments") if isinstance(config.get("arguments"), dict) else {}
    train = config["train"]
    # the resolved settings (recorded since settings are typed; older run folders: the phase's resolved
    # arguments), then the trainer's record of what it used
    recorded = config.get("settings") if isinstance(config.get("settings"), dict) else args.get("resolved")
    layers = [recorded if isinstance(recorded, dict) else {},
              {k: train[k] for k in ("learning_rate", "weight_decay", "num_epochs", "batch_size", "warmup_ratio",
                                     "scheduler", "patience", "sampler") if k in train}]
    merged = {k: v for layer in layers for k, v in layer.items()}
    s = Settings.from_dict({**merged, "feature_fusion": config["fusion"], "loss_type": config["loss"]},
                           "the run config", strict=False)
    model = (checkpoint_config or {}).get("model") or {}
    s = s.replace("the checkpoint", **{k: model[k] for k in ("hidden", "dropout") if k in model})
    notes = []
    extra = {k: v for k, v in model.items() if k not in ("specs", "fusion", "num_outputs", "hidden", "dropout")}
    if extra:
        notes.append(f"fusion keywords {extra} of the checkpoint are not reproduced (retrained models use the "
                     "fusion's defaults)")
    if config.get("init_from"):
        notes.append(f"this recipe fine-tuned {config['init_from']} (whose run config is not available); the "
                     "retrained models use it from scratch")
    seeds = None
    if args.get("seeds") not in (None, ""):
        try:
            seeds = parse_seeds(args["seeds"])
        except cli.UserError:
            seeds = None
    return {"settings": s, "loss_kw": dict(config.get("loss_kw") or {}),
            "mixed_precision": train.get("mixed_precision", "no"), "seeds": seeds, "notes": notes}
