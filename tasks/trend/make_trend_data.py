"""Writes a synthetic dated-posts dataset for the popularity-trend task (seed 003) with a learnable planted signal.

Run from the repository root:

    python tasks/trend/make_trend_data.py --out /tmp/trend_data
    python tasks/trend/make_trend_data.py --out /tmp/trend_small --n-posts 600 --n-days 400 --window 20 --seed 1

Writes (the layout run_trend.py reads):
    OUT/posts.csv     post_id,date,likes,collects,comments   (ISO dates, one row per post)
    OUT/data/{post_id}.jpg + OUT/data/{post_id}.txt          one small image (48 px) and one short text per post
    OUT/targets.csv   date,value[,trend]                     one row per date from the first full window on
    OUT/planted.csv   date,posts,image_text_part,numeric_part   the two planted components per date (A and B of
                      tasks/trend/synthetic.py, unstandardised), for checking a model; run_trend.py never reads it

The planted signal (two slowly varying daily processes: the posts' classes shown in their images and texts, and
their engagement counts, each about half of the target) is described in tasks/trend/synthetic.py.
"""

from __future__ import annotations

import argparse
import sys

from msa import cli
from tasks.trend.synthetic import make_trend_dataset

__all__ = ["main", "make_trend_dataset"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                           argparse.RawDescriptionHelpFormatter), {}))
    p.add_argument("--out", type=cli.output_dir, required=True,
                   help="dataset folder to write (created; files overwritten)")
    p.add_argument("--n-posts", type=cli.positive_int, default=2500, help="number of posts")
    p.add_argument("--n-days", type=cli.positive_int, default=1200,
                   help="number of consecutive days the posts fall on (2 to 7306, the span run_trend.py reads)")
    p.add_argument("--window", type=cli.positive_int, default=30,
                   help="window (days) the planted target value is computed over (below --n-days)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0,
                   help="random seed (the same seed writes the same files)")
    p.add_argument("--start", default="2021-01-01",
                   help="ISO date of the first day (all days between 1970-01-01 and 2100-12-31)")
    p.add_argument("--image-size", type=cli.positive_int, default=48,
                   help="image height in pixels (JPEG; at most 1024)")
    p.add_argument("--cue-prob", type=cli.fraction, default=0.85,
                   help="probability that a post's image (and, separately, its text) shows the post's own class")
    p.add_argument("--noise", type=cli.non_negative_float, default=0.3,
                   help="standard deviation of the target noise (logit scale)")
    p.add_argument("--with-trend", action="store_true", help="also write a trend column (-1/0/1) to targets.csv")
    args = p.parse_args(argv)
    try:
        root = make_trend_dataset(args.out, n_posts=args.n_posts, n_days=args.n_days, seed=args.seed,
                                  window=args.window, start=args.start, image_size=args.image_size,
                                  cue_prob=args.cue_prob, noise=args.noise, with_trend=args.with_trend)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.n_posts} posts over {args.n_days} days and targets.csv -> {root}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
