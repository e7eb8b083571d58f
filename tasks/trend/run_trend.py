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
import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from msa import cli, stamp

log = logging.getLogger("trend")
TASK_DIR = Path(__file__).resolve().parent
ROWS = ("mean", "numeric", "image_text", "full")
CLASS_VALUES = (-1, 0, 1)
CLASS_NAMES = ("none", "ordinary", "high")
REGRESSION_METRICS = ("MAE", "RMSE", "Corr", "R2")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
RESERVED = ("post_id", "date")
#: dates outside this range are refused (a typo such as 9999-12-31 would otherwise stretch the day range)
MIN_DATE = pd.Timestamp("1970-01-01")
MAX_DATE = pd.Timestamp("2100-12-31")
#: the longest span, in days, from the first to the last date of posts.csv (or of targets.csv): memory and time
#: grow with the number of days between them (every day gets a row), so a longer span is refused (20 years)
MAX_SPAN_DAYS = 7305
#: the largest seed torch, numpy and random all accept alike
MAX_SEED = 2**32 - 1
#: the widest --hidden accepted (the weights grow with its square; wider is a typo, not a model)
MAX_HIDDEN = 4096


def pooled_fusions() -> list[str]:
    """The registry's fusions that work on pooled vectors (cross_attention needs token sequences: left out)."""
    from msa.fusions import FUSIONS

    return [n for n, cls in FUSIONS.items() if not getattr(cls, "requires_tokens", False)]


def build_parser() -> cli.ArgumentParser:
    from msa.settings import DEFAULTS

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    d = p.add_argument_group("data")
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
    s = p.add_argument_group("split")
    s.add_argument("--val-frac", type=cli.open_fraction, default=0.15,
                   help="share of the target dates for validation (> 0; with --test-frac below 1 in sum)")
    s.add_argument("--test-frac", type=cli.open_fraction, default=0.15,
                   help="share of the target dates for test (the last; > 0)")
    s.add_argument("--extra-gap", type=cli.non_negative_int, default=0,
                   help="days purged between splits on top of --window; set it to the target's horizon when a "
                        "value is computed from posts after its date, so that no target period overlaps the next "
                        f"split's windows (at most {MAX_SPAN_DAYS})")
    m = p.add_argument_group("model")
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
    t = p.add_argument_group("training")
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
    o = p.add_argument_group("features and output")
    o.add_argument("--out", type=cli.output_dir, default=None, help="output folder; None = tasks/trend/results/<task>")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training runs in parallel processes on the CPU, one torch thread each (1 = in this process; "
                        "on a GPU always 1)")
    o.add_argument("--cache-dir", type=cli.output_dir, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class TrendInputs:
    """Posts and targets after validation. Days are integers, day 0 = the first post date."""

    start: pd.Timestamp
    posts: pd.DataFrame  # post_id, date, day, _line, <numeric columns> (floats, NaN = missing)
    columns: list[str]
    targets: pd.DataFrame  # date, day, value[, trend], _line
    skipped: list[dict] = field(default_factory=list)  # {"what", "id", "line", "reason"}

    @property
    def n_days(self) -> int:
        return int(self.posts["day"].max()) + 1


def _lines(frame: pd.DataFrame, mask) -> str:
    rows = frame.loc[mask]
    shown = ", ".join(str(int(x)) for x in rows["_line"].head(5))
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if path.is_dir():
        raise cli.UserError(f"{what} {path} is a folder, not a CSV file")
    if not path.is_file():
        raise cli.UserError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise cli.UserError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0][:200]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.apply(lambda col: col.str.strip())
    frame["_line"] = np.arange(len(frame)) + 2  # 1-based file line (after the header)
    return frame


def _one_date(text: str):
    try:
        ts = pd.to_datetime(text, format="ISO8601", errors="coerce")
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    return ts.tz_localize(None) if ts is not pd.NaT and ts.tzinfo is not None else ts


def parse_dates(frame: pd.DataFrame, path: Path) -> pd.Series:
    """Calendar dates of ``frame["date"]`` (ISO; a time of day is dropped). Unparseable dates, dates outside
    :data:`MIN_DATE` .. :data:`MAX_DATE` and a span of more than :data:`MAX_SPAN_DAYS` days from the first to the
    last date are a UserError naming the file and the line(s); nothing sized by the span is allocated here."""
    raw = frame["date"]
    with_tz = raw.str.contains(r"[T ].*(?:[+-]\d\d:?\d\d|Z)$", regex=True)  # the local calendar date is kept
    text = raw.where(~with_tz, raw.str.slice(0, 10))
    try:
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_localize(None)
    except (ValueError, TypeError, OverflowError):  # mixed time zones or forms: one value at a time
        parsed = pd.Series([_one_date(x) for x in text], index=raw.index, dtype="datetime64[us]")
    bad = parsed.isna()
    if bad.any():
        first = frame.loc[bad, "date"].iloc[0]
        raise cli.UserError(f"{path}: {int(bad.sum())} date(s) are not ISO dates (YYYY-MM-DD), e.g. {first!r} on "
                            f"line(s) {_lines(frame, bad)}")
    parsed = parsed.dt.normalize()
    out = (parsed < MIN_DATE) | (parsed > MAX_DATE)
    if out.any():
        raise cli.UserError(f"{path}: {int(out.sum())} date(s) outside {MIN_DATE.date()} .. {MAX_DATE.date()}, e.g. "
                            f"{frame.loc[out, 'date'].iloc[0]!r} on line(s) {_lines(frame, out)}")
    first, last = parsed.idxmin(), parsed.idxmax()
    span = int((parsed[last] - parsed[first]).days)
    if span > MAX_SPAN_DAYS:
        raise cli.UserError(f"{path}: the dates span {span} days, from {parsed[first].date()} (line "
                            f"{int(frame.loc[first, '_line'])}) to {parsed[last].date()} (line "
                            f"{int(frame.loc[last, '_line'])}); at most {MAX_SPAN_DAYS} days (20 years) are "
                            "supported, as every day of the span is held in memory: fix a mistyped date or split "
                            "the data")
    return parsed


