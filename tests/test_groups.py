"""Backbone groups (``a+b``): members cached on their own, pooled features concatenated, recorded member by member
in the checkpoint, rebuilt and checked by predict_test; token fusions refuse a group."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from msa.backbones import BackboneError, BackboneGroup, text_backbone
from msa.cli import UserError
from msa.features import extract_features
from phase0 import data_cleaner
from phase1 import main as phase1
from phase4 import predict_test
from tests.tiny_models import tiny_bert, tiny_vit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("groups")
    return {"a": tiny_bert(tmp / "bert_a", seed=0), "b": tiny_bert(tmp / "bert_b", seed=1),
            "vit": tiny_vit(tmp / "vit"), "tmp": tmp}


def test_group_features_are_the_members_side_by_side(models, synthetic_root, tmp_path):
    group = text_backbone(f"{models['a']}+{models['b']}")
    assert isinstance(group, BackboneGroup) and group.info.dim == 64
    assert [m["name"] for m in group.info.preprocessing["members"]] == [str(models["a"]), str(models["b"])]
    guids = ["1", "2", "3"]
    fs = extract_features(guids, synthetic_root / "data", group, None, tmp_path, progress=False)
    one = [extract_features(guids, synthetic_root / "data", text_backbone(str(models[k])), None, tmp_path,
                            progress=False) for k in ("a", "b")]
    assert torch.allclose(fs.pooled["text"], torch.cat([o.pooled["text"] for o in one], dim=1))
    assert all(o.stats["text"]["computed"] == 0 for o in one)  # the group's members were cached on their own
    assert fs.backbones["text"]["name"] == group.info.name
    with pytest.raises(UserError, match="needs one text backbone"):
        extract_features(guids, synthetic_root / "data", group, None, tmp_path, tokens=["text"], progress=False)


def test_bad_group_names_are_clear_errors(models):
    for name in ("minilm+", f"{models['a']}+{models['a']}"):
        with pytest.raises(BackboneError, match="two or more different names"):
            text_backbone(name)


def test_a_model_on_a_group_trains_and_predicts(models, synthetic_root, tmp_path):
    work = tmp_path / "work"
    data_cleaner.main(["--data-root", str(synthetic_root), "--work-dir", str(work), "--folds", "0"])
    res = tmp_path / "results"
    assert phase1.main(["--data-root", str(synthetic_root), "--work-dir", str(work), "--cache-dir",
                        str(tmp_path / "cache"), "--text-backbone", f"{models['a']}+{models['b']}",
                        "--image-backbone", str(models["vit"]), "--seeds", "1", "--num-epochs", "2", "--no-probe",
                        "--results-dir", str(res), "--figures-dir", str(tmp_path / "fig")]) == 0
    cfg = json.loads((res / "base-s1" / "checkpoint" / "config.json").read_text()) \
        if (res / "base-s1").is_dir() else json.loads(next(res.glob("*-s1/checkpoint/config.json")).read_text())
    assert cfg["model"]["specs"][0] == {"name": "text", "dim": 64, "tokens": False}
    assert len(cfg["backbones"]["text"]["preprocessing"]["members"]) == 2
    out = tmp_path / "predict.txt"
    ck = next(res.glob("*-s1/checkpoint"))
    assert predict_test.main(["--checkpoint", str(ck), "--data-root", str(synthetic_root), "--output", str(out),
                              "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(synthetic_root / "test_without_label.txt"))
