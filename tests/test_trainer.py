"""Trainer and checkpoints on random features: learning, early stopping, determinism, atomic checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from msa.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from msa.cli import UserError
from msa.data import LABELS
from msa.features import FeatureSet
from msa.fusions import ModalitySpec, MultimodalClassifier
from msa.losses import build_loss
from msa.trainer import FeatureDataset, TrainConfig, fit, make_loader, predict_proba


def _features(n=240, seed=0, tokens=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers_t, centers_i = torch.randn(3, 12, generator=g) * 2, torch.randn(3, 10, generator=g) * 2
    fs = FeatureSet(guids=[str(i) for i in range(n)])
    fs.pooled["text"] = centers_t[y] + torch.randn(n, 12, generator=g) * 1.5
    fs.pooled["image"] = centers_i[y] + torch.randn(n, 10, generator=g) * 1.5
    if tokens:
        fs.tokens["text"] = [centers_t[y[i]] + torch.randn(int(3 + i % 5), 12, generator=g) for i in range(n)]
    return fs, y.numpy()


def _setup(fusion="concat", tokens=False, seed=0):
    fs, y = _features(tokens=tokens)
    tr, va = list(range(0, 180)), list(range(180, 240))
    tok = ["text"] if tokens else []
    specs = [ModalitySpec("text", 12, tokens), ModalitySpec("image", 10)]
    torch.manual_seed(seed)
    model = MultimodalClassifier(specs, fusion, hidden=32, dropout=0.1)
    train = FeatureDataset(fs, tr, y[tr], ["text", "image"], tok)
    val = FeatureDataset(fs, va, y[va], ["text", "image"], tok)
    return model, train, val


@pytest.mark.parametrize("fusion, tokens", [("concat", False), ("attention_add", False), ("cross_attention", True)])
def test_fit_learns_and_writes_history_and_checkpoint(tmp_path, fusion, tokens):
    model, train, val = _setup(fusion, tokens)
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=8, batch_size=32, patience=0, seed=1)
    ck = {"model": model.config(), "labels": list(LABELS), "backbones": {}}
    res = fit(model, build_loss("ce"), train, val, cfg, LABELS, run_dir=tmp_path, checkpoint_config=ck,
              progress=False)
    assert res["best_metrics"]["weighted_f1"] > 0.8
    hist = pd.read_csv(tmp_path / "history.csv")
    assert len(hist) == 8 and {"train_loss", "val_loss", "weighted_f1", "f1_neutral", "ece", "lr"} <= set(hist.columns)
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    best = int(hist["weighted_f1"].idxmax())
    assert res["best_epoch"] == hist["epoch"].iloc[best]
    # the checkpoint holds the best epoch, and rebuilds from its folder alone
    loaded, cfg_loaded = load_checkpoint(tmp_path / "checkpoint")
    p1, _ = predict_proba(loaded, make_loader(val, 64, False, 0))
    p2, _ = predict_proba(res["model"], make_loader(val, 64, False, 0))
    assert torch.allclose(torch.from_numpy(p1), torch.from_numpy(p2), atol=1e-6)
    assert cfg_loaded["labels"] == list(LABELS)


def test_same_seed_same_metrics_on_cpu():
    runs = []
    for _ in range(2):
        model, train, val = _setup(seed=3)
        cfg = TrainConfig(num_epochs=3, batch_size=16, seed=5, patience=0)
        runs.append(fit(model, build_loss("weighted_ce", class_counts=[60, 30, 90]), train, val, cfg, LABELS,
                        progress=False)["history"])
    for a, b in zip(*runs):
        assert a["train_loss"] == b["train_loss"] and a["weighted_f1"] == b["weighted_f1"]


@pytest.mark.parametrize("mp", ["no", "bf16"])
def test_direct_torch_steps_train_as_accelerates_wrappers_do(monkeypatch, mp):
    """One process without a gradient scaler clips and steps through torch directly (msa.trainer._step_functions);
    forced through Accelerate's wrappers the run gives the same history and weights, bit for bit."""
    from msa import trainer

    def run(direct: bool):
        calls = []
        real = trainer._step_functions

        def spy(acc, model, optimizer, scheduler):
            if direct:
                clip, step = real(acc, model, optimizer, scheduler)
            else:
                clip = lambda max_norm: acc.clip_grad_norm_(model.parameters(), max_norm)  # noqa: E731
                step = lambda: (optimizer.step(), scheduler.step())  # noqa: E731
            calls.append(clip)
            return clip, step

        monkeypatch.setattr(trainer, "_step_functions", spy)
        model, train, val = _setup("attention_add", seed=4)
        cfg = TrainConfig(learning_rate=5e-3, num_epochs=4, batch_size=16, seed=2, patience=0, grad_clip=0.05,
                          mixed_precision=mp)
        res = fit(model, build_loss("focal", class_counts=[60, 30, 90]), train, val, cfg, LABELS, progress=False)
        assert len(calls) == 1
        return res["history"], {k: v.clone() for k, v in res["model"].state_dict().items()}

    (h_direct, w_direct), (h_wrapped, w_wrapped) = run(True), run(False)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in h_direct] == \
        [{k: v for k, v in r.items() if k not in drop} for r in h_wrapped]
    assert all(torch.equal(w_direct[k], w_wrapped[k]) for k in w_direct)


