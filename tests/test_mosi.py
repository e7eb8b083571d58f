"""Seed 004 (tasks/mosi): the MMSA metric sets against hand-computed values, the restricted unpickler (a pickle that
would run code is refused and nothing runs), validation and repair of MMSA files, the safetensors copy, every model
of the registry training on a small generated file, and the CLI's outputs, stamps and one-line errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from msa import mmsa
from msa.cli import UserError
from msa.metrics import MMSA_METRICS, mmsa_metrics, sims_classes
from msa.seq_models import (
    CMCBEP,
    ENCODERS,
    MODELS,
    POOLED_FUSIONS,
    RegressionConfig,
    SeqRegressor,
    SeqTensors,
    build_model,
    feature_stats,
    fit_regression,
    frame_pool,
    info_nce,
    load_seq_model,
    pool_frames,
    predict,
)
from tasks.mosi import run_mosi
from tests.conftest import REPO

SMALL = {"seq_lens": (12, 10, 8), "dims": (32, 5, 6)}
FAST = ["--epochs", "3", "--patience", "0", "--hidden", "16", "--batch-size", "32"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are small: one torch thread is much faster than two on a shared CPU (see --threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return mmsa.write_synthetic(tmp_path_factory.mktemp("mosi") / "small.pkl", n=400, seed=1, **SMALL)


@pytest.fixture(scope="module")
def small_data(small_file):
    return mmsa.load_mmsa(small_file)


def _dump(obj, path, protocol=4):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def _raw(n=6, seed=0):
    """A minimal valid MMSA dict (every split the same small arrays)."""
    rng = np.random.default_rng(seed)

    def split():
        return {"text": rng.standard_normal((n, 4, 8)).astype(np.float32),
                "audio": rng.standard_normal((n, 5, 3)).astype(np.float32),
                "vision": rng.standard_normal((n, 3, 2)).astype(np.float32),
                "audio_lengths": [5] * n, "vision_lengths": [3] * n,
                "id": [f"v{i}$_$0" for i in range(n)], "regression_labels": np.linspace(-1, 1, n).astype(np.float32)}

    return {"train": split(), "valid": split(), "test": split()}


# ------------------------------------------------------------------------------------------------- metrics
def test_mosi_metrics_hand_computed():
    truth = [-2.6, -0.4, 0.0, 0.0, 0.4, 1.6, 3.0, -1.0]
    pred = [-3.2, 0.2, -0.1, 0.0, 0.6, 2.4, 2.5, -0.4]
    m = mmsa_metrics(truth, pred, "mosi")
    assert list(m) == list(MMSA_METRICS["mosi"])
    # Has0: truth >= 0 F F T T T T T F, pred >= 0 F T F T T T T F -> rows 1 and 2 wrong
    assert m["Has0_acc_2"] == pytest.approx(6 / 8)
    # non-negative: P = R = 4/5 (F1 0.8, support 5); negative: P = R = 2/3 (support 3)
    assert m["Has0_F1_score"] == pytest.approx((5 * 0.8 + 3 * 2 / 3) / 8)
    # Non0: rows 2, 3 dropped; truth > 0 F F T T T F, pred > 0 F T T T T F -> row 1 wrong
    assert m["Non0_acc_2"] == pytest.approx(5 / 6)
    assert m["Non0_F1_score"] == pytest.approx((3 * 6 / 7 + 3 * 0.8) / 6)
    # clip +-2 and round: pred -2 0 0 0 1 2 2 0 vs truth -2 0 0 0 0 2 2 -1
    assert m["Mult_acc_5"] == pytest.approx(6 / 8)
    # clip +-3 and round (2.5 -> 2, half to even): pred -3 0 0 0 1 2 2 0 vs truth -3 0 0 0 0 2 3 -1
    assert m["Mult_acc_7"] == pytest.approx(5 / 8)
    assert m["MAE"] == pytest.approx(3.4 / 8)
    t, p = np.array(truth), np.array(pred)
    r = ((t - t.mean()) * (p - p.mean())).sum() / np.sqrt(((t - t.mean()) ** 2).sum() * ((p - p.mean()) ** 2).sum())
    assert m["Corr"] == pytest.approx(r)
    assert mmsa_metrics(truth, pred, "mosei") == m


def test_sims_metrics_hand_computed():
    truth = [-1.0, -0.8, -0.4, -0.1, 0.0, 0.1, 0.2, 0.8, 1.0, 0.6]
    pred = [-1.3, -0.5, -0.1, -0.2, 0.05, 0.1, 0.7, 0.9, 1.2, -0.2]
    m = mmsa_metrics(truth, pred, "sims")
    assert list(m) == list(MMSA_METRICS["sims"])
    # 2 classes (-1.01, 0], (0, 1.01]: truth 0 0 0 0 0 1 1 1 1 1, pred 0 0 0 0 1 1 1 1 1 0
    assert m["Mult_acc_2"] == pytest.approx(0.8)
    # 3 classes: truth 0 0 0 0 1 1 2 2 2 2, pred 0 0 0 0 1 1 2 2 2 0
    assert m["Mult_acc_3"] == pytest.approx(0.9)
    # 5 classes (edges -0.7 -0.1 0.1 0.7): truth 0 0 1 1 2 2 3 4 4 3, pred 0 1 1 1 2 2 3 4 4 1
    assert m["Mult_acc_5"] == pytest.approx(0.8)
    # F1 of the 2 classes: class 0 P = 4/5, R = 4/5; class 1 P = 4/5, R = 4/5 -> 0.8
    assert m["F1_score"] == pytest.approx(0.8)
    # MAE of the clipped values: |diffs| .0 .3 .3 .1 .05 0 .5 .1 0 .8
    assert m["MAE"] == pytest.approx(2.15 / 10)
    # a float32 label at an edge is compared in float32, as MMSA's numpy comparison does
    assert sims_classes(np.float32([-0.1, 0.1, 0.7, -0.7]), 3).tolist() == [0, 1, 2, 0]
    assert sims_classes(np.float32([-0.1, 0.1, 0.7, -0.7]), 5).tolist() == [1, 2, 3, 0]


def _mmsa_reference(y_pred, y_true, dataset):
    """MMSA's MetricsTop algorithms, re-stated loop for loop (clip, the interval loops, np.round, sklearn)."""
    from sklearn.metrics import accuracy_score, f1_score

    def macc(p, t):
        return np.sum(np.round(p) == np.round(t)) / float(len(t))

    if dataset == "sims":
        p, t = np.clip(y_pred, -1.0, 1.0), np.clip(y_true, -1.0, 1.0)
        out = {}
        for k, ms in ((2, [-1.01, 0.0, 1.01]), (3, [-1.01, -0.1, 0.1, 1.01]),
                      (5, [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01])):
            pa, ta = p.copy(), t.copy()
            for i in range(k):
                pa[np.logical_and(p > ms[i], p <= ms[i + 1])] = i
                ta[np.logical_and(t > ms[i], t <= ms[i + 1])] = i
            out[f"Mult_acc_{k}"] = macc(pa, ta)
            if k == 2:
                out["F1_score"] = f1_score(ta, pa, average="weighted")
        out["MAE"] = np.mean(np.absolute(p - t))
        out["Corr"] = np.corrcoef(p, t)[0][1]
        return out
    nz = np.array([i for i, e in enumerate(y_true) if e != 0])
    return {"Has0_acc_2": accuracy_score(y_pred >= 0, y_true >= 0),
            "Has0_F1_score": f1_score(y_true >= 0, y_pred >= 0, average="weighted"),
            "Non0_acc_2": accuracy_score(y_pred[nz] > 0, y_true[nz] > 0),
            "Non0_F1_score": f1_score(y_true[nz] > 0, y_pred[nz] > 0, average="weighted"),
            "Mult_acc_5": macc(np.clip(y_pred, -2.0, 2.0), np.clip(y_true, -2.0, 2.0)),
            "Mult_acc_7": macc(np.clip(y_pred, -3.0, 3.0), np.clip(y_true, -3.0, 3.0)),
            "MAE": np.mean(np.absolute(y_pred - y_true)), "Corr": np.corrcoef(y_pred, y_true)[0][1]}


