"""Evaluation metrics: classification (MVSA), calibration, regression (MOSI/MOSEI-style) and multi-seed summaries.

* :func:`classification_metrics`: accuracy, weighted/macro F1, per-class F1 (``f1_neutral`` matters most here),
  weighted precision/recall, the confusion matrix and, given probabilities, the expected calibration error.
* :func:`expected_calibration_error`: ECE with equal-width confidence bins (Guo et al., 2017).
* :func:`regression_metrics`: the MMSA metric set for sentiment scores in [-3, 3].
* :func:`summarise_runs`: mean and sample standard deviation of every scalar metric over runs (seeds).

All functions take plain sequences or numpy arrays (or CPU tensors) and return plain Python numbers and lists,
so the results go straight into ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real

import numpy as np

# sklearn.metrics is imported by the functions that use it (about a second): msa.metrics is read by the stages'
# front ends, whose up-to-date check must answer without it

__all__ = [
    "DEFAULT_LABELS",
    "classification_metrics",
    "expected_calibration_error",
    "regression_metrics",
    "summarise_runs",
]

DEFAULT_LABELS = ("negative", "neutral", "positive")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _label_indices(y, labels: Sequence[str], what: str) -> np.ndarray:
    """Class indices from class indices (ints, or integral floats) or label strings."""
    arr = _to_numpy(y)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "USO" and all(isinstance(v, str) for v in arr.tolist()):
        index = {lab: i for i, lab in enumerate(labels)}
        unknown = sorted(set(arr.tolist()) - set(index))
        if unknown:
            raise ValueError(f"{what} holds labels {unknown} that are not in {list(labels)}")
        return np.array([index[v] for v in arr.tolist()], dtype=np.int64)
    bad = ValueError(f"{what} must be class indices in [0, {len(labels) - 1}] or label strings from {list(labels)}")
    try:
        idx = arr.astype(np.int64)
    except (TypeError, ValueError):
        raise bad from None
    if not np.array_equal(idx, arr.astype(np.float64)) or (idx.size and (idx.min() < 0 or idx.max() >= len(labels))):
        raise bad
    return idx


def expected_calibration_error(proba, y_true, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of the max probability.

    ``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|`` where a sample's confidence is its largest
    probability, its prediction the arg-max, and bin ``b`` holds confidences in ``(b/n_bins, (b+1)/n_bins]``
    (a confidence of exactly 0 falls in the first bin). ``y_true`` are class indices.
    """
    p = _to_numpy(proba).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be (N, C), got shape {p.shape}")
    y = _to_numpy(y_true).astype(np.int64)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {y.shape[0]} entries")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if p.shape[0] == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_metrics(y_true, y_pred, proba=None, labels: Sequence[str] = DEFAULT_LABELS) -> dict:
    """Metrics of a classification run (``y_true``/``y_pred`` as class indices or label strings).

    Returns ``accuracy``, ``weighted_f1``, ``macro_f1``, ``f1_<label>`` for every label, ``weighted_precision``,
    ``weighted_recall``, ``confusion_matrix`` (nested list, rows = true class, columns = predicted class, in
    ``labels`` order), ``labels`` and ``n``; with ``proba`` ``(N, C)`` also ``ece`` (15 bins, computed from the
    probabilities' own arg-max). Classes absent from both ``y_true`` and ``y_pred`` score 0 (sklearn's
    ``zero_division=0``) and still count in the macro F1.
    """
    labels = tuple(labels)
    yt = _label_indices(y_true, labels, "y_true")
    yp = _label_indices(y_pred, labels, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.shape[0]} entries but y_pred has {yp.shape[0]}")
    if yt.size == 0:
        raise ValueError("no samples to evaluate")
    # scikit-learn's formulas (accuracy_score, f1_score, precision_recall_fscore_support with zero_division=0,
    # confusion_matrix) on the confusion matrix, in numpy: the same floats (tests/test_metrics.py compares them
    # with sklearn's), without sklearn's ~1.3 s import and ~15 ms of argument checks in every epoch of every head
    k = len(labels)
    cm = np.bincount(yt * k + yp, minlength=k * k).reshape(k, k)
    tp, true_sum, pred_sum = np.diag(cm).astype(np.float64), cm.sum(axis=1), cm.sum(axis=0)

    def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:  # sklearn's _prf_divide: 0 where den is 0
        den = den.astype(np.float64)
        return np.divide(num, den, out=np.zeros_like(num), where=den != 0)

    precision, recall, f1 = divide(tp, pred_sum), divide(tp, true_sum), divide(2.0 * tp, true_sum + pred_sum)
    out: dict = {"n": int(yt.size), "accuracy": float(np.average(yt == yp))}
    out["weighted_f1"] = float(np.average(f1, weights=true_sum))
    out["macro_f1"] = float(np.average(f1))
    for lab, f in zip(labels, f1):
        out[f"f1_{lab}"] = float(f)
    out["weighted_precision"] = float(np.average(precision, weights=true_sum))
    out["weighted_recall"] = float(np.average(recall, weights=true_sum))
    out["confusion_matrix"] = cm.tolist()
    out["labels"] = list(labels)
    if proba is not None:
        p = _to_numpy(proba)
        if p.ndim != 2 or p.shape != (yt.size, len(labels)):
            raise ValueError(f"proba must be (N={yt.size}, C={len(labels)}), got shape {p.shape}")
        out["ece"] = expected_calibration_error(p, yt, n_bins=15)
    return out


