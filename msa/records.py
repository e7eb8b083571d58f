"""What stages leave behind for each other, declared: the run folder's layout and the best-run record.

* :class:`RunFolder`: the files of one training run ``<stage>/results/<run>/`` (written by
  :func:`msa.experiment.train_run`; read by phases 4-6, the final recipe, predict and the report).
* :class:`BestRecord`: ``best.json`` of phases 3 and 4, the run a stage selected. One writer
  (:func:`write_best`), one reader (:func:`read_best`), which checks what later stages rely on and names the
  file and the key when something is missing.

The ensemble folder of the final recipe has its own record, :class:`msa.ensemble.EnsembleRecord`; phase 0's set
has its manifest (:func:`msa.experiment.check_phase0_set`). See docs/design.md, "Hand-off files".
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from msa import cli

BEST_FILE = "best.json"
BEST_DIR = "best"


@dataclass(frozen=True)
class RunFolder:
    """The layout of one training run's folder."""

    root: Path

    @property
    def config(self) -> Path:  # resolved arguments, settings, backbones, label map, split and its sha256, seed
        return self.root / "config.json"

    @property
    def history(self) -> Path:  # one row per epoch
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:  # the best epoch's validation metrics, best_epoch, epochs_run, seconds
        return self.root / "metrics.json"

    @property
    def val_predictions(self) -> Path:  # guid, label, pred, p_<label> of the validation rows
        return self.root / "val_predictions.csv"

    @property
    def checkpoint(self) -> Path:  # the self-describing checkpoint folder (msa.checkpoint)
        return self.root / "checkpoint"

    @property
    def figures(self) -> Path:  # training curves and confusion matrix
        return self.root / "figures"

    @property
    def resume_state(self) -> Path:  # the last epoch's whole training state while the run is unfinished
        return self.root / "resume_state.pt"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        return cls(Path(checkpoint).parent)


@dataclass
class BestRecord:
    """``best.json``: the method a stage selected, its best seed's run (copied to ``best/``) and every seed's run
    of that method (``seed_runs``, which phase 4 fine-tunes per seed and phase 5 evaluates)."""

    method: str  # phase 3: "<loss>-<sampler>"; phase 4: the caption mode
    seed: int
    select_metric: str
    value: float
    selected_by: str
    run_dir: str  # the selected run
    copied_to: str  # its copy, <results>/best
    checkpoint: str  # <results>/best/checkpoint
    seed_runs: list[str]
    seeds: list[int]
    metrics: dict  # the selected run's validation metrics
    method_mean: dict  # metric -> {"mean", "std"} over the method's seeds
    settings: dict  # the resolved settings the method trained with
    loss_kw: dict
    split: str
    split_sha256: str
    extra: dict = field(default_factory=dict)  # the stage's own entries

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    # read access by key, as the JSON file reads (the declared fields, then the stage's extras)
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    @classmethod
    def from_dict(cls, obj, path: str | Path) -> BestRecord:
        if not isinstance(obj, dict):
            raise cli.UserError(f"{path}: not a JSON object; rerun the stage that wrote it")
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        missing = [k for k in names if k not in obj]
        if missing:
            raise cli.UserError(f"{path} has no {', '.join(map(repr, missing))}: it was written by an older "
                                "version or edited; rerun the stage that wrote it")
        for key, kind in (("seed_runs", list), ("seeds", list), ("settings", dict), ("loss_kw", dict),
                          ("metrics", dict), ("method_mean", dict)):
            if not isinstance(obj[key], kind):
                raise cli.UserError(f"{path}: {key!r} must be a {kind.__name__}, got {type(obj[key]).__name__}")
        if not all(isinstance(r, str) and r for r in obj["seed_runs"]):
            raise cli.UserError(f"{path}: 'seed_runs' must list run folder paths")
        return cls(**{k: obj[k] for k in names}, extra={k: v for k, v in obj.items() if k not in names})


def select_best(method: str, cand, table, metric: str, results_dir: str | Path, metrics, *, selected_by: str,
                settings, loss_kw: dict, data, seeds: list[int], extra: dict | None = None) -> BestRecord:
    """The record of ``method``, whose seed runs are the rows ``cand`` of a stage's runs table (``run_dir``,
    ``seed`` and one column per metric), ``table`` the stage's summary (``<metric>_mean`` / ``_std`` by method):
    its best seed by ``metric`` is copied to ``<results_dir>/best`` (with a ``SOURCE`` file)."""
    from msa.checkpoint import copy_run_dir

    best_row = cand.loc[cand[metric].idxmax()]
    best_dir = copy_run_dir(Path(best_row["run_dir"]), Path(results_dir) / BEST_DIR)
    return BestRecord(
        method=method, seed=int(best_row["seed"]), select_metric=metric, value=float(best_row[metric]),
        selected_by=selected_by, run_dir=str(best_row["run_dir"]), copied_to=str(best_dir),
        checkpoint=str(best_dir / "checkpoint"), seed_runs=[str(p) for p in cand["run_dir"]], seeds=list(seeds),
        metrics={k: float(best_row[k]) for k in metrics},
        method_mean={k: {"mean": float(table.loc[method, f"{k}_mean"]), "std": float(table.loc[method, f"{k}_std"])}
                     for k in metrics},
        settings=dict(settings), loss_kw=dict(loss_kw), split=data.split.name, split_sha256=data.split.sha256,
        extra=dict(extra or {}))


def write_best(results_dir: str | Path, record: BestRecord) -> Path:
    """``<results_dir>/best.json`` (atomically)."""
    from msa.io import write_json

    return write_json(Path(results_dir) / BEST_FILE, record.to_dict())


def read_best(path: str | Path, what: str = "best.json") -> BestRecord:
    """The record at ``path``; a missing, unreadable or incomplete file is a :class:`msa.cli.UserError`."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"{what} {path} not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise cli.UserError(f"{what} {path} cannot be read: {exc}") from None
    return BestRecord.from_dict(obj, path)
