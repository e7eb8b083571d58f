"""Phase 4 end to end on synthetic data with tiny local models and the offline captioner: leak-free mining on the
training split only, the caption modes, fine-tuning from phase 3, identical validation posts, tables, figures,
best checkpoint; and the mining / augmentation helpers on their own."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from msa.augment import APPEND_SUFFIX, VLM_SUFFIX, Augmented, mine_hard, train_rows
from msa.cli import UserError
from msa.data import LABEL2ID
from msa.features import FeatureSet
from msa.splits import load_split
from phase0 import data_cleaner
from phase3 import run_phase3 as phase3
from phase4 import run_phase4 as phase4
from tests.conftest import assert_refused
from tests.tiny_models import tiny_bert, tiny_vit

SEEDS = (1, 2)
MODES = ("none", "extra", "append", "both")
THRESHOLD = 0.9
URL_SECRET = "sk-URLSECRET9876"


def _tree_digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def setup(faulty_dataset, tmp_path_factory):
    root, _ = faulty_dataset
    tmp = tmp_path_factory.mktemp("phase4")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(root), "--work-dir", str(work), "--folds", "0"])
    common = ["--data-root", str(root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"), "--jobs", "1"]
    p3 = tmp / "phase3"
    assert phase3.main(common + ["--text-backbone", str(tiny_bert(tmp / "bert")),
                                 "--image-backbone", str(tiny_vit(tmp / "vit")), "--losses", "ce,acb",
                                 "--samplers", "none", "--seeds", ",".join(map(str, SEEDS)), "--num-epochs", "3",
                                 "--learning-rate", "3e-3", "--best-config", str(tmp / "none.json"),
                                 "--results-dir", str(p3 / "results"), "--figures-dir", str(p3 / "figures")]) == 0
    return {"root": root, "work": work, "tmp": tmp, "common": common, "phase3": p3 / "results"}


@pytest.fixture(scope="module")
def run(setup):
    before = _tree_digest(setup["root"])
    out = setup["tmp"] / "out"
    argv = setup["common"] + ["--phase3-dir", str(setup["phase3"]), "--modes", ",".join(MODES),
                              "--neutral-threshold", str(THRESHOLD), "--num-epochs", "2", "--lr-scale", "1",
                              "--caption-cache", str(setup["tmp"] / "captions"),
                              # a key inside the URL (issue 21): never recorded anywhere
                              "--vlm-base-url", f"http://user:{URL_SECRET}@127.0.0.1:9/v1?api_key={URL_SECRET}",
                              "--results-dir", str(out / "results"), "--figures-dir", str(out / "figures")]
    assert phase4.main(argv) == 0
    return {**setup, "out": out, "results": out / "results", "argv": argv, "data_digest_before": before}


def test_phase3_and_phase4_validate_on_identical_posts(run):
    split = load_split(run["work"], "default")
    val = sorted(split.val)
    best3 = json.loads((run["phase3"] / "best.json").read_text())
    for seed in SEEDS:
        p3 = pd.read_csv(run["phase3"] / "runs" / f"{best3['method']}-s{seed}" / "val_predictions.csv", dtype=str)
        assert sorted(p3["guid"]) == val
        for mode in MODES:
            p4 = pd.read_csv(run["results"] / "runs" / f"{mode}-s{seed}" / "val_predictions.csv", dtype=str)
            assert sorted(p4["guid"]) == val
    assert json.loads((run["results"] / "summary.json").read_text())["same_validation_guids"] is True


def test_mining_scores_the_training_split_only_and_follows_the_rule(run):
    split = load_split(run["work"], "default")
    hard = pd.read_csv(run["results"] / "hard_samples.csv", dtype={"guid": str})
    assert len(hard) > 0 and set(hard["seed"]) == set(SEEDS)
    assert set(hard["guid"]) <= set(split.train) and not set(hard["guid"]) & set(split.val)
    wrong = hard["label"] != hard["pred"]
    unsure = (hard["label"] == "neutral") & (hard["p_neutral"] < THRESHOLD)
    assert (wrong | unsure).all()
    assert (hard["reason"].str.contains("misclassified") == wrong).all()
    assert (hard["reason"].str.contains("neutral") == unsure).all()
    assert hard["selected"].all()  # --sample-ratio 1 and no --max-hard: every hard post is used


def test_training_indexes_of_each_mode(run):
    split = load_split(run["work"], "default")
    train, val = set(split.train), set(split.val)
    hard = pd.read_csv(run["results"] / "hard_samples.csv", dtype={"guid": str})
    captions = pd.read_csv(run["results"] / "captions.csv", dtype={"guid": str}, keep_default_na=False)
    captioned = set(captions.loc[captions["caption"] != "", "guid"])
    assert captioned and all(c.startswith("a photo showing: ") for c in captions["caption"] if c)
    labels = dict(zip(split.frame["guid"], split.frame["split"]))
    tags = pd.read_csv(run["work"] / "train_cleaned.txt", dtype=str).set_index("guid")["tag"].to_dict()
    for seed in SEEDS:
        mine = set(hard.loc[hard["seed"] == seed, "guid"]) & captioned
        idx = {m: pd.read_csv(run["results"] / "runs" / f"{m}-s{seed}" / "train_index.csv", dtype=str,
                              keep_default_na=False) for m in MODES}
        assert sorted(idx["none"]["guid"]) == sorted(train)
        extra = idx["extra"][idx["extra"]["guid"].str.endswith(VLM_SUFFIX)]
        assert sorted(extra["image_guid"]) == sorted(mine)
        assert len(idx["extra"]) == len(train) + len(mine)
        assert (extra["tag"] == extra["image_guid"].map(tags)).all()  # same label as the original post
        app = idx["append"]
        assert len(app) == len(train)
        swapped = app[app["guid"].str.endswith(APPEND_SUFFIX)]
        assert sorted(swapped["image_guid"]) == sorted(mine)
        cap_of = dict(zip(captions["guid"], captions["caption"]))
        assert all(row.text.endswith(cap_of[row.image_guid]) for row in swapped.itertuples())
        assert len(idx["both"]) == len(train) + len(mine)
        for frame in idx.values():  # no validation post, in any form, is trained on
            assert not set(frame["image_guid"]) & val
            assert all(labels.get(g) == "train" for g in frame["image_guid"])


def test_fine_tunes_the_phase3_checkpoint_of_the_same_seed(run):
    best3 = json.loads((run["phase3"] / "best.json").read_text())
    for mode in MODES:
        for seed in SEEDS:
            cfg = json.loads((run["results"] / "runs" / f"{mode}-s{seed}" / "config.json").read_text())
            assert cfg["init_from"].endswith(f"{best3['method']}-s{seed}/checkpoint")
            assert cfg["loss"] == best3["settings"]["loss_type"]
            assert cfg["train"]["num_epochs"] == 2


def test_tables_figures_and_best(run):
    res = run["results"]
    table = pd.read_csv(res / "summary.csv")
    assert table["method"].tolist() == ["phase 3", *MODES]
    assert (table["n_seeds"] == len(SEEDS)).all()
    md = (res / "summary.md").read_text()
    assert "| phase 3 |" in md and "Change against phase 3" in md
    runs = pd.read_csv(res / "runs.csv")
    assert len(runs) == len(SEEDS) * (1 + len(MODES))
    for name in ("comparison.png", "confusion.png", "hard_samples.png"):
        assert (run["out"] / "figures" / name).stat().st_size > 1000
    best = json.loads((res / "best.json").read_text())
    assert best["mode"] in MODES and len(best["seed_runs"]) == len(SEEDS)
    assert (res / "best" / "checkpoint" / "model.safetensors").is_file()
    row = table.set_index("method").loc[best["mode"]]
    assert row["weighted_f1_mean"] == pytest.approx(table[table["method"] != "phase 3"]["weighted_f1_mean"].max())


def test_a_key_inside_the_url_is_in_no_file(run):
    files = [p for p in run["out"].rglob("*") if p.is_file()]
    assert any(p.name == "inputs.json" for p in files) and any(p.name == "config.json" for p in files)
    leaked = [p for p in files if URL_SECRET.encode() in p.read_bytes()]
    assert not leaked
    assert "127.0.0.1:9" in (run["results"] / "inputs.json").read_text()  # the rest of the URL is recorded


def test_the_users_data_is_never_written(run):
    assert _tree_digest(run["root"]) == run["data_digest_before"]
    assert not list(run["work"].glob("*vlm*")) and not list(run["work"].rglob("train_index.csv"))


def test_rerun_uses_cached_captions(run, caplog):
    out = run["tmp"] / "rerun"
    argv = [a for a in run["argv"]]
    argv[argv.index("--results-dir") + 1] = str(out / "results")
    argv[argv.index("--figures-dir") + 1] = str(out / "figures")
    argv[argv.index("--modes") + 1] = "extra"
    with caplog.at_level("INFO"):
        assert phase4.main(argv + ["--seeds", str(SEEDS[0])]) == 0
    caps = pd.read_csv(out / "results" / "captions.csv", keep_default_na=False)
    assert len(caps) and (caps["source"] == "cache").all()


def test_clear_errors(setup, tmp_path, capsys):
    base = setup["common"] + ["--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    with pytest.raises(UserError, match="run phase 3 first"):
        phase4.main(base + ["--phase3-dir", str(tmp_path / "missing")])
    with pytest.raises(UserError, match="--modes"):
        phase4.main(base + ["--phase3-dir", str(setup["phase3"]), "--modes", "extra,bogus"])
    assert_refused(lambda: phase4.main(base + ["--phase3-dir", str(setup["phase3"]), "--neutral-threshold", "2"]),
                   "neutral-threshold", capsys)
    # another split than phase 3's: the comparison would not be on the same posts
    fake = tmp_path / "p3"
    fake.mkdir()
    best = json.loads((setup["phase3"] / "best.json").read_text())
    (fake / "best.json").write_text(json.dumps({**best, "split_sha256": "0" * 64}))
    with pytest.raises(UserError, match="same validation"):
        phase4.main(base + ["--phase3-dir", str(fake)])


def test_openai_captioner_needs_a_key(setup, tmp_path, monkeypatch):
    for var in ("VLM_API_KEY", "DASHSCOPE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(phase4, "API_KEY", "")
    argv = setup["common"] + ["--phase3-dir", str(setup["phase3"]), "--captioner", "openai",
                              "--neutral-threshold", "1.0", "--results-dir", str(tmp_path / "r"),
                              "--figures-dir", str(tmp_path / "f")]
    with pytest.raises(UserError, match="API key.*VLM_API_KEY.*API_KEY at the top of phase4/run_phase4.py"):
        phase4.main(argv)


# ------------------------------------------------------------------------------------------ the helpers alone
def test_mine_hard_rule_ratio_cap_and_seed():
    n, neu = LABEL2ID["negative"], LABEL2ID["neutral"]
    proba = np.array([[0.8, 0.1, 0.1],   # right, negative
                      [0.2, 0.3, 0.5],   # wrong (neutral predicted positive), low neutral
                      [0.3, 0.4, 0.3],   # right neutral, but p(neutral) 0.4 < 0.5
                      [0.1, 0.8, 0.1],   # right, confident neutral
                      [0.1, 0.2, 0.7]])  # wrong (negative predicted positive)
    labels = np.array([n, neu, neu, neu, n])
    rows = [10, 11, 12, 13, 14]
    hard = mine_hard(proba, labels, rows, neutral_threshold=0.5)
    assert sorted(hard["row"]) == [11, 12, 14]
    reasons = dict(zip(hard["row"], hard["reason"]))
    assert reasons == {11: "misclassified, low-confidence neutral", 12: "low-confidence neutral",
                       14: "misclassified"}
    assert hard["p_true"].is_monotonic_increasing
    assert sorted(mine_hard(proba, labels, rows, neutral_threshold=0.35)["row"]) == [11, 14]
    a = mine_hard(proba, labels, rows, 0.5, sample_ratio=0.67, seed=3)
    b = mine_hard(proba, labels, rows, 0.5, sample_ratio=0.67, seed=3)
    assert a["selected"].sum() == 2 and a["selected"].tolist() == b["selected"].tolist()
    assert mine_hard(proba, labels, rows, 0.5, max_hard=1)["selected"].sum() == 1
    picks = {tuple(mine_hard(proba, labels, rows, 0.5, max_hard=1, seed=s)["selected"]) for s in range(20)}
    assert len(picks) > 1  # the draw depends on the seed
    with pytest.raises(ValueError):
        mine_hard(proba, labels, rows, 0.5, sample_ratio=0)


def test_train_rows_per_mode():
    fs = FeatureSet(guids=["a", "b", "c", "a_vlm", "a+caption"], pooled={"text": torch.zeros(5, 2)})
    aug = Augmented(fs, np.zeros(5, dtype=int), extra_row={0: 3}, append_row={0: 4})
    assert train_rows("none", [0, 1], [0, 1], aug) == [0, 1]
    assert train_rows("extra", [0, 1], [0, 1], aug) == [0, 1, 3]  # b has no caption: unchanged
    assert train_rows("append", [0, 1], [0, 1], aug) == [4, 1]
    assert train_rows("both", [0, 1], [0, 1], aug) == [4, 1, 3]
    with pytest.raises(ValueError):
        train_rows("other", [0], [0], aug)