def test_early_stopping_stops():
    model, train, val = _setup()
    cfg = TrainConfig(learning_rate=0.0, num_epochs=20, patience=2, warmup_ratio=0.0)  # nothing can improve
    res = fit(model, build_loss("ce"), train, val, cfg, LABELS, progress=False)
    assert len(res["history"]) == 3 and res["best_epoch"] == 1


def test_checkpoint_is_replaced_atomically_and_damage_is_reported(tmp_path):
    model, _, _ = _setup()
    d = tmp_path / "ck"
    save_checkpoint(d, model, {"model": model.config(), "labels": list(LABELS)})
    save_checkpoint(d, model, {"model": model.config(), "labels": list(LABELS), "v": 2})
    assert read_checkpoint_config(d)["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left behind
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could not be loaded"):
        load_checkpoint(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match="lacks model.safetensors"):
        load_checkpoint(d)
    with pytest.raises(UserError, match="missing or incomplete"):
        load_checkpoint(tmp_path / "nowhere")


def test_fine_tuning_starts_from_the_checkpoint(tmp_path):
    """train_run(init_from=...) continues the saved model and its loss state instead of a fresh one."""
    import numpy as np

    from msa.experiment import Labelled, train_run
    from msa.splits import Split

    fs, y = _features()
    split = Split("t", tmp_path / "s.csv", "0" * 64, pd.DataFrame())
    data = Labelled(fs.guids, np.asarray(y), split, list(range(180)), list(range(180, 240)))
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=4, patience=0, seed=1)
    first = train_run(tmp_path / "a", fs, data, fusion="concat", loss="acb", train_cfg=cfg, hidden=32, dropout=0.1,
                      args_record={}, progress=False)
    frozen = TrainConfig(learning_rate=0.0, num_epochs=1, patience=0, seed=2, warmup_ratio=0.0)
    again = train_run(tmp_path / "b", fs, data, fusion="add", loss="acb", train_cfg=frozen, hidden=8, dropout=0.0,
                      args_record={}, progress=False, init_from=tmp_path / "a" / "checkpoint")
    assert again["metrics"]["weighted_f1"] == pytest.approx(first["metrics"]["weighted_f1"])
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg_b["init_from"].endswith("checkpoint")
    ck = json.loads((tmp_path / "b" / "checkpoint" / "config.json").read_text())
    assert ck["model"]["fusion"] == "concat" and ck["model"]["hidden"] == 32  # the checkpoint's architecture


class _Stop(Exception):
    pass


