"""Linear probes on frozen features: multinomial logistic regression with its regularisation C chosen by
stratified K-fold cross-validation on the training rows only.

:func:`fit_logreg_cv` sees nothing but the training matrix and labels it is given: per fold it standardises
with the fold's own training statistics (``standardize``), fits one logistic regression per C along an
ascending path (each fit warm-started from the previous, smaller C, as sklearn's LogisticRegressionCV does),
scores the held-out fold, and finally refits the C with the best mean CV score (ties go to the smaller C, the
stronger regularisation) on all the rows. The folds are shuffled with ``seed``, so a run is reproducible.

:func:`evaluate_probe` is the whole protocol on one feature matrix: ``fit_logreg_cv`` on ``x[train_idx]``,
then probabilities and :func:`msa.metrics.classification_metrics` on ``x[val_idx]``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from msa.cli import UserError

log = logging.getLogger(__name__)

#: Default grid of C (inverse regularisation strength), half decades from 1e-4 to 10.
DEFAULT_CS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
#: CV scores by name: the metric that picks C.
CV_METRICS = ("weighted_f1", "macro_f1", "accuracy")
DEFAULT_MAX_ITER = 2000


def cv_score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, f1_score

    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    average = {"weighted_f1": "weighted", "macro_f1": "macro"}[metric]
    return float(f1_score(y_true, y_pred, average=average, zero_division=0))


@dataclass
class ProbeFit:
    """A fitted probe: the pipeline refit on all its training rows at the chosen ``C``, and the CV record."""

    model: object  # sklearn Pipeline (StandardScaler +) LogisticRegression
    C: float
    cv: list[dict] = field(default_factory=list)  # per C: {"C", "mean", "std", "folds": [...]}
    cv_metric: str = "weighted_f1"
    folds: int = 5
    seed: int = 0
    n_train: int = 0
    n_classes: int = 3
    converged: bool = True

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities; a class absent from the training rows gets probability 0."""
        proba = self.model.predict_proba(np.asarray(x, dtype=np.float64))
        classes = self.model.classes_
        out = np.zeros((proba.shape[0], self.n_classes))
        out[:, classes] = proba
        return out

    def record(self) -> dict:
        return {"C": self.C, "cv_metric": self.cv_metric, "folds": self.folds, "seed": self.seed,
                "n_train": self.n_train, "converged": self.converged,
                "cv": [{k: v for k, v in row.items()} for row in self.cv]}


def _pipeline(C: float, standardize: bool, class_weight: str | None, max_iter: int, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, warm_start=warm_start)
    return make_pipeline(StandardScaler(), clf) if standardize else make_pipeline(clf)


def check_folds(y: np.ndarray, folds: int) -> None:
    """Every class of ``y`` needs at least ``folds`` rows for a stratified ``folds``-fold CV."""
    if folds < 2:
        raise UserError(f"--cv-folds must be at least 2, got {folds}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise UserError(f"the training rows hold a single class ({classes.tolist()}): nothing to probe")
    if counts.min() < folds:
        raise UserError(f"--cv-folds {folds}: the smallest class of the training split has only {int(counts.min())} "
                        f"rows; use at most {int(counts.min())} folds")


def fit_logreg_cv(x_train, y_train, *, cs: Sequence[float] = DEFAULT_CS, folds: int = 5, seed: int = 0,
                  cv_metric: str = "weighted_f1", standardize: bool = True, class_weight: str | None = None,
                  max_iter: int = DEFAULT_MAX_ITER, n_classes: int = 3, blas_threads: int | None = 1,
                  n_threads: int | None = None) -> ProbeFit:
    """Choose C by stratified ``folds``-fold CV on (``x_train``, ``y_train``) and refit on all of them.

    Only these rows are ever seen: the caller passes its training split, never its validation split.
    ``blas_threads`` limits numpy's BLAS threads while fitting (None: leave them as they are); ``n_threads``
    folds are fitted at once (None: one per core)."""
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    if cv_metric not in CV_METRICS:
        raise UserError(f"unknown CV metric {cv_metric!r}: choose one of {', '.join(CV_METRICS)}")
    cs = sorted({float(c) for c in cs})
    if not cs or min(cs) <= 0:
        raise UserError(f"the C grid must hold positive numbers, got {cs}")
    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train).astype(np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x_train {x.shape} and y_train {y.shape} do not match")
    check_folds(y, folds)
    if n_threads is None:
        from msa.workers import cores

        n_threads = cores()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = np.zeros((len(cs), folds))
    unconverged = 0
    # one BLAS thread: these matrices are small, and extra threads only spin (several times slower on a busy CPU)
    with threadpool_limits(limits=blas_threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        def fold_path(split) -> list[float]:  # one fold's scores along the C path
            tr, te = split
            model = _pipeline(cs[0], standardize, class_weight, max_iter, warm_start=True)
            out = []
            for c in cs:  # ascending C: each fit starts from the previous solution
                model.set_params(logisticregression__C=c)
                model.fit(x[tr], y[tr])
                out.append(cv_score(cv_metric, y[te], model.predict(x[te])))
            return out

        # the folds are independent: one thread each, up to the cores (BLAS and the solver release the GIL);
        # every fold's path is the same computation as in a loop, so the scores are identical
        with ThreadPoolExecutor(max(1, min(folds, n_threads or 1))) as pool:
            for f, fold_scores in enumerate(pool.map(fold_path, list(splitter.split(x, y)))):
                scores[:, f] = fold_scores
        best = int(np.argmax(scores.mean(1)))  # first maximum = the smallest C among ties
        final = _pipeline(cs[best], standardize, class_weight, max_iter)
        final.fit(x, y)
        unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        log.warning("logistic regression did not converge in %d of %d fits (max_iter %d); the probe may be "
                    "slightly under-fitted", unconverged, len(cs) * folds + 1, max_iter)
    cv = [{"C": c, "mean": float(scores[i].mean()), "std": float(scores[i].std(ddof=1)),
           "folds": [float(s) for s in scores[i]]} for i, c in enumerate(cs)]
    return ProbeFit(final, cs[best], cv, cv_metric, folds, seed, int(len(y)), n_classes, converged=not unconverged)


def evaluate_probe(x, labels, train_idx: Sequence[int], val_idx: Sequence[int], *,
                   label_names: Sequence[str] = ("negative", "neutral", "positive"), **fit_kw
                   ) -> tuple[ProbeFit, np.ndarray, dict]:
    """Fit on the training rows (C by CV on them alone), evaluate on the validation rows.

    Returns ``(fit, validation probabilities (len(val_idx), C), classification metrics)``."""
    from msa.metrics import classification_metrics

    x = np.asarray(x)
    y = np.asarray(labels).astype(np.int64)
    train_idx, val_idx = list(train_idx), list(val_idx)
    overlap = set(train_idx) & set(val_idx)
    if overlap:
        raise ValueError(f"{len(overlap)} rows are in both the training and the validation indices")
    fit = fit_logreg_cv(x[train_idx], y[train_idx], n_classes=len(label_names), **fit_kw)
    proba = fit.predict_proba(x[val_idx])
    metrics = classification_metrics(y[val_idx], proba.argmax(1), proba, labels=label_names)
    return fit, proba, metrics
