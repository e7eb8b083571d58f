"""Numeric side features (msa.side + msa.fusions.SideBranch): the registry, the cache, the CSV reader's errors,
train-only statistics in the checkpoint, every fusion, and the phases end to end on a synthetic set whose label
is planted in a CSV column only (tiny random backbones carry no signal)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from msa import side
from msa.checkpoint import load_checkpoint
from msa.cli import UserError
from msa.data import LABEL2ID, LABELS
from msa.features import FeatureSet
from msa.fusions import FUSIONS, SIDE, ModalitySpec, MultimodalClassifier, SideBranch
from msa.synthetic import make_dataset
from phase0 import data_cleaner
from phase1 import main as phase1
from phase2 import run_phase2 as phase2
from phase3 import run_phase3 as phase3
from phase4 import predict_test
from phase4 import run_phase4 as phase4
from phase5 import run_phase5 as phase5
from tests.tiny_models import tiny_bert, tiny_vit

NAN = float("nan")


# ------------------------------------------------------------------------------------------- the model part
def test_fit_uses_the_given_rows_and_flags_only_columns_with_missing_values():
    x = torch.tensor([[1.0, NAN, 5.0], [3.0, 2.0, 5.0], [5.0, 4.0, 5.0]])
    st = SideBranch.fit(x, ["a", "b", "c"])
    assert st["fill"] == pytest.approx([3.0, 3.0, 5.0]) and st["mean"] == pytest.approx([3.0, 3.0, 5.0])
    assert st["std"][0] == pytest.approx(math.sqrt(8 / 3)) and st["std"][2] == 1.0  # constant column: std 1
    assert st["indicators"] == [1]
    branch = SideBranch(**st, hidden=8, dropout=0.0)
    z = branch.inputs(torch.tensor([[3.0, NAN, 5.0], [NAN, 3.0, 1e9]]))
    assert z.shape == (2, 4) and torch.isfinite(z).all()
    assert z[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])  # imputed with the fill value, flagged
    assert z[1, 0] == 0.0 and z[1, 3] == 0.0 and z[1, 2] == 10.0  # an unflagged column is imputed; clipped
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        branch(torch.zeros(2, 2))


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_every_fusion_takes_the_side_branch_after_the_fusion(fusion):
    torch.manual_seed(0)
    st = SideBranch.fit(torch.randn(20, 3), ["a", "b", "c"])
    specs = [ModalitySpec("text", 8, tokens=True), ModalitySpec("image", 6)]
    model = MultimodalClassifier(specs, fusion, hidden=16, dropout=0.0, side=st).eval()
    feats = {"text": torch.randn(4, 8), "image": torch.randn(4, 6), SIDE: torch.randn(4, 3)}
    tokens, masks = {"text": torch.randn(4, 5, 8)}, {"text": torch.ones(4, 5, dtype=torch.bool)}
    out = model(feats, tokens, masks)
    assert out.shape == (4, 3)
    assert model.fuse(feats, tokens, masks).shape[1] == model.fusion.out_dim + 16
    other = dict(feats, side=feats[SIDE] + 3.0)
    assert not torch.allclose(model(other, tokens, masks), out)  # the side values reach the logits
    assert torch.allclose(model(other, tokens, masks, modality_mask={SIDE: 0.0}),
                          model(feats, tokens, masks, modality_mask={SIDE: 0.0}))
    clone = MultimodalClassifier(**json.loads(json.dumps(model.config()))).eval()
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone(feats, tokens, masks), out)
    with pytest.raises(ValueError, match="side"):
        model({"text": feats["text"], "image": feats["image"]}, tokens, masks)


# ------------------------------------------------------------------------------------------- the registry
@pytest.fixture()
def posts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "1.txt").write_text("LOVE this!! #sunny @bob http://t.co/x \U0001F600?", encoding="utf-8")
    (data / "2.txt").write_text("", encoding="utf-8")
    from PIL import Image

    Image.new("RGB", (40, 30), (255, 0, 0)).save(data / "1.jpg")
    Image.new("RGB", (40, 30), (128, 128, 128)).save(data / "2.jpg")
    (data / "3.jpg").write_bytes(b"not an image")  # 3 has no text and a broken image
    return data


def test_registry_values_missing_inputs_and_the_cache(posts, tmp_path, caplog):
    caplog.set_level("INFO")
    cache = tmp_path / "cache"
    m = side.compute("vader,text_stats,image_stats", ["1", "2", "3"], posts, cache, progress=False)
    v = pd.DataFrame(m.values.numpy(), columns=m.columns, index=["1", "2", "3"])
    assert v.loc["1", "vader.compound"] > 0.5 and v.loc["2", "vader.neu"] == 0.0
    assert v.loc["1", ["text_stats.hashtags", "text_stats.mentions", "text_stats.urls", "text_stats.emoji",
                       "text_stats.exclamations", "text_stats.questions"]].tolist() == [1, 1, 1, 1, 2, 1]
    assert v.loc["2", "text_stats.chars"] == 0  # an empty text is length 0, not missing
    assert 0.0 < v.loc["1", "text_stats.upper_ratio"] < 1.0
    assert v.loc["1", "image_stats.saturation"] > 0.9 and v.loc["2", "image_stats.saturation"] < 0.05
    assert v.loc["1", "image_stats.colourfulness"] > v.loc["2", "image_stats.colourfulness"]
    assert v.loc["3"].isna().all()  # no text, broken image: missing, never a guess
    assert m.record == {"features": ["vader", "text_stats", "image_stats"], "columns": m.columns}
    for name in ("vader", "text_stats", "image_stats"):
        assert (cache / "side" / f"{name}-v1.npz").is_file()
    caplog.clear()
    again = side.compute("vader,text_stats,image_stats", ["1", "2", "3"], posts, cache, progress=False)
    assert torch.equal(again.values.nan_to_num(-1), m.values.nan_to_num(-1))
    assert "side image_stats: 0 computed, 2 from cache" in caplog.text
    (cache / "side" / "vader-v1.npz").write_bytes(b"garbage")
    caplog.clear()
    side.compute("vader", ["1"], posts, cache, progress=False)
    assert "unreadable" in caplog.text and "side vader: 1 computed" in caplog.text


def test_unknown_feature_and_missing_csv_are_clear_errors(posts):
    with pytest.raises(UserError, match="unknown side feature 'sentiment'"):
        side.parse_spec("vader,sentiment")
    with pytest.raises(UserError, match="not found"):
        side.parse_spec("csv:/no/such/file.csv")
    assert side.parse_spec("") == [] and side.compute("", ["1"], posts) is None


def _csv(tmp_path, text: str):
    path = tmp_path / "likes.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_features_values_gaps_and_errors(posts, tmp_path):
    path = _csv(tmp_path, "guid,likes,comments\n1,10,\n2,3.5,2\n")
    m = side.compute(f"csv:{path}", ["2", "1", "3"], posts, progress=False)
    assert m.columns == ["csv.likes.likes", "csv.likes.comments"]
    got = m.values.numpy()
    assert got[0].tolist() == [3.5, 2.0] and got[1, 0] == 10.0 and np.isnan(got[1, 1]) and np.isnan(got[2]).all()
    bad = {"guid,likes,comments\n1,10,1\n2,3,many\n": r"likes.csv: row 3, column comments: 'many' is not a number",
           "guid,likes\n77,1\n": r"row 2, column guid: unknown guid 77",
           "id,likes\n1,1\n": r"row 1 \(header\) has no 'guid' column",
           "guid,likes\n1,1\n1,2\n": r"row 3, column guid: guid 1 is listed twice",
           "guid,likes\n1,inf\n": r"row 2, column likes: 'inf' is not a finite number"}
    for text, message in bad.items():
        with pytest.raises(UserError, match=message):
            side.compute("csv:" + str(_csv(tmp_path, text)), ["1"], posts)
    path = _csv(tmp_path, "guid,likes\n1,1\n")
    with pytest.raises(UserError, match=r"column\(s\) \['comments'\] missing"):
        side.compute(f"csv:{path}", ["1"], posts, columns=["csv.likes.likes", "csv.likes.comments"])
    # prediction on other posts: rows of posts that are not there are ignored, not an error
    _csv(tmp_path, "guid,likes\n77,1\n1,4\n")
    assert side.compute(f"csv:{path}", ["1"], posts, strict=False).values.tolist() == [[4.0]]


def test_attach_keeps_side_out_of_the_fused_modalities():
    fs = FeatureSet(guids=["a", "b"], pooled={"text": torch.zeros(2, 4), "image": torch.zeros(2, 3)})
    m = side.SideMatrix(torch.ones(2, 2), ["x.a", "x.b"], {"features": ["x"], "columns": ["x.a", "x.b"]})
    out = side.attach(fs, m)
    assert list(out.pooled) == ["text", "image", SIDE] and out.backbones[SIDE]["columns"] == ["x.a", "x.b"]
    assert SIDE not in fs.pooled and side.attach(fs, None) is fs


# ------------------------------------------------------------------------------------- the phases end to end
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A dataset whose images and texts carry no label cue; a CSV column holds the label (plus noise)."""
    tmp = tmp_path_factory.mktemp("side")
    root = make_dataset(tmp / "data", n_train=150, n_test=12, seed=3, cue_prob=0.0)
    index = pd.read_csv(root / "train.txt", dtype=str)
    rng = np.random.default_rng(0)
    rows = [f"{g},{LABEL2ID[t] + rng.normal(0, 0.15):.4f},{rng.integers(0, 50)}"
            for g, t in zip(index["guid"], index["tag"])]
    test = pd.read_csv(root / "test_without_label.txt", dtype=str)["guid"].tolist()
    csv = tmp / "likes.csv"
    csv.write_text("guid,signal,noise\n" + "\n".join(rows + [f"{g},2,1" for g in test]) + "\n", encoding="utf-8")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "0", "--val-ratio", "0.3"])
    common = ["--data-root", str(root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache")]
    models = ["--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit"))]
    return {"tmp": tmp, "root": root, "csv": csv, "common": common, "models": models, "work": work, "test": test}


