"""Persisted train/validation splits: written once by phase 0, read by every later phase.

A split file is ``<work-dir>/splits/<name>.csv`` with columns ``guid,split`` (``train`` or ``val``).
Phase 0 writes ``default`` (stratified hold-out) and ``cv{K}-{i}`` (fold ``i`` of a stratified K-fold,
each a complete train/val split), so every later phase takes ``--split NAME`` and nothing else changes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from msa.cli import UserError
from msa.io import file_sha256, write_csv

if TYPE_CHECKING:  # pandas is imported where a split is made or read: split_path serves the up-to-date checks
    import pandas as pd

log = logging.getLogger(__name__)
SPLIT_VALUES = ("train", "val")


@dataclass
class Split:
    name: str
    path: Path
    sha256: str
    frame: pd.DataFrame  # guid, split

    def guids(self, part: str) -> list[str]:
        return self.frame.loc[self.frame["split"] == part, "guid"].tolist()

    @property
    def train(self) -> list[str]:
        return self.guids("train")

    @property
    def val(self) -> list[str]:
        return self.guids("val")


def split_path(work_dir: str | Path, name: str) -> Path:
    return Path(work_dir) / "splits" / f"{name}.csv"


def stratified_holdout(guids: list[str], labels: list[str], val_ratio: float, seed: int,
                       groups: list | None = None) -> pd.DataFrame:
    """A stratified train/val split with about ``val_ratio`` of the rows in val.

    With ``groups`` (e.g. posts sharing one image), members of a group always land on the same side; the
    split is then the first fold of a stratified group K-fold with K = round(1 / val_ratio).
    """
    if not 0.0 < val_ratio < 0.5 + 1e-9:
        raise UserError(f"--val-ratio must be in (0, 0.5], got {val_ratio}")
    k = max(2, round(1.0 / val_ratio))
    return stratified_folds(guids, labels, k, seed, groups)[0]


def stratified_folds(guids: list[str], labels: list[str], k: int, seed: int,
                     groups: list | None = None) -> list[pd.DataFrame]:
    """K complete train/val splits whose val parts partition the rows, stratified by label, grouped by
    ``groups`` when given."""
    import pandas as pd

    guids = list(guids)
    groups = list(range(len(guids))) if groups is None else list(groups)
    if k < 2 or k > len(set(groups)):
        raise UserError(f"{k} folds: need 2 <= K <= {len(set(groups))} (the number of independent posts)")
    min_count = int(pd.Series(labels).value_counts().min())
    if k > min_count:
        log.warning("%d folds but the smallest class has %d posts: some validation folds will lack it",
                    k, min_count)
    folds = []
    for fold in group_fold_ids(labels, groups, k, seed):
        folds.append(pd.DataFrame({"guid": guids, "split": ["val" if f else "train" for f in fold]}))
    return folds


def group_fold_ids(labels, groups, k: int, seed: int) -> list[list[bool]]:
    """For each of the ``k`` folds, which rows are in its validation part: exactly the folds of scikit-learn's
    ``StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)``, computed faster.

    scikit-learn places the groups one by one, each in the fold that keeps the classes' spread across folds
    smallest, and tries the ``k`` folds in a Python loop of small numpy calls (~3 s for 2,800 posts in 10 folds).
    Here the ``k`` trials of a group are one batched numpy computation with the same operations in the same
    order, so the floating-point values, and hence the ties and their tie-breaks, are the same bit for bit
    (``tests/test_splits.py`` compares the two)."""
    import numpy as np

    y = np.asarray(labels)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    if np.all(k > y_cnt):
        raise ValueError(f"n_splits={k} cannot be greater than the number of members in each class.")
    n_classes = len(y_cnt)
    _, groups_inv, groups_cnt = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    groups_inv = groups_inv.reshape(-1)
    n_groups = len(groups_cnt)
    if k > n_groups:
        raise ValueError(f"Cannot have number of splits n_splits={k} greater than the number of groups: {n_groups}.")
    y_counts_per_group = np.zeros((n_groups, n_classes))
    np.add.at(y_counts_per_group, (groups_inv, y_inv.reshape(-1)), 1)
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)  # sklearn's check_random_state(int) is this generator
    y_counts_per_group = y_counts_per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    groups_inv = inv_perm[groups_inv]
    order = np.argsort(-np.std(y_counts_per_group, axis=1), kind="stable")

    per_fold = np.zeros((k, n_classes))
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    scale = y_cnt.reshape(1, -1)
    diag = np.arange(k)
    for g in order:
        counts = y_counts_per_group[g]
        trial = np.repeat(per_fold[None], k, axis=0)  # trial[i]: the folds with this group in fold i
        trial[diag, diag] += counts
        evals = np.mean(np.std(trial / scale, axis=1), axis=1).tolist()
        sizes = per_fold.sum(axis=1).tolist()
        best, min_eval, min_size = None, np.inf, np.inf
        for i in range(k):  # sklearn's choice: the smallest spread; on a tie (isclose) the smaller fold
            e = evals[i]
            close = math.isfinite(min_eval) and abs(e - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)  # np.isclose
            if e < min_eval or (close and sizes[i] < min_size):
                best, min_eval, min_size = i, e, sizes[i]
        per_fold[best] += counts
        fold_of_group[g] = best
    row_fold = fold_of_group[groups_inv]
    return [(row_fold == i).tolist() for i in range(k)]


def write_split(frame: pd.DataFrame, work_dir: str | Path, name: str) -> Path:
    return write_csv(split_path(work_dir, name), frame[["guid", "split"]])


def load_split(work_dir: str | Path, name: str = "default") -> Split:
    """Load a persisted split; a clear error says how to create it when it is missing or malformed."""
    path = split_path(work_dir, name)
    if not path.is_file():
        raise UserError(f"split file {path} not found: run phase 0 first "
                        f"(python phase0/data_cleaner.py --data-root DATA --work-dir {work_dir})")
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns[:2]) != ["guid", "split"]:
        raise UserError(f"{path}: expected columns guid,split, found {','.join(frame.columns)}")
    bad = frame.loc[~frame["split"].isin(SPLIT_VALUES)]
    if len(bad):
        raise UserError(f"{path}, line {bad.index[0] + 2}: split must be train or val, got {bad['split'].iloc[0]!r}")
    if frame["guid"].duplicated().any():
        dup = frame.loc[frame["guid"].duplicated(), "guid"].iloc[0]
        raise UserError(f"{path}: guid {dup} appears twice")
    return Split(name=name, path=path, sha256=file_sha256(path), frame=frame)