@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_metrics_agree_with_the_mmsa_algorithm(dataset):
    rng = np.random.default_rng(0)
    scale, grid = (3.0, 3) if dataset == "mosi" else (1.0, 10)
    truth = (np.round(rng.uniform(-scale, scale, 400) * grid) / grid).astype(np.float32)  # many values at edges
    pred = np.concatenate([truth[:40], rng.uniform(-1.3 * scale, 1.3 * scale, 360)]).astype(np.float32)
    ours, ref = mmsa_metrics(truth, pred, dataset), _mmsa_reference(pred, truth, dataset)
    assert ours == pytest.approx({k: float(v) for k, v in ref.items()}, abs=1e-6)


def test_metric_edge_cases():
    m = mmsa_metrics([0.0, 0.0, 0.0], [0.5, -0.5, 0.1], "mosi")
    assert np.isnan(m["Non0_acc_2"]) and np.isnan(m["Corr"])  # no non-zero truth; constant truth
    with pytest.raises(ValueError, match="unknown dataset"):
        mmsa_metrics([1.0], [1.0], "iemocap")
    with pytest.raises(ValueError, match="finite"):
        mmsa_metrics([1.0, 2.0], [np.nan, 1.0], "mosi")


# -------------------------------------------------------------------------------------- restricted loading
class _Payload:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_restricted_loader_refuses_code_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    raw = _raw()
    raw["train"]["annotations"] = _Payload(marker)
    bad = _dump(raw, tmp_path / "evil.pkl")
    with pytest.raises(mmsa.UnsafePickleError, match=r"evil\.pkl.*builtins\.exec") as exc:
        mmsa.restricted_load(bad)
    assert isinstance(exc.value, UserError)
    assert not marker.exists()  # nothing ran
    with pytest.raises(UserError, match="builtins.exec"):
        mmsa.load_mmsa(bad)
    assert not marker.exists()
    pickle.loads(bad.read_bytes())  # the control: an ordinary unpickler runs the payload
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("module,name", [("os", "system"), ("numpy", "load"), ("subprocess", "Popen"),
                                         ("numpy.testing", "runstring"), ("torch._utils", "_rebuild_tensor_v2")])