def _phase1(planted, name: str, side_spec: str | None):
    out = planted["tmp"] / name
    argv = planted["common"] + planted["models"] + [
        "--name", name, "--seeds", "1", "--num-epochs", "25", "--learning-rate", "3e-3", "--hidden", "32",
        "--patience", "0", "--no-probe", "--results-dir", str(out), "--figures-dir", str(out / "figures")]
    assert phase1.main(argv + (["--side-features", side_spec] if side_spec else [])) == 0
    return out / f"{name}-s1"


@pytest.fixture(scope="module")
def with_side(planted):
    return _phase1(planted, "side", f"text_stats,csv:{planted['csv']}")


def test_the_side_branch_learns_what_the_backbones_cannot_see(planted, with_side):
    without = _phase1(planted, "plain", None)
    acc = {k: json.loads((d / "metrics.json").read_text())["accuracy"] for k, d in
           (("side", with_side), ("plain", without))}
    assert acc["side"] > 0.8 and acc["side"] > acc["plain"] + 0.2, acc


def test_checkpoint_records_the_features_and_train_only_statistics(planted, with_side):
    _, cfg = load_checkpoint(with_side / "checkpoint")
    rec = cfg["side_features"]
    assert rec["features"] == ["text_stats", f"csv:{planted['csv'].resolve()}"]
    stats = cfg["model"]["side"]
    assert stats["columns"] == rec["columns"] and "csv.likes.signal" in rec["columns"]
    split = pd.read_csv(planted["work"] / "splits" / "default.csv", dtype=str)
    train = set(split.loc[split["split"] == "train", "guid"])
    csv = pd.read_csv(planted["csv"], dtype={"guid": str}).set_index("guid")
    j = stats["columns"].index("csv.likes.signal")
    assert stats["mean"][j] == pytest.approx(csv.loc[sorted(train), "signal"].mean(), abs=1e-4)
    assert stats["mean"][j] != pytest.approx(csv.loc[split["guid"], "signal"].mean(), abs=1e-4)
    run_cfg = json.loads((with_side / "config.json").read_text())
    assert run_cfg["side_features"] == rec and run_cfg["arguments"]["resolved"]["side_features"]