def _numeric(frame: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Floats of ``frame[col]`` (empty = NaN = missing); text, negative and infinite values are a UserError."""
    raw = frame[col]
    values = pd.to_numeric(raw.where(raw != "", None), errors="coerce").astype(float)
    bad = values.isna() & (raw != "")
    if bad.any():
        raise cli.UserError(f"{path}: column {col!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                            f"{frame.loc[bad, col].iloc[0]!r} on line(s) {_lines(frame, bad)}")
    inf = np.isinf(values)
    if inf.any():
        raise cli.UserError(f"{path}: column {col!r} has infinite value(s) on line(s) {_lines(frame, inf)}")
    return values


def _numeric_columns(frame: pd.DataFrame, wanted: str | None, path: Path) -> list[str]:
    cols = [c for c in frame.columns if c not in (*RESERVED, "_line")]
    if wanted is not None:
        chosen = [c.strip() for c in wanted.split(",") if c.strip()]
        missing = [c for c in chosen if c not in cols]
        if missing:
            raise cli.UserError(f"--numeric-cols names {missing}, which {path} does not have (its columns: "
                                f"{', '.join(cols) or 'none besides post_id and date'})")
        return chosen
    chosen = []
    for c in cols:
        raw = frame[c]
        filled = raw[raw != ""]
        ok = pd.to_numeric(filled, errors="coerce").notna()
        if len(filled) and ok.all():
            chosen.append(c)
        elif len(filled) and ok.mean() >= 0.5:  # mostly numbers: a typo, not a text column -> a clear error
            _numeric(frame, c, path)
        else:
            log.info("%s: column %r is not numeric; not used", path, c)
    return chosen


def load_posts(root: Path, numeric_cols: str | None = None) -> tuple[pd.DataFrame, list[str], list[dict]]:
    """posts.csv validated: bad dates / counts are a UserError; bad post ids and repeats are skipped (logged)."""
    from msa.data import validate_guid

    path = root / "posts.csv"
    frame = _read_csv(path, "posts file")
    missing = [c for c in RESERVED if c not in frame.columns]
    if missing:
        raise cli.UserError(f"{path}: missing column(s) {missing}; expected post_id,date,<numeric columns>")
    if frame.empty:
        raise cli.UserError(f"{path} has no post")
    skipped: list[dict] = []
    why = frame["post_id"].map(validate_guid)
    for _, r in frame[why.notna()].iterrows():
        skipped.append({"what": "post", "id": r["post_id"], "line": int(r["_line"]),
                        "reason": f"bad post_id ({why[_]})"})
    frame = frame[why.isna()]
    dup = frame["post_id"].duplicated(keep="first")
    for _, r in frame[dup].iterrows():
        skipped.append({"what": "post", "id": r["post_id"], "line": int(r["_line"]),
                        "reason": "post_id repeated; the first row is kept"})
    frame = frame[~dup].copy()
    if frame.empty:
        raise cli.UserError(f"{path}: no usable post ({len(skipped)} skipped, first: {skipped[0]['reason']})")
    frame["date"] = parse_dates(frame, path)
    columns = _numeric_columns(frame, numeric_cols, path)
    for c in columns:
        values = _numeric(frame, c, path)
        neg = values < 0
        if neg.any():
            raise cli.UserError(f"{path}: column {c!r} has {int(neg.sum())} negative count(s), e.g. "
                                f"{frame.loc[neg, c].iloc[0]!r} on line(s) {_lines(frame, neg)}")
        frame[c] = values
    return frame[["post_id", "date", "_line", *columns]].reset_index(drop=True), columns, skipped


def load_targets(root: Path, task: str) -> tuple[pd.DataFrame, list[dict]]:
    """targets.csv validated: bad dates, values or trends and repeated dates are a UserError; an empty value (an
    empty trend for classification) skips the row (logged)."""
    path = root / "targets.csv"
    frame = _read_csv(path, "targets file")
    need = ["date", "value"] if task == "regression" or "trend" not in frame.columns else ["date"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise cli.UserError(f"{path}: missing column(s) {missing}; expected date,value[,trend]")
    if frame.empty:
        raise cli.UserError(f"{path} has no target row")
    frame["date"] = parse_dates(frame, path)
    frame["value"] = _numeric(frame, "value", path) if "value" in frame.columns else np.nan
    skipped = []
    use_trend = task == "classification" and "trend" in frame.columns
    if use_trend:
        trend = pd.to_numeric(frame["trend"].where(frame["trend"] != "", None), errors="coerce")
        bad = (trend.isna() & (frame["trend"] != "")) | (trend.notna() & ~trend.isin(CLASS_VALUES))
        if bad.any():
            raise cli.UserError(f"{path}: trend must be -1, 0 or 1, got {frame.loc[bad, 'trend'].iloc[0]!r} on "
                                f"line(s) {_lines(frame, bad)}")
        frame["trend"] = trend
        empty = trend.isna()
    else:
        frame = frame.drop(columns=[c for c in ("trend",) if c in frame.columns])
        empty = frame["value"].isna()
    for _, r in frame[empty].iterrows():
        skipped.append({"what": "target", "id": r["date"].date().isoformat(), "line": int(r["_line"]),
                        "reason": "empty " + ("trend" if use_trend else "value")})
    frame = frame[~empty].copy()
    if use_trend:
        frame["trend"] = frame["trend"].astype(int)
    dup = frame["date"].duplicated(keep=False)
    if dup.any():
        raise cli.UserError(f"{path}: date {frame.loc[dup, 'date'].iloc[0].date()} appears more than once (lines "
                            f"{_lines(frame, dup)}); give one target per date")
    if frame.empty:
        raise cli.UserError(f"{path}: no target row with a value")
    return frame.sort_values("date").reset_index(drop=True), skipped


def load_inputs(root: Path, window: int, task: str, numeric_cols: str | None = None) -> TrendInputs:
    """Posts with both files missing are skipped; targets whose window is not covered by posts.csv's dates (before
    the first full window, or after the last post date) are skipped; both are logged and listed in split.csv."""
    from msa.data import find_image

    if not 1 <= window <= MAX_SPAN_DAYS:
        raise cli.UserError(f"--window must be 1 to {MAX_SPAN_DAYS} days (the longest date span), got {window}")
    root = Path(root)
    if not root.is_dir():
        raise cli.UserError(f"--data-root {root} is not a folder")
    posts, columns, skipped = load_posts(root, numeric_cols)
    data_dir = root / "data"
    has_img = posts["post_id"].map(lambda g: find_image(data_dir, g) is not None)
    has_txt = posts["post_id"].map(lambda g: (data_dir / f"{g}.txt").is_file())
    none = ~has_img & ~has_txt
    for _, r in posts[none].iterrows():
        skipped.append({"what": "post", "id": r["post_id"], "line": int(r["_line"]),
                        "reason": f"no image and no text in {data_dir}"})
    if (~has_img & has_txt).any():
        log.warning("%d post(s) have no image (e.g. %s): a grey placeholder image stands in", int((~has_img &
                    has_txt).sum()), posts.loc[~has_img & has_txt, "post_id"].iloc[0])
    if (has_img & ~has_txt).any():
        log.warning("%d post(s) have no text (e.g. %s): an empty text stands in", int((has_img & ~has_txt).sum()),
                    posts.loc[has_img & ~has_txt, "post_id"].iloc[0])
    posts = posts[~none].reset_index(drop=True)
    if posts.empty:
        raise cli.UserError(f"no post of {root / 'posts.csv'} has an image or a text in {data_dir}")
    targets, t_skipped = load_targets(root, task)
    skipped += t_skipped
    start = posts["date"].min()
    posts["day"] = (posts["date"] - start).dt.days.astype(int)
    targets["day"] = (targets["date"] - start).dt.days.astype(int)
    last = int(posts["day"].max())
    early = targets["day"] < window - 1
    late = targets["day"] > last
    first_full = (start + pd.Timedelta(days=window - 1)).date()
    for mask, reason in ((early, f"before the first full window (the first post date is {start.date()}, so the "
                                 f"first {window}-day window ends on {first_full})"),
                         (late, f"after the last post date {(start + pd.Timedelta(days=last)).date()}")):
        for _, r in targets[mask].iterrows():
            skipped.append({"what": "target", "id": r["date"].date().isoformat(), "line": int(r["_line"]),
                            "reason": reason})
    targets = targets[~early & ~late].reset_index(drop=True)
    by_reason: dict[str, int] = {}
    for s in skipped:
        key = f"{s['what']}: {s['reason']}"
        by_reason[key] = by_reason.get(key, 0) + 1
    for key, n in by_reason.items():
        log.warning("skipped %d %s(s) - %s", n, *key.split(": ", 1))
    if targets.empty:
        raise cli.UserError(f"no target date of {root / 'targets.csv'} has a full {window}-day window of posts "
                            f"(posts from {start.date()} to {(start + pd.Timedelta(days=last)).date()}; the first "
                            f"full window ends on {first_full})")
    return TrendInputs(start=start, posts=posts, columns=columns, targets=targets, skipped=skipped)


# -------------------------------------------------------------------------------------------------- split
def window_days(end_days, window: int) -> set[int]:
    """Every day whose posts feed a window ending on one of ``end_days``."""
    out: set[int] = set()
    for d in end_days:
        out.update(range(int(d) - window + 1, int(d) + 1))
    return out


def chronological_split(days, window: int, val_frac: float = 0.15, test_frac: float = 0.15,
                        extra_gap: int = 0) -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` / ``"purged"`` per target day (``days`` sorted ascending).

    The dates are cut by count into the first ``1 - val_frac - test_frac``, the next ``val_frac`` and the last
    ``test_frac``; then a validation (test) date ``d`` is kept only when ``d - window + 1`` is more than
    ``extra_gap`` days after the last training (kept validation) date, so windows of different splits share no
    post-day."""
    days = np.asarray(days, dtype=int)
    n = len(days)
    if np.any(np.diff(days) <= 0):
        raise ValueError("target days must be sorted and unique")
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise cli.UserError(f"--val-frac and --test-frac must be in (0, 1) with a sum below 1, got {val_frac}, "
                            f"{test_frac}")
    i_val = int(round(n * (1 - val_frac - test_frac)))
    i_test = int(round(n * (1 - test_frac)))
    out = np.array(["train"] * i_val + ["val"] * (i_test - i_val) + ["test"] * (n - i_test), dtype=object)
    gap = window + max(0, int(extra_gap))
    prev_last = days[i_val - 1] if i_val > 0 else None
    for lo, hi in ((i_val, i_test), (i_test, n)):
        kept_last = None
        for i in range(lo, hi):
            if prev_last is not None and days[i] < prev_last + gap:
                out[i] = "purged"
            else:
                kept_last = days[i]
        prev_last = kept_last if kept_last is not None else prev_last
    return out


