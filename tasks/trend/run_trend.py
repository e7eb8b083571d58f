"""Seed 003: predicts the popularity of a time window of dated posts (images + texts + engagement counts) with a
per-post fusion, a per-day pool, a numeric branch and an LSTM over the window, evaluated on a chronological split
with a purge gap, against the training mean and against the numeric-only and image+text-only variants.

Run from the repository root:

    python tasks/trend/make_trend_data.py --out /tmp/trend_data          # a synthetic set with a planted signal
    python tasks/trend/run_trend.py --data-root /tmp/trend_data --window 30 --task regression
    python tasks/trend/run_trend.py --data-root /tmp/trend_data --window 30 --task classification \\
        --seeds 42,43,44 --fusion attention_concat --rnn gru

Input (DIR = --data-root):
    DIR/posts.csv     post_id,date,<numeric columns>   one row per post, ISO dates (2021-03-01); numeric columns are
                      non-negative counts (likes, collects, comments, ...); an empty cell = missing
    DIR/data/{post_id}.jpg|png and DIR/data/{post_id}.txt   the post's image and text (read like MVSA's)
    DIR/targets.csv   date,value[,trend]   value = what the window of posts ending on that date must predict;
                      trend (-1/0/1, optional) is the class used as given by --task classification; without it the
                      classes are the tertiles of value over the training windows (1 high, 0 ordinary, -1 none)
    Dates must lie between 1970-01-01 and 2100-12-31, and the first and last date of each file at most 7305 days
    (20 years) apart: every day of the span gets a row in memory, so a typo such as 9999-12-31 is refused with
    the file and line(s) before anything is allocated.

Model. Every post's frozen text and image features (cached) are projected and fused by a fusion from the registry;
each day is the mean of its posts' fused vectors plus log1p(post count); the day's numeric columns (log1p per post,
averaged over the day's posts, standardised on the training days, missing values imputed and flagged) go through
the numeric branch and are concatenated after the fusion; a day without posts is masked (its input is zeroed, a
has-posts flag says so). An LSTM (or GRU) runs over the window's days and a head maps its last state to the value
(L1/MSE loss) or to the three classes (cross-entropy).

Evaluation. The target dates are split chronologically into train / validation / test (--val-frac, --test-frac);
then every validation (test) date whose window would reach back into a training (validation) window's days is
dropped (the purge gap: a window ending on d uses the posts of days d-window+1..d, so the first kept date of the
next split is at least `window` days after the last date of the previous one). No day's posts feed windows of
two splits. The best epoch is picked on validation only; test metrics are reported, mean and std over seeds, for
the rows: mean (training mean; majority class for classification), numeric (numeric branch only), image_text (no
numeric branch) and full.

Writes OUT (--out, default tasks/trend/results/<task>):
    metrics.json  row -> test metrics (regression MAE, RMSE, Corr, R2; classification accuracy, macro_f1), each
                  {mean, std, per_seed}
    metrics.md    the same as a markdown table, with the split sizes
    test_predictions.csv   date,value[,trend],pred (the full model, mean over seeds) and pred_<row> of the others
    runs.csv      one line per row x seed: best epoch, validation and test metrics, seconds
    split.csv     every target date with its split (train / val / test / purged / skipped) and why
    config.json   arguments, backbones, numeric columns, split dates and sizes, class thresholds, skipped inputs
    figures/pred_vs_true.png   true vs predicted over time
    inputs.json   the record that makes a rerun with the same inputs a no-op (--force recomputes)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from msa import cli, stamp
from tasks.trend import data as trend_data
from tasks.trend import model as trend_model
from tasks.trend import report as trend_report

TASK_DIR = Path(__file__).resolve().parent
ROWS = ("mean", "numeric", "image_text", "full")
MAX_SPAN_DAYS = trend_data.MAX_SPAN_DAYS
#: the largest seed torch, numpy and random all accept alike
MAX_SEED = 2**32 - 1
#: the widest --hidden accepted (the weights grow with its square; wider is a typo, not a model)
MAX_HIDDEN = 4096


def pooled_fusions() -> list[str]:
    """The registry's fusions that work on pooled vectors (cross_attention needs token sequences: left out)."""
    from msa.fusions import FUSIONS

    return [n for n, cls in FUSIONS.items() if not getattr(cls, "requires_tokens", False)]


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    _data_args(p.add_argument_group("data"))
    _split_args(p.add_argument_group("split"))
    _model_args(p.add_argument_group("model"))
    _training_args(p.add_argument_group("training"))
    _output_args(p.add_argument_group("features and output"))
    return p


def _data_args(d) -> None:
    d.add_argument("--data-root", type=Path, required=True, default=argparse.SUPPRESS,
                   help="folder with posts.csv, targets.csv and data/{post_id}.jpg|png + .txt (never modified)")
    d.add_argument("--window", type=cli.positive_int, default=60,
                   help="days per window: the window ending on date d holds the posts of days d-window+1..d "
                        f"(at most {MAX_SPAN_DAYS})")
    d.add_argument("--task", choices=["regression", "classification"], default="regression",
                   help="predict targets.csv's value (regression) or its trend class -1/0/1 (classification)")
    d.add_argument("--numeric-cols", default=None,
                   help="comma-separated numeric columns of posts.csv for the numeric branch; None = every column "
                        "besides post_id and date whose values are all numbers or empty")
    d.add_argument("--numeric-agg", choices=["mean", "sum", "max"], default="mean",
                   help="how the log1p counts of a day's posts are combined into the day's value (mean: the "
                        "typical engagement of the day's posts; sum: grows with the number of posts, which the "
                        "model also gets as log1p(post count))")


