"""Metrics against hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from msa.metrics import classification_metrics, expected_calibration_error, regression_metrics, summarise_runs


def test_perfect_predictions():
    y = [0, 1, 2, 2, 1, 0, 2]
    proba = np.eye(3)[y]
    m = classification_metrics(y, y, proba)
    for key in ("accuracy", "weighted_f1", "macro_f1", "f1_negative", "f1_neutral", "f1_positive",
                "weighted_precision", "weighted_recall"):
        assert m[key] == 1.0, key
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert m["ece"] == pytest.approx(0.0)
    assert m["n"] == 7
    json.dumps(m)  # plain Python types only


def test_known_confusion_matrix():
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 2, 2, 0]
    m = classification_metrics(y_true, y_pred)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]  # rows true, columns predicted
    assert m["accuracy"] == pytest.approx(4 / 7)
    # class 0: P = 1/2, R = 1/2; class 1: P = 1/2, R = 1/2; class 2: P = 2/3, R = 2/3
    assert (m["f1_negative"], m["f1_neutral"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert m["f1_positive"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.5 + 3 * 2 / 3) / 7)
    assert m["weighted_precision"] == pytest.approx((2 * 0.5 + 2 * 0.5 + 3 * 2 / 3) / 7)
    assert m["weighted_recall"] == pytest.approx(4 / 7)
    assert "ece" not in m


def test_the_same_floats_as_scikit_learn():
    """classification_metrics computes sklearn's formulas itself (no sklearn import in every head's epochs): on
    random cases, absent classes and one-class predictions included, every value equals sklearn's exactly."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 3, n), rng.integers(0, 3, n)) for n in (1, 2, 5, 17, 339, 1000) for _ in range(6)]
    cases += [(np.array([0, 0, 2]), np.array([0, 0, 0])), (np.array([1, 1]), np.array([2, 2])),
              (np.array([2] * 9), np.array([2] * 9)), (rng.integers(0, 2, 50), rng.integers(1, 3, 50))]
    idx = [0, 1, 2]
    for yt, yp in cases:
        m = classification_metrics(yt, yp)
        assert m["accuracy"] == accuracy_score(yt, yp)
        assert m["weighted_f1"] == f1_score(yt, yp, labels=idx, average="weighted", zero_division=0)
        assert m["macro_f1"] == f1_score(yt, yp, labels=idx, average="macro", zero_division=0)
        per_class = f1_score(yt, yp, labels=idx, average=None, zero_division=0)
        assert [m["f1_negative"], m["f1_neutral"], m["f1_positive"]] == per_class.tolist()
        prec, rec, _, _ = precision_recall_fscore_support(yt, yp, labels=idx, average="weighted", zero_division=0)
        assert (m["weighted_precision"], m["weighted_recall"]) == (prec, rec)
        assert m["confusion_matrix"] == confusion_matrix(yt, yp, labels=idx).tolist()


def test_label_strings_tensors_and_custom_labels():
    names = ["negative", "neutral", "positive"]
    a = classification_metrics(["positive", "neutral"], ["positive", "negative"])
    b = classification_metrics(torch.tensor([2, 1]), np.array([2.0, 0.0]))
    assert a == b and a["confusion_matrix"] == [[0, 0, 0], [1, 0, 0], [0, 0, 1]]
    m = classification_metrics(["no", "yes", "yes"], ["yes", "yes", "yes"], labels=("no", "yes"))
    assert m["f1_no"] == 0.0 and m["f1_yes"] == pytest.approx(0.8) and m["labels"] == ["no", "yes"]
    with pytest.raises(ValueError, match="not in"):
        classification_metrics(["happy"], ["positive"], labels=names)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics([0, 3], [0, 1])
    with pytest.raises(ValueError, match="proba"):
        classification_metrics([0, 1], [0, 1], proba=np.ones((2, 2)) / 2)


