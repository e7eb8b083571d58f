"""The popularity-trend task's inputs (seed 003, run_trend.py): posts.csv and targets.csv read and validated, their
dates and the bounds on them, the chronological split with the purge gap, the windows' days and the class labels.

Every problem with an input file is a UserError naming the file and the line(s), raised before any model work."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from msa import cli

log = logging.getLogger("trend")
CLASS_VALUES = (-1, 0, 1)
CLASS_NAMES = ("none", "ordinary", "high")
RESERVED = ("post_id", "date")
#: dates outside this range are refused (a typo such as 9999-12-31 would otherwise stretch the day range)
MIN_DATE = pd.Timestamp("1970-01-01")
MAX_DATE = pd.Timestamp("2100-12-31")
#: the longest span, in days, from the first to the last date of posts.csv (or of targets.csv): memory and time
#: grow with the number of days between them (every day gets a row), so a longer span is refused (20 years)
MAX_SPAN_DAYS = 7305


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
    if not 1 <= window <= MAX_SPAN_DAYS:
        raise cli.UserError(f"--window must be 1 to {MAX_SPAN_DAYS} days (the longest date span), got {window}")
    root = Path(root)
    if not root.is_dir():
        raise cli.UserError(f"--data-root {root} is not a folder")
    posts, columns, skipped = load_posts(root, numeric_cols)
    posts = _drop_posts_without_files(posts, root, skipped)
    targets, t_skipped = load_targets(root, task)
    skipped += t_skipped
    start = posts["date"].min()
    posts["day"] = (posts["date"] - start).dt.days.astype(int)
    targets["day"] = (targets["date"] - start).dt.days.astype(int)
    last = int(posts["day"].max())
    first_full = (start + pd.Timedelta(days=window - 1)).date()
    targets = _drop_uncovered_targets(targets, start, last, window, skipped)
    _log_skipped(skipped)
    if targets.empty:
        raise cli.UserError(f"no target date of {root / 'targets.csv'} has a full {window}-day window of posts "
                            f"(posts from {start.date()} to {(start + pd.Timedelta(days=last)).date()}; the first "
                            f"full window ends on {first_full})")
    return TrendInputs(start=start, posts=posts, columns=columns, targets=targets, skipped=skipped)


def _drop_posts_without_files(posts: pd.DataFrame, root: Path, skipped: list[dict]) -> pd.DataFrame:
    """The posts with an image or a text in ``root/data`` (the others are added to ``skipped``); a missing image or
    text alone is a warning (a placeholder stands in)."""
    from msa.data import find_image

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
    return posts


def _drop_uncovered_targets(targets: pd.DataFrame, start: pd.Timestamp, last: int, window: int,
                            skipped: list[dict]) -> pd.DataFrame:
    """The targets whose window lies within the post days 0..``last`` (the others are added to ``skipped``)."""
    early = targets["day"] < window - 1
    late = targets["day"] > last
    first_full = (start + pd.Timedelta(days=window - 1)).date()
    for mask, reason in ((early, f"before the first full window (the first post date is {start.date()}, so the "
                                 f"first {window}-day window ends on {first_full})"),
                         (late, f"after the last post date {(start + pd.Timedelta(days=last)).date()}")):
        for _, r in targets[mask].iterrows():
            skipped.append({"what": "target", "id": r["date"].date().isoformat(), "line": int(r["_line"]),
                            "reason": reason})
    return targets[~early & ~late].reset_index(drop=True)


def _log_skipped(skipped: list[dict]) -> None:
    by_reason: dict[str, int] = {}
    for s in skipped:
        key = f"{s['what']}: {s['reason']}"
        by_reason[key] = by_reason.get(key, 0) + 1
    for key, n in by_reason.items():
        log.warning("skipped %d %s(s) - %s", n, *key.split(": ", 1))


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


def split_targets(targets: pd.DataFrame, window: int, val_frac: float, test_frac: float,
                  extra_gap: int) -> dict[str, int]:
    """Adds ``targets["split"]`` (:func:`chronological_split`) and returns the split sizes; an empty split is a
    UserError, a post-day feeding two splits an AssertionError."""
    labels = chronological_split(targets["day"].to_numpy(), window, val_frac, test_frac, extra_gap)
    targets["split"] = labels
    sizes = split_sizes(labels)
    empty = [s for s in ("train", "val", "test") if sizes[s] == 0]
    if empty:
        raise cli.UserError(
            f"the {' and '.join(empty)} split(s) are empty after purging: {len(targets)} target dates from "
            f"{targets['date'].min().date()} to {targets['date'].max().date()} leave no room for a {window}-day "
            f"purge gap between train, validation and test (sizes {sizes}); use more target dates, a smaller "
            "--window or larger --val-frac/--test-frac")
    check_disjoint(targets["day"], labels, window)
    return sizes


def add_classes(targets: pd.DataFrame) -> list[float] | None:
    """Classification: the trend column as given, else adds ``targets["trend"]`` from the tertiles of the training
    values and returns those two thresholds (None when the column was given)."""
    if "trend" in targets.columns:
        return None
    tv = targets.loc[targets["split"] == "train", "value"].to_numpy()
    thresholds = [float(x) for x in np.quantile(tv, [1 / 3, 2 / 3])]
    if thresholds[0] == thresholds[1]:
        log.warning("the training values' tertiles coincide (%g): the 'ordinary' class is empty", thresholds[0])
    v = targets["value"].to_numpy()
    targets["trend"] = np.where(v > thresholds[1], 1, np.where(v <= thresholds[0], -1, 0))
    return thresholds


def log_split(targets: pd.DataFrame, sizes: dict[str, int], gap: int) -> None:
    for s in ("train", "val", "test"):
        t = targets[targets["split"] == s]
        log.info("%s: %d target dates, %s to %s", s, len(t), t["date"].min().date(), t["date"].max().date())
    log.info("purged %d target dates (gap %d days)", sizes["purged"], gap)


def split_dates(targets: pd.DataFrame, split: str) -> list[str]:
    """The first and last target date of ``split``."""
    t = targets[targets["split"] == split]
    return [str(t["date"].min().date()), str(t["date"].max().date())]


def split_post_days(targets: pd.DataFrame, split: str, window: int, start: pd.Timestamp) -> list[str]:
    """The first and last post date that feeds the windows of ``split``."""
    d = window_days(targets.loc[targets["split"] == split, "day"], window)
    return [str((start + pd.Timedelta(days=x)).date()) for x in (min(d), max(d))]


def used_posts(data: TrendInputs, window: int) -> pd.DataFrame:
    """The posts of the days that some kept (not purged) window uses."""
    used_days = window_days(data.targets.loc[data.targets["split"] != "purged", "day"], window)
    return data.posts[data.posts["day"].isin(used_days)].reset_index(drop=True)