def test_restricted_loader_refuses_any_other_global(tmp_path, module, name):
    # protocol 0 GLOBAL opcode naming the callable, then a call: refused at the lookup, never imported
    path = tmp_path / "g.pkl"
    path.write_bytes(f"c{module}\n{name}\n(S'echo hi'\ntR.".encode())
    with pytest.raises(mmsa.UnsafePickleError, match=f"{module}.{name}"):
        mmsa.restricted_load(path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_loader_reads_numpy_pickles_of_every_protocol(tmp_path, protocol):
    raw = _raw()
    raw["train"]["raw_text"] = np.array(["ünïcode", "b"] * 3, dtype=object)
    raw["train"]["scalar"] = np.float32(1.5)
    raw["train"]["set"] = {1, 2}
    back = mmsa.restricted_load(_dump(raw, tmp_path / "ok.pkl", protocol))
    np.testing.assert_array_equal(back["train"]["text"], raw["train"]["text"])
    assert back["train"]["raw_text"].tolist() == raw["train"]["raw_text"].tolist()
    assert back["train"]["scalar"] == np.float32(1.5) and back["train"]["set"] == {1, 2}


def test_codecs_encode_only_latin1(tmp_path):
    path = tmp_path / "c.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(UserError, match="latin1"):
        mmsa.restricted_load(path)


def test_not_a_pickle_and_missing_file(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(mmsa.MMSAFormatError, match="not a readable pickle"):
        mmsa.restricted_load(junk)
    with pytest.raises(mmsa.MMSAFormatError, match="not found"):
        mmsa.load_mmsa(tmp_path / "nope.pkl")


# ----------------------------------------------------------------------------------- validation and repair
def test_synthetic_file_loads_with_repairs(small_file, small_data):
    d = small_data
    assert set(d.splits) == {"train", "valid", "test"}
    assert d.dims == {"text": 32, "audio": 5, "vision": 6}
    assert sum(sp.n for sp in d.splits.values()) == 400
    inf = [r for r in d.repairs if r["key"] == "audio" and "non-finite" in r["repair"]]
    assert len(inf) == 3 and all(r["count"] == 25 and "-inf" in r["repair"] for r in inf)
    for sp in d.splits.values():
        assert all(np.isfinite(x).all() for x in sp.features.values())
        assert sp.lengths["audio"].min() >= 1 and sp.lengths["audio"].max() <= 10
        assert len(set(sp.lengths["text"].tolist())) > 1  # from text_bert's mask row
        assert sp.ids[0].startswith("vid")


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["valid"].pop("audio"), r"split 'valid' has no 'audio'"),
    (lambda r: r["test"].pop("regression_labels"), r"split 'test' has no 'regression_labels'"),
    (lambda r: r.pop("valid"), r"no split 'valid'"),
    (lambda r: r["train"].update(vision=r["train"]["vision"][:4]), r"split 'train'.*different numbers of samples.*"
                                                                    r"vision=4"),
    (lambda r: r["train"].update(audio=r["train"]["audio"][:, :, 0]), r"'audio' must be a numeric array \(N, L, D\)"),
    (lambda r: r["valid"].update(vision=np.zeros((6, 3, 7), np.float32)), r"'vision' features have different widths"),
    (lambda r: r["train"]["regression_labels"].__setitem__(2, np.nan), r"1 regression_labels are not finite"),
    (lambda r: r["train"].update(audio_lengths=[5, 4, -1, 5, 5, 5]), r"'audio_lengths' has 1 negative"),
    (lambda r: r["train"].update(audio_lengths=[5, 4.5, 1, 5, 5, 5]), r"whole numbers"),
    (lambda r: r["train"].update(text="not features"), r"'text' must be a numeric array"),
    (lambda r: r["train"].update(audio=np.zeros((6, 0, 3), np.float32)), r"'audio' has shape \(6, 0, 3\).*at least "
                                                                           r"one frame"),
    (lambda r: r["valid"].update(vision=np.zeros((6, 3, 0), np.float32)), r"'vision' has shape \(6, 3, 0\)"),
])
def test_bad_files_give_clear_errors(tmp_path, mutate, match):
    raw = _raw()
    mutate(raw)
    with pytest.raises(mmsa.MMSAFormatError, match=match):
        mmsa.load_mmsa(_dump(raw, tmp_path / "bad.pkl"))


