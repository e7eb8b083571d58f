"""The popularity-trend task as a stage (seed 003, run_trend.py): its flags (settings dataclasses, see
:mod:`msa.config`), the checks the flags' own types cannot make, and the whole run on the parsed flags: inputs,
split and labels (every input problem reported before any model work), post features and day tensors, the runs
per row and seed, the report. ``tasks/trend/run_trend.py`` is the front end (parser, stamp, printing)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from msa import cli
from msa.config import add_options, option
from msa.settings import DEFAULTS
from tasks.trend.data import MAX_SPAN_DAYS

TASK_DIR = Path(__file__).resolve().parent
ROWS = ("mean", "numeric", "image_text", "full")
TASKS = ("regression", "classification")
#: how a day's posts' log1p counts are combined (``--numeric-agg``)
NUMERIC_AGGS = ("mean", "sum", "max")
RNNS = ("lstm", "gru")
#: regression losses (``--loss``)
LOSSES = ("l1", "mse")
#: the largest seed torch, numpy and random all accept alike
MAX_SEED = 2**32 - 1
#: the widest --hidden accepted (the weights grow with its square; wider is a typo, not a model)
MAX_HIDDEN = 4096


def pooled_fusions() -> list[str]:
    """The registry's fusions that work on pooled vectors (cross_attention needs token sequences: left out)."""
    from msa.fusions import FUSIONS

    return [n for n, cls in FUSIONS.items() if not getattr(cls, "requires_tokens", False)]


def _poolings():
    from msa.backbones import TEXT_POOLINGS

    return TEXT_POOLINGS


# ------------------------------------------------------------------------------------------------ flags
@dataclass(frozen=True)
class DataSettings:
    """Which windows and targets (``--data-root`` itself is added by :func:`add_args`: it is required)."""

    window: int = option(60, "days per window: the window ending on date d holds the posts of days d-window+1..d "
                         f"(at most {MAX_SPAN_DAYS})", type=cli.positive_int)
    task: str = option("regression", "predict targets.csv's value (regression) or its trend class -1/0/1 "
                       "(classification)", choices=TASKS)
    numeric_cols: str | None = option(None, "comma-separated numeric columns of posts.csv for the numeric branch; "
                                      "None = every column besides post_id and date whose values are all numbers "
                                      "or empty")
    numeric_agg: str = option("mean", "how the log1p counts of a day's posts are combined into the day's value "
                              "(mean: the typical engagement of the day's posts; sum: grows with the number of "
                              "posts, which the model also gets as log1p(post count))", choices=NUMERIC_AGGS)


@dataclass(frozen=True)
class SplitSettings:
    val_frac: float = option(0.15, "share of the target dates for validation (> 0; with --test-frac below 1 in "
                             "sum)", type=cli.open_fraction)
    test_frac: float = option(0.15, "share of the target dates for test (the last; > 0)", type=cli.open_fraction)
    extra_gap: int = option(0, "days purged between splits on top of --window; set it to the target's horizon when "
                            "a value is computed from posts after its date, so that no target period overlaps the "
                            f"next split's windows (at most {MAX_SPAN_DAYS})", type=cli.non_negative_int)


@dataclass(frozen=True)
class ModelSettings:
    text_backbone: str = option(DEFAULTS["text_backbone"], "text backbone: registry name or local Hugging Face "
                                "folder")
    text_pooling: str | None = option(None, "sentence vector of the text backbone; None = the backbone's own",
                                      choices=_poolings)
    image_backbone: str = option(DEFAULTS["image_backbone"], "image backbone: registry name or local Hugging Face "
                                 "folder")
    fusion: str = option("concat", "per-post fusion of the text and image features (msa.fusions.FUSIONS; "
                         "cross_attention needs token sequences and is not offered)", choices=pooled_fusions)
    rnn: str = option("lstm", "recurrent layer over the window's days", choices=RNNS)
    hidden: int = option(64, "width of the per-post projections, the numeric branch, the day vector and the RNN "
                         f"state (at most {MAX_HIDDEN})", type=cli.positive_int)
    dropout: float = option(0.2, "dropout in projections, numeric branch and head (0 <= p < 1)", type=cli.fraction)
    loss: str = option("mse", "regression loss on the standardised value (classification always uses "
                       "cross-entropy)", choices=LOSSES)
    rows: str = option(",".join(ROWS), "comma-separated rows to run, from: mean (majority for classification), "
                       "numeric, image_text, full")


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = option(30, "maximum epochs per run", type=cli.positive_int)
    patience: int = option(6, "stop after this many epochs without a better validation score (0 = never)",
                           type=cli.non_negative_int)
    batch_size: int = option(32, "windows per step", type=cli.positive_int)
    block: int = option(8, "a batch is made of random blocks of this many consecutive training windows (1 = fully "
                        "shuffled windows; larger blocks share days, so a step fuses fewer posts and runs faster)",
                        type=cli.positive_int)
    learning_rate: float = option(1e-3, "AdamW learning rate", type=cli.positive_float)
    weight_decay: float = option(0.01, "AdamW weight decay", type=cli.non_negative_float)
    seeds: str = option("42,43,44", "comma-separated seeds (integers 0 .. 2^32-1); every row is trained once per "
                        "seed")


