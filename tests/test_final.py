"""The final recipe on synthetic data: honest cross-validation (inner validation for early stopping and the
decision rule, held-out folds only for reporting), the contribution table, the fold x seed ensemble that
predict_test uses; and the decision-rule helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from final import run_final as final
from msa import recipe
from msa.cli import UserError
from msa.data import LABEL2ID
from msa.ensemble import apply_bias, choose_bias
from msa.splits import load_split
from phase0 import data_cleaner
from phase4 import predict_test
from tests.tiny_models import tiny_bert, tiny_vit

FOLDS, SEEDS = 3, (1, 2)


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("final")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(synthetic_root), "--work-dir", str(work), "--folds", str(FOLDS)])
    argv = ["--data-root", str(synthetic_root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"),
            "--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit")),
            "--folds", str(FOLDS), "--seeds", ",".join(map(str, SEEDS)), "--num-epochs", "3",
            "--learning-rate", "3e-3", "--jobs", "1", "--ablation",
            "--results-dir", str(tmp / "results"), "--figures-dir", str(tmp / "figures")]
    assert final.main(argv) == 0
    return {"root": synthetic_root, "work": work, "tmp": tmp, "res": tmp / "results", "argv": argv}


def test_table_rows_and_figures(run):
    table = pd.read_csv(run["res"] / "summary.csv")
    # defaults: arg-max, no test-time view; the rule and the view are shown as additions
    side_row = "no_side" if json.loads(final.DEFAULT_PRESET.read_text()).get("side_features") else "side"
    assert table["row"].tolist() == ["final", "final-ensemble", "final+rule", "final+tta", *final.VARIANTS, side_row]
    side_cfg = json.loads((run["res"] / "runs" / side_row / "fold0-s1" / "checkpoint" / "config.json").read_text())
    assert bool(side_cfg["side_features"]) == (side_row == "side")  # the side row toggles the recipe's branch
    assert (table["folds"] == FOLDS).all()
    assert table.set_index("row").loc["final", "members"] == len(SEEDS)
    assert table.set_index("row").loc["final-ensemble", "members"] == 1
    folds = pd.read_csv(run["res"] / "folds.csv").set_index("row")
    assert (folds.loc["final", "views"] == 1).all() and (folds.loc["final+tta", "views"] == 2).all()
    assert (folds.loc["final", "bias"] == "[0.0, 0.0, 0.0]").all()
    md = (run["res"] / "summary.md").read_text()
    assert "3-fold cross-validation" in md and "Δ weighted F1" in md
    for name in ("contributions.png", "confusion.png"):
        assert (run["tmp"] / "figures" / name).stat().st_size > 1000


def test_error_analysis_lists_exactly_the_recipes_held_out_mistakes(run):
    pred = pd.read_csv(run["res"] / "predictions.csv", dtype={"guid": str})
    fin = pred[pred["row"] == "final"]
    wrong = fin[fin["label"] != fin["pred"]]
    errors = pd.read_csv(run["res"] / "errors.csv", dtype={"guid": str})
    assert sorted(errors["guid"]) == sorted(wrong["guid"]) and len(errors) > 0
    merged = errors.merge(wrong, on="guid", suffixes=("", "_p"))
    assert (merged["label"] == merged["label_p"]).all() and (merged["pred"] == merged["pred_p"]).all()
    raw = (run["root"] / "data" / f"{errors['guid'].iloc[0]}.txt").read_text(encoding="utf-8")
    assert " ".join(raw.split())[:20] in " ".join(str(errors["text"].iloc[0]).split())
    md = (run["res"] / "errors.md").read_text()
    assert f"{len(wrong)} of {len(fin)} posts misclassified" in md
    assert "text VADER polarity" in md and "most confident mistakes" in md


def test_variant_selection_errors(run):
    with pytest.raises(UserError, match="--variants: unknown bogus"):
        final.main(run["argv"] + ["--variants", "bogus"])
    plain = [a for a in run["argv"] if a != "--ablation"]
    with pytest.raises(UserError, match="--variants needs --ablation"):
        final.main(plain + ["--variants", "side"])


def test_free_rows_toggle_each_part_of_the_recipe():
    from types import SimpleNamespace as NS

    rows = recipe.free_rows(NS(decision="bias", tta="hflip"), has_view=True)
    assert rows == {"final": {"ensemble", "rule", "tta"}, "final-ensemble": {"rule", "tta"},
                    "final-rule": {"ensemble", "tta"}, "final-tta": {"ensemble", "rule"}, "final-single": set()}
    rows = recipe.free_rows(NS(decision="argmax", tta="none"), has_view=False)
    assert rows == {"final": {"ensemble"}, "final-ensemble": set(), "final+rule": {"ensemble", "rule"}}


def test_held_out_folds_are_only_predicted(run):
    """Each fold's held-out posts are exactly its split's val posts; every model trained and early-stopped on
    the fold's training part only (inner train + inner validation)."""
    preds = pd.read_csv(run["res"] / "predictions.csv", dtype={"guid": str})
    for k in range(FOLDS):
        split = load_split(run["work"], f"cv{FOLDS}-{k}")
        held = preds[(preds["row"] == "final") & (preds["fold"] == k)]
        assert sorted(held["guid"]) == sorted(split.val)
        for seed in SEEDS:
            rd = run["res"] / "runs" / "final" / f"fold{k}-s{seed}"
            early = set(pd.read_csv(rd / "val_predictions.csv", dtype={"guid": str})["guid"])
            assert early and not early & set(split.val) and early <= set(split.train)
            cfg = json.loads((rd / "config.json").read_text())
            assert cfg["split"]["train"] + cfg["split"]["val"] == len(split.train)
    every = preds[preds["row"] == "final"]["guid"]
    assert every.is_unique and len(every) == len(pd.read_csv(run["work"] / "train_cleaned.txt"))