def split_sizes(labels) -> dict[str, int]:
    labels = list(labels)
    return {k: labels.count(k) for k in ("train", "val", "test", "purged")}


def check_disjoint(days, labels, window: int) -> None:
    """Raise when a post-day feeds windows of two splits (the purge is what prevents it)."""
    days, labels = np.asarray(days), np.asarray(labels)
    sets = {s: window_days(days[labels == s], window) for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sets[a] & sets[b]
        if both:
            raise AssertionError(f"{len(both)} post-day(s) feed both {a} and {b} windows, e.g. day {min(both)}")


# -------------------------------------------------------------------------------------------------- model
@dataclass
class DayData:
    """Everything a window model reads, as tensors on one device."""

    post_day: object  # (P,) long
    feats: dict  # modality -> (P, D)
    count: object  # (n_days,) float: posts per day
    has: object  # (n_days,) float: 1 when the day has a post
    count_z: object  # (n_days,) float: log1p(count), standardised on training days
    numeric: object  # (n_days, C) float: log1p(day aggregate), NaN = missing

    @property
    def n_days(self) -> int:
        return int(self.count.shape[0])


def _build_net(**kw):
    import torch
    from torch import nn

    from msa.fusions import ModalitySpec, MultimodalClassifier, SideBranch

    class TrendNet(nn.Module):
        """posts -> projection + fusion -> day mean (+ log post count) [+ numeric branch] -> day vector (zeroed
        on days without posts, + has-posts flag) -> LSTM/GRU over the window -> head on the last state."""

        def __init__(self, post_dims: dict | None, fusion: str, hidden: int, dropout: float, side: dict | None,
                     rnn: str, num_outputs: int):
            super().__init__()
            self.post = None
            in_dim = 1  # log1p(post count)
            if post_dims:
                specs = [ModalitySpec(m, int(d)) for m, d in post_dims.items()]
                self.post = MultimodalClassifier(specs, fusion, num_outputs=1, hidden=hidden, dropout=dropout)
                self.post.head = nn.Identity()  # only its projections + fusion are used (fuse())
                in_dim += self.post.fusion.out_dim
            self.side = SideBranch(**side, hidden=hidden, dropout=dropout) if side else None
            if self.side is not None:
                in_dim += hidden
            self.day = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
            self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(hidden + 1, hidden, batch_first=True)
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, num_outputs))

        def day_table(self, dd: DayData, needed=None):
            """(n_days, hidden + 1) day vectors; only the posts of ``needed`` days (bool mask) are fused."""
            parts = []
            if self.post is not None:
                sel = needed[dd.post_day] if needed is not None else slice(None)
                fused = self.post.fuse({m: x[sel] for m, x in dd.feats.items()})
                table = fused.new_zeros(dd.n_days, fused.shape[1]).index_add_(0, dd.post_day[sel], fused)
                parts.append(table / dd.count.clamp_min(1.0).unsqueeze(1))
            if self.side is not None:
                parts.append(self.side(dd.numeric))
            parts.append(dd.count_z.unsqueeze(1))
            x = self.day(torch.cat(parts, dim=1)) * dd.has.unsqueeze(1)  # a day without posts: zero input
            return torch.cat([x, dd.has.unsqueeze(1)], dim=1)

        def forward(self, windows, dd: DayData, table=None):
            if table is None:
                needed = torch.zeros(dd.n_days, dtype=torch.bool, device=windows.device)
                needed[windows.reshape(-1)] = True
                table = self.day_table(dd, needed)
            out, _ = self.rnn(table[windows])
            return self.head(out[:, -1])

    return TrendNet(**kw)


