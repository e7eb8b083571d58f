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

import sys
import time
from pathlib import Path

from msa import cli, stamp
from tasks.trend import stage


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    stage.add_args(p)
    return p


def main(argv=None) -> int:
    from msa.settings import parse_seeds

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t_start = time.time()
    root = Path(args.data_root)
    out = stage.out_dir(args)
    seeds = parse_seeds(args.seeds)
    rows = stage.parse_rows(args.rows, args.task)
    stage.check_args(args, seeds)

    stamp_path = out / "inputs.json"
    inputs = stamp.inputs_of(args, files=[root / "posts.csv", root / "targets.csv"],
                             code=[Path(__file__), *stage.code_files()],
                             extra={"data_folder": stamp.listing_digest(root / "data")}, ignore=("out",))
    if stamp.check(stamp_path, inputs, args.force, "trend"):
        print(f"trend: up to date ({out}); --force recomputes\n")
        md = out / "metrics.md"
        if md.is_file():
            print(md.read_text(encoding="utf-8"))
        return 0

    md_text, fig = stage.run(args, out, seeds, rows, t_start)
    stamp.write(stamp_path, inputs, [out / "metrics.json", out / "test_predictions.csv", fig])
    print(md_text)
    print(f"trend: results -> {out} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
