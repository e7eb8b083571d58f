"""msa.splits.group_fold_ids gives exactly scikit-learn's StratifiedGroupKFold folds (it is a faster version)."""

import warnings

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from msa.splits import group_fold_ids, stratified_folds, stratified_holdout

LABELS = ("negative", "neutral", "positive")


def sklearn_folds(labels, groups, k, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [sorted(val.tolist()) for _, val in splitter.split(labels, labels, groups)]


def cases(n_cases=40):
    rng = np.random.default_rng(7)
    for case in range(n_cases):
        n = int(rng.integers(20, 400))
        k = int(rng.choice([2, 3, 5, 10]))
        labels = rng.choice(LABELS, size=n, p=rng.dirichlet([1, 1, 1]) * 0.9 + 0.1 / 3).tolist()
        # every other case: shared-image groups of 1-3 posts; else one post per group (the recipe's inner split)
        groups = list(range(n)) if case % 2 else rng.integers(0, max(k, n // int(rng.integers(1, 4))), size=n).tolist()
        if len(set(groups)) >= k:
            yield labels, groups, k, int(rng.integers(0, 5000))


@pytest.mark.parametrize("labels, groups, k, seed", list(cases()))
def test_group_fold_ids_equal_sklearn(labels, groups, k, seed):
    mine = [np.flatnonzero(f).tolist() for f in group_fold_ids(labels, groups, k, seed)]
    assert mine == sklearn_folds(labels, groups, k, seed)


def test_many_exact_ties_are_broken_like_sklearn():
    # balanced singleton groups: nearly every placement is a tie between folds in real arithmetic
    labels = [LABELS[i % 3] for i in range(300)]
    for seed in (0, 1, 1000):
        mine = [np.flatnonzero(f).tolist() for f in group_fold_ids(labels, list(range(300)), 10, seed)]
        assert mine == sklearn_folds(labels, list(range(300)), 10, seed)


def test_folds_partition_the_rows_and_keep_groups_together():
    labels = [LABELS[i % 3] for i in range(90)]
    groups = [i // 3 for i in range(90)]
    folds = stratified_folds([f"g{i}" for i in range(90)], labels, 5, 3, groups)
    val = [set(f.loc[f["split"] == "val", "guid"]) for f in folds]
    assert sorted(g for v in val for g in v) == sorted(f"g{i}" for i in range(90))
    for v in val:  # a post's whole group is on its side
        assert all(f"g{3 * (int(g[1:]) // 3) + j}" in v for g in v for j in range(3))
    hold = stratified_holdout([f"g{i}" for i in range(90)], labels, 0.2, 3, groups)
    assert hold.equals(folds[0])


def test_too_many_folds_is_an_error():
    with pytest.raises(ValueError, match="greater than the number of groups"):
        group_fold_ids(["neutral"] * 4, [0, 0, 1, 1], 3, 0)
