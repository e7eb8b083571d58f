"""Persisted train/validation splits: written once by phase 0, read by every later phase.

A split file is ``<work-dir>/splits/<name>.csv`` with columns ``guid,split`` (``train`` or ``val``).
Phase 0 writes ``default`` (stratified hold-out) and ``cv{K}-{i}`` (fold ``i`` of a stratified K-fold,
each a complete train/val split), so every later phase takes ``--split NAME`` and nothing else changes.
"""

from __future__ import annotations

import logging
import warnings
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
    from sklearn.model_selection import StratifiedGroupKFold

    guids = list(guids)
    groups = list(range(len(guids))) if groups is None else list(groups)
    if k < 2 or k > len(set(groups)):
        raise UserError(f"{k} folds: need 2 <= K <= {len(set(groups))} (the number of independent posts)")
    min_count = int(pd.Series(labels).value_counts().min())
    if k > min_count:
        log.warning("%d folds but the smallest class has %d posts: some validation folds will lack it",
                    k, min_count)
    folds = []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(splitter.split(guids, labels, groups))
    for _, val_idx in parts:
        val_set = {guids[i] for i in val_idx}
        folds.append(pd.DataFrame({"guid": guids, "split": ["val" if g in val_set else "train" for g in guids]}))
    return folds


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
