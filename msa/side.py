"""Numeric side features per post (seed 003's numeric branch), joined after the image-text fusion.

Registry (``--side-features vader,text_stats,image_stats,csv:PATH``):

* ``vader``: VADER compound / pos / neu / neg of the post's decoded text (``vadersentiment``: a lexicon and rules
  made for tweets; it reads emoji, capitals, ``!`` and negations itself, so it gets the text as written);
* ``text_stats``: characters, hashtags, mentions, URLs, emoji, ``!`` and ``?`` counts, upper-case share of the
  letters;
* ``image_stats``: brightness and contrast (mean / std of luma), saturation (mean HSV saturation) and
  colourfulness (Hasler and Suesstrunk 2003) of the decoded image, at a reduced size (<= 128 px);
* ``csv:PATH``: every column but ``guid`` of a user file ``guid,<numeric columns>`` (likes, collects,
  comments, ...). An empty cell or a guid the file does not list is a missing value.

A text or image that cannot be read gives missing values (``NaN``), never a guess. Missing values are imputed and
flagged, and every column standardised, by :class:`msa.fusions.SideBranch` with statistics fitted on the training
split only; they are part of the model's config, so a checkpoint carries them and ``predict_test.py`` applies
the same features to new posts.

The computed features (not ``csv:``) are cached per feature in ``<cache>/side/<name>-v<version>.npz``, keyed by
the sha256 of the exact text or image bytes, so a changed file recomputes only its own row.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msa.cli import FEATURE_CACHE_DIR as DEFAULT_CACHE_DIR
from msa.cli import UserError
from msa.io import atomic_path

# light at import (no torch, pandas or PIL): the phases read HELP, parse_spec and csv_files before their
# up-to-date check, and import msa.data / torch / msa.fusions only where features are computed
if TYPE_CHECKING:
    import torch

    from msa.features import FeatureSet

log = logging.getLogger(__name__)

IMAGE_STATS_SIZE = 128


@dataclass(frozen=True)
class SideFeature:
    name: str
    columns: tuple[str, ...]
    source: str  # "text" or "image": what the cache key hashes
    compute: Callable
    version: str = "1"
    help: str = ""


# --------------------------------------------------------------------------------------------- text features
_VADER = None


def _vader(text: str) -> list[float]:
    global _VADER
    if _VADER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:  # pragma: no cover - make setup installs it
            raise UserError("side feature 'vader' needs the vadersentiment package: pip install vadersentiment") \
                from None
        _VADER = SentimentIntensityAnalyzer()
    s = _VADER.polarity_scores(text)
    return [s["compound"], s["pos"], s["neu"], s["neg"]]


_URL = re.compile(r"(?:\bhttps?:/*|\bwww\.)\S*", re.IGNORECASE)
_HASHTAG = re.compile(r"(?<![\w#])#\w+")
_MENTION = re.compile(r"(?<![\w@])@\w+")


def _text_stats(text: str) -> list[float]:
    import emoji

    letters = [c for c in text if c.isalpha()]
    upper = sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
    return [len(text), len(_HASHTAG.findall(text)), len(_MENTION.findall(text)), len(_URL.findall(text)),
            emoji.emoji_count(text), text.count("!") + text.count("\uff01"), text.count("?") + text.count("\uff1f"),
            upper]


# -------------------------------------------------------------------------------------------- image features
def image_stats(img) -> list[float]:
    """Brightness, contrast, saturation (each in [0, 1]) and colourfulness of a PIL image."""
    img = img.convert("RGB")
    img.thumbnail((IMAGE_STATS_SIZE, IMAGE_STATS_SIZE))
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    sat = np.asarray(img.convert("HSV"), dtype=np.float32)[..., 1] / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))
    return [float(luma.mean()), float(luma.std()), float(sat.mean()), colourful]


def _image_stats(data_dir: Path, guid: str) -> list[float] | None:
    from msa.data import load_image

    res = load_image(data_dir, guid, draft_size=(IMAGE_STATS_SIZE, IMAGE_STATS_SIZE))
    return image_stats(res.image) if res.ok else None


FEATURES: dict[str, SideFeature] = {
    "vader": SideFeature("vader", ("compound", "pos", "neu", "neg"), "text", _vader,
                         help="VADER sentiment of the text: compound, pos, neu, neg"),
    "text_stats": SideFeature("text_stats", ("chars", "hashtags", "mentions", "urls", "emoji", "exclamations",
                                             "questions", "upper_ratio"), "text", _text_stats,
                              help="text length, hashtag/mention/URL/emoji counts, !/? counts, upper-case share"),
    "image_stats": SideFeature("image_stats", ("brightness", "contrast", "saturation", "colourfulness"), "image",
                               _image_stats, help="brightness, contrast, saturation, colourfulness of the image"),
}
CSV_PREFIX = "csv:"
HELP = ("numeric side features joined after the fusion, comma-separated: " + ", ".join(FEATURES)
        + ", csv:PATH (a file guid,<numeric columns>); empty = none")


def parse_spec(spec: str | Sequence[str] | None) -> list[str]:
    """``"vader,csv:likes.csv"`` -> ``["vader", "csv:/abs/likes.csv"]`` (validated, duplicates dropped)."""
    if spec is None:
        return []
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    out: list[str] = []
    for item in items:
        if not item or item.lower() == "none":
            continue
        if item.startswith(CSV_PREFIX):
            path = Path(item[len(CSV_PREFIX):]).expanduser()
            if not path.is_file():
                raise UserError(f"side feature {item!r}: file {path} not found")
            item = CSV_PREFIX + str(path.resolve())
        elif item not in FEATURES:
            raise UserError(f"unknown side feature {item!r}; choose from {', '.join(FEATURES)} or csv:PATH")
        if item not in out:
            out.append(item)
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SideCache:
    """One feature's cached rows: ``<root>/side/<name>-v<version>.npz`` with ``keys`` and ``values``."""

    def __init__(self, root: str | Path, feature: SideFeature):
        self.path = Path(root) / "side" / f"{feature.name}-v{feature.version}.npz"
        self.dim = len(feature.columns)
        self.rows: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    keys, values = z["keys"], z["values"]
                if values.ndim != 2 or values.shape[1] != self.dim or len(keys) != len(values):
                    raise ValueError(f"shape {values.shape}")
                self.rows = {str(k): v for k, v in zip(keys, values, strict=True)}
            except Exception as exc:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
                log.warning("side-feature cache %s unreadable (%s): recomputing it", self.path, exc)
                self.rows = {}

    def get(self, key: str) -> np.ndarray | None:
        return self.rows.get(key)

    def put(self, key: str, value: Sequence[float]) -> None:
        self.rows[key] = np.asarray(value, dtype=np.float32)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        keys = np.array(sorted(self.rows))
        values = np.stack([self.rows[k] for k in keys]) if len(keys) else np.zeros((0, self.dim), np.float32)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, values=values)
        self.dirty = False