def _multiclass_acc(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.round(pred) == np.round(true)))


def regression_metrics(y_true, y_pred) -> dict:
    """The MMSA metric set for MOSI/MOSEI-style sentiment scores (labels in [-3, 3]).

    * ``mae``: mean absolute error; ``corr``: Pearson correlation (NaN when either side is constant);
    * ``acc2_has0`` / ``f1_has0``: non-negative (>= 0) vs negative (< 0), over all samples;
    * ``acc2_non0`` / ``f1_non0``: positive (> 0) vs negative (< 0), over the samples whose *true* score is
      not 0 (a prediction of exactly 0 counts as negative, as in MMSA);
    * ``acc5`` / ``acc7``: prediction and truth clipped to [-2, 2] / [-3, 3] and rounded to the nearest
      integer (numpy's round-half-to-even, as in MMSA), then compared: 5 resp. 7 classes.

    F1 scores are sklearn's support-weighted F1 of the two binary classes, as MMSA reports them. ``n`` and
    ``n_non0`` give the sample counts. CH-SIMS (labels in [-1, 1], interval bins) needs other thresholds:
    :func:`mmsa_metrics` has both sets under MMSA's own names.
    """
    from sklearn.metrics import accuracy_score, f1_score

    yt, yp = _regression_inputs(y_true, y_pred)
    out: dict = {"n": int(yt.size), "mae": float(np.mean(np.abs(yp - yt))), "corr": _pearson(yp, yt)}
    t_has0, p_has0 = yt >= 0, yp >= 0
    out["acc2_has0"] = float(accuracy_score(t_has0, p_has0))
    out["f1_has0"] = float(f1_score(t_has0, p_has0, average="weighted", zero_division=0))
    nz = yt != 0
    out["n_non0"] = int(nz.sum())
    if nz.any():
        t_non0, p_non0 = yt[nz] > 0, yp[nz] > 0
        out["acc2_non0"] = float(accuracy_score(t_non0, p_non0))
        out["f1_non0"] = float(f1_score(t_non0, p_non0, average="weighted", zero_division=0))
    else:
        out["acc2_non0"] = out["f1_non0"] = float("nan")
    out["acc5"] = _multiclass_acc(np.clip(yp, -2.0, 2.0), np.clip(yt, -2.0, 2.0))
    out["acc7"] = _multiclass_acc(np.clip(yp, -3.0, 3.0), np.clip(yt, -3.0, 3.0))
    return out


def _is_scalar(v) -> bool:
    return isinstance(v, (Real, np.number)) and not isinstance(v, (bool, np.bool_))