@pytest.mark.parametrize("fusion, tokens, loss, sampler, mp", [("concat", False, "acb", "none", "no"),
                                                               ("cross_attention", True, "ce", "balanced", "no"),
                                                               ("add", False, "focal", "none", "bf16")])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, fusion, tokens, loss, sampler, mp):
    from msa.trainer import RESUME_FILE

    cfg = TrainConfig(learning_rate=3e-3, num_epochs=7, batch_size=32, patience=0, seed=3, sampler=sampler,
                      mixed_precision=mp)

    def run(run_dir, stop_at=None, resume=False):
        model, train, val = _setup(fusion, tokens, seed=5)
        ck = {"model": model.config(), "labels": list(LABELS), "backbones": {}}

        def on_epoch(row):
            if stop_at is not None and row["epoch"] == stop_at:
                raise _Stop

        return fit(model, build_loss(loss, class_counts=[60, 60, 60]), train, val, cfg, LABELS, run_dir=run_dir,
                   checkpoint_config=ck, progress=False, on_epoch=on_epoch, resume=resume)

    ref = run(tmp_path / "ref")
    assert not (tmp_path / "ref" / RESUME_FILE).exists()  # removed when training ends
    with pytest.raises(_Stop):
        run(tmp_path / "crash", stop_at=4)
    assert (tmp_path / "crash" / RESUME_FILE).is_file()
    resumed = run(tmp_path / "crash", resume=True)
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 8))
    assert resumed["best_epoch"] == ref["best_epoch"]
    assert resumed["best_metrics"]["weighted_f1"] == pytest.approx(ref["best_metrics"]["weighted_f1"], abs=1e-9)
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in ref["history"]],
                                                                         rel=1e-6)
    a = load_checkpoint(tmp_path / "ref" / "checkpoint")[0].state_dict()
    b = load_checkpoint(tmp_path / "crash" / "checkpoint")[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_damaged_resume_state_starts_over(tmp_path):
    from msa.trainer import RESUME_FILE

    (tmp_path / RESUME_FILE).write_bytes(b"not a torch file")
    model, train, val = _setup()
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=2, batch_size=32, patience=0, seed=1)
    res = fit(model, build_loss("ce"), train, val, cfg, LABELS, run_dir=tmp_path,
              checkpoint_config={"model": model.config(), "labels": list(LABELS), "backbones": {}},
              progress=False, resume=True)
    assert len(res["history"]) == 2


def test_a_killed_writers_temporaries_are_cleaned_when_the_run_starts_again(tmp_path):
    (tmp_path / ".resume_state.pt.ab12cd.tmp").write_bytes(b"half")
    (tmp_path / ".checkpoint.xy34").mkdir()
    (tmp_path / ".checkpoint.xy34" / "model.safetensors").write_bytes(b"half")
    model, train, val = _setup()
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, batch_size=32, patience=0, seed=1)
    fit(model, build_loss("ce"), train, val, cfg, LABELS, run_dir=tmp_path,
        checkpoint_config={"model": model.config(), "labels": list(LABELS), "backbones": {}}, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


@pytest.mark.parametrize("every, writes", [(3600.0, 1), (0.0, 6)])
def test_the_resume_state_is_written_after_the_first_epoch_then_every_few_seconds(tmp_path, monkeypatch, every,
                                                                                   writes):
    from msa import trainer

    epochs = []
    real = trainer._save_resume_state

    def counted(run_dir, cfg, epoch, *a):
        epochs.append(epoch)
        assert (Path(run_dir) / "history.csv").is_file()  # written with it
        return real(run_dir, cfg, epoch, *a)

    monkeypatch.setattr(trainer, "SAVE_EVERY_S", every)
    monkeypatch.setattr(trainer, "_save_resume_state", counted)
    model, train, val = _setup()
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=6, batch_size=32, patience=0, seed=1)
    fit(model, build_loss("ce"), train, val, cfg, LABELS, run_dir=tmp_path,
        checkpoint_config={"model": model.config(), "labels": list(LABELS), "backbones": {}}, progress=False)
    assert epochs == list(range(1, writes + 1))  # fast epochs: only after the first one (or every one with 0 s)
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == list(range(1, 7))  # complete at the end
    assert not (tmp_path / trainer.RESUME_FILE).exists()


