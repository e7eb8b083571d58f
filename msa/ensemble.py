"""Ensembles of saved models and the decision rule applied to their averaged probabilities.

An ensemble folder holds ``ensemble.json`` and ``members/<i>/`` checkpoint folders (copies, so the folder is
self-contained). Its prediction is the mean of the members' class probabilities, then the decision rule: the
arg-max of ``log p + bias`` (``bias`` = 0: plain arg-max). :func:`choose_bias` picks the bias of the neutral
and negative classes on held-out predictions (never on the data the result is reported on).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msa.cli import UserError
from msa.data import LABELS
from msa.io import write_json

ENSEMBLE_FILE = "ensemble.json"
#: bias values tried for each adjusted class (log-probability offsets)
BIAS_GRID = tuple(np.round(np.arange(-1.0, 2.01, 0.1), 2))


def is_ensemble(folder: str | Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def apply_bias(proba: np.ndarray, bias: Sequence[float] | None) -> np.ndarray:
    """Probabilities re-weighted by ``exp(bias)`` and renormalised (their arg-max is the decision)."""
    proba = np.asarray(proba, dtype=float)
    if bias is None or not np.any(bias):
        return proba
    z = np.log(np.clip(proba, 1e-12, 1.0)) + np.asarray(bias, dtype=float)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def f1_from_counts(y: np.ndarray, pred: np.ndarray, n_classes: int, average: str = "weighted") -> float:
    """``sklearn.metrics.f1_score(y, pred, labels=range(n_classes), average=..., zero_division=0)``, computed the
    same way (the same float operations, so the same value to the last bit) from one confusion count, ~200x faster:
    the decision-rule search scores ~1,000 offsets per fold."""
    cm = np.bincount(np.asarray(y, dtype=np.int64) * n_classes + np.asarray(pred, dtype=np.int64),
                     minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(np.float64)
    true_sum, pred_sum = cm.sum(1).astype(np.float64), cm.sum(0).astype(np.float64)
    denom = 1.0 * true_sum + pred_sum
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(denom == 0, 0.0, (1 + 1.0) * tp / np.where(denom == 0, 1.0, denom))
    if average == "weighted":
        return float(np.average(f, weights=true_sum)) if true_sum.sum() else 0.0
    return float(np.average(f))


def choose_bias(proba: np.ndarray, y: np.ndarray, metric: str = "weighted_f1",
                classes: Sequence[str] = ("neutral", "negative"), grid: Sequence[float] = BIAS_GRID
                ) -> tuple[list[float], float]:
    """The bias (one offset per class in ``classes``, 0 for the others) that maximises ``metric`` of the
    adjusted arg-max on (``proba``, ``y``); ties go to the smallest total offset. Returns (bias, score)."""
    proba = np.asarray(proba, dtype=float)
    y = np.asarray(y)
    logp = np.log(np.clip(proba, 1e-12, 1.0))
    idx = [LABELS.index(c) for c in classes]

    def score(pred):
        if metric == "accuracy":
            return float((pred == y).mean())
        return f1_from_counts(y, pred, len(LABELS), "weighted" if metric == "weighted_f1" else "macro")

    best = (score(logp.argmax(1)), 0.0, [0.0] * len(LABELS))
    grids = np.array(np.meshgrid(*[grid] * len(idx))).reshape(len(idx), -1).T
    for combo in grids:
        b = np.zeros(len(LABELS))
        b[idx] = combo
        s = score((logp + b).argmax(1))
        cost = float(np.abs(combo).sum())
        if s > best[0] + 1e-12 or (abs(s - best[0]) <= 1e-12 and cost < best[1]):
            best = (s, cost, b.tolist())
    return [round(v, 4) for v in best[2]], best[0]


@dataclass
class EnsembleRecord:
    """What ``ensemble.json`` declares (one writer, :func:`save_ensemble`; one reader, :func:`read_ensemble`): the
    member checkpoint folders (relative to the ensemble folder), where they were copied from, the decision offsets,
    the labels, and what the stage adds (``info``: the recipe, seeds, folds, test-time views, CV figures)."""

    members: list[str]
    sources: list[str]
    bias: list[float]
    labels: list[str]
    info: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def member_dirs(self) -> list[Path]:
        return [Path(self.folder) / m for m in self.members]

    @property
    def tta(self) -> list[str]:
        return list(self.info.get("tta") or [])

    def to_json(self) -> dict:
        return {"members": self.members, "sources": self.sources, "bias": self.bias, "labels": self.labels,
                **self.info}

    @classmethod
    def from_json(cls, obj, path: Path) -> EnsembleRecord:
        def bad(what: str) -> UserError:
            return UserError(f"{path}: {what}; the ensemble folder is damaged or was edited (rerun the final recipe)")

        if not isinstance(obj, dict):
            raise bad("not a JSON object")
        for key, kind in (("members", list), ("bias", list), ("labels", list)):
            if not isinstance(obj.get(key), kind):
                raise bad(f"{key!r} is missing or not a list")
        if not obj["members"] or not all(isinstance(m, str) and m.startswith("members/") and ".." not in m
                                         for m in obj["members"]):
            raise bad("'members' must list folders under members/")
        if len(obj["bias"]) != len(obj["labels"]) or not all(isinstance(b, (int, float)) for b in obj["bias"]):
            raise bad("'bias' must hold one number per label")
        info = {k: v for k, v in obj.items() if k not in ("members", "sources", "bias", "labels")}
        return cls(list(obj["members"]), list(obj.get("sources") or []), [float(b) for b in obj["bias"]],
                   list(obj["labels"]), info, Path(path).parent)


def save_ensemble(folder: str | Path, members: Sequence[str | Path], bias: Sequence[float] | None,
                  info: dict | None = None) -> Path:
    """Copy the member checkpoint folders into ``folder/members/`` and write ``ensemble.json`` (atomically: the
    folder is built under a temporary name and renamed)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "members").mkdir(parents=True)
    names = []
    for i, m in enumerate(members):
        name = f"members/{i:02d}"
        shutil.copytree(Path(m), tmp / name)
        names.append(name)
    record = EnsembleRecord(names, [str(Path(m).resolve()) for m in members],
                            list(bias) if bias is not None else [0.0] * len(LABELS), list(LABELS), dict(info or {}))
    write_json(tmp / ENSEMBLE_FILE, record.to_json())
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_ensemble(folder: str | Path) -> EnsembleRecord:
    """The checked :class:`EnsembleRecord` of an ensemble folder (a damaged ``ensemble.json`` is a clear error)."""
    path = Path(folder) / ENSEMBLE_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); rerun the final recipe") from None
    return EnsembleRecord.from_json(obj, path)