def mean_std(values, skipna: bool = False) -> tuple[float, float]:
    """``(mean, sample std)`` of ``values`` (ddof=1; 0.0 for a single value): the seed/fold summary of every table.
    A NaN propagates, unless ``skipna`` (pandas' rule: NaNs are left out, the std of one value left is NaN)."""
    arr = np.asarray(values, dtype=float)
    n = arr.size
    if skipna:
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return float("nan"), (float("nan") if n > 1 else 0.0)
        return float(arr.mean()), (0.0 if n <= 1 else float(arr.std(ddof=1)) if arr.size > 1 else float("nan"))
    return float(arr.mean()), (float(arr.std(ddof=1)) if n > 1 else 0.0)


def mean_std_columns(frame, metrics: Iterable[str], present_only: bool = True) -> dict:
    """``{"<m>_mean": ..., "<m>_std": ...}`` over the rows of ``frame`` (one row per seed or fold) for each metric,
    NaNs left out as pandas does (with ``present_only``, metrics that are not columns of ``frame`` are left out)."""
    out = {}
    for m in metrics:
        if present_only and m not in frame:
            continue
        out[f"{m}_mean"], out[f"{m}_std"] = mean_std(frame[m], skipna=True)
    return out


def pm(row, key: str, digits: int = 4) -> str:
    """The ``mean ± std`` cell of ``key`` in a summary row (``<key>_mean`` and ``<key>_std`` fields)."""
    return f"{row[f'{key}_mean']:.{digits}f} ± {row[f'{key}_std']:.{digits}f}"