def _computed(feature: SideFeature, guids: Sequence[str], data_dir: Path, cache_dir: Path,
              progress: bool) -> tuple[np.ndarray, dict]:
    from tqdm import tqdm

    from msa.data import MAX_IMAGE_BYTES, find_image, read_capped, read_text, validate_guid

    cache = SideCache(cache_dir, feature)
    out = np.full((len(guids), len(feature.columns)), np.nan, dtype=np.float32)
    stats = {"hits": 0, "computed": 0, "missing": 0}
    todo = []
    for i, guid in enumerate(guids):
        if feature.source == "text":
            res = read_text(data_dir, guid)
            if res.status not in ("ok", "empty"):  # an empty text is a text of length 0; a missing one is NaN
                stats["missing"] += 1
                continue
            key = _sha(res.raw.encode("utf-8"))
            payload = res.raw
        else:
            path = None if validate_guid(guid) else find_image(data_dir, guid)
            try:
                key = _sha(read_capped(path, MAX_IMAGE_BYTES)[0]) if path is not None else None
            except OSError:
                key = None
            if key is None:
                stats["missing"] += 1
                continue
            payload = guid
        hit = cache.get(key)
        if hit is not None:
            out[i] = hit
            stats["hits"] += 1
        else:
            todo.append((i, key, payload))
    for i, key, payload in tqdm(todo, desc=f"side {feature.name}", unit="post", disable=not progress or None,
                                leave=False):
        value = feature.compute(payload) if feature.source == "text" else feature.compute(data_dir, payload)
        if value is None:  # an image that does not decode: missing, and not cached (it is cheap to retry)
            stats["missing"] += 1
            continue
        out[i] = value
        cache.put(key, value)
        stats["computed"] += 1
    cache.save()
    return out, stats