# ---------------------------------------------------------------------------------------------- metrics
def regression_scores(y_true, y_pred) -> dict:
    yt, yp = np.asarray(y_true, float), np.asarray(y_pred, float)
    err = yp - yt
    sst = float(((yt - yt.mean()) ** 2).sum())
    corr = float(np.corrcoef(yt, yp)[0, 1]) if len(yt) > 1 and np.ptp(yt) > 0 and np.ptp(yp) > 0 else float("nan")
    return {"MAE": float(np.abs(err).mean()), "RMSE": float(math.sqrt((err ** 2).mean())), "Corr": corr,
            "R2": float(1 - (err ** 2).sum() / sst) if sst > 0 else float("nan")}


def classification_scores(y_true, y_pred) -> dict:
    from msa.metrics import classification_metrics

    m = classification_metrics(np.asarray(y_true), np.asarray(y_pred), labels=CLASS_NAMES)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "confusion_matrix": m["confusion_matrix"]}


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ------------------------------------------------------------------------------------------------ training
@dataclass
class Problem:
    """The prepared task: day tensors, window day-indices and targets per split."""

    task: str
    dd: DayData
    windows: dict  # split -> (N, W) long
    y: dict  # split -> (N,) float (regression, original units) or long class index
    y_mean: float = 0.0
    y_std: float = 1.0
    side_stats: dict | None = None
    post_dims: dict | None = None


