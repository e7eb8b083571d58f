"""A synthetic dated-posts dataset for the popularity-trend task (seed 003) with a learnable planted signal.

:func:`make_trend_dataset` writes the layout run_trend.py reads; ``make_trend_data.py`` is its command line.

The planted signal. Two slowly varying daily processes, independent of each other:
  * appeal(t) sets how likely a post of day t is "attractive" (+1: green image with a yellow disc and happy words),
    "dull" (0: grey image, a triangle, neutral words) or "off-putting" (-1: red image, a black square, sad words);
    each post shows its own class in its image and in its text with probability --cue-prob (else a random class),
    as in msa/synthetic.py, whose image and text helpers draw them;
  * buzz(t) scales the posts' engagement counts: likes ~ exp(3 + 1.2 buzz(t) + 0.8 N(0, 1)), collects and comments
    are noisy fractions of the likes.
The value of date d is a popularity share in (0, 1): sigmoid(A + B - 0.5 + noise * N(0, 1)) where A is the mean
post class over the posts of the window d-window+1..d (standardised) and B the mean log1p(likes) of those posts
(standardised). So the images/texts carry about half the signal and the counts the other half: a model that sees
both should beat either alone, and both beat the training mean. Posts fall on days in proportion to a third
process (activity), so some days have no post at all (about 10% at 2,500 posts over 1,200 days).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.trend.data import MAX_DATE, MAX_SPAN_DAYS, MIN_DATE

CLASSES = ("negative", "neutral", "positive")  # msa.synthetic's names for off-putting / dull / attractive
SCORE = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}


def _smooth_process(rng: np.random.Generator, n: int, periods=(40, 160), n_waves: int = 3, ar: float = 0.97,
                    ar_sd: float = 0.05) -> np.ndarray:
    """A slowly varying series in roughly [-1, 1]: a few random sinusoids plus an AR(1) wander."""
    t = np.arange(n)
    x = np.zeros(n)
    for _ in range(n_waves):
        period = rng.uniform(*periods)
        x += rng.uniform(0.4, 1.0) * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = ar * e[i - 1] + rng.normal(0, ar_sd)
    x = x + e
    return x / (np.abs(x).max() + 1e-9)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def make_trend_dataset(root: str | Path, n_posts: int = 2500, n_days: int = 1200, seed: int = 0, window: int = 30,
                       start: str = "2021-01-01", image_size: int = 48, cue_prob: float = 0.85, noise: float = 0.3,
                       with_trend: bool = False) -> Path:
    """Write a dated-posts dataset under ``root`` (see the module docstring) and return ``root``.

    ``window``: the window the planted value is computed over (targets start on the day of the first full one);
    ``noise``: standard deviation of the noise in logit space; ``with_trend``: also write a ``trend`` column
    (-1/0/1, the tertiles of all values), which run_trend.py then uses as given.
    """
    first = _first_day(n_posts, n_days, window, start, image_size, cue_prob, noise)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    appeal = _smooth_process(rng, n_days)
    buzz = _smooth_process(rng, n_days)
    activity = np.exp(0.8 * _smooth_process(rng, n_days, periods=(30, 200)))
    days = np.sort(rng.choice(n_days, size=n_posts, p=activity / activity.sum()))
    dates = pd.date_range(first, periods=n_days, freq="D")
    scores, log_likes = _write_posts(root, days, dates, appeal, buzz, rng, prng, image_size, cue_prob)
    _write_targets(root, days, dates, scores, log_likes, window, noise, with_trend, rng)
    return root


def _first_day(n_posts: int, n_days: int, window: int, start: str, image_size: int, cue_prob: float,
               noise: float) -> pd.Timestamp:
    """The first day, after checking the arguments (a ValueError names the bad one)."""
    if n_posts < 1 or n_days < 2 or not 1 <= window < n_days:
        raise ValueError(f"need n_posts >= 1, n_days >= 2 and 1 <= window < n_days, got {n_posts}, {n_days}, "
                         f"{window}")
    if n_days > MAX_SPAN_DAYS + 1:
        raise ValueError(f"n_days {n_days} is more than run_trend.py reads ({MAX_SPAN_DAYS + 1} days at most)")
    if not 1 <= image_size <= 1024 or not 0 <= cue_prob <= 1 or not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"need 1 <= image_size <= 1024, 0 <= cue_prob <= 1 and a finite noise >= 0, got {image_size}, "
                         f"{cue_prob}, {noise}")
    try:
        first = pd.Timestamp(start)
    except (ValueError, TypeError, OverflowError):
        first = pd.NaT
    if first is pd.NaT or first.tzinfo is not None:
        raise ValueError(f"start must be an ISO date (YYYY-MM-DD), got {start!r}")
    first = first.normalize()
    if first < MIN_DATE or first + pd.Timedelta(days=n_days - 1) > MAX_DATE:
        raise ValueError(f"the {n_days} days from {first.date()} must lie between {MIN_DATE.date()} and "
                         f"{MAX_DATE.date()} (the dates run_trend.py reads)")
    return first


def _write_posts(root: Path, days, dates, appeal, buzz, rng, prng, image_size: int,
                 cue_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """posts.csv and every post's image and text; returns the posts' class scores and log1p(likes)."""
    from msa.synthetic import _draw_image, _write_text

    data = root / "data"
    n_posts = len(days)
    p_pos = 1.0 / (1.0 + np.exp(-2.5 * appeal))  # attractive vs off-putting, with dull posts in between
    rows = []
    scores = np.zeros(n_posts)
    log_likes = np.zeros(n_posts)
    for i, d in enumerate(days):
        u = rng.random()
        cls = "neutral" if u < 0.2 else ("positive" if rng.random() < p_pos[d] else "negative")
        scores[i] = SCORE[cls]
        likes = int(round(math.exp(3.0 + 1.2 * buzz[d] + 0.8 * rng.normal())))
        collects = int(rng.binomial(likes, 0.25))
        comments = int(rng.poisson(0.08 * likes + 0.5))
        log_likes[i] = math.log1p(likes)
        post_id = f"p{i:05d}"
        _draw_image(cls, prng, image_size, prng.random() < cue_prob).save(data / f"{post_id}.jpg", quality=85)
        (data / f"{post_id}.txt").write_text(_write_text(cls, prng, prng.random() < cue_prob) + "\n",
                                             encoding="utf-8")
        rows.append((post_id, dates[d].date().isoformat(), likes, collects, comments))
    pd.DataFrame(rows, columns=["post_id", "date", "likes", "collects", "comments"]).to_csv(
        root / "posts.csv", index=False, lineterminator="\n")
    return scores, log_likes


def _write_targets(root: Path, days, dates, scores, log_likes, window: int, noise: float, with_trend: bool,
                   rng) -> None:
    """targets.csv (and planted.csv) from the window means of the post class and of log1p(likes), for every date
    with a full window."""
    n_days, n_posts = len(dates), len(days)
    cnt = np.bincount(days, minlength=n_days).astype(float)
    s_sum = np.bincount(days, weights=scores, minlength=n_days)
    l_sum = np.bincount(days, weights=log_likes, minlength=n_days)
    c_cnt, c_s, c_l = (np.concatenate([[0.0], np.cumsum(v)]) for v in (cnt, s_sum, l_sum))
    ends = np.arange(window - 1, n_days)
    n_win = c_cnt[ends + 1] - c_cnt[ends + 1 - window]
    a = (c_s[ends + 1] - c_s[ends + 1 - window]) / np.maximum(n_win, 1)
    b = np.where(n_win > 0, (c_l[ends + 1] - c_l[ends + 1 - window]) / np.maximum(n_win, 1), l_sum.sum() / n_posts)
    logit = 1.0 * _zscore(a) + 1.0 * _zscore(b) + noise * rng.normal(size=len(ends))
    value = 1.0 / (1.0 + np.exp(-(logit - 0.5)))
    targets = pd.DataFrame({"date": [dates[e].date().isoformat() for e in ends], "value": np.round(value, 6)})
    if with_trend:
        lo, hi = np.quantile(value, [1 / 3, 2 / 3])
        targets["trend"] = np.where(value > hi, 1, np.where(value <= lo, -1, 0))
    targets.to_csv(root / "targets.csv", index=False, lineterminator="\n")
    pd.DataFrame({"date": targets["date"], "posts": n_win.astype(int), "image_text_part": np.round(a, 6),
                  "numeric_part": np.round(b, 6)}).to_csv(root / "planted.csv", index=False, lineterminator="\n")