def read_csv_features(path: str | Path, guids: Sequence[str], data_dir: str | Path,
                      columns: Sequence[str] | None = None, strict: bool = True) -> tuple[np.ndarray, list[str], dict]:
    """``guid,<numeric columns>`` -> ``(N, C)`` values for ``guids`` (``NaN`` for an empty cell or an unlisted
    guid), the column names and counts. ``columns`` (a checkpoint's) must all be present; they are then read in
    that order. Errors name the file, the row (1 = header) and the column; with ``strict`` (training) a guid
    with no text or image in ``data_dir`` is one of them (a typo would otherwise silently become missing
    values), without it (prediction on other posts) such rows are ignored."""
    import csv

    from msa.data import find_image, validate_guid

    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as a UTF-8 CSV file: {exc}") from None
    if not rows or not rows[0]:
        raise UserError(f"{path}: empty file; expected a header guid,<numeric columns>")
    header = [h.strip() for h in rows[0]]
    if "guid" not in header:
        raise UserError(f"{path}: row 1 (header) has no 'guid' column: {header}")
    gcol = header.index("guid")
    have = [h for h in header if h != "guid"]
    if not have:
        raise UserError(f"{path}: no numeric columns besides 'guid'")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise UserError(f"{path}: row 1 (header) repeats columns {dupes}")
    if columns is not None:
        missing = [c for c in columns if c not in have]
        if missing:
            raise UserError(f"{path}: column(s) {missing} missing; the model was trained with {list(columns)}")
        use = list(columns)
    else:
        use = have
    pos = [header.index(c) for c in use]
    data_dir = Path(data_dir)
    table: dict[str, np.ndarray] = {}
    for r, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}: row {r} has {len(row)} cells, the header has {len(header)}")
        guid = row[gcol].strip()
        why = validate_guid(guid)
        if why:
            raise UserError(f"{path}: row {r}, column guid: {guid!r} is not a valid guid ({why})")
        if guid in table:
            raise UserError(f"{path}: row {r}, column guid: guid {guid} is listed twice")
        if strict and find_image(data_dir, guid) is None and not (data_dir / f"{guid}.txt").is_file():
            raise UserError(f"{path}: row {r}, column guid: unknown guid {guid} (no {guid}.txt or image in "
                            f"{data_dir})")
        vals = []
        for c, j in zip(use, pos, strict=True):
            cell = row[j].strip()
            if cell == "" or cell.lower() in ("nan", "na", "null", "none"):
                vals.append(np.nan)
                continue
            try:
                v = float(cell)
            except ValueError:
                raise UserError(f"{path}: row {r}, column {c}: {cell!r} is not a number") from None
            if not math.isfinite(v):
                raise UserError(f"{path}: row {r}, column {c}: {cell!r} is not a finite number")
            vals.append(v)
        table[guid] = np.asarray(vals, dtype=np.float32)
    out = np.full((len(guids), len(use)), np.nan, dtype=np.float32)
    listed = 0
    for i, g in enumerate(guids):
        if g in table:
            out[i] = table[g]
            listed += 1
    return out, use, {"rows": len(table), "listed": listed, "unlisted": len(guids) - listed}


@dataclass
class SideMatrix:
    values: torch.Tensor  # (N, C) float32, NaN = missing
    columns: list[str]
    record: dict  # what to store with a model: {"features": [...], "columns": [...]}