def summarise_runs(runs: Iterable[Mapping]) -> dict:
    """Mean and standard deviation over runs (e.g. seeds) of every scalar metric.

    Returns ``{metric: {"mean": m, "std": s, "n": k}}`` for every key whose value is a number (bools and
    non-scalars such as the confusion matrix are skipped). ``std`` is the sample standard deviation (ddof=1),
    0.0 for a single run; ``n`` counts the runs that have the metric. NaNs propagate (an undefined metric in
    one run makes its mean NaN), so nothing is averaged over silently dropped runs.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("summarise_runs needs at least one run")
    keys: list[str] = []
    for run in runs:
        for key, value in run.items():
            if _is_scalar(value) and key not in keys:
                keys.append(key)
    summary: dict = {}
    for key in keys:
        values = np.array([float(run[key]) for run in runs if key in run and _is_scalar(run[key])])
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        if math.isnan(mean):
            std = float("nan")
        summary[key] = {"mean": mean, "std": std, "n": int(values.size)}
    return summary


# ---------------------------------------------------------------------------------- MMSA metric sets (seed 004)
#: The metric names of the MMSA toolkit (MMSA/utils/metricsTop.py), per dataset, in its order.
MMSA_METRICS = {
    "mosi": ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"),
    "mosei": ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE",
              "Corr"),
    "sims": ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"),
}
#: CH-SIMS class intervals (left-open, right-closed) of Mult_acc_2 / _3 / _5 after clipping to [-1, 1].
SIMS_EDGES = {2: (-1.01, 0.0, 1.01), 3: (-1.01, -0.1, 0.1, 1.01), 5: (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """``np.corrcoef(a, b)[0][1]``; NaN (without numpy's warning) when either side is constant or N < 2."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0][1])


def _regression_inputs(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    yt = _to_numpy(y_true).astype(np.float64).reshape(-1)
    yp = _to_numpy(y_pred).astype(np.float64).reshape(-1)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} entries but y_pred has {yp.size}")
    if yt.size == 0:
        raise ValueError("no samples to evaluate")
    if not (np.isfinite(yt).all() and np.isfinite(yp).all()):
        raise ValueError("regression targets and predictions must be finite")
    return yt, yp


def mmsa_mosi_metrics(y_true, y_pred) -> dict:
    """The MMSA regression metric set of CMU-MOSI and CMU-MOSEI (labels in [-3, 3]), as fractions.

    * ``MAE`` = mean |pred - truth|; ``Corr`` = Pearson correlation (``np.corrcoef``; NaN when constant);
    * ``Has0_acc_2`` / ``Has0_F1_score``: truth >= 0 vs truth < 0 against pred >= 0 vs pred < 0, all samples
      (negative vs non-negative);
    * ``Non0_acc_2`` / ``Non0_F1_score``: truth > 0 vs pred > 0 over the samples whose truth is not 0 (a
      prediction of exactly 0 counts as negative); NaN when every truth is 0;
    * ``Mult_acc_5`` / ``Mult_acc_7``: pred and truth clipped to [-2, 2] / [-3, 3] and rounded (numpy's
      half-to-even), then compared: 5 resp. 7 classes.

    F1 scores are sklearn's support-weighted F1 over the two classes (MMSA's ``average='weighted'``). MMSA
    rounds every value to 4 decimals; here they are unrounded.
    """
    m = regression_metrics(y_true, y_pred)
    return {name: m[key] for key, name in _MMSA_NAMES.items()}


#: :func:`regression_metrics` key -> MMSA's name
_MMSA_NAMES = {"acc2_has0": "Has0_acc_2", "f1_has0": "Has0_F1_score", "acc2_non0": "Non0_acc_2",
               "f1_non0": "Non0_F1_score", "acc5": "Mult_acc_5", "acc7": "Mult_acc_7", "mae": "MAE", "corr": "Corr"}


def sims_classes(values, k: int) -> np.ndarray:
    """Class index (0 .. k-1) of CH-SIMS scores clipped to [-1, 1] on the intervals of :data:`SIMS_EDGES` ``[k]``
    (left-open, right-closed: (-1.01, 0] and (0, 1.01] for k = 2).

    Membership is decided in the values' own precision, as MMSA's numpy comparisons do: a float32 label 0.1 is
    compared with the float32 edge 0.1 (so it falls in (-0.1, 0.1]), not with the float64 0.1 it exceeds."""
    v = _to_numpy(values).reshape(-1)
    if v.dtype.kind != "f":
        v = v.astype(np.float64)
    v = np.clip(v, v.dtype.type(-1.0), v.dtype.type(1.0))
    edges = np.asarray(SIMS_EDGES[k][1:-1], dtype=v.dtype)
    return np.searchsorted(edges, v, side="left").astype(np.int64)


def mmsa_sims_metrics(y_true, y_pred) -> dict:
    """The MMSA regression metric set of CH-SIMS (labels in [-1, 1]), as fractions.

    Pred and truth are first clipped to [-1, 1]; then

    * ``Mult_acc_2``: classes (-1.01, 0], (0, 1.01];
    * ``Mult_acc_3``: (-1.01, -0.1], (-0.1, 0.1], (0.1, 1.01];
    * ``Mult_acc_5``: edges -1.01, -0.7, -0.1, 0.1, 0.7, 1.01;
    * ``F1_score``: support-weighted F1 of the two classes of Mult_acc_2;
    * ``MAE``, ``Corr``: of the clipped values (as MMSA computes them).

    Interval membership is decided in the inputs' own precision (float32 labels against float32 edges), as MMSA's
    numpy comparisons of float32 arrays with Python floats do.
    """
    from sklearn.metrics import f1_score

    yt, yp = _regression_inputs(y_true, y_pred)
    ct = {k: sims_classes(y_true, k) for k in (2, 3, 5)}  # in the inputs' own precision (see sims_classes)
    cp = {k: sims_classes(y_pred, k) for k in (2, 3, 5)}
    yt, yp = np.clip(yt, -1.0, 1.0), np.clip(yp, -1.0, 1.0)
    out = {f"Mult_acc_{k}": float(np.mean(cp[k] == ct[k])) for k in (2, 3, 5)}
    out["F1_score"] = float(f1_score(ct[2], cp[2], average="weighted", zero_division=0))
    out["MAE"] = float(np.mean(np.abs(yp - yt)))
    out["Corr"] = _pearson(yp, yt)
    return out


def mmsa_metrics(y_true, y_pred, dataset: str) -> dict:
    """MMSA's metric set for ``dataset`` (``mosi``, ``mosei`` or ``sims``), keys in :data:`MMSA_METRICS` order."""
    key = str(dataset).lower()
    if key not in MMSA_METRICS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(MMSA_METRICS)}")
    m = mmsa_sims_metrics(y_true, y_pred) if key == "sims" else mmsa_mosi_metrics(y_true, y_pred)
    return {k: m[k] for k in MMSA_METRICS[key]}


__all__ += ["MMSA_METRICS", "mmsa_metrics", "mmsa_mosi_metrics", "mmsa_sims_metrics", "sims_classes"]