def test_the_ensemble_predicts_the_test_file(run, tmp_path):
    best = run["res"] / "best"
    spec = json.loads((best / "ensemble.json").read_text())
    assert len(spec["members"]) == FOLDS * len(SEEDS) and len(spec["bias"]) == 3
    out = tmp_path / "predict.txt"
    assert predict_test.main(["--checkpoint", str(best), "--data-root", str(run["root"]), "--output", str(out),
                              "--cache-dir", str(run["tmp"] / "cache")]) == 0
    test = pd.read_csv(run["root"] / "test_without_label.txt", dtype=str)
    pred = pd.read_csv(out, dtype=str)
    assert pred["guid"].tolist() == test["guid"].tolist()
    prov = json.loads((tmp_path / "predict.txt.provenance.json").read_text())
    assert prov["members"] == FOLDS * len(SEEDS) and prov["decision_bias"] == spec["bias"]


def test_the_recipe_leaves_the_test_posts_features_so_predict_test_loads_no_backbone(run, tmp_path, monkeypatch):
    """The recipe computes the test posts' features (and side features) with its loaded backbones, in their own
    batches, so predict_test finds every one in the cache and loads nothing; they equal a fresh computation."""
    from msa import backbones, features

    loads = []
    monkeypatch.setattr(backbones.LazyBackbone, "materialise",
                        lambda self: loads.append(self.info.name) or pytest.fail(f"{self.info.name} was loaded"))
    out = tmp_path / "predict.txt"
    assert predict_test.main(["--checkpoint", str(run["res"] / "best"), "--data-root", str(run["root"]),
                              "--output", str(out), "--cache-dir", str(run["tmp"] / "cache")]) == 0
    assert loads == []
    monkeypatch.undo()
    test = pd.read_csv(run["root"] / "test_without_label.txt", dtype=str)["guid"].tolist()
    kw = dict(batch_size=32, progress=False)
    cached = features.extract_features(test, run["root"] / "data", backbones.text_backbone(str(run["tmp"] / "bert")),
                                       backbones.image_backbone(str(run["tmp"] / "vit")), run["tmp"] / "cache", **kw)
    fresh = features.extract_features(test, run["root"] / "data", backbones.text_backbone(str(run["tmp"] / "bert")),
                                      backbones.image_backbone(str(run["tmp"] / "vit")), tmp_path / "cache", **kw)
    assert cached.stats["text"]["computed"] == cached.stats["image"]["computed"] == 0
    assert fresh.stats["text"]["computed"] > 0
    for m in ("text", "image"):
        assert torch.equal(cached.pooled[m], fresh.pooled[m])