def _split_args(s) -> None:
    s.add_argument("--val-frac", type=cli.open_fraction, default=0.15,
                   help="share of the target dates for validation (> 0; with --test-frac below 1 in sum)")
    s.add_argument("--test-frac", type=cli.open_fraction, default=0.15,
                   help="share of the target dates for test (the last; > 0)")
    s.add_argument("--extra-gap", type=cli.non_negative_int, default=0,
                   help="days purged between splits on top of --window; set it to the target's horizon when a "
                        "value is computed from posts after its date, so that no target period overlaps the next "
                        f"split's windows (at most {MAX_SPAN_DAYS})")


def _model_args(m) -> None:
    from msa.settings import DEFAULTS

    m.add_argument("--text-backbone", default=DEFAULTS["text_backbone"],
                   help="text backbone: registry name or local Hugging Face folder")
    m.add_argument("--text-pooling", default=None, choices=["mean", "cls", "pooler"],
                   help="sentence vector of the text backbone; None = the backbone's own")
    m.add_argument("--image-backbone", default=DEFAULTS["image_backbone"],
                   help="image backbone: registry name or local Hugging Face folder")
    m.add_argument("--fusion", default="concat", choices=pooled_fusions(),
                   help="per-post fusion of the text and image features (msa.fusions.FUSIONS; cross_attention "
                        "needs token sequences and is not offered)")
    m.add_argument("--rnn", choices=["lstm", "gru"], default="lstm", help="recurrent layer over the window's days")
    m.add_argument("--hidden", type=cli.positive_int, default=64,
                   help="width of the per-post projections, the numeric branch, the day vector and the RNN state "
                        f"(at most {MAX_HIDDEN})")
    m.add_argument("--dropout", type=cli.fraction, default=0.2,
                   help="dropout in projections, numeric branch and head (0 <= p < 1)")
    m.add_argument("--loss", choices=["l1", "mse"], default="mse",
                   help="regression loss on the standardised value (classification always uses cross-entropy)")
    m.add_argument("--rows", default=",".join(ROWS),
                   help="comma-separated rows to run, from: mean (majority for classification), numeric, "
                        "image_text, full")


def _training_args(t) -> None:
    t.add_argument("--epochs", type=cli.positive_int, default=30, help="maximum epochs per run")
    t.add_argument("--patience", type=cli.non_negative_int, default=6,
                   help="stop after this many epochs without a better validation score (0 = never)")
    t.add_argument("--batch-size", type=cli.positive_int, default=32, help="windows per step")
    t.add_argument("--block", type=cli.positive_int, default=8,
                   help="a batch is made of random blocks of this many consecutive training windows (1 = fully "
                        "shuffled windows; larger blocks share days, so a step fuses fewer posts and runs faster)")
    t.add_argument("--learning-rate", type=cli.positive_float, default=1e-3, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=cli.non_negative_float, default=0.01, help="AdamW weight decay")
    t.add_argument("--seeds", default="42,43,44",
                   help="comma-separated seeds (integers 0 .. 2^32-1); every row is trained once per seed")


def _output_args(o) -> None:
    o.add_argument("--out", type=cli.output_dir, default=None, help="output folder; None = tasks/trend/results/<task>")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training runs in parallel processes on the CPU, one torch thread each (1 = in this process; "
                        "on a GPU always 1)")
    o.add_argument("--cache-dir", type=cli.output_dir, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
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


def main(argv=None) -> int:
    import torch

    from msa.settings import parse_seeds

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t_start = time.time()
    root = Path(args.data_root)
    out = Path(args.out) if args.out is not None else TASK_DIR / "results" / args.task
    seeds = parse_seeds(args.seeds)
    rows = parse_rows(args.rows, args.task)
    check_args(args, seeds)

    stamp_path = out / "inputs.json"
    code = [Path(__file__), *(Path(m.__file__) for m in (trend_data, trend_model, trend_report))]
    inputs = stamp.inputs_of(args, files=[root / "posts.csv", root / "targets.csv"], code=code,
                             extra={"data_folder": stamp.listing_digest(root / "data")}, ignore=("out",))
    if stamp.check(stamp_path, inputs, args.force, "trend"):
        print(f"trend: up to date ({out}); --force recomputes\n")
        md = out / "metrics.md"
        if md.is_file():
            print(md.read_text(encoding="utf-8"))
        return 0

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
    md_text, fig = trend_report.write_report(out, args, seeds, rows, data, posts, count, sizes, thresholds, prob,
                                             backbones, results, t_start)
    stamp.write(stamp_path, inputs, [out / "metrics.json", out / "test_predictions.csv", fig])
    print(md_text)
    print(f"trend: results -> {out} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