def train_one(row: str, seed: int, prob: Problem, args, device, progress: bool = True) -> dict:
    """Train one row with one seed; returns the best-on-validation epoch's val metrics and test predictions."""
    import torch
    from tqdm import tqdm

    from msa.trainer import seed_everything

    seed_everything(seed)
    reg = prob.task == "regression"
    net = _build_net(post_dims=prob.post_dims if row in ("image_text", "full") else None, fusion=args.fusion,
                     hidden=args.hidden, dropout=args.dropout,
                     side=prob.side_stats if row in ("numeric", "full") else None, rnn=args.rnn,
                     num_outputs=1 if reg else len(CLASS_VALUES)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    w_train = prob.windows["train"]
    y_train = prob.y["train"]
    if reg:
        y_fit = ((y_train - prob.y_mean) / prob.y_std).float()
        loss_fn = torch.nn.L1Loss() if args.loss == "l1" else torch.nn.MSELoss()
    else:
        y_fit = y_train
        loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)

    def predict(split):
        net.eval()
        with torch.no_grad():
            out = net(prob.windows[split], prob.dd, table=net.day_table(prob.dd))
        net.train()
        if reg:
            return (out.squeeze(1) * prob.y_std + prob.y_mean).cpu().numpy()
        return out.softmax(1).cpu().numpy()

    def score(split, out):
        y = prob.y[split].cpu().numpy()
        if reg:
            return regression_scores(y, out)
        return classification_scores(y, out.argmax(1))

    best = {"score": -math.inf, "epoch": 0, "state": None, "val": None}
    stale = 0
    history = []
    bar = tqdm(range(1, args.epochs + 1), desc=f"{row} s{seed}", unit="ep", leave=False,
               disable=None if progress else True)
    net.train()
    # a batch = batch_size / block random blocks of `block` consecutive windows: consecutive windows share most
    # of their days, so a step fuses the posts of ~(batch_size / block) * (block + window) days, not of all days
    block = max(1, min(args.block, args.batch_size))
    blocks = list(torch.arange(len(w_train)).split(block))
    per_batch = max(1, args.batch_size // block)
    for epoch in bar:
        order = torch.randperm(len(blocks), generator=gen).tolist()
        total, seen = 0.0, 0
        for i in range(0, len(order), per_batch):
            b = torch.cat([blocks[j] for j in order[i:i + per_batch]]).to(device)
            out = net(w_train[b], prob.dd)
            loss = loss_fn(out.squeeze(1), y_fit[b]) if reg else loss_fn(out, y_fit[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
        val = score("val", predict("val"))
        s = -val["MAE"] if reg else val["macro_f1"] + 1e-3 * val["accuracy"]
        history.append({"epoch": epoch, "train_loss": total / seen,
                        **{k: v for k, v in val.items() if k != "confusion_matrix"}})
        if s > best["score"] + 1e-9:
            best.update(score=s, epoch=epoch, state=copy.deepcopy(net.state_dict()), val=val)
            stale = 0
        else:
            stale += 1
        bar.set_postfix(loss=f"{total / seen:.3f}", val=f"{-s if reg else s:.3f}", best=best["epoch"])
        if args.patience and stale >= args.patience:
            break
    bar.close()
    net.load_state_dict(best["state"])
    test_out = predict("test")
    return {"best_epoch": best["epoch"], "epochs_run": len(history), "val": best["val"],
            "test": score("test", test_out), "test_out": test_out, "history": history}


_WORKER: dict = {}


def _init_worker(prob: Problem, args, device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.getLogger("msa").setLevel(logging.WARNING)
    _WORKER.update(prob=prob, args=args, device=device)


def _run_job(job: tuple[str, int]) -> tuple[tuple[str, int], dict]:
    import torch

    row, seed = job
    t0 = time.time()
    res = train_one(row, seed, _WORKER["prob"], _WORKER["args"], torch.device(_WORKER["device"]),
                    progress=_WORKER.get("progress", False))
    res["seconds"] = round(time.time() - t0, 2)
    res.pop("history", None)
    return job, res


def run_all(jobs: list[tuple[str, int]], prob: Problem, args, device) -> list[tuple[tuple[str, int], dict]]:
    """Train every (row, seed): in ``--jobs`` processes with one torch thread each (CPU), else in this process
    (one thread as well, so that the result does not depend on --jobs)."""
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    import torch
    from tqdm import tqdm

    n_jobs = max(1, min(int(args.jobs), len(jobs), os.cpu_count() or 1)) if device.type == "cpu" else 1
    bar = tqdm(total=len(jobs), desc="training runs", unit="run", disable=None)
    done = []
    if n_jobs == 1:
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            _WORKER.update(prob=prob, args=args, device=str(device), progress=True)
            for job in jobs:
                done.append(_run_job(job))
                bar.update()
        finally:
            torch.set_num_threads(threads)
            _WORKER.clear()
    else:
        with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(prob, args, "cpu", 1)) as pool:
            futures = [pool.submit(_run_job, job) for job in jobs]
            for fut in as_completed(futures):
                done.append(fut.result())
                bar.update()
    bar.close()
    return done


def baseline(prob: Problem) -> dict:
    """The ``mean`` row: the training mean (regression) or the training majority class (classification)."""
    n_val, n_test = len(prob.y["val"]), len(prob.y["test"])
    if prob.task == "regression":
        m = float(prob.y["train"].mean())
        val_out, test_out = np.full(n_val, m), np.full(n_test, m)
        score = regression_scores
        val_pred, test_pred = val_out, test_out
    else:
        counts = np.bincount(prob.y["train"].cpu().numpy(), minlength=len(CLASS_VALUES))
        k = int(counts.argmax())
        test_out = np.zeros((n_test, len(CLASS_VALUES)))
        test_out[:, k] = 1.0
        score = classification_scores
        val_pred, test_pred = np.full(n_val, k), np.full(n_test, k)
    return {"best_epoch": 0, "epochs_run": 0, "val": score(prob.y["val"].cpu().numpy(), val_pred),
            "test": score(prob.y["test"].cpu().numpy(), test_pred), "test_out": test_out}


# ------------------------------------------------------------------------------------------------- outputs
def summarise(per_seed: dict[int, dict], names) -> dict:
    from msa.metrics import mean_std

    out = {}
    for k in names:
        vals = [per_seed[s][k] for s in per_seed]
        mean, std = mean_std(vals)
        out[k] = {"mean": _clean(mean), "std": _clean(std) if math.isfinite(mean) else None,
                  "per_seed": {str(s): _clean(float(v)) for s, v in zip(per_seed, vals)}}
    return out


def metrics_markdown(metrics: dict, task: str, names, row_label: dict, info: dict) -> str:
    def cell(v):
        return "-" if v["mean"] is None else f"{v['mean']:.4f} ± {v['std']:.4f}"

    sizes = info["split"]["sizes"]
    lines = [f"# Popularity trend ({task}), window {info['window']} days, seeds "
             f"{', '.join(map(str, info['seeds']))}", "",
             f"Test metrics, mean ± std over seeds. Chronological split with a purge gap of {info['gap']} days: "
             f"{sizes['train']} train / {sizes['val']} validation / {sizes['test']} test target dates "
             f"({sizes['purged']} purged); test dates {info['split']['dates']['test'][0]} to "
             f"{info['split']['dates']['test'][1]}.", "",
             "| row | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for row, m in metrics.items():
        lines.append(f"| {row_label.get(row, row)} | " + " | ".join(cell(m[k]) for k in names) + " |")
    return "\n".join(lines) + "\n"


def plot_predictions(path: Path, targets: pd.DataFrame, preds: pd.DataFrame, task: str, thresholds, title: str,
                     main_row: str = "full"):
    """Top: the true value over all target dates, coloured by split (classification: with the class thresholds).
    Bottom left: the test period, true vs the rows' predictions (seed means). Bottom right: regression, predicted
    vs true of the full model; classification, its confusion matrix."""
    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    colors = {"train": "#8d99ae", "val": "#e9c46a", "purged": "#d1495b", "test": "#264653"}
    rows = {"pred": (main_row, "#e76f51", "-", 1.6), "pred_image_text": ("image_text", "#2a9d8f", "--", 1.0),
            "pred_numeric": ("numeric", "#6a4c93", ":", 1.2),
            "pred_mean": ("majority" if task == "classification" else "training mean", "black", "-", 0.8)}
    fig = plt.figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[2.4, 1], height_ratios=[1, 1.15], hspace=0.35, wspace=0.18)
    top = fig.add_subplot(grid[0, :])
    if targets["value"].notna().any():
        for s in ("train", "val", "purged", "test"):
            t = targets[targets["split"] == s]
            top.plot(t["date"], t["value"], ".", ms=2.5, color=colors[s], label=f"{s} ({len(t)})")
        for q in thresholds or []:
            top.axhline(q, ls="--", color="grey", lw=0.8)
        if task == "regression":
            top.plot(preds["date"], preds["pred"], "-", lw=1.2, color="#e76f51", label=f"{main_row} (test)")
        top.set_ylabel("value")
        top.legend(fontsize=7, ncol=5, loc="upper left")
    top.set_title("true value of every target date by split (purged: dropped for the gap)"
                  + ("; dashed: class thresholds from the training windows" if thresholds else ""), fontsize=9)
    zoom = fig.add_subplot(grid[1, 0])
    side = fig.add_subplot(grid[1, 1])
    if task == "regression":
        zoom.plot(preds["date"], preds["value"], "o", ms=2.5, color=colors["test"], label="true")
        for col, (name, color, style, lw) in rows.items():
            if col in preds:
                zoom.plot(preds["date"], preds[col], style, lw=lw, color=color, label=name)
        zoom.set_ylabel("value")
        lo = float(min(preds["value"].min(), preds["pred"].min()))
        hi = float(max(preds["value"].max(), preds["pred"].max()))
        side.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
        side.scatter(preds["value"], preds["pred"], s=8, color="#e76f51", alpha=0.7)
        side.set_xlabel("true value")
        side.set_ylabel(f"predicted ({main_row})")
        side.set_title("test: predicted vs true", fontsize=9)
    else:
        zoom.step(preds["date"], preds["trend"], where="mid", color=colors["test"], lw=3, alpha=0.45, label="true")
        for col, (name, color, style, lw) in rows.items():
            if col == "pred":  # the other rows' step lines would hide it; their scores are in metrics.md
                zoom.step(preds["date"], preds[col], style, where="mid", lw=lw, color=color, label=name)
        zoom.set_yticks(list(CLASS_VALUES), [f"{v} {n}" for v, n in zip(CLASS_VALUES, CLASS_NAMES)])
        cm = np.zeros((3, 3), dtype=int)
        for t, p in zip(preds["trend"], preds["pred"]):
            cm[CLASS_VALUES.index(int(t)), CLASS_VALUES.index(int(p))] += 1
        side.imshow(cm, cmap="Blues")
        for i in range(3):
            for j in range(3):
                side.text(j, i, str(cm[i, j]), ha="center", va="center",
                          color="white" if cm[i, j] > cm.max() / 2 else "black")
        side.set_xticks(range(3), CLASS_NAMES)
        side.set_yticks(range(3), CLASS_NAMES)
        side.set_xlabel(f"predicted ({main_row})")
        side.set_ylabel("true")
        side.set_title("test confusion matrix", fontsize=9)
    zoom.set_title("test period: true vs predicted (mean over seeds)", fontsize=9)
    zoom.set_xlabel("window end date")
    zoom.legend(fontsize=7, ncol=3, loc="best")
    for label in zoom.get_xticklabels():
        label.set_rotation(25)
        label.set_ha("right")
    fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------- main
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


def main(argv=None) -> int:
    import torch

    from msa.experiment import load_backbones
    from msa.features import extract_features
    from msa.fusions import SideBranch
    from msa.io import write_csv, write_json, write_text
    from msa.settings import parse_seeds

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t_start = time.time()
    root = Path(args.data_root)
    out = Path(args.out) if args.out is not None else TASK_DIR / "results" / args.task
    seeds = parse_seeds(args.seeds)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS and not (r == "majority" and args.task == "classification")]
    if unknown or not rows:
        raise cli.UserError(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    rows = [("mean" if r == "majority" else r) for r in ROWS if r in rows or (r == "mean" and "majority" in rows)]
    check_args(args, seeds)

    stamp_path = out / "inputs.json"
    inputs = stamp.inputs_of(args, files=[root / "posts.csv", root / "targets.csv"], code=[Path(__file__)],
                             extra={"data_folder": stamp.listing_digest(root / "data")}, ignore=("out",))
    if stamp.check(stamp_path, inputs, args.force, "trend"):
        print(f"trend: up to date ({out}); --force recomputes\n")
        md = out / "metrics.md"
        if md.is_file():
            print(md.read_text(encoding="utf-8"))
        return 0

    # ---- inputs, split, labels (all problems with the input files are reported before any model work)
    data = load_inputs(root, args.window, args.task, args.numeric_cols)
    targets = data.targets
    labels = chronological_split(targets["day"].to_numpy(), args.window, args.val_frac, args.test_frac,
                                 args.extra_gap)
    targets["split"] = labels
    sizes = split_sizes(labels)
    empty = [s for s in ("train", "val", "test") if sizes[s] == 0]
    if empty:
        raise cli.UserError(
            f"the {' and '.join(empty)} split(s) are empty after purging: {len(targets)} target dates from "
            f"{targets['date'].min().date()} to {targets['date'].max().date()} leave no room for a {args.window}-day "
            f"purge gap between train, validation and test (sizes {sizes}); use more target dates, a smaller "
            "--window or larger --val-frac/--test-frac")
    check_disjoint(targets["day"], labels, args.window)
    row_label = {"mean": "majority" if args.task == "classification" else "mean"}
    thresholds = None
    if args.task == "classification":
        if "trend" in targets.columns:
            cls = targets["trend"].to_numpy()
        else:
            tv = targets.loc[targets["split"] == "train", "value"].to_numpy()
            thresholds = [float(x) for x in np.quantile(tv, [1 / 3, 2 / 3])]
            if thresholds[0] == thresholds[1]:
                log.warning("the training values' tertiles coincide (%g): the 'ordinary' class is empty",
                            thresholds[0])
            v = targets["value"].to_numpy()
            cls = np.where(v > thresholds[1], 1, np.where(v <= thresholds[0], -1, 0))
            targets["trend"] = cls
    for s in ("train", "val", "test"):
        t = targets[targets["split"] == s]
        log.info("%s: %d target dates, %s to %s", s, len(t), t["date"].min().date(), t["date"].max().date())
    log.info("purged %d target dates (gap %d days)", sizes["purged"], args.window + args.extra_gap)

    # ---- features of the posts that some kept window uses
    used_days = window_days(targets.loc[targets["split"] != "purged", "day"], args.window)
    posts = data.posts[data.posts["day"].isin(used_days)].reset_index(drop=True)
    need_posts = any(r in rows for r in ("image_text", "full"))
    feats, backbones = {}, {}
    if need_posts:
        tb, ib = load_backbones(args.text_backbone, args.image_backbone, args.text_pooling)
        fs = extract_features(posts["post_id"].tolist(), root / "data", tb, ib, args.cache_dir,
                              batch_size=args.feature_batch_size)
        for m, st in fs.stats.items():
            log.info("%s features: %d of %d computed, rest from cache %s", m, st["computed"], st["total"],
                     args.cache_dir)
        feats, backbones = {m: fs.pooled[m].float() for m in ("text", "image")}, fs.backbones
        del tb, ib

    # ---- day tensors
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_days = data.n_days
    day = posts["day"].to_numpy().copy()
    count = np.bincount(day, minlength=n_days).astype(np.float32)
    train_days = np.array(sorted(window_days(targets.loc[targets["split"] == "train", "day"], args.window)))
    lc = np.log1p(count)
    mu, sd = float(lc[train_days].mean()), float(lc[train_days].std()) or 1.0
    columns = data.columns
    if columns:
        grouped = np.log1p(posts[columns].astype(float)).groupby(posts["day"])
        agg = getattr(grouped, args.numeric_agg)(**({"min_count": 1} if args.numeric_agg == "sum" else {}))
        numeric = agg.reindex(range(n_days)).to_numpy(dtype=np.float64)
        fit_days = [d for d in train_days if count[d] > 0]
        side_stats = SideBranch.fit(numeric[fit_days], columns)
    else:
        numeric = np.zeros((n_days, 0))
        side_stats = None
        dropped = [r for r in rows if r in ("numeric", "full")]
        if dropped:
            log.warning("posts.csv has no numeric column: rows %s are left out", dropped)
            rows = [r for r in rows if r not in dropped]
    dd = DayData(post_day=torch.as_tensor(day, dtype=torch.long, device=device),
                 feats={m: x.to(device) for m, x in feats.items()},
                 count=torch.as_tensor(count, device=device), has=torch.as_tensor(count > 0, device=device).float(),
                 count_z=torch.as_tensor((lc - mu) / sd, dtype=torch.float32, device=device),
                 numeric=torch.as_tensor(numeric, dtype=torch.float32, device=device))
    windows, ys = {}, {}
    offsets = np.arange(-args.window + 1, 1)
    for s in ("train", "val", "test"):
        t = targets[targets["split"] == s]
        windows[s] = torch.as_tensor(t["day"].to_numpy()[:, None] + offsets[None, :], dtype=torch.long,
                                     device=device)
        if args.task == "regression":
            ys[s] = torch.tensor(t["value"].to_numpy(dtype=np.float32), device=device)
        else:
            ys[s] = torch.tensor(t["trend"].to_numpy(dtype=np.int64) + 1, device=device)  # -1/0/1 -> 0/1/2
    y_tr = ys["train"].float()
    prob = Problem(task=args.task, dd=dd, windows=windows, y=ys, side_stats=side_stats,
                   y_mean=float(y_tr.mean()), y_std=float(y_tr.std()) if len(y_tr) > 1 else 1.0,
                   post_dims={m: int(x.shape[1]) for m, x in feats.items()} or None)
    if prob.y_std == 0 or not math.isfinite(prob.y_std):
        prob.y_std = 1.0

    # ---- runs
    out.mkdir(parents=True, exist_ok=True)
    names = REGRESSION_METRICS if args.task == "regression" else CLASSIFICATION_METRICS
    results: dict[str, dict[int, dict]] = {r: {} for r in rows}
    run_rows = []
    for s in seeds:
        if "mean" in rows:
            results["mean"][s] = {**baseline(prob), "seconds": 0.0}
    jobs = [(r, s) for r in rows if r != "mean" for s in seeds]
    for (r, s), res in run_all(jobs, prob, args, device):
        results[r][s] = res
    for r, s in [(r, s) for r in rows for s in seeds]:
        res = results[r][s]
        run_rows.append({"row": row_label.get(r, r), "seed": s, "best_epoch": res["best_epoch"],
                         "epochs_run": res["epochs_run"], "seconds": res["seconds"],
                         **{f"val_{k}": res["val"][k] for k in names}, **{f"test_{k}": res["test"][k] for k in names}})
        log.info("%s seed %d: test %s (best epoch %d)", row_label.get(r, r), s,
                 "  ".join(f"{k} {res['test'][k]:.4f}" for k in names), res["best_epoch"])

    metrics = {row_label.get(r, r): summarise({s: results[r][s]["test"] for s in seeds}, names) for r in rows}
    test = targets[targets["split"] == "test"].reset_index(drop=True)
    preds = pd.DataFrame({"date": test["date"].dt.date.astype(str), "value": test["value"]})
    if args.task == "classification":
        preds["trend"] = test["trend"].to_numpy()
    for r in rows:
        mean_out = np.mean([results[r][s]["test_out"] for s in seeds], axis=0)
        col = "pred" if r == "full" else f"pred_{r}"
        if args.task == "regression":
            preds[col] = np.round(mean_out, 6)
        else:
            preds[col] = np.asarray(CLASS_VALUES)[mean_out.argmax(1)]
    main_row = "full"
    if "full" not in rows:  # the main prediction column is the most complete row run
        main_row = ([r for r in rows if r != "mean"] or rows)[-1]
        preds = preds.rename(columns={f"pred_{main_row}": "pred"})
        main_row = row_label.get(main_row, main_row)
    first = [c for c in ("date", "value", "trend", "pred") if c in preds.columns]
    preds = preds[first + [c for c in preds.columns if c not in first]]
    split_frame = targets[["date", "value", "split"]].copy()
    if "trend" in targets.columns:
        split_frame["trend"] = targets["trend"]
    split_frame["reason"] = ""
    split_frame.loc[split_frame["split"] == "purged", "reason"] = (
        f"window overlaps the previous split's windows (gap {args.window + args.extra_gap} days)")
    skipped_t = pd.DataFrame([{"date": s["id"], "value": np.nan, "split": "skipped", "reason": s["reason"]}
                              for s in data.skipped if s["what"] == "target"])
    split_frame["date"] = split_frame["date"].dt.date.astype(str)
    split_frame = pd.concat([split_frame, skipped_t], ignore_index=True) if len(skipped_t) else split_frame
    split_frame = split_frame.sort_values("date", kind="stable").reset_index(drop=True)

    def span(s):
        t = targets[targets["split"] == s]
        return [str(t["date"].min().date()), str(t["date"].max().date())]

    def day_span(s):  # first and last post date that feeds the split's windows
        d = window_days(targets.loc[targets["split"] == s, "day"], args.window)
        return [str((data.start + pd.Timedelta(days=x)).date()) for x in (min(d), max(d))]

    info = {
        "task": args.task, "window": args.window, "gap": args.window + args.extra_gap, "seeds": seeds, "rows": rows,
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "out": str(out), "backbones": backbones, "numeric_columns": columns, "numeric_agg": args.numeric_agg,
        "side_branch": side_stats, "first_post_date": str(data.start.date()), "n_days": n_days,
        "posts": {"read": int(len(data.posts)), "used": int(len(posts)),
                  "days_with_posts_used": int((count > 0).sum())},
        "split": {"sizes": sizes, "dates": {s: span(s) for s in ("train", "val", "test")},
                  "post_days": {s: day_span(s) for s in ("train", "val", "test")}},
        "classes": {"values": list(CLASS_VALUES), "names": list(CLASS_NAMES),
                    "thresholds": thresholds, "given": args.task == "classification" and thresholds is None}
        if args.task == "classification" else None,
        "target_standardisation": {"mean": prob.y_mean, "std": prob.y_std} if args.task == "regression" else None,
        "skipped": data.skipped, "seconds": round(time.time() - t_start, 1), "torch": torch.__version__,
    }
    if args.task == "classification" and "full" in results:
        info["test_confusion_matrix_full"] = {str(s): results["full"][s]["test"]["confusion_matrix"] for s in seeds}
    write_json(out / "config.json", info)
    write_csv(out / "runs.csv", pd.DataFrame(run_rows))
    write_csv(out / "split.csv", split_frame)
    write_csv(out / "test_predictions.csv", preds)
    plot_preds = preds.assign(date=pd.to_datetime(preds["date"]))
    scores = ", ".join(f"{k} {metrics[main_row][k]['mean']:.3f}" for k in names
                       if metrics[main_row][k]["mean"] is not None)
    fig = plot_predictions(out / "figures" / "pred_vs_true.png", targets, plot_preds, args.task, thresholds,
                           f"popularity trend ({args.task}), window {args.window} d: test {main_row} {scores}",
                           main_row=main_row)
    md_text = metrics_markdown(metrics, args.task, names, {}, info)
    write_text(out / "metrics.md", md_text)
    write_json(out / "metrics.json", metrics)
    stamp.write(stamp_path, inputs, [out / "metrics.json", out / "test_predictions.csv", fig])
    print(md_text)
    print(f"trend: results -> {out} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