def compute(spec: str | Sequence[str], guids: Sequence[str], data_dir: str | Path,
            cache_dir: str | Path = DEFAULT_CACHE_DIR, columns: Sequence[str] | None = None,
            progress: bool = True, strict: bool = True) -> SideMatrix | None:
    """The side features ``spec`` of ``guids`` (``None`` for an empty spec). ``columns`` (from a checkpoint)
    fixes the columns and their order; a column the features no longer give is an error."""
    names = parse_spec(spec)
    if not names:
        return None
    data_dir = Path(data_dir)
    blocks, cols = [], []
    want = list(columns) if columns is not None else None
    for name in names:
        if name.startswith(CSV_PREFIX):
            csv_path = name[len(CSV_PREFIX):]
            prefix = f"csv.{Path(csv_path).stem}."
            need = None if want is None else [c[len(prefix):] for c in want if c.startswith(prefix)]
            values, use, stats = read_csv_features(csv_path, guids, data_dir, need, strict)
            if stats["unlisted"]:
                log.info("%s lists %d of %d posts; the other %d get missing values (imputed and flagged)",
                         csv_path, stats["listed"], len(guids), stats["unlisted"])
            blocks.append(values)
            cols += [prefix + c for c in use]
        else:
            feature = FEATURES[name]
            values, stats = _computed(feature, guids, data_dir, Path(cache_dir), progress)
            log.info("side %s: %d computed, %d from cache, %d missing", name, stats["computed"], stats["hits"],
                     stats["missing"])
            blocks.append(values)
            cols += [f"{name}.{c}" for c in feature.columns]
    values = np.concatenate(blocks, axis=1)
    if want is not None:
        if sorted(want) != sorted(cols):
            raise UserError(f"side features {names} give columns {cols}; the model expects {want}")
        values = values[:, [cols.index(c) for c in want]]
        cols = want
    import torch

    return SideMatrix(torch.from_numpy(values), cols, {"features": names, "columns": cols})


def attach(fs: FeatureSet, side: SideMatrix | None) -> FeatureSet:
    """``fs`` with ``pooled["side"]`` and ``backbones["side"]`` (the record) added; ``fs`` itself when ``side`` is
    None."""
    from msa.fusions import SIDE

    if side is None:
        return fs
    if len(side.values) != len(fs.guids):
        raise ValueError(f"{len(side.values)} side rows for {len(fs.guids)} posts")
    return replace(fs, pooled={**fs.pooled, SIDE: side.values}, backbones={**fs.backbones, SIDE: side.record})


def record_of(fs: FeatureSet) -> dict | None:
    """The side-feature record of a feature set (``None``: no side features)."""
    from msa.fusions import SIDE

    return fs.backbones.get(SIDE)


def csv_files(spec: str | Sequence[str] | None) -> list[Path]:
    """The user files a spec reads (for the phases' up-to-date stamps: an edited file reruns the phase)."""
    return [Path(n[len(CSV_PREFIX):]) for n in parse_spec(spec) if n.startswith(CSV_PREFIX)]


def for_checkpoint(config: dict, guids: Sequence[str], data_dir: str | Path,
                   cache_dir: str | Path = DEFAULT_CACHE_DIR, progress: bool = True,
                   strict: bool = True) -> SideMatrix | None:
    """The side features a checkpoint (its ``config.json``) was trained with, computed for ``guids`` in the
    checkpoint's column order (``None`` when it has none)."""
    rec = config.get("side_features")
    if not rec:
        return None
    return compute(rec["features"], guids, data_dir, cache_dir, columns=rec["columns"], progress=progress,
                   strict=strict)


def check_flag(flag: str | None, config: dict, where: str) -> None:
    """A ``--side-features`` flag given to a phase that continues a checkpoint must name what it was trained on."""
    if flag is None:
        return
    have = (config.get("side_features") or {}).get("features") or []
    if parse_spec(flag) != list(have):
        raise UserError(f"--side-features {flag!r} differs from the side features {have or 'none'} that {where} was "
                        "trained with; fine-tuning keeps the checkpoint's inputs (retrain phase 3 with the new "
                        "features instead)")