def test_predict_test_applies_the_checkpoints_side_features(planted, with_side, tmp_path):
    def predict(value: str) -> pd.Series:
        csv = pd.read_csv(planted["csv"], dtype=str)
        csv.loc[csv["guid"].isin(planted["test"]), "signal"] = value
        csv.to_csv(planted["csv"], index=False)
        out = tmp_path / f"predict{value}.txt"
        assert predict_test.main(["--checkpoint", str(with_side / "checkpoint"), "--data-root", str(planted["root"]),
                                  "--output", str(out), "--cache-dir", str(planted["tmp"] / "cache")]) == 0
        return pd.read_csv(out, dtype=str)["tag"]

    original = planted["csv"].read_text()
    try:
        assert (predict("2").value_counts().idxmax(), predict("0").value_counts().idxmax()) == ("positive",
                                                                                              "negative")
    finally:
        planted["csv"].write_text(original)
    prov = json.loads((tmp_path / "predict0.txt.provenance.json").read_text())
    assert prov["side_features"][0] == "text_stats"


def test_phase3_phase4_and_phase5_carry_the_side_branch(planted, tmp_path):
    p2, p3 = tmp_path / "p2", tmp_path / "p3"
    spec = f"csv:{planted['csv']}"
    assert phase2.main(planted["common"] + planted["models"] + [
        "--side-features", spec, "--fusions", "add", "--seeds", "1", "--num-epochs", "2", "--jobs", "1",
        "--results-dir", str(p2 / "results"), "--figures-dir", str(p2 / "figures")]) == 0
    best = json.loads((p2 / "results" / "best_config.json").read_text())
    assert best["settings"]["side_features"] == spec  # phase 3 starts from phase 2's choice, side features too
    assert phase3.main(planted["common"] + planted["models"] + [
        "--losses", "ce", "--samplers", "none", "--seeds", "1,2", "--num-epochs", "12",
        "--learning-rate", "3e-3", "--hidden", "32", "--jobs", "1", "--best-config",
        str(p2 / "results" / "best_config.json"),
        "--results-dir", str(p3 / "results"), "--figures-dir", str(p3 / "figures")]) == 0
    _, cfg3 = load_checkpoint(p3 / "results" / "best" / "checkpoint")
    assert cfg3["side_features"]["features"] == [spec.replace(str(planted["csv"]), str(planted["csv"].resolve()))]
    p4 = tmp_path / "p4"
    argv4 = planted["common"] + ["--phase3-dir", str(p3 / "results"), "--modes", "none,extra", "--num-epochs", "1",
                                 "--jobs", "1", "--caption-cache", str(tmp_path / "captions"),
                                 "--results-dir", str(p4 / "results"), "--figures-dir", str(p4 / "figures")]
    with pytest.raises(UserError, match="differs from the side features"):
        phase4.main(argv4 + ["--side-features", "vader"])
    assert phase4.main(argv4) == 0
    _, cfg4 = load_checkpoint(p4 / "results" / "best" / "checkpoint")
    assert cfg4["side_features"] == cfg3["side_features"] and cfg4["model"]["side"]["columns"]
    p5 = tmp_path / "p5"
    assert phase5.main(planted["common"] + ["--checkpoint", str(p3 / "results" / "best" / "checkpoint"),
                                            "--jobs", "1", "--results-dir", str(p5 / "results"),
                                            "--figures-dir", str(p5 / "figures")]) == 0
    table = pd.read_csv(p5 / "results" / "ablation.csv").set_index("model")
    for row in ("side masked (zeros)", "side masked (train mean)", "retrained text + image + side",
                "retrained text + image"):
        assert row in table.index, row
    f1 = table["weighted_f1_mean"]
    assert f1["side masked (train mean)"] < f1["full model"] - 0.2
    assert f1["retrained text + image"] < f1["retrained text + image + side"] - 0.2
    assert table.loc["full model", "inputs"] == "text + image + side"
    runs = pd.read_csv(p5 / "results" / "retrained_runs.csv")
    plain = json.loads((p5 / "results" / "runs" / "multimodal-s1" / "checkpoint" / "config.json").read_text())
    assert plain["side_features"] is None and "side" not in plain["model"]
    assert len(runs) == 4 * 2
    assert (p5 / "figures" / "ablation_radar.png").is_file()
    assert LABELS  # labels order is the project's
