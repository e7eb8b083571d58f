"""Phase 1 and predict_test end to end on synthetic data with tiny local Hugging Face models."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from msa.cli import UserError
from phase0 import data_cleaner
from phase1 import main as phase1
from phase4 import predict_test
from tests.conftest import REPO
from tests.tiny_models import tiny_bert, tiny_vit


@pytest.fixture(scope="module")
def setup(faulty_dataset, tmp_path_factory):
    root, _ = faulty_dataset
    tmp = tmp_path_factory.mktemp("phase1")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "0"])
    models = {"bert": tiny_bert(tmp / "bert"), "vit": tiny_vit(tmp / "vit")}
    base = ["--data-root", str(root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"),
            "--text-backbone", str(models["bert"]), "--image-backbone", str(models["vit"]),
            "--results-dir", str(tmp / "results"), "--figures-dir", str(tmp / "figures")]
    return {"root": root, "work": work, "tmp": tmp, "base": base, **models}


@pytest.fixture(scope="module")
def trained(setup):
    assert phase1.main(setup["base"] + ["--name", "base", "--seeds", "1,2", "--num_epochs", "3"]) == 0
    return setup


def test_phase1_writes_a_run_folder_per_seed(trained):
    res = trained["tmp"] / "results"
    for seed in (1, 2):
        run = res / f"base-s{seed}"
        for name in ("config.json", "history.csv", "metrics.json", "val_predictions.csv",
                     "checkpoint/model.safetensors", "checkpoint/config.json", "figures/training_curves.png",
                     "figures/confusion_matrix.png"):
            assert (run / name).is_file(), name
        config = json.loads((run / "config.json").read_text())
        assert config["seed"] == seed and config["labels"] == ["negative", "neutral", "positive"]
        assert config["split"]["sha256"] and config["backbones"]["text"]["weights_sha256"]
        preds = pd.read_csv(run / "val_predictions.csv")
        assert {"guid", "label", "pred", "p_negative", "p_neutral", "p_positive"} <= set(preds.columns)
        assert len(preds) == config["split"]["val"]
    summary = json.loads((res / "base_summary.json").read_text())
    assert summary["runs"]["weighted_f1"]["n"] == 2 and "probe" in summary
    assert "±" in (res / "base_summary.md").read_text()
    assert (trained["tmp"] / "figures" / "base_confusion_matrix.png").is_file()


def test_second_run_uses_the_feature_cache(trained, caplog):
    caplog.set_level("INFO")
    phase1.main(trained["base"] + ["--name", "again", "--num-epochs", "1", "--no-probe"])
    assert "text features: 0 of" in caplog.text and "image features: 0 of" in caplog.text


def test_token_fusion_runs(trained):
    assert phase1.main(trained["base"] + ["--name", "xattn", "--feature-fusion", "cross_attention",
                                          "--num-epochs", "2", "--no-probe"]) == 0
    ck = json.loads((trained["tmp"] / "results" / "xattn-s42" / "checkpoint" / "config.json").read_text())
    assert ck["token_modalities"] == ["text"]  # the pooled image queries the text tokens (seed 002)


def test_predict_writes_every_test_guid_in_order(trained, tmp_path):
    out = tmp_path / "predict.txt"
    ck = trained["tmp"] / "results" / "base-s1" / "checkpoint"
    assert predict_test.main(["--checkpoint", str(ck), "--data-root", str(trained["root"]), "--output", str(out),
                              "--cache-dir", str(trained["tmp"] / "cache"), "--probabilities",
                              str(tmp_path / "p.csv")]) == 0
    test = pd.read_csv(trained["root"] / "test_without_label.txt", dtype=str)
    pred = pd.read_csv(out, dtype=str)
    assert list(pred.columns) == ["guid", "tag"] and pred["guid"].tolist() == test["guid"].tolist()
    assert set(pred["tag"]) <= {"negative", "neutral", "positive"}
    assert {"test_noimage", "test_zero", "test/../bad"} <= set(pred["guid"])
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(test)
    prov = json.loads((tmp_path / "predict.txt.provenance.json").read_text())
    assert prov["checkpoint"] == str(ck.resolve()) and prov["rows"] == len(test)
    assert sum(prov["counts"].values()) == len(test) and len(prov["model_sha256"]) == 64


def test_predict_with_the_token_fusion(trained, tmp_path):
    ck = trained["tmp"] / "results" / "xattn-s42" / "checkpoint"
    out = tmp_path / "p.txt"
    assert predict_test.main(["--checkpoint", str(ck), "--data-root", str(trained["root"]), "--output", str(out),
                              "--cache-dir", str(trained["tmp"] / "cache")]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(trained["root"] / "test_without_label.txt"))


@pytest.mark.parametrize("field, value, message", [
    ("labels", ["neg", "pos"], "predicts labels"),
    ("weights", "0" * 64, "features would not match"),
])
def test_predict_refuses_a_mismatched_checkpoint(trained, tmp_path, field, value, message):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained["tmp"] / "results" / "base-s1" / "checkpoint", ck)
    cfg = json.loads((ck / "config.json").read_text())
    if field == "labels":
        cfg["labels"] = value
    else:
        cfg["backbones"]["image"]["weights_sha256"] = value
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        predict_test.main(["--checkpoint", str(ck), "--data-root", str(trained["root"]),
                           "--output", str(tmp_path / "o.txt"), "--cache-dir", str(trained["tmp"] / "cache")])
    assert not (tmp_path / "o.txt").exists()


def test_phase1_without_phase0_is_a_clear_error(setup, tmp_path):
    out = subprocess.run([sys.executable, "phase1/main.py", "--work-dir", str(tmp_path), "--data-root",
                          str(setup["root"])], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "phase 0" in out.stderr and "Traceback" not in out.stderr


def test_predict_without_a_model_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "phase4/predict_test.py", "--checkpoint", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "phase1/main.py" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("script", ["phase1/main.py", "phase4/predict_test.py"])
def test_help(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "--data-root" in out.stdout and "usage" in out.stdout


def test_seed_preset_with_tiny_bert_and_swinv2(setup, tmp_path, monkeypatch):
    """configs/seed_bert_swinv2.json resolves its folders under pretrained_models/ like a user's checkout."""
    from tests.tiny_models import tiny_swinv2

    tiny_bert(tmp_path / "pretrained_models" / "bert-base-uncased")
    tiny_swinv2(tmp_path / "pretrained_models" / "swinv2-base-patch4-window8-256")
    monkeypatch.chdir(tmp_path)
    assert phase1.main(["--data-root", str(setup["root"]), "--work-dir", str(setup["work"]),
                        "--preset", str(REPO / "configs" / "seed_bert_swinv2.json"), "--num-epochs", "1",
                        "--no-probe", "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]) == 0
    cfg = json.loads((tmp_path / "r" / "Phase1_Baseline-s42" / "config.json").read_text())
    assert cfg["backbones"]["text"]["architecture"] == "BertModel"
    assert "Swinv2" in cfg["backbones"]["image"]["architecture"]
    assert cfg["train"]["learning_rate"] == 5e-5 and cfg["train"]["num_epochs"] == 1  # preset, then the flag
    assert cfg["backbones"]["text"]["preprocessing"]["pooling"] == "cls"


def test_one_post_latency_benchmark_predicts_new_posts_one_by_one(trained, capsys):
    """benchmarks/bench_predict.py: the model loaded once, then each test post predicted alone from an empty
    cache, with the same probabilities as predict_test gives it."""
    from benchmarks import bench_predict

    ck = trained["tmp"] / "results" / "base-s1" / "checkpoint"
    assert bench_predict.main(["--data-root", str(trained["root"]), "--checkpoint", str(ck), "--posts", "3"]) == 0
    out = capsys.readouterr().out
    assert "1 member(s)" in out and "next 3 posts one by one: median" in out
    assert out.strip().splitlines()[-1].startswith("post_ms_median=")


def test_logistic_probe_in_threads_equals_one_after_the_other():
    from types import SimpleNamespace

    import numpy as np
    import torch

    from msa.baseline import logistic_probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 24)) + y[:, None] * 0.3
    fs = SimpleNamespace(pooled={"text": torch.tensor(x[:, :12], dtype=torch.float32),
                                 "image": torch.tensor(x[:, 12:], dtype=torch.float32)})
    data = SimpleNamespace(labels=y, train_idx=np.arange(240), val_idx=np.arange(240, 300))
    one, two = logistic_probe(fs, data, n_jobs=1), logistic_probe(fs, data, n_jobs=2)
    assert one["C"] == two["C"]
    assert {k: round(v, 9) for k, v in one.items() if isinstance(v, float)} == \
        {k: round(v, 9) for k, v in two.items() if isinstance(v, float)}
    assert one["weighted_f1"] > 0.4  # the features carry the label: the probe learns something
