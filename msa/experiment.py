"""One training run from resolved settings to a self-describing run folder; shared by every training phase.

:func:`load_labelled` reads phase 0's cleaned index and persisted split, :func:`labelled_features` gets the
cached features, :func:`train_run` trains one seed and writes ``config.json``, ``history.csv``,
``metrics.json``, ``val_predictions.csv``, ``checkpoint/`` and its figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from msa import cli
from msa.data import LABEL2ID, LABELS, read_index
from msa.features import DEFAULT_CACHE_DIR, TEXT_NORMALISATION, FeatureSet, extract_features
from msa.io import write_csv, write_json
from msa.records import RunFolder
from msa.splits import Split, load_split

log = logging.getLogger(__name__)


@dataclass
class Labelled:
    guids: list[str]
    labels: np.ndarray  # int ids in LABELS order
    split: Split
    train_idx: list[int]
    val_idx: list[int]


def load_labelled(work_dir: Path, split_name: str = "default") -> Labelled:
    cleaned = work_dir / "train_cleaned.txt"
    if not cleaned.is_file():
        raise cli.UserError(f"{cleaned} not found: run phase 0 first (python phase0/data_cleaner.py --data-root DATA)")
    index = read_index(cleaned)
    split = load_split(work_dir, split_name)
    check_phase0_set(work_dir, split)
    side = split.frame.set_index("guid")["split"].to_dict()
    unknown = [g for g in index.guids if g not in side]
    if unknown:
        raise cli.UserError(f"{len(unknown)} cleaned guids (e.g. {unknown[0]}) are not in split {split.path}: "
                            "rerun phase 0 with --force so the split matches the cleaned index")
    guids = index.guids
    labels = np.array([LABEL2ID[t] for t in index.rows["tag"]])
    train_idx = [i for i, g in enumerate(guids) if side[g] == "train"]
    val_idx = [i for i, g in enumerate(guids) if side[g] == "val"]
    return Labelled(guids, labels, split, train_idx, val_idx)


def check_phase0_set(work_dir: Path, split: Split) -> None:
    """The cleaned index and the split must be the ones phase 0's manifest recorded together: a set mixed from two
    runs (one killed or refused halfway, or files copied by hand) is an error, not a model trained on the mix."""
    from msa.io import file_sha256

    manifest_path = Path(work_dir) / "phase0_manifest.json"
    if not manifest_path.is_file():
        log.warning("%s not found: cannot check that train_cleaned.txt and %s come from one phase-0 run",
                    manifest_path, split.path.name)
        return
    import json

    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise cli.UserError(f"{manifest_path} cannot be read ({exc}): rerun phase 0") from None
    if not isinstance(manifest, dict):
        raise cli.UserError(f"{manifest_path} is not phase 0's manifest (not a JSON object): rerun phase 0")
    rerun = "rerun phase 0 (python phase0/data_cleaner.py --data-root DATA) so that they match"
    want = manifest.get("train_cleaned_sha256")
    cleaned = Path(work_dir) / "train_cleaned.txt"
    if want and file_sha256(cleaned) != want:
        raise cli.UserError(f"{cleaned} is not the file {manifest_path.name} recorded (another phase-0 run, or "
                            f"edited): {rerun}")
    want = (manifest.get("splits") or {}).get(split.name)
    if want and split.sha256 != want:
        raise cli.UserError(f"{split.path} is not the split {manifest_path.name} recorded (another phase-0 run, or "
                            f"edited): {rerun}")


def token_modalities(fusion: str) -> list[str]:
    """Modalities whose token sequences a fusion needs. ``cross_attention`` (seed 002) lets the pooled image
    vector query the text tokens, so only text sequences are needed (image patches would cost ~10x the time)."""
    from msa.fusions import FUSIONS

    return ["text"] if getattr(FUSIONS[fusion], "requires_tokens", False) else []


def load_backbones(text: str | None, image: str | None, text_pooling: str | None = None,
                   cache_dir: Path | None = None):
    """The frozen text and image backbones (None where a name is None). With the feature cache ``cache_dir``,
    backbones it has seen before load only when a feature has to be computed (:func:`msa.backbones.cached_backbone`):
    a stage whose features are all cached loads no weights."""
    from msa.backbones import cached_backbone, image_backbone, text_backbone

    if cache_dir is not None:
        return ((cached_backbone("text", text, cache_dir, pooling=text_pooling) if text else None),
                (cached_backbone("image", image, cache_dir) if image else None))
    return (text_backbone(text, text_pooling) if text else None), (image_backbone(image) if image else None)


def labelled_features(data_dir: Path, guids: list[str], text_bb, image_bb, cache_dir: Path = DEFAULT_CACHE_DIR,
                      tokens: bool | list[str] = False, batch_size: int = 32, side: str | list[str] | None = None
                      ) -> FeatureSet:
    """Cached backbone features of ``guids``, plus the numeric side features ``side`` (:mod:`msa.side`) as
    ``pooled["side"]`` when given."""
    from msa import side as side_mod

    fs = extract_features(guids, data_dir, text_bb, image_bb, cache_dir, tokens=tokens, batch_size=batch_size)
    for m, s in fs.stats.items():
        if s.get("members"):  # a backbone group: each member has its own cache entries
            log.info("%s features: %s of %d computed, rest from cache %s", m,
                     " + ".join(f"{n} {c}" for n, c in s["members"].items()), s["total"], cache_dir)
        else:
            log.info("%s features: %d of %d computed, rest from cache %s", m, s["computed"], s["total"], cache_dir)
    return side_mod.attach(fs, side_mod.compute(side, guids, data_dir, cache_dir))


def train_run(run_dir: Path, fs: FeatureSet, data: Labelled, *, fusion: str, loss: str, train_cfg, hidden: int,
              dropout: float, args_record: dict, loss_kw: dict | None = None, progress: bool = True,
              light: bool = False, init_from: Path | None = None, resume: bool = False, settings=None,
              on_epoch=None, same_as: Path | Sequence[Path] | None = None) -> dict:
    """Train one model and write its run folder; returns the fit result plus ``metrics``.

    ``on_epoch(row)`` is called after every epoch with its history row (a search's pruning: it may raise).

    ``init_from`` (a checkpoint folder) fine-tunes that model, and its loss state, instead of a new one; its
    architecture must fit these features (the fusion and hidden arguments are then taken from it).

    ``light`` (searches): no checkpoint and no figures, only config, history, metrics and predictions.

    ``resume`` continues an interrupted run from its last epoch state (``resume_state.pt``) when it has one.

    ``settings`` (the run's resolved :class:`msa.settings.Settings`) is recorded in ``config.json`` as
    ``settings``, with the fusion and loss as trained, so that the run can be rebuilt from it
    (:func:`msa.ablation.recipe`).

    ``same_as`` (a finished run folder, e.g. another phase's run of the same recipe and seed, or several to try
    in order): when its ``config.json`` equals this run's in everything but the arguments (the same settings, loss,
    seed, split, rows and features), it is copied here instead of trained again (:func:`reuse_run`); otherwise
    this run trains."""
    from msa.fusions import SIDE
    from msa.losses import build_loss
    from msa.trainer import FeatureDataset, fit, seed_everything

    t0 = time.time()
    token_mods = [m for m in token_modalities(fusion) if m in fs.tokens]
    side_record = fs.backbones.get(SIDE) if SIDE in fs.pooled else None
    seed_everything(train_cfg.seed)
    counts = np.bincount(data.labels[data.train_idx], minlength=len(LABELS)).tolist()
    loss_fn = build_loss(loss, class_counts=counts, **(loss_kw or {}))
    model, fusion = _build_model(fs, data, fusion, token_mods, hidden, dropout, side_record, init_from, loss_fn)
    inputs = model.input_names
    train_ds = FeatureDataset(fs, data.train_idx, data.labels[data.train_idx], inputs, token_mods)
    val_ds = FeatureDataset(fs, data.val_idx, data.labels[data.val_idx], inputs, token_mods)
    config, ckpt_config = _run_configs(fs, data, model, fusion, loss, loss_kw, train_cfg, args_record, counts,
                                       token_mods, side_record, init_from, settings)
    folder = RunFolder(run_dir)
    if same_as is not None and init_from is None and not (resume and folder.resume_state.exists()):
        for src in ([same_as] if isinstance(same_as, (str, Path)) else same_as):
            reused = reuse_run(Path(src), run_dir, config, light)
            if reused is not None:
                return reused
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(folder.config, config)
    result = fit(model, loss_fn, train_ds, val_ds, train_cfg, LABELS, run_dir=run_dir,
                 checkpoint_config=None if light else ckpt_config, progress=progress, resume=resume,
                 on_epoch=on_epoch)
    metrics = dict(result["best_metrics"] or {})
    metrics.update(best_epoch=result["best_epoch"], epochs_run=len(result["history"]),
                   seconds=round(time.time() - t0, 2))
    _write_outputs(folder, fs, data, result, metrics, light)
    result["metrics"] = metrics
    return result


def reuse_run(src: Path, run_dir: Path, config: dict, light: bool = False) -> dict | None:
    """``src`` copied to ``run_dir`` when it is a finished run (metrics, predictions, history and, unless ``light``,
    a checkpoint; no resume state left) whose ``config.json`` equals ``config`` but for ``arguments``: the same
    training, so the same weights and metrics (training is deterministic on the CPU). ``run_dir`` then gets this
    run's ``config.json`` with ``same_as`` naming ``src``, and ``SOURCE``; the figures are drawn again under this
    run's name. A ``light`` run (a search's: no checkpoint, no figures) copies only config, metrics, history and
    predictions. Returns ``{"metrics": ..., "history": ..., "best_epoch": ..., "same_as": str(src)}``, or ``None``
    (train instead) when ``src`` is not such a run."""
    import json

    from msa.checkpoint import copy_run_dir
    from msa.io import _json_default

    sf = RunFolder(Path(src))
    light_files = [sf.config, sf.metrics, sf.history, sf.val_predictions]
    needed = light_files + ([] if light else [sf.checkpoint])
    if not all(f.exists() for f in needed) or sf.resume_state.exists():
        return None
    try:
        theirs = json.loads(sf.config.read_text(encoding="utf-8"))
        metrics = json.loads(sf.metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = json.loads(json.dumps(config, default=_json_default))  # as write_json writes it
    if not isinstance(theirs, dict) or {k: v for k, v in theirs.items() if k != "arguments"} != \
            {k: v for k, v in ours.items() if k != "arguments"}:
        return None
    copy_run_dir(sf.root, run_dir, names=[f.name for f in light_files] if light else None)
    folder = RunFolder(run_dir)
    write_json(folder.config, {**config, "same_as": str(sf.root)})
    history = pd.read_csv(folder.history).to_dict(orient="records")
    if not light:
        _draw_figures(folder, history, metrics)
    log.info("%s: the same run as %s, copied (not trained again)", run_dir, sf.root)
    return {"metrics": metrics, "history": history, "best_epoch": metrics.get("best_epoch"), "same_as": str(sf.root)}


def finished_runs(folder: Path | None) -> dict[tuple[str, int], list[Path]]:
    """The run folders directly under ``folder`` (e.g. phase 1's results) by ``(fusion, seed)`` as their
    ``config.json`` records them: the candidates another stage's run of the same fusion and seed may be a copy of
    (:func:`reuse_run` decides, from the whole config). Only small JSON files are read; a folder that is missing
    or holds no runs gives ``{}``."""
    import json

    found: dict[tuple[str, int], list[Path]] = {}
    if folder is None or not Path(folder).is_dir():
        return found
    for config in sorted(Path(folder).glob("*/config.json")):
        try:
            c = json.loads(config.read_text(encoding="utf-8"))
            key = (str(c["fusion"]), int(c["train"]["seed"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.setdefault(key, []).append(config.parent)
    return found


def _build_model(fs: FeatureSet, data: Labelled, fusion: str, token_mods: list[str], hidden: int, dropout: float,
                 side_record: dict | None, init_from: Path | None, loss_fn):
    """A new classifier for these features, or (``init_from``) the checkpoint's, checked against them, with its
    loss state loaded into ``loss_fn``; returns ``(model, fusion as built)``."""
    from msa.fusions import SIDE, ModalitySpec, MultimodalClassifier, SideBranch

    modalities = [m for m in fs.pooled if m != SIDE]
    specs = [ModalitySpec(m, int(fs.pooled[m].shape[1]), m in token_mods) for m in modalities]
    if init_from is None:
        # imputation and standardisation of the side features: fitted on the training rows only
        side_stats = (SideBranch.fit(fs.pooled[SIDE][data.train_idx], side_record["columns"])
                      if side_record else None)
        return MultimodalClassifier(specs, fusion, num_outputs=len(LABELS), hidden=hidden, dropout=dropout,
                                    side=side_stats), fusion
    from msa.checkpoint import load_checkpoint, load_loss_state

    model, start = load_checkpoint(init_from)
    have = [(s["name"], int(s["dim"])) for s in start["model"]["specs"]]
    if have != [(s.name, s.dim) for s in specs]:
        raise cli.UserError(f"checkpoint {init_from} expects modalities {have}, the features give "
                            f"{[(s.name, s.dim) for s in specs]}")
    have_side = (start["model"].get("side") or {}).get("columns")
    want_side = side_record["columns"] if side_record else None
    if have_side != want_side:
        raise cli.UserError(f"checkpoint {init_from} was trained with side-feature columns {have_side}, the "
                            f"features give {want_side}: use the checkpoint's --side-features")
    state = load_loss_state(init_from)
    if state:
        loss_fn.load_state_dict(state, strict=False)
    return model, start["model"]["fusion"]


def _run_configs(fs, data, model, fusion, loss, loss_kw, train_cfg, args_record, counts, token_mods, side_record,
                 init_from, settings) -> tuple[dict, dict]:
    """The run folder's ``config.json`` and the checkpoint's config."""
    import torch

    config = {
        "arguments": args_record, "train": train_cfg.as_dict(), "fusion": fusion, "loss": loss,
        "loss_kw": loss_kw or {}, "labels": list(LABELS), "label2id": LABEL2ID,
        "split": {"name": data.split.name, "path": str(data.split.path), "sha256": data.split.sha256,
                  "train": len(data.train_idx), "val": len(data.val_idx)},
        "backbones": fs.backbones, "text_normalisation": TEXT_NORMALISATION, "seed": train_cfg.seed,
        "train_class_counts": counts, "torch": torch.__version__,
        "init_from": str(init_from) if init_from is not None else None,
        "side_features": side_record,
    }
    if settings is not None:
        config["settings"] = {**settings, "feature_fusion": fusion, "loss_type": loss}
    ckpt_config = {"model": model.config(), "labels": list(LABELS), "backbones": fs.backbones,
                   "text_normalisation": TEXT_NORMALISATION, "token_modalities": token_mods,
                   "side_features": side_record,
                   "loss": {"name": loss, "kw": loss_kw or {}, "class_counts": counts}}
    return config, ckpt_config


def _write_outputs(folder: RunFolder, fs: FeatureSet, data: Labelled, result: dict, metrics: dict,
                   light: bool) -> None:
    """metrics.json, val_predictions.csv and (unless ``light``) the run's figures."""
    write_json(folder.metrics, metrics)
    proba, index = result["val_proba"], result["val_index"]
    preds = pd.DataFrame({"guid": [fs.guids[i] for i in index], "label": [LABELS[data.labels[i]] for i in index],
                          "pred": [LABELS[k] for k in proba.argmax(1)]})
    for k, lab in enumerate(LABELS):
        preds[f"p_{lab}"] = proba[:, k].round(6)
    write_csv(folder.val_predictions, preds)
    if not light:
        _draw_figures(folder, result["history"], metrics)


def _draw_figures(folder: RunFolder, history: list[dict], metrics: dict) -> None:
    """The run's training curves and validation confusion matrix, titled with its folder's name."""
    from msa.plots import confusion_matrix, training_curves

    name = folder.root.name
    training_curves(history, folder.figures / "training_curves.png", title=name)
    if "confusion_matrix" in metrics:
        confusion_matrix(metrics["confusion_matrix"], LABELS, folder.figures / "confusion_matrix.png",
                         title=f"{name} (val)")


# ------------------------------------------------------------------------------------- several runs at once
@dataclass
class RunSpec:
    """One training run of a grid: where it goes and how it is trained."""

    run_dir: Path
    settings: dict
    seed: int
    loss_kw: dict | None = None
    light: bool = True
    tag: str = ""
    mixed_precision: str = "no"
    init_from: Path | None = None  # fine-tune this checkpoint folder instead of a new model
    train_idx: list[int] | None = None  # training rows other than the split's (e.g. augmented ones)
    resume: bool = False  # continue from the run folder's last epoch state, if any
    val_idx: list[int] | None = None  # early-stopping rows other than the split's (e.g. an inner validation set)
    deadline: float | None = None  # a time budget (time.time() value): the run is skipped if it would start later
    #: finished run folders (one, or several to try in order) that may be this very run: copied if so (train_run)
    same_as: Path | tuple[Path, ...] | None = None


def _run_one(shared: dict, job: tuple[str, RunSpec]) -> dict:
    """One spec of a grid (``job``: its group's name and the spec), in a worker process or inline
    (:func:`msa.workers.run_jobs`); the group's features, data and record are in ``shared["groups"]``."""
    from msa.settings import Settings

    group, spec = job
    if spec.deadline is not None and time.time() > spec.deadline:
        return {"tag": spec.tag, "seed": spec.seed, "run_dir": str(spec.run_dir), "skipped": "budget"}
    inputs = shared["groups"][group]
    s = spec.settings if isinstance(spec.settings, Settings) else Settings.from_dict(spec.settings, strict=False)
    data = inputs["data"]
    if spec.train_idx is not None:
        data = replace(data, train_idx=list(spec.train_idx))
    if spec.val_idx is not None:
        data = replace(data, val_idx=list(spec.val_idx))
    res = train_run(spec.run_dir, inputs["fs"], data, fusion=s.feature_fusion, loss=s.loss_type,
                    train_cfg=s.train_config(spec.seed, spec.mixed_precision), hidden=int(s.hidden),
                    dropout=float(s.dropout), args_record=inputs["record"], loss_kw=spec.loss_kw, progress=False,
                    light=spec.light, init_from=spec.init_from, resume=spec.resume, settings=s,
                    same_as=spec.same_as)
    out = {"tag": spec.tag, "seed": spec.seed, "run_dir": str(spec.run_dir), **res["metrics"]}
    if res.get("same_as"):
        out["same_as"] = res["same_as"]
    return out


def run_grid(specs: list[RunSpec], fs: FeatureSet, data: Labelled, jobs: int = 1, record: dict | None = None,
             desc: str = "runs") -> list[dict]:
    """Train every spec; with ``jobs`` > 1 in that many processes (the cores shared out).

    Returns one metrics dict per spec, in the order of ``specs``."""
    return run_groups({"": (specs, fs, data, record)}, jobs=jobs, desc=desc)[""]


def _cost(spec: RunSpec) -> float:
    """A run's expected training time, for the order in which a pool starts its runs: its fusion's relative
    cost (:attr:`msa.fusions.Fusion.cost`) times its epoch budget."""
    from msa.fusions import FUSIONS

    fusion = FUSIONS.get(spec.settings.get("feature_fusion"))  # a dict or a Settings (a Mapping)
    return (fusion.cost if fusion is not None else 1.0) * float(spec.settings.get("num_epochs") or 1)


def run_groups(groups: dict[str, tuple[list[RunSpec], FeatureSet, Labelled, dict | None]], jobs: int = 1,
               desc: str = "runs") -> dict[str, list[dict]]:
    """Several grids at once: ``{name: (specs, features, data, record)}`` trained as one pool of ``jobs``
    processes, so that the cores stay busy across grids (the final recipe's folds: 5 x 3 runs on 2 workers take 8
    rounds, not 5 x 2) and the workers start once. Returns ``{name: metrics per spec, in the order of its specs}``."""
    from msa.workers import run_jobs

    jobs_list = [(name, spec) for name, (specs, *_) in groups.items() for spec in specs]
    shared = {"groups": {name: {"fs": fs, "data": data, "record": record or {}}
                         for name, (_, fs, data, record) in groups.items()}}
    flat = run_jobs(_run_one, jobs_list, shared, n_jobs=jobs, desc=desc, cost=[_cost(spec) for _, spec in jobs_list])
    out: dict[str, list[dict]] = {name: [] for name in groups}
    for (name, _), result in zip(jobs_list, flat, strict=True):
        out[name].append(result)
    return out