def test_test_time_augmentation_uses_the_mirrored_images(run, tmp_path):
    """The hflip view is the backbone's features of the left-right mirrored image; the recipe's probabilities are
    the mean over both views (so they differ from the image-only row), and predict_test applies the view an
    ensemble records (and writes so in its provenance)."""
    from PIL import Image

    from msa.backbones import image_backbone
    from msa.features import _decode, extract_features, image_content_key

    root = run["root"]
    ib = image_backbone(str(run["tmp"] / "vit"))
    guids = pd.read_csv(run["work"] / "train_cleaned.txt", dtype=str)["guid"].tolist()[:4]
    fs = extract_features(guids, root / "data", None, ib, tmp_path / "cache", image_view="hflip", progress=False)
    plain = extract_features(guids, root / "data", None, ib, tmp_path / "cache", progress=False)
    for i, guid in enumerate(guids):
        img = _decode(root / "data", guid, image_content_key(root / "data", guid)[1], ib.image_size)
        want = ib.encode([img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])[0]
        assert np.allclose(fs.pooled["image"][i].numpy(), want.numpy(), atol=1e-4)
    assert not np.allclose(fs.pooled["image"].numpy(), plain.pooled["image"].numpy(), atol=1e-3)
    with pytest.raises(UserError, match="unknown image view"):
        extract_features(guids, root / "data", None, ib, tmp_path / "cache", image_view="rot13", progress=False)

    preds = pd.read_csv(run["res"] / "predictions.csv", dtype={"guid": str})
    cols = [c for c in preds.columns if c.startswith("p_")]
    assert not np.allclose(preds[preds["row"] == "final"][cols].to_numpy(),
                           preds[preds["row"] == "final+tta"][cols].to_numpy())
    spec = json.loads((run["res"] / "best" / "ensemble.json").read_text())
    assert spec["tta"] == []  # the default recipe has none
    outs = {}
    for views in (["hflip"], []):
        best = tmp_path / f"best{len(views)}"
        shutil.copytree(run["res"] / "best", best)
        (best / "ensemble.json").write_text(json.dumps(spec | {"tta": views}))
        out = tmp_path / f"predict{len(views)}.txt"
        assert predict_test.main(["--checkpoint", str(best), "--data-root", str(root), "--output", str(out),
                                  "--cache-dir", str(run["tmp"] / "cache"),
                                  "--probabilities", str(tmp_path / f"p{len(views)}.csv")]) == 0
        assert json.loads(Path(f"{out}.provenance.json").read_text())["test_time_views"] == views
        outs[len(views)] = pd.read_csv(tmp_path / f"p{len(views)}.csv")
    assert not np.allclose(outs[1][[f"p_{c}" for c in ("negative", "neutral", "positive")]].to_numpy(),
                           outs[0][[f"p_{c}" for c in ("negative", "neutral", "positive")]].to_numpy())


def test_rerun_is_skipped_and_missing_folds_are_a_clear_error(run, tmp_path, capsys):
    assert final.main(run["argv"]) == 0
    assert "up to date" in capsys.readouterr().out
    argv = list(run["argv"])
    argv[argv.index("--folds") + 1] = "7"
    with pytest.raises(UserError, match="cv7-0"):
        final.main(argv + ["--results-dir", str(tmp_path / "r")])