def test_the_same_run_elsewhere_is_copied_not_trained_and_another_one_trains(tmp_path, monkeypatch):
    """train_run(same_as=...) copies a finished run whose config equals this one's but for the arguments (phase
    5's retrained text + image model is phase 3's run of the same recipe and seed); any other difference trains."""
    import numpy as np

    from msa import trainer
    from msa.experiment import Labelled, train_run
    from msa.splits import Split

    fs, y = _features()
    split = Split("t", tmp_path / "s.csv", "0" * 64, pd.DataFrame())
    data = Labelled(fs.guids, np.asarray(y), split, list(range(180)), list(range(180, 240)))
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=3, patience=0, seed=1)
    kw = dict(fusion="concat", loss="ce", hidden=16, dropout=0.1, progress=False)
    first = train_run(tmp_path / "p3" / "ce-s1", fs, data, train_cfg=cfg, args_record={"phase": 3}, **kw)
    fits = []
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: fits.append(1) or fit(*a, **k))

    same = train_run(tmp_path / "p5" / "m-s1", fs, data, train_cfg=cfg, args_record={"phase": 5}, **kw,
                     same_as=tmp_path / "p3" / "ce-s1")
    assert fits == [] and same["same_as"] == str(tmp_path / "p3" / "ce-s1")
    assert same["metrics"] == json.loads((tmp_path / "p3" / "ce-s1" / "metrics.json").read_text())
    assert same["metrics"]["weighted_f1"] == first["metrics"]["weighted_f1"]
    copied = tmp_path / "p5" / "m-s1"
    config = json.loads((copied / "config.json").read_text())
    assert config["arguments"] == {"phase": 5} and config["same_as"] == str(tmp_path / "p3" / "ce-s1")
    assert (copied / "checkpoint" / "model.safetensors").read_bytes() == \
        (tmp_path / "p3" / "ce-s1" / "checkpoint" / "model.safetensors").read_bytes()
    assert (copied / "figures" / "training_curves.png").is_file()

    other = TrainConfig(learning_rate=3e-3, num_epochs=3, patience=0, seed=2)  # another seed: trained
    train_run(tmp_path / "p5" / "m-s2", fs, data, train_cfg=other, args_record={}, **kw,
              same_as=tmp_path / "p3" / "ce-s1")
    assert fits == [1] and "same_as" not in json.loads((tmp_path / "p5" / "m-s2" / "config.json").read_text())
    (tmp_path / "p3" / "ce-s1" / "metrics.json").unlink()  # an unfinished run is never copied
    train_run(tmp_path / "p5" / "m-s3", fs, data, train_cfg=cfg, args_record={}, **kw,
              same_as=tmp_path / "p3" / "ce-s1")
    assert fits == [1, 1]


def test_mixed_precision_auto_is_bf16_on_a_cpu_with_native_bfloat16_and_the_environment_overrides(monkeypatch):
    from msa import backbones
    from msa.trainer import MIXED_PRECISION_ENV, resolve_mixed_precision

    monkeypatch.delenv(MIXED_PRECISION_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backbones, "native_bf16", lambda: True)
    assert resolve_mixed_precision("auto") == resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("auto", 128, 512) == "bf16"
    assert resolve_mixed_precision("auto", 64, 256) == "no"  # too small to gain (the fusion grid's heads)
    assert resolve_mixed_precision("bf16", 64, 256) == "bf16"
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setattr(backbones, "native_bf16", lambda: False)  # emulated bf16 would be slower: float32
    assert resolve_mixed_precision("auto") == "no"
    monkeypatch.setattr(backbones, "native_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU: as before, float32 heads
    assert resolve_mixed_precision("auto") == "no"
    monkeypatch.setenv(MIXED_PRECISION_ENV, "no")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no" and resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setenv(MIXED_PRECISION_ENV, "half")
    with pytest.raises(UserError, match=MIXED_PRECISION_ENV):
        resolve_mixed_precision("auto")
    with pytest.raises(UserError, match="unknown mixed precision"):
        resolve_mixed_precision("fp8")


def test_bf16_training_validates_in_float32_so_the_checkpoint_gives_the_recorded_predictions(tmp_path):
    """Under bf16 autocast the epochs train in bfloat16, but the validation predictions that pick the best epoch
    are float32: the saved checkpoint, loaded again, predicts exactly them; and one process may train in float32
    and in bf16 one after the other (Accelerate's process-wide state is started again)."""
    import numpy as np

    from msa.trainer import predict_rows

    fs, y = _features()
    runs = {}
    for mp in ("no", "bf16", "no"):
        model, train, val = _setup()
        cfg = TrainConfig(learning_rate=3e-3, num_epochs=4, batch_size=32, patience=0, seed=5, mixed_precision=mp)
        ck = {"model": model.config(), "labels": list(LABELS)}
        res = fit(model, build_loss("ce"), train, val, cfg, LABELS, run_dir=tmp_path / mp, checkpoint_config=ck,
                  progress=False)
        runs.setdefault(mp, []).append(res)
    bf = runs["bf16"][0]
    assert [h["train_loss"] for h in bf["history"]] != [h["train_loss"] for h in runs["no"][0]["history"]]
    assert [h["train_loss"] for h in runs["no"][0]["history"]] == [h["train_loss"] for h in runs["no"][1]["history"]]
    loaded, _ = load_checkpoint(tmp_path / "bf16" / "checkpoint")
    again = predict_rows(loaded, fs, bf["val_index"])
    np.testing.assert_array_equal(again, bf["val_proba"])
    np.testing.assert_array_equal(predict_rows(bf["model"], fs, bf["val_index"]), bf["val_proba"])