def _emptied(split):
    raw = _raw()
    raw[split] = {k: v[:0] for k, v in raw[split].items()}
    return raw


@pytest.mark.parametrize("split", mmsa.SPLITS)
def test_an_empty_split_is_an_error_before_any_training(tmp_path, capsys, split):
    from msa.cli import run_main

    path = _dump(_emptied(split), tmp_path / "empty.pkl")
    with pytest.raises(mmsa.MMSAFormatError, match=rf"empty\.pkl: split '{split}' is empty"):
        mmsa.load_mmsa(path)
    out = tmp_path / "out"
    assert run_main(run_mosi.main, ["--data", str(path), "--out", str(out), "--model", "mean", "--seeds", "1",
                                    *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"split '{split}' is empty" in err and "empty.pkl" in err, err
    assert not (out / "runs").exists() and not (out / "metrics.json").exists()  # nothing was trained or written


def test_huge_lengths_are_clipped_not_wrapped(tmp_path):
    raw = _raw()
    raw["train"]["audio_lengths"] = [1e30, 5, 3, 1e19, 5, 5]  # beyond int64: must not wrap to a negative length
    d = mmsa.load_mmsa(_dump(raw, tmp_path / "h.pkl"))
    assert d.splits["train"].lengths["audio"].tolist() == [5, 5, 3, 5, 5, 5]
    assert {(r["key"], r["count"]) for r in d.repairs} >= {("audio_lengths", 2)}


def test_repairs_are_counted(tmp_path):
    raw = _raw()
    raw["train"]["audio"][0, 0, 0] = -np.inf
    raw["train"]["audio"][1, 1, 1] = np.inf
    raw["train"]["vision"][2, 0, 0] = np.nan
    raw["train"]["audio_lengths"] = [5, 9, 7, 5, 0, 5]  # two longer than the sequence (5), one empty
    raw["valid"].pop("vision_lengths")
    raw["test"].pop("id")
    raw["test"]["regression_labels_T"] = np.zeros(6, np.float32)
    d = mmsa.load_mmsa(_dump(raw, tmp_path / "r.pkl"))
    rep = {(r["split"], r["key"]): r for r in d.repairs}
    assert rep[("train", "audio")]["count"] == 2 and "1 +inf, 1 -inf" in rep[("train", "audio")]["repair"]
    assert rep[("train", "vision")]["count"] == 1 and "NaN" in rep[("train", "vision")]["repair"]
    assert rep[("train", "audio_lengths")]["count"] == 2
    assert d.splits["train"].lengths["audio"].tolist() == [5, 5, 5, 5, 0, 5]
    assert d.splits["train"].features["audio"][0, 0, 0] == 0 and np.isfinite(d.splits["train"].features["audio"]).all()
    assert rep[("valid", "vision_lengths")]["count"] == 6 and d.splits["valid"].lengths["vision"].tolist() == [3] * 6
    assert d.splits["test"].ids == [f"test_{i}" for i in range(6)]
    assert "text" in d.splits["test"].unimodal_labels
    # only the three named modalities are required; a subset loads without the others
    raw["train"].pop("vision")
    sub = mmsa.load_mmsa(_dump(raw, tmp_path / "sub.pkl"), modalities=("text", "audio"))
    assert sub.modalities == ["text", "audio"]


def test_convert_round_trip(tmp_path, small_file, small_data):
    st, js = mmsa.convert(small_file, tmp_path / "copy")
    assert st.name == "copy.safetensors" and js.name == "copy.json"
    meta = json.loads(js.read_text())
    assert meta["format"] == mmsa.CONVERTED_FORMAT and len(meta["source_sha256"]) == 64
    for path in (st, js):  # either file of the pair names the copy
        d = mmsa.load_mmsa(path)
        assert d.repairs == [dict(r) for r in small_data.repairs]  # -inf kept in the copy, repaired on load
        for s, sp in d.splits.items():
            ref = small_data.splits[s]
            assert sp.ids == ref.ids and sp.raw_text == ref.raw_text
            np.testing.assert_array_equal(sp.labels, ref.labels)
            for m in mmsa.MODALITIES:
                np.testing.assert_array_equal(sp.features[m], ref.features[m])
                np.testing.assert_array_equal(sp.lengths[m], ref.lengths[m])
    with pytest.raises(mmsa.MMSAFormatError, match="already a converted copy"):
        mmsa.convert(st)
    js.unlink()
    with pytest.raises(mmsa.MMSAFormatError, match="copy.json not found"):
        mmsa.load_mmsa(st)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted copy of a small valid file: (safetensors path, JSON path, the JSON's dict)."""
    d = tmp_path_factory.mktemp("converted")
    st, js = mmsa.convert(_dump(_raw(), d / "c.pkl"), d / "c")
    return st, js, json.loads(js.read_text())


def _set(path, value):
    def edit(meta):
        *parents, last = path
        for k in parents:
            meta = meta[k]
        if value is _DROP:
            del meta[last]
        else:
            meta[last] = value(meta[last]) if callable(value) else value
    return edit


def _unlist(meta, split, key):
    """Remove an array from the JSON's listing (and its shape), leaving it in the safetensors file."""
    meta["splits"][split]["arrays"].remove(key)
    meta["splits"][split]["shapes"].pop(key)


_DROP = object()
_T = ("splits", "test")


@pytest.mark.parametrize("tamper, match", [
    ("[1, 2]", r"c\.json: expected a JSON object, got an array"),
    ('"hello"', r"c\.json: expected a JSON object, got a string"),
    ("TRUNCATE", r"c\.json is not valid JSON"),
    ("", r"c\.json is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, r"c\.json is not valid JSON"),
    (_set(("format",), _DROP), r"c\.json is not a converted MMSA file.*format None"),
    (_set(("splits",), _DROP), r"c\.json: 'splits' must be an object.*got nothing"),
    (_set(("splits",), [1, 2]), r"c\.json: 'splits' must be an object.*got an array"),
    (_set(("splits", "train"), 3), r"c\.json: split 'train' must be an object, got a number"),
    (_set(("splits", "extra"), {"arrays": [], "strings": {}}), r"c\.json: unknown split 'extra'"),
    (_set((*_T, "arrays"), _DROP), r"c\.json: split 'test' has no 'arrays'"),
    (_set((*_T, "strings"), ["id"]), r"c\.json: split 'test': 'strings' must be an object, got an array"),
    (_set((*_T, "strings", "id"), 7), r"c\.json: split 'test': strings 'id' must be an array of strings"),
    (_set((*_T, "strings", "id"), "v0"), r"c\.json: split 'test': strings 'id' must be an array of strings, got a "
                                         r"string"),
    (_set((*_T, "strings", "id"), [1] * 6), r"c\.json: split 'test': strings 'id'.*holding other values"),
    (_set((*_T, "strings", "id"), lambda v: v[:-1]), r"c\.json: split 'test': strings 'id' hold 5 values but the "
                                                     r"split has 6 samples"),
    (_set((*_T, "strings", "audio"), ["x"] * 6), r"c\.json: split 'test': 'audio' is both an array and"),
    (_set((*_T, "arrays"), lambda v: v + ["nope"]), r"c\.json: split 'test' lists the array 'nope', which "
                                                    r"c\.safetensors does not hold"),
    (_set((*_T, "arrays"), lambda v: v + v[:1]), r"c\.json: split 'test': 'arrays' must list distinct"),
    (_set(("splits", "valid", "shapes", "audio"), [6, 5, 4]),
     r"c\.json: split 'valid': 'audio' has shape \[6, 5, 3\] in c\.safetensors but \[6, 5, 4\] in the JSON"),
    (_set((*_T, "shapes"), "big"), r"c\.json: split 'test': 'shapes' must be an object, got a string"),
    (lambda m: _unlist(m, "test", "vision"), r"c\.json: c\.safetensors holds arrays the JSON does not list: "
                                            r"test/vision"),
])
def test_a_tampered_converted_json_is_a_clear_error(tmp_path, converted, tamper, match):
    st, js, meta = converted
    copy_st, copy_js = tmp_path / "c.safetensors", tmp_path / "c.json"
    copy_st.write_bytes(st.read_bytes())
    if callable(tamper):
        meta = json.loads(json.dumps(meta))
        tamper(meta)
        copy_js.write_text(json.dumps(meta))
    else:
        copy_js.write_text(js.read_text()[:300] if tamper == "TRUNCATE" else tamper)
    for path in (copy_st, copy_js):  # either file of the pair names the copy
        with pytest.raises(mmsa.MMSAFormatError, match=match):
            mmsa.load_mmsa(path)


@pytest.mark.parametrize("damage, match", [
    (lambda st, js: st.write_bytes(st.read_bytes()[:500]), r"c\.safetensors could not be read.*truncated"),
    (lambda st, js: st.write_bytes(b""), r"c\.safetensors could not be read"),
    (lambda st, js: (st.unlink(), st.mkdir()), r"c\.safetensors is a folder"),
    (lambda st, js: (js.unlink(), js.mkdir()), r"c\.json is a folder"),
    (lambda st, js: js.write_bytes(b"\xff\xfe{"), r"c\.json is not valid JSON"),
])
def test_a_damaged_converted_copy_is_a_clear_error(tmp_path, converted, capsys, damage, match):
    from msa.cli import run_main

    st, js, _ = converted
    copy_st, copy_js = tmp_path / "c.safetensors", tmp_path / "c.json"
    copy_st.write_bytes(st.read_bytes())
    copy_js.write_text(js.read_text())
    damage(copy_st, copy_js)
    with pytest.raises(mmsa.MMSAFormatError, match=match):
        mmsa.load_mmsa(copy_st)
    out = tmp_path / "out"
    assert run_main(run_mosi.main, ["--data", str(copy_st), "--out", str(out), "--model", "mean", "--seeds", "1",
                                    *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "c." in err and not out.exists(), err


def test_a_converted_copy_without_shapes_still_loads(tmp_path, converted):
    st, js, meta = converted
    assert meta["splits"]["train"]["shapes"]["text"] == [6, 4, 8]  # convert records every array's shape
    old = json.loads(json.dumps(meta))
    for entry in old["splits"].values():
        entry.pop("shapes")  # as written before shapes were recorded
    (tmp_path / "c.safetensors").write_bytes(st.read_bytes())
    (tmp_path / "c.json").write_text(json.dumps(old))
    assert mmsa.load_mmsa(tmp_path / "c.safetensors").splits["test"].n == 6


# --------------------------------------------------------------------------------------------------- models
def _tensors(data):
    return {s: SeqTensors(data.splits[s], data.modalities) for s in mmsa.SPLITS}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_learns_the_planted_signal(small_data, name):
    data, tensors = small_data, _tensors(small_data)
    torch.manual_seed(0)
    model = build_model(name, data.dims, hidden=16, dropout=0.0)
    model.set_normalization(feature_stats(data.splits["train"], data.modalities))
    res = fit_regression(model, tensors["train"], tensors["valid"],
                         RegressionConfig(epochs=8, patience=0, batch_size=32, learning_rate=3e-3, seed=0))
    assert 1 <= res["best_epoch"] <= 8 and len(res["history"]) == 8
    pred = predict(model, tensors["test"])
    assert pred.shape == (data.splits["test"].n,) and np.isfinite(pred).all()
    m = mmsa_metrics(data.splits["test"].labels, pred, "mosi")
    assert m["Corr"] > 0.3, m  # the planted signal is learnt (the label's noise caps Corr at ~0.92)


def test_every_fusion_and_encoder_runs_and_length_zero_is_safe(small_data):
    data = small_data
    batch = SeqTensors(data.splits["valid"], data.modalities).batch(torch.arange(6))
    for m in batch["lengths"]:
        batch["lengths"][m][0] = 0  # a sample with no frames at all
    for fusion in POOLED_FUSIONS:
        out = SeqRegressor(data.dims, "mean", fusion, hidden=16)(batch["x"], batch["lengths"])
        assert out["pred"].shape == (6,) and torch.isfinite(out["pred"]).all()
    for enc in ENCODERS:
        for model in (SeqRegressor(data.dims, enc, hidden=16), CMCBEP(data.dims, enc, hidden=16, lead="text")):
            out = model(batch["x"], batch["lengths"])
            loss, parts = model.losses(out, batch, torch.nn.L1Loss())
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(out["pred"]).all()
    assert set(parts) == {"main", "aux", "cl"}
    with pytest.raises(UserError, match="two modalities"):
        CMCBEP({"text": 32}, hidden=16)
    with pytest.raises(UserError, match="lead"):
        CMCBEP(data.dims, hidden=16, lead="smell")
    with pytest.raises(UserError, match="unknown model"):
        build_model("gru", data.dims)


def test_cmcbep_modules(small_data):
    data = small_data
    batch = SeqTensors(data.splits["train"], data.modalities).batch(torch.arange(16))
    torch.manual_seed(0)
    auto = CMCBEP(data.dims, "mean", hidden=16)
    out = auto(batch["x"], batch["lengths"])
    a = out["lead_weights"]
    assert a.shape == (16, 3) and torch.allclose(a.sum(1), torch.ones(16)) and (a > 0).all()  # per-sample soft lead
    assert len(auto.cross) == 6  # every ordered pair
    fixed = CMCBEP(data.dims, "mean", hidden=16, lead="audio")
    assert sorted(fixed.cross) == ["text__audio", "vision__audio"]  # the lead supplements the others only
    assert fixed(batch["x"], batch["lengths"])["lead_weights"][:, 1].eq(1).all()
    w = out["balance"]
    assert w.shape == (4,) and torch.allclose(w, torch.full((4,), 0.25))  # equal at start, then learnt
    manual = w[0] * out["fused"] + sum(w[i + 1] * out["unimodal"][m] for i, m in enumerate(auto.names))
    assert torch.allclose(out["pred"], manual)
    # InfoNCE: aligned embeddings score lower than shuffled ones
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    aligned = info_nce({"a": z, "b": z}, 0.1)
    shuffled = info_nce({"a": z, "b": z[torch.randperm(8)]}, 0.1)
    assert aligned < shuffled
    assert float(info_nce({"a": z[:1], "b": z[:1]}, 0.1)) == 0.0


def test_frame_pooling(small_data):
    z = torch.arange(1.0, 8.0).view(1, 7, 1).repeat(2, 1, 1)
    z[1, 5:] = 0  # the second sample has 5 real frames
    pooled, mask = pool_frames(z, torch.tensor([7, 5]), 3)
    assert pooled.squeeze(-1).tolist() == [[2.0, 5.0, 7.0], [2.0, 4.5, 0.0]]  # means over real frames only
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert frame_pool({"text": 50, "audio": 500, "vision": 375}, 100) == {"audio": 5, "vision": 4}
    assert frame_pool({"audio": 500}, 0) == {}
    data = small_data
    model = build_model("transformer", data.dims, hidden=16, pool={"audio": 4})
    batch = SeqTensors(data.splits["valid"], data.modalities).batch(torch.arange(8))
    assert torch.isfinite(model(batch["x"], batch["lengths"])["pred"]).all()
    assert model.config()["pool"] == {"audio": 4}


def test_checkpoint_rebuilds_the_model(tmp_path, small_data):
    from msa.checkpoint import save_checkpoint

    data = small_data
    model = build_model("cmcbep", data.dims, hidden=16, lead="text", pool={"text": 3})
    model.set_normalization(feature_stats(data.splits["train"], data.modalities))
    save_checkpoint(tmp_path / "ckpt", model, {"model": model.config()})
    back, _ = load_seq_model(tmp_path / "ckpt")
    t = SeqTensors(data.splits["test"], data.modalities)
    np.testing.assert_allclose(predict(back, t), predict(model, t), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_end_to_end(tmp_path, small_file, small_data, capsys):
    out = tmp_path / "out"
    args = ["--data", str(small_file), "--model", "mean,cmcbep+attention", "--seeds", "1,2", "--out", str(out), *FAST]
    assert run_mosi.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mean" and set(metrics["models"]) == {"mean", "cmcbep+attention"}
    for split in ("valid", "test"):
        assert list(metrics[split]) == list(MMSA_METRICS["mosi"])
        assert all(0 <= metrics[split][k] <= 1 for k in metrics[split] if k not in ("MAE", "Corr"))
    per_seed = metrics["models"]["mean"]["test"]["MAE"]["per_seed"]
    assert len(per_seed) == 2 and metrics["test"]["MAE"] == pytest.approx(np.mean(per_seed))
    pred = pd.read_csv(out / "test_predictions.csv")
    assert list(pred.columns) == ["id", "label", "pred"] and pred["id"].tolist() == small_data.splits["test"].ids
    table = pd.read_csv(out / "table.csv")
    assert table["model"].tolist() == ["mean", "cmcbep+attention"] and "Mult_acc_7_std" in table
    assert "± " in (out / "table.md").read_text()
    assert len(pd.read_csv(out / "runs.csv")) == 4
    assert (out / "figures" / "pred_vs_label.png").stat().st_size > 1000
    run = out / "runs" / "cmcbep+attention-s1"
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert {"test_lead_share", "test_lead_weight_mean", "balance_weights"} <= set(run_metrics)
    assert sum(run_metrics["balance_weights"].values()) == pytest.approx(1, abs=1e-3)
    assert (run / "checkpoint" / "model.safetensors").is_file()
    back, _ = load_seq_model(run / "checkpoint")
    assert isinstance(back, CMCBEP) and back.fusion_name == "attention"
    capsys.readouterr()
    assert run_mosi.main(args) == 0 and "up to date" in capsys.readouterr().out
    assert run_mosi.main(args + ["--force", "--seeds", "1"]) == 0


def test_cli_sims_convert_and_synthetic(tmp_path):
    pkl = tmp_path / "sims.pkl"
    assert run_mosi.main(["--make-synthetic", str(pkl), "--dataset", "sims", "--synthetic-samples", "120"]) == 0
    assert run_mosi.main(["--data", str(pkl), "--convert"]) == 0
    st = tmp_path / "sims.safetensors"
    assert st.is_file() and (tmp_path / "sims.json").is_file()
    out = tmp_path / "sims_out"
    assert run_mosi.main(["--data", str(st), "--dataset", "sims", "--model", "cmcbep", "--unimodal-labels",
                          "--cmcbep-encoder", "mean", "--lead", "text", "--seeds", "3", "--out", str(out),
                          "--epochs", "2", "--hidden", "16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["test"]) == list(MMSA_METRICS["sims"])


@pytest.mark.parametrize("flag_args", [
    ["--epochs", "0"], ["--epochs", "2.5"], ["--patience", "-1"], ["--batch-size", "0"], ["--learning-rate", "0"],
    ["--learning-rate", "inf"], ["--weight-decay", "-0.1"], ["--warmup-ratio", "1.5"], ["--hidden", "0"],
    ["--hidden", "100000"], ["--dropout", "1"], ["--dropout", "-0.1"], ["--max-frames", "-1"], ["--threads", "-1"],
    ["--cl-weight", "-1"], ["--cl-temperature", "0"], ["--aux-weight", "nan"], ["--seeds", "-5"],
    ["--seeds", "4294967296"], ["--out", "FILE"], ["--convert-out", "DIR"],
], ids=lambda a: " ".join(a))
def test_bad_flag_values_exit_2_naming_the_flag(tmp_path, capsys, flag_args):
    from msa.cli import run_main

    ok = _dump(_raw(), tmp_path / "ok.pkl")
    out = tmp_path / "out"
    flag_args = [str(ok) if a == "FILE" else str(tmp_path) if a == "DIR" else a for a in flag_args]
    argv = ["--data", str(ok), "--model", "mean", "--seeds", "1", "--epochs", "1", "--hidden", "8", "--out", str(out),
            *(["--convert"] if flag_args[0] == "--convert-out" else []), *flag_args]
    capsys.readouterr()
    try:
        rc = run_main(run_mosi.main, argv)
    except SystemExit as exc:  # argparse's usage error
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "error" in err and "Traceback" not in err, err
    assert flag_args[0] in err, err  # the message names the flag
    assert not out.exists() and not (tmp_path / "ok.safetensors").exists()


@pytest.mark.parametrize("flag_args, message", [
    (["--synthetic-samples", "0"], "--synthetic-samples"), (["--synthetic-samples", "5"], "--synthetic-samples"),
    (["--synthetic-samples", "10000000"], "--synthetic-samples"), (["--synthetic-seed", "-1"], "--synthetic-seed"),
])
def test_bad_synthetic_flags_exit_2(tmp_path, capsys, flag_args, message):
    from msa.cli import run_main

    target = tmp_path / "syn.pkl"
    try:
        rc = run_main(run_mosi.main, ["--make-synthetic", str(target), *flag_args])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "error" in err and message in err and not target.exists(), err
    with pytest.raises(SystemExit) as exc:  # a folder is not a file name
        run_mosi.main(["--make-synthetic", str(tmp_path)])
    assert exc.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_patience_zero_still_means_never():
    assert run_mosi.build_parser().parse_args(["--patience", "0"]).patience == 0
    assert "(0 = never)" in run_mosi.build_parser().format_help()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from msa.cli import run_main

    marker = tmp_path / "ran.txt"
    raw = _raw()
    raw["valid"]["id"] = _Payload(marker)
    evil = _dump(raw, tmp_path / "evil.pkl")
    cases = [(["--data", str(tmp_path / "missing.pkl")], "not found"),
             (["--data", str(evil), "--model", "gru"], "unknown model 'gru'"),
             (["--data", str(evil), "--modalities", "text", "--model", "cmcbep"], "two modalities"),
             (["--data", str(evil), "--lead", "audio", "--modalities", "text,vision"], "--lead must be"),
             ([], "--data FILE is required")]
    for argv, msg in cases:
        assert run_main(run_mosi.main, [*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err, err
    # the real entry point: the unsafe pickle is one line on stderr, no traceback, and its code never ran
    r = subprocess.run([sys.executable, "tasks/mosi/run_mosi.py", "--data", str(evil), "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: " in r.stderr and "refused to unpickle the global builtins.exec" in r.stderr
    assert not marker.exists()
    help_text = run_mosi.build_parser().format_help()
    for flag in ("--data", "--dataset", "--model", "--out", "--seeds", "--epochs", "--force", "--convert", "--lead",
                 "--cl-weight", "--loss", "--threads"):
        assert flag in help_text