def test_ece_calibrated_and_overconfident():
    # 10 samples at confidence 0.8, 8 of them right: perfectly calibrated
    proba = np.tile([0.8, 0.1, 0.1], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(proba, y) == pytest.approx(0.0, abs=1e-12)
    # always 100% sure, right half the time: ECE = 0.5
    proba = np.tile([1.0, 0.0, 0.0], (4, 1))
    assert expected_calibration_error(proba, [0, 0, 1, 2]) == pytest.approx(0.5)
    # two bins: {0.9, 0.9} both right -> |1 - 0.9| ; {0.6, 0.6} one right -> |0.5 - 0.6|; weights 1/2 each
    proba = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.6, 0.4, 0.0]])
    assert expected_calibration_error(proba, [0, 0, 0, 1]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    # bins are (b/15, (b+1)/15]: these two share bin 9 (0.6 < c <= 0.6667) and average out
    proba = np.array([[0.61, 0.39, 0.0], [0.66, 0.34, 0.0]])
    assert expected_calibration_error(proba, [0, 1]) == pytest.approx(abs(0.5 - 0.635))
    assert classification_metrics([0, 0, 0, 1], [0, 0, 0, 0], proba=np.array(
        [[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.6, 0.4, 0.0]]))["ece"] == pytest.approx(0.1)


def test_summarise_runs():
    runs = [{"accuracy": 0.7, "f1_neutral": 0.3, "confusion_matrix": [[1]], "labels": ["a"], "flag": True},
            {"accuracy": 0.8, "f1_neutral": 0.5, "confusion_matrix": [[2]]},
            {"accuracy": 0.9, "f1_neutral": 0.4, "best_epoch": 3}]
    s = summarise_runs(runs)
    assert set(s) == {"accuracy", "f1_neutral", "best_epoch"}
    assert s["accuracy"]["mean"] == pytest.approx(0.8) and s["accuracy"]["std"] == pytest.approx(0.1)
    assert s["f1_neutral"]["std"] == pytest.approx(0.1) and s["accuracy"]["n"] == 3
    assert s["best_epoch"] == {"mean": 3.0, "std": 0.0, "n": 1}
    one = summarise_runs([{"accuracy": 0.75}])
    assert one["accuracy"] == {"mean": 0.75, "std": 0.0, "n": 1}
    assert math.isnan(summarise_runs([{"corr": float("nan")}, {"corr": 0.5}])["corr"]["mean"])
    with pytest.raises(ValueError):
        summarise_runs([])
    json.dumps(s)


def test_regression_metrics_hand_example():
    y_true = [1.2, -0.4, 0.0, 2.8, -3.0, 0.6]
    y_pred = [0.9, 0.2, -0.1, 3.4, -2.6, 1.6]
    m = regression_metrics(y_true, y_pred)
    assert m["mae"] == pytest.approx((0.3 + 0.6 + 0.1 + 0.6 + 0.4 + 1.0) / 6)
    assert m["corr"] == pytest.approx(np.corrcoef(y_pred, y_true)[0, 1])
    # has0: truth >= 0 -> [T, F, T, T, F, T], pred >= 0 -> [T, T, F, T, F, T]: 4 of 6 agree
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # non0 drops the true 0: truth > 0 [T, F, T, F, T], pred > 0 [T, T, T, F, T]: 4 of 5 agree
    assert m["acc2_non0"] == pytest.approx(4 / 5) and m["n_non0"] == 5
    # F1 weighted over the two classes (non0): negatives P=1 R=1/2 F1=2/3 (n=2); positives P=3/4 R=1 F1=6/7 (n=3)
    assert m["f1_non0"] == pytest.approx((2 * 2 / 3 + 3 * 6 / 7) / 5)
    # acc7 rounds within [-3, 3]: truth [1, -0, 0, 3, -3, 1], pred [1, 0, -0, 3, -3, 2]: 5 of 6
    assert m["acc7"] == pytest.approx(5 / 6)
    # acc5 clips to [-2, 2] first: truth [1, 0, 0, 2, -2, 1], pred [1, 0, 0, 2, -2, 2]: 5 of 6
    assert m["acc5"] == pytest.approx(5 / 6)
    # clipping happens before rounding: 3.4 and 2.6 both become 3 in acc7; 3.4 -> 2 and 2.2 -> 2 in acc5
    assert regression_metrics([3.4], [2.6])["acc7"] == 1.0
    assert regression_metrics([3.4, -2.4], [2.2, -3.0])["acc5"] == 1.0


def test_regression_metrics_edge_cases():
    m = regression_metrics([1.0, -1.0, 0.5], [0.2, 0.2, 0.2])
    assert math.isnan(m["corr"])  # constant predictions: correlation undefined
    m = regression_metrics([0.0, 0.0], [0.3, -0.2])
    assert math.isnan(m["acc2_non0"]) and m["acc2_has0"] == 0.5
    with pytest.raises(ValueError):
        regression_metrics([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        regression_metrics([float("nan")], [0.0])


def test_mean_std_is_the_summary_every_table_uses():
    import pandas as pd

    from msa.metrics import mean_std, mean_std_columns, pm

    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([0.1, 0.3, 0.7])
    assert m == pytest.approx(0.3666667) and s == pytest.approx(0.3055050)
    assert np.isnan(mean_std([0.1, float("nan")])[0])  # a NaN propagates by default ...
    assert mean_std([0.1, float("nan"), 0.4], skipna=True) == pytest.approx((0.25, 0.2121320))  # ... or is left out
    frame = pd.DataFrame({"weighted_f1": [0.70, 0.72, 0.74], "seed": [1, 2, 3]})
    row = mean_std_columns(frame, ["weighted_f1", "absent"])
    assert set(row) == {"weighted_f1_mean", "weighted_f1_std"} and pm(row, "weighted_f1") == "0.7200 ± 0.0200"


def test_the_fast_f1_of_the_decision_rule_search_is_sklearns_to_the_last_bit():
    """msa.ensemble.f1_from_counts replaces sklearn's f1_score inside choose_bias's ~1,000-offset search; the chosen
    offsets must not change, so the value must be identical (not just close), zero-division cases included."""
    from sklearn.metrics import f1_score

    from msa.ensemble import f1_from_counts

    rng = np.random.default_rng(0)
    for t in range(600):
        n = int(rng.integers(1, 60))
        y, p = rng.integers(0, 3, n), rng.integers(0, 3, n)
        if t % 7 == 0:
            p[:] = rng.integers(0, 3)  # one class predicted for every row
        if t % 11 == 0:
            y[:] = rng.integers(0, 3)  # one class present
        for avg in ("weighted", "macro"):
            assert f1_from_counts(y, p, 3, avg) == f1_score(y, p, labels=[0, 1, 2], zero_division=0, average=avg)