def test_choose_bias_finds_an_offset_only_when_it_helps():
    rng = np.random.default_rng(0)
    neu = LABEL2ID["neutral"]
    y = rng.choice(3, size=600, p=[0.3, 0.1, 0.6])
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), y] += 1.5
    logits[:, neu] -= 1.2  # neutral systematically under-predicted
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bias, score = choose_bias(proba, y, "macro_f1")
    assert bias[neu] > 0
    from sklearn.metrics import f1_score

    assert score > f1_score(y, proba.argmax(1), average="macro") + 0.02
    assert score == pytest.approx(f1_score(y, apply_bias(proba, bias).argmax(1), average="macro"))
    # well-calibrated, perfectly separable predictions: no offset is needed
    clean = np.eye(3)[y] * 0.9 + 0.05
    assert choose_bias(clean, y)[0] == [0.0, 0.0, 0.0]


def test_text_top_layers_experiment_runs_on_the_folds(run, capsys):
    """The documented fine-tuning experiment: both arms run on a fold and report held-out scores."""
    from final.experiments import text_top_layers

    assert text_top_layers.main(["--data-root", str(run["root"]), "--work-dir", str(run["work"]),
                                 "--text-backbone", str(run["tmp"] / "bert"), "--folds", str(FOLDS),
                                 "--folds-used", "0", "--layers", "1", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "frozen" in out and "top 1 fine-tuned" in out and out.count("held-out weighted F1") == 2
    with pytest.raises(UserError, match="--layers"):
        text_top_layers.main(["--data-root", str(run["root"]), "--work-dir", str(run["work"]),
                              "--text-backbone", str(run["tmp"] / "bert"), "--folds", str(FOLDS), "--layers", "99"])


def test_one_post_matches_the_test_file_prediction(run, tmp_path, capsys):
    """--image/--text-file on a test post's own files gives exactly the probabilities predict_test gives that
    post in the test file; --json is one parseable object; a missing file is a clear error."""
    from msa.data import find_image

    best, root = run["res"] / "best", run["root"]
    probs = tmp_path / "p.csv"
    assert predict_test.main(["--checkpoint", str(best), "--data-root", str(root), "--output",
                              str(tmp_path / "predict.txt"), "--cache-dir", str(run["tmp"] / "cache"),
                              "--probabilities", str(probs)]) == 0
    table = pd.read_csv(probs, dtype={"guid": str}).set_index("guid")
    guid = next(g for g in table.index if find_image(root / "data", g) and (root / "data" / f"{g}.txt").is_file())
    capsys.readouterr()
    assert predict_test.main(["--checkpoint", str(best), "--image", str(find_image(root / "data", guid)),
                              "--text-file", str(root / "data" / f"{guid}.txt"), "--json",
                              "--cache-dir", str(tmp_path / "cache")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["label"] == table.loc[guid, "tag"]
    for lab in ("negative", "neutral", "positive"):
        assert got["probabilities"][lab] == pytest.approx(table.loc[guid, f"p_{lab}"], abs=1e-3)
    assert predict_test.main(["--checkpoint", str(best), "--text", "what a wonderful day",
                              "--cache-dir", str(tmp_path / "cache")]) == 0
    line = capsys.readouterr().out
    assert line.split()[0] in ("negative", "neutral", "positive") and "positive 0." in line
    with pytest.raises(UserError, match="no such file"):
        predict_test.main(["--checkpoint", str(best), "--image", str(tmp_path / "nope.jpg")])


@pytest.mark.parametrize("edit, message", [
    (lambda s: [1, 2], "not a JSON object"),
    (lambda s: {k: v for k, v in s.items() if k != "members"}, "'members'"),
    (lambda s: s | {"members": ["../../etc"]}, "under members/"),
    (lambda s: s | {"bias": [0.1]}, "one number per label"),
])
def test_a_damaged_ensemble_record_is_a_clear_error(run, tmp_path, edit, message):
    import shutil

    from msa.cli import UserError
    from msa.ensemble import read_ensemble

    best = tmp_path / "best"
    shutil.copytree(run["res"] / "best", best)
    record = read_ensemble(best)
    assert record.member_dirs[0].is_dir() and len(record.bias) == 3 and record.info["seeds"]
    spec = json.loads((best / "ensemble.json").read_text())
    (best / "ensemble.json").write_text(json.dumps(edit(spec)))
    with pytest.raises(UserError, match=message):
        read_ensemble(best)
