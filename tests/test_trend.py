"""Seed 003's popularity-trend task (tasks/trend) on small generated sets with tiny local Hugging Face models:
the full model beats the training mean / majority, no post-day feeds windows of two splits, every bad input gives
a clear error or a logged skip, and the CLI's --help and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from msa.cli import UserError, run_main
from tasks.trend import make_trend_data
from tasks.trend import run_trend as trend
from tasks.trend.data import MAX_SPAN_DAYS, check_disjoint, chronological_split, load_inputs, parse_dates, window_days
from tasks.trend.make_trend_data import make_trend_dataset
from tasks.trend.model import DayData, _build_net
from tasks.trend.stage import pooled_fusions
from tests.conftest import REPO
from tests.tiny_models import tiny_bert, tiny_vit

WINDOW = 10
FAST = ["--hidden", "32", "--epochs", "25", "--patience", "8", "--learning-rate", "3e-3", "--batch-size", "16",
        "--block", "4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trend")
    root = make_trend_dataset(tmp / "data", n_posts=1000, n_days=600, window=WINDOW, seed=0, image_size=32)
    models = ["--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit"))]
    base = ["--data-root", str(root), "--window", str(WINDOW), "--cache-dir", str(tmp / "cache"), *models, *FAST]
    return {"tmp": tmp, "root": root, "base": base}


@pytest.fixture(scope="module")
def frozen_code():
    """The up-to-date check hashes the code (msa/*.py and the script): keep that hash fixed for this module, so
    that an edit to the library while the tests run does not count as changed inputs."""
    from msa import stamp

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stamp, "code_sha256", lambda *paths: "frozen for the test")
        yield


@pytest.fixture(scope="module")
def regression(setup, frozen_code):
    out = setup["tmp"] / "regression"
    assert trend.main(setup["base"] + ["--task", "regression", "--seeds", "1,2", "--jobs", "1", "--out", str(out)]) == 0
    return out


def _tiny(tmp_path, **kw):
    """A small generated set for the bad-input tests (no model is trained on it)."""
    kw = {"n_posts": 60, "n_days": 80, "window": 5, "seed": 2, "image_size": 16, **kw}
    return make_trend_dataset(tmp_path / "d", **kw)


def _edit(path, fn):
    """Rewrite a CSV through ``fn`` (which changes the frame in place or returns a new one)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    new = fn(frame)
    (frame if new is None else new).to_csv(path, index=False)


# ------------------------------------------------------------------------------------------ end to end
def test_regression_full_model_beats_the_training_mean(regression):
    metrics = json.loads((regression / "metrics.json").read_text())
    assert list(metrics) == ["mean", "numeric", "image_text", "full"]
    for row in metrics.values():
        assert set(row) == {"MAE", "RMSE", "Corr", "R2"}
        assert set(row["MAE"]) == {"mean", "std", "per_seed"} and set(row["MAE"]["per_seed"]) == {"1", "2"}
    assert metrics["full"]["MAE"]["mean"] < 0.85 * metrics["mean"]["MAE"]["mean"], metrics
    assert metrics["full"]["R2"]["mean"] > metrics["mean"]["R2"]["mean"]
    assert metrics["mean"]["Corr"]["mean"] is None  # a constant prediction has no correlation
    preds = pd.read_csv(regression / "test_predictions.csv")
    assert list(preds.columns[:3]) == ["date", "value", "pred"] and preds["pred"].notna().all()
    split = pd.read_csv(regression / "split.csv")
    assert len(preds) == (split["split"] == "test").sum()
    assert "±" in (regression / "metrics.md").read_text()
    assert (regression / "figures" / "pred_vs_true.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = pd.read_csv(regression / "runs.csv")
    assert len(runs) == 8 and (runs.loc[runs["row"] != "mean", "best_epoch"] >= 1).all()


def test_no_post_day_feeds_two_splits(setup, regression):
    split = pd.read_csv(regression / "split.csv", parse_dates=["date"])
    config = json.loads((regression / "config.json").read_text())
    start = pd.Timestamp(config["first_post_date"])
    days = {}
    for s in ("train", "val", "test"):
        ends = (split.loc[split["split"] == s, "date"] - start).dt.days
        days[s] = window_days(ends, WINDOW)
        assert days[s], s
    assert not days["train"] & days["val"] and not days["train"] & days["test"] and not days["val"] & days["test"]
    assert (split["split"] == "purged").sum() >= 2 * (WINDOW - 1)
    # chronological order: every validation date after every training date, every test date after both
    by = split[split["split"].isin(["train", "val", "test"])].groupby("split")["date"]
    assert by.max()["train"] < by.min()["val"] and by.max()["val"] < by.min()["test"]
    # the same holds for other windows and gaps, and a split without the purge would share days
    ends = np.arange(WINDOW, 400)
    for window, gap in ((1, 0), (7, 0), (30, 5)):
        labels = chronological_split(ends, window, 0.15, 0.15, gap)
        check_disjoint(ends, labels, window)
    with pytest.raises(AssertionError, match="feed both"):
        check_disjoint(ends, np.where(ends < 300, "train", np.where(ends < 350, "val", "test")), 7)


def test_rerun_with_the_same_inputs_is_reused(setup, regression, frozen_code, capsys):
    capsys.readouterr()
    assert trend.main(setup["base"] + ["--task", "regression", "--seeds", "1,2", "--jobs", "1",
                                       "--out", str(regression)]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "| full |" in out


def test_classification_full_model_beats_majority(setup):
    out = setup["tmp"] / "classification"
    assert trend.main(setup["base"] + ["--task", "classification", "--seeds", "1,2", "--jobs", "2",
                                       "--rows", "majority,full", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["majority", "full"]
    assert set(metrics["full"]) == {"accuracy", "macro_f1"}
    assert metrics["full"]["accuracy"]["mean"] > metrics["majority"]["accuracy"]["mean"] + 0.1, metrics
    config = json.loads((out / "config.json").read_text())
    lo, hi = config["classes"]["thresholds"]
    split = pd.read_csv(out / "split.csv")
    train = split[split["split"] == "train"]
    assert abs((train["trend"] == 1).mean() - 1 / 3) < 0.05  # tertiles of the training windows
    assert ((split["value"] > hi) == (split["trend"] == 1))[split["trend"].notna()].all()
    preds = pd.read_csv(out / "test_predictions.csv")
    assert set(preds["pred"]) <= {-1, 0, 1} and {"date", "value", "trend", "pred"} <= set(preds.columns)


def test_a_trend_column_is_used_as_given(tmp_path):
    root = _tiny(tmp_path, with_trend=True)
    _edit(root / "targets.csv", lambda f: f.__setitem__("trend", ["1" if i % 2 else "-1" for i in range(len(f))]))
    out = tmp_path / "out"
    assert trend.main(["--data-root", str(root), "--window", "5", "--task", "classification", "--rows", "majority",
                       "--seeds", "3", "--out", str(out)]) == 0
    split = pd.read_csv(out / "split.csv").dropna(subset=["trend"])
    given = pd.read_csv(root / "targets.csv").set_index("date")["trend"]
    assert (split["trend"].to_numpy() == given.loc[split["date"]].to_numpy()).all()
    assert json.loads((out / "config.json").read_text())["classes"]["thresholds"] is None


# ------------------------------------------------------------------------------------------- bad input
def _bad_post_date(root):
    _edit(root / "posts.csv", lambda f: f.__setitem__("date", f["date"].where(f.index != 7, "2021-13-45")))


def _bad_target_date(root):
    _edit(root / "targets.csv", lambda f: f.__setitem__("date", f["date"].where(f.index != 3, "yesterday")))


def _negative(root):
    _edit(root / "posts.csv", lambda f: f.__setitem__("likes", f["likes"].where(f.index != 4, "-3")))


def _text_count(root):
    _edit(root / "posts.csv", lambda f: f.__setitem__("comments", f["comments"].where(f.index != 5, "lots")))


def _bad_trend(root):
    _edit(root / "targets.csv", lambda f: f.__setitem__("trend", ["2"] * len(f)))


def _repeated_date(root):
    _edit(root / "targets.csv", lambda f: f.__setitem__("date", f["date"].where(f.index != 1, f["date"][0])))


def _all_early(root):
    first = pd.read_csv(root / "posts.csv")["date"].min()  # a 5-day window first ends 4 days later
    _edit(root / "targets.csv", lambda f: f.head(1).assign(date=first))


@pytest.mark.parametrize("break_it, args, message", [
    (_bad_post_date, [], "posts.csv: 1 date(s) are not ISO dates"),
    (_bad_target_date, [], "targets.csv: 1 date(s) are not ISO dates"),
    (_negative, [], "column 'likes' has 1 negative count(s)"),
    (_text_count, [], "column 'comments' has 1 non-numeric value(s)"),
    (_bad_trend, ["--task", "classification"], "trend must be -1, 0 or 1"),
    (_repeated_date, [], "appears more than once"),
    (_all_early, [], "no target date"),
    (lambda root: None, ["--window", "30"], "empty after purging"),
    (lambda root: (root / "posts.csv").unlink(), [], "posts file not found"),
    (lambda root: None, ["--numeric-cols", "likes,shares"], "--numeric-cols names ['shares']"),
])
def test_bad_input_is_a_clear_error(tmp_path, break_it, args, message):
    root = _tiny(tmp_path, with_trend=True)
    break_it(root)
    with pytest.raises(UserError) as err:
        trend.main(["--data-root", str(root), "--window", "5", "--out", str(tmp_path / "out"), *args])
    assert message in str(err.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_posts_without_files_and_early_targets_are_skipped_and_logged(tmp_path, caplog):
    root = _tiny(tmp_path)
    for ext in ("jpg", "txt"):
        (root / "data" / f"p00010.{ext}").unlink()
    (root / "data" / "p00011.jpg").unlink()  # text only: kept, a placeholder image stands in
    first = pd.Timestamp(pd.read_csv(root / "posts.csv")["date"].min())
    early = [str((first + pd.Timedelta(days=d)).date()) for d in (0, 3)]  # a 5-day window ends >= 4 days later
    targets = pd.read_csv(root / "targets.csv", dtype=str)
    targets = targets[pd.to_datetime(targets["date"]) > first + pd.Timedelta(days=3)]
    pd.concat([pd.DataFrame({"date": early, "value": ["0.5", "0.4"]}), targets]).to_csv(root / "targets.csv",
                                                                                       index=False)
    caplog.set_level("INFO")
    data = load_inputs(root, 5, "regression")
    assert "p00010" not in set(data.posts["post_id"]) and "p00011" in set(data.posts["post_id"])
    assert "skipped 1 post(s) - no image and no text" in caplog.text
    assert "skipped 2 target(s) - before the first full window" in caplog.text
    assert "have no image" in caplog.text
    assert data.targets["date"].min() == first + pd.Timedelta(days=4)
    reasons = {s["id"]: s["reason"] for s in data.skipped}
    assert reasons["p00010"].startswith("no image and no text")
    assert all(reasons[d].startswith("before the first full window") for d in early)


def test_empty_counts_are_missing_values_not_errors(tmp_path):
    root = _tiny(tmp_path)
    _edit(root / "posts.csv", lambda f: f.__setitem__("collects", f["collects"].where(f.index % 3 != 0, "")))
    data = load_inputs(root, 5, "regression")
    assert data.columns == ["likes", "collects", "comments"] and data.posts["collects"].isna().sum() == 20


def _set_date(name, row, value):
    def edit(root):
        _edit(root / name, lambda f: f.__setitem__("date", f["date"].where(f.index != row, value)))
    return edit


SPAN_LIMIT = f"at most {MAX_SPAN_DAYS} days"


@pytest.mark.parametrize("break_it, messages", [
    (_set_date("posts.csv", 7, "9999-12-31"), ["posts.csv: 1 date(s) outside 1970-01-01 .. 2100-12-31, e.g. "
                                               "'9999-12-31' on line(s) 9"]),
    (_set_date("posts.csv", 0, "1969-12-31"), ["posts.csv: 1 date(s) outside 1970-01-01 .. 2100-12-31, e.g. "
                                               "'1969-12-31' on line(s) 2"]),
    (_set_date("targets.csv", 3, "9999-12-31"), ["targets.csv: 1 date(s) outside 1970-01-01 .. 2100-12-31, e.g. "
                                                 "'9999-12-31' on line(s) 5"]),
    (_set_date("targets.csv", 3, "2101-01-01T10:00:00+02:00"), ["targets.csv: 1 date(s) outside", "line(s) 5"]),
    (_set_date("posts.csv", 0, "1990-01-01"), ["posts.csv: the dates span", "from 1990-01-01 (line 2)", SPAN_LIMIT]),
    (_set_date("targets.csv", 2, "2090-06-01"), ["targets.csv: the dates span", "to 2090-06-01 (line 4)",
                                                 SPAN_LIMIT]),
])
def test_out_of_range_dates_and_long_spans_are_refused_before_any_allocation(tmp_path, break_it, messages):
    import tracemalloc

    root = _tiny(tmp_path)
    break_it(root)
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as err:
            load_inputs(root, 5, "regression")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for message in messages:  # the file, the value, its line(s) and the bound
        assert message in str(err.value), str(err.value)
    assert peak < 20 * 2**20, peak  # nothing sized by the (huge) day range was allocated


def test_date_bounds_are_inclusive_and_the_span_limit_is_exact():
    def frame(dates):
        f = pd.DataFrame({"date": dates})
        f["_line"] = np.arange(len(f)) + 2
        return f

    first = pd.Timestamp("2000-01-01")
    ok = parse_dates(frame([str(first.date()), str((first + pd.Timedelta(days=MAX_SPAN_DAYS)).date())]),
                     "f.csv")
    assert (ok.iloc[1] - ok.iloc[0]).days == MAX_SPAN_DAYS
    with pytest.raises(UserError, match=f"span {MAX_SPAN_DAYS + 1} days"):
        parse_dates(frame([str(first.date()), str((first + pd.Timedelta(days=MAX_SPAN_DAYS + 1)).date())]),
                    "f.csv")
    assert len(parse_dates(frame(["2100-12-31", "2099-01-01"]), "f.csv")) == 2
    # mixed time zones (a space before the time) keep the local calendar date instead of failing in pandas
    mixed = parse_dates(frame(["2021-01-01 23:00+05:00", "2021-01-02 10:00-03:00"]), "f.csv")
    assert [str(d.date()) for d in mixed] == ["2021-01-01", "2021-01-02"]


def test_a_folder_or_an_empty_file_is_a_clear_error(tmp_path):
    root = _tiny(tmp_path)
    (root / "targets.csv").write_bytes(b"")
    with pytest.raises(UserError, match="targets.csv: not a readable CSV file"):
        load_inputs(root, 5, "regression")
    (root / "posts.csv").unlink()
    (root / "posts.csv").mkdir()
    with pytest.raises(UserError, match="posts.csv is a folder"):
        load_inputs(root, 5, "regression")


# ------------------------------------------------------------------------------------------------- CLI
def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        trend.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data-root", "--window", "--task", "--numeric-cols", "--out", "--seeds", "--force", "--epochs",
                 "--fusion", "--rnn", "--text-backbone", "--image-backbone", "--cache-dir", "purge"):
        assert flag in text, flag
    assert "cross_attention" not in text.split("--fusion")[1].split("}")[0]  # pooled fusions only


def test_cli_error_is_one_line(tmp_path):
    root = _tiny(tmp_path)
    _bad_post_date(root)
    res = subprocess.run([sys.executable, "tasks/trend/run_trend.py", "--data-root", str(root), "--window", "5",
                          "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "line(s) 9" in res.stderr


@pytest.fixture(scope="module")
def flag_root(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("flags"))


def _exit_status(main, argv, capsys) -> tuple[int, str]:
    """``main`` run as the script runs it (through run_main); an argparse usage error is its SystemExit."""
    capsys.readouterr()
    try:
        rc = run_main(main, argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("flag_args", [
    ["--epochs", "0"], ["--epochs", "2.5"], ["--patience", "-1"], ["--batch-size", "0"], ["--block", "0"],
    ["--window", "0"], ["--window", "100000"], ["--learning-rate", "0"], ["--learning-rate", "nan"],
    ["--weight-decay", "-0.1"], ["--jobs", "0"], ["--feature-batch-size", "0"], ["--hidden", "0"],
    ["--hidden", "100000"], ["--dropout", "1"], ["--dropout", "-0.2"], ["--val-frac", "0"], ["--test-frac", "1.5"],
    ["--val-frac", "0.6", "--test-frac", "0.4"], ["--extra-gap", "-1"], ["--extra-gap", "1" + "0" * 20],
    ["--seeds", "-1"], ["--seeds", "4294967296"], ["--out", "FILE"], ["--cache-dir", "FILE"],
], ids=lambda a: " ".join(a))
def test_bad_flag_values_exit_2_naming_the_flag(flag_root, tmp_path, capsys, flag_args):
    flag_args = [str(flag_root / "posts.csv") if a == "FILE" else a for a in flag_args]
    out = tmp_path / "out"
    argv = ["--data-root", str(flag_root), "--window", "5", "--rows", "mean", "--seeds", "1", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), *flag_args]
    rc, err = _exit_status(trend.main, argv, capsys)
    assert rc == 2 and "error" in err and "Traceback" not in err, err
    assert flag_args[0] in err, err  # the message names the flag
    assert not out.exists()


def test_patience_zero_still_means_never():
    args = trend.build_parser().parse_args(["--data-root", "x", "--patience", "0"])
    assert args.patience == 0
    help_text = trend.build_parser().format_help()
    assert "0 = never" in help_text and "7305" in help_text and "2100-12-31" in help_text


def test_cli_out_of_range_date_is_one_line(tmp_path):
    root = _tiny(tmp_path)
    _set_date("posts.csv", 7, "9999-12-31")(root)
    res = subprocess.run([sys.executable, "tasks/trend/run_trend.py", "--data-root", str(root), "--window", "5",
                          "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "9999-12-31" in last and "line(s) 9" in last and "2100-12-31" in last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag_args, message", [
    (["--n-posts", "0"], "--n-posts"), (["--n-days", "9000"], "n_days 9000"), (["--window", "0"], "--window"),
    (["--seed", "-1"], "--seed"), (["--cue-prob", "2"], "--cue-prob"), (["--noise", "nan"], "--noise"),
    (["--image-size", "5000"], "image_size"), (["--start", "9999-01-01"], "2100-12-31"),
    (["--start", "soon"], "ISO date"), (["--out", "FILE"], "--out"),
])
def test_make_trend_data_bad_flags_exit_2(tmp_path, capsys, flag_args, message):
    file = tmp_path / "a_file"
    file.write_text("x")
    out = tmp_path / "gen"
    argv = ["--out", str(out), "--n-posts", "5", "--n-days", "20", "--window", "3", "--image-size", "8",
            *[str(file) if a == "FILE" else a for a in flag_args]]
    rc, err = _exit_status(make_trend_data.main, argv, capsys)
    assert rc == 2 and "error" in err and message in err, err
    assert not (out / "posts.csv").exists()


@pytest.mark.parametrize("fusion", pooled_fusions())
def test_every_pooled_fusion_runs_a_window_step(fusion):
    import torch

    from msa.fusions import SideBranch

    torch.manual_seed(0)
    day = torch.tensor([0, 0, 2, 3, 3, 3, 6])  # days 1, 4, 5 have no post
    count = torch.bincount(day, minlength=8).float()
    numeric = torch.tensor(np.log1p(np.arange(24, dtype=float).reshape(8, 3)), dtype=torch.float32)
    numeric[1] = float("nan")
    dd = DayData(post_day=day, feats={"text": torch.randn(7, 12), "image": torch.randn(7, 20)}, count=count,
                 has=(count > 0).float(), count_z=torch.zeros(8), numeric=numeric)
    side = SideBranch.fit(numeric[count > 0].numpy(), ["a", "b", "c"])
    for rnn in ("lstm", "gru"):
        net = _build_net(post_dims={"text": 12, "image": 20}, fusion=fusion, hidden=16, dropout=0.1,
                         side=side, rnn=rnn, num_outputs=3)
        table = net.day_table(dd)
        assert table.shape == (8, 17) and torch.all(table[[1, 4, 5]] == 0)  # empty days: zero input, flag 0
        out = net(torch.tensor([[0, 1, 2, 3], [3, 4, 5, 6]]), dd)
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        out.sum().backward()