@dataclass(frozen=True)
class OutputSettings:
    out: Path | None = option(None, "output folder; None = tasks/trend/results/<task>", type=cli.output_dir)
    jobs: int = option(2, "training runs in parallel processes on the CPU, one torch thread each (1 = in this "
                       "process; on a GPU always 1)", type=cli.positive_int)
    cache_dir: Path = option(cli.CACHE_ROOT / "features", "feature cache folder", type=cli.output_dir)
    feature_batch_size: int = option(32, "batch size of the frozen backbones", type=cli.positive_int)


def add_args(p: argparse.ArgumentParser) -> None:
    """Every flag of run_trend.py, in its --help groups."""
    from msa import stamp

    p.add_argument_group("data").add_argument(
        "--data-root", type=Path, required=True, default=argparse.SUPPRESS,
        help="folder with posts.csv, targets.csv and data/{post_id}.jpg|png + .txt (never modified)")
    for cls, title in ((DataSettings, "data"), (SplitSettings, "split"), (ModelSettings, "model"),
                       (TrainingSettings, "training"), (OutputSettings, "features and output")):
        groups = add_options(p, cls, group=title)
    o = groups["features and output"]
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def check_args(args, seeds: list[int]) -> None:
    """What the flags' own types cannot check: ranges that involve the data's limits or two flags at once."""
    if args.hidden > MAX_HIDDEN:
        raise cli.UserError(f"--hidden {args.hidden} is wider than {MAX_HIDDEN}")
    if not args.dropout < 1:
        raise cli.UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.val_frac + args.test_frac < 1:
        raise cli.UserError(f"--val-frac {args.val_frac} + --test-frac {args.test_frac} leave no target date for "
                            "training: their sum must be below 1")
    for name, v in (("--window", args.window), ("--extra-gap", args.extra_gap)):
        if v > MAX_SPAN_DAYS:
            raise cli.UserError(f"{name} {v} is longer than the longest date span supported ({MAX_SPAN_DAYS} days)")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise cli.UserError(f"--seeds must be integers from 0 to {MAX_SEED}, got {bad[0]}")


def parse_rows(text: str, task: str) -> list[str]:
    """--rows in :data:`ROWS` order (``majority`` is the mean row's name for classification)."""
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS and not (r == "majority" and task == "classification")]
    if unknown or not rows:
        raise cli.UserError(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    return [("mean" if r == "majority" else r) for r in ROWS if r in rows or (r == "mean" and "majority" in rows)]


def out_dir(args) -> Path:
    """``--out``, else tasks/trend/results/<task>."""
    return Path(args.out) if args.out is not None else TASK_DIR / "results" / args.task


def code_files() -> list[Path]:
    """The task's modules (what the stamp hashes besides the front end and the library)."""
    from tasks.trend import data, model, report

    return [Path(m.__file__) for m in (data, model, report)] + [Path(__file__)]


# ------------------------------------------------------------------------------------------------ the run
def run(args, out: Path, seeds: list[int], rows: list[str], t_start: float) -> tuple[str, Path]:
    """The task on the parsed flags, written to ``out``: returns metrics.md's text and the figure's path."""
    import torch

    from tasks.trend import data as trend_data
    from tasks.trend import model as trend_model
    from tasks.trend import report as trend_report

    root = Path(args.data_root)
    # ---- inputs, split, labels (all problems with the input files are reported before any model work)
    data = trend_data.load_inputs(root, args.window, args.task, args.numeric_cols)
    sizes = trend_data.split_targets(data.targets, args.window, args.val_frac, args.test_frac, args.extra_gap)
    thresholds = trend_data.add_classes(data.targets) if args.task == "classification" else None
    trend_data.log_split(data.targets, sizes, args.window + args.extra_gap)

    # ---- features of the posts that some kept window uses, day tensors
    posts = trend_data.used_posts(data, args.window)
    feats, backbones = trend_model.post_features(posts, root, rows, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prob, count = trend_model.build_problem(args.task, posts, feats, data.targets, data.n_days, data.columns,
                                            args.numeric_agg, args.window, device)
    rows = trend_model.usable_rows(rows, data.columns)

    # ---- runs, tables, figure
    out.mkdir(parents=True, exist_ok=True)
    results = trend_model.run_rows(prob, rows, seeds, args, device)
    return trend_report.write_report(out, args, seeds, rows, data, posts, count, sizes, thresholds, prob,
                                     backbones, results, t_start)
