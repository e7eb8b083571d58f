"""Robust readers for MVSA-style data: index files, guids, texts and images.

Nothing here crashes on one bad sample. Every reader returns the value it could recover plus a status
and a human-readable detail, so callers can log the problem, put it in the audit, and carry on:

* :func:`read_index` reads ``guid,tag`` files (header, CRLF, BOM, whitespace tolerated; bad rows are
  reported as :class:`Problem` records and skipped, see the policy in its docstring).
* :func:`validate_guid` rejects anything that is not a plain file stem.
* :func:`read_text` / :func:`decode_bytes` decode by a fixed ladder (BOM, strict UTF-8, strict GB18030 when
  the result is plausible, charset detection, cp1252 with replacement) and then repair mojibake.
* :func:`load_image` opens ``.jpg``/``.png`` (or whatever the real format is), applies EXIF orientation,
  converts every mode to RGB (transparency onto a white background) and returns a grey placeholder with a
  reason for missing, empty, truncated, undecodable or decompression-bomb files.
* :func:`normalize_text` prepares raw tweet text for the text encoders (raw text is kept for display).
"""

from __future__ import annotations

import codecs
import errno
import html
import logging
import os
import re
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from msa.cli import UserError

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
LABEL2ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
NULL_TAGS = frozenset({"null", "none", ""})

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}
#: Images with more pixels than this are treated as decompression bombs (Pillow's own default limit).
MAX_IMAGE_PIXELS = 89_478_485
#: Size caps of every file the data layer reads (README, "Bad input"): a post text is cut after this many bytes
#: (a tweet is at most ~1.1 KB; the cut is audited as ``text_truncated``), an image file or an index file larger
#: than its cap is refused. Only regular files are read: a FIFO, a device or a symlink to one is never opened.
MAX_TEXT_BYTES = 16 * 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024
#: the words of a TextResult's detail that say the text was cut (phase 0 audits it as ``text_truncated``)
TRUNCATED_DETAIL = "cut to its first"
#: the longest guid accepted: with its extension it must fit a file name (255 bytes on common file systems)
MAX_GUID_CHARS = 200
PLACEHOLDER_SIZE = (224, 224)
PLACEHOLDER_COLOR = (128, 128, 128)


@dataclass
class Problem:
    """One row of the data audit: what is wrong with a guid and what was done about it."""

    guid: str
    reason: str
    label: str = ""
    detail: str = ""
    action: str = "removed"  # removed | skipped | kept | repaired | placeholder
    source: str = ""  # file the problem was found in

    def as_dict(self) -> dict:
        return {"guid": self.guid, "reason": self.reason, "label": self.label, "detail": self.detail,
                "action": self.action, "source": self.source}


AUDIT_COLUMNS = ["guid", "reason", "label", "detail", "action", "source"]


# --------------------------------------------------------------------------------------------- guids
_GUID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def validate_guid(guid: str) -> str | None:
    """Return why ``guid`` is not a plain file stem, or ``None`` when it is valid."""
    if not guid:
        return "empty guid"
    if "/" in guid or "\\" in guid:
        return "guid contains a path separator"
    if ".." in guid:
        return "guid contains '..'"
    if not _GUID_RE.match(guid):
        return "guid has characters other than letters, digits, '_', '-' and '.'"
    if len(guid) > MAX_GUID_CHARS:
        return f"guid is {len(guid)} characters long (at most {MAX_GUID_CHARS}: it names files)"
    return None


# ------------------------------------------------------------------------------------------ file reads
class FileReadError(OSError):
    """A file that is not read: not a regular file, or larger than its cap. ``reason`` is a short tag."""

    def __init__(self, path: Path, reason: str, detail: str):
        super().__init__(errno.EINVAL, detail, str(path))
        self.reason, self.detail = reason, detail


def regular_file_size(path: str | Path) -> int:
    """The size of ``path`` after following symlinks; :class:`FileReadError` unless it is a regular file
    (a FIFO would block, a device such as ``/dev/zero`` never ends). ``FileNotFoundError`` when missing."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileReadError(path, "symlink_loop", f"{path.name}: a symbolic link loop") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise FileReadError(path, "not_regular", f"{path.name} is {kind}, not a regular file: not read")
    return st.st_size


def read_capped(path: str | Path, limit: int, cut: bool = False) -> tuple[bytes, bool]:
    """``(bytes, was_cut)`` of the regular file ``path``, reading at most ``limit`` bytes. A larger file is cut at
    ``limit`` with ``cut`` (texts), else refused with :class:`FileReadError` (images, index files)."""
    path = Path(path)
    size = regular_file_size(path)
    if size > limit and not cut:
        raise FileReadError(path, "too_large", f"{path.name} is {size:,} bytes, over the limit of {limit:,}")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        return data[:limit], True
    return data, False


def _cut_utf8(data: bytes) -> bytes:
    """``data`` without a multi-byte UTF-8 character split by a cut at its end."""
    for k in range(min(4, len(data)) + 1):
        try:
            (data[:-k] if k else data).decode("utf-8")
            return data[:-k] if k else data
        except UnicodeDecodeError:
            continue
    return data


# ----------------------------------------------------------------------------------------- index files
@dataclass
class IndexFile:
    """A parsed ``guid,tag`` file. ``rows`` has columns guid, tag, line (1-based line number)."""

    path: Path
    rows: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    had_header: bool = True
    n_data_lines: int = 0  # non-blank lines after the header, usable or not

    @property
    def guids(self) -> list[str]:
        return self.rows["guid"].tolist()


def read_index(path: str | Path, labelled: bool = True) -> IndexFile:
    """Read an index file of ``guid,tag`` rows.

    Policy (every skipped row becomes a :class:`Problem` with file and line in its detail):

    * missing file, undecodable file, or no usable row at all: :class:`UserError` (a clear error).
    * BOM, CRLF, surrounding whitespace, blank lines, tag case (``Positive``): accepted silently.
    * no ``guid,tag`` header: accepted, with a warning (the first line is read as data).
    * a row without exactly two fields: skipped (``bad_index_row``).
    * an invalid guid (path separator, ``..``, empty): skipped in a labelled file (``bad_guid``); kept in the
      test file so that it still gets a prediction (its files are never opened).
    * labelled file: unknown tag or ``null`` tag: skipped (``unknown_tag`` / ``missing_tag``).
      Test file: any tag other than ``null`` is ignored with a warning.
    * the same guid twice with the same tag: later copies skipped (``duplicate_index_row``);
      with different tags: every copy removed (``conflicting_index_rows``).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"index file not found: {path}")
    try:
        raw, _ = read_capped(path, MAX_INDEX_BYTES)
    except FileReadError as exc:
        raise UserError(f"index file {path}: {exc.detail}") from None
    except OSError as exc:
        raise UserError(f"index file {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: index file is not valid UTF-8 ({exc.reason})") from None
    problems: list[Problem] = []
    src = path.name
    records: list[tuple[str, str, int]] = []
    had_header = True
    first = True
    n_data = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if first:
            first = False
            if [f.lower() for f in fields] == ["guid", "tag"]:
                continue
            had_header = False
            log.warning("%s, line %d: no 'guid,tag' header; reading the first line as data", path, lineno)
        n_data += 1
        if not labelled and len(fields) > 2 and not validate_guid(fields[0]):
            # every test guid must get its row: extra columns are ignored, not the guid
            problems.append(Problem(fields[0], "bad_index_row", "",
                                    f"line {lineno}: expected 'guid,tag', got {line[:80]!r}; extra columns "
                                    "ignored", "kept", src))
            fields = fields[:2]
        if not labelled and len(fields) == 1 and fields[0] and not validate_guid(fields[0]):
            fields = [fields[0], "null"]  # a test guid without its tag column still gets its row
        if len(fields) != 2:
            problems.append(Problem(fields[0] if fields else "", "bad_index_row",
                                    detail=f"line {lineno}: expected 'guid,tag', got {line[:80]!r}",
                                    action="skipped", source=src))
            continue
        guid, tag = fields[0], fields[1].lower()
        why = validate_guid(guid)
        if why:
            if labelled:
                problems.append(Problem(guid, "bad_guid", tag, f"line {lineno}: {why}", "skipped", src))
                continue
            problems.append(Problem(guid, "bad_guid", "", f"line {lineno}: {why}; predicted from placeholders",
                                    "kept", src))
        if labelled:
            if tag in NULL_TAGS:
                problems.append(Problem(guid, "missing_tag", tag, f"line {lineno}: no label", "skipped", src))
                continue
            if tag not in LABEL2ID:
                problems.append(Problem(guid, "unknown_tag", tag,
                                        f"line {lineno}: tag {fields[1]!r} is not one of {', '.join(LABELS)}",
                                        "skipped", src))
                continue
        elif tag not in NULL_TAGS:
            log.warning("%s, line %d: test row has tag %r; ignored", path, lineno, fields[1])
            tag = "null"
        else:
            tag = "null"
        records.append((guid, tag, lineno))

    frame = pd.DataFrame(records, columns=["guid", "tag", "line"])
    if frame.empty:
        raise UserError(f"{path}: no usable 'guid,tag' row"
                        + (f" ({len(problems)} rows rejected, first: {problems[0].detail})" if problems else ""))
    keep = pd.Series(True, index=frame.index)
    for guid, grp in frame.groupby("guid", sort=False):
        if len(grp) == 1:
            continue
        lines = ", ".join(str(v) for v in grp["line"])
        if grp["tag"].nunique() > 1:
            keep[grp.index] = False
            problems.append(Problem(guid, "conflicting_index_rows", "/".join(grp["tag"]),
                                    f"lines {lines}: same guid with different tags", "removed", src))
        else:
            keep[grp.index[1:]] = False
            problems.append(Problem(guid, "duplicate_index_row", grp["tag"].iloc[0],
                                    f"lines {lines}: same guid repeated; first kept", "skipped", src))
    frame = frame[keep].reset_index(drop=True)
    for p in problems:
        log.debug("%s: %s %s (%s)", path, p.reason, p.guid, p.detail)
    return IndexFile(path=path, rows=frame, problems=problems, had_header=had_header, n_data_lines=n_data)


# -------------------------------------------------------------------------------------------- texts
@dataclass
class TextResult:
    """A decoded text: ``raw`` for display, ``encoding`` as detected, ``status`` ok/missing/empty/bad_guid."""

    raw: str
    encoding: str
    status: str = "ok"
    repaired: bool = False
    detail: str = ""
    truncated: bool = False  # the file was longer than MAX_TEXT_BYTES and only its start was read

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))

# Unicode blocks that text encoded as GBK/GB18030 plausibly contains (CJK, kana, Cyrillic, Greek, pinyin
# letters, punctuation and symbols of the GB2312 set). Anything else means the bytes were not GB18030.
_GB_PLAUSIBLE = (
    (0x00A0, 0x024F), (0x02C0, 0x02DF), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x2000, 0x206F),
    (0x20AC, 0x20AC), (0x2100, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x26FF), (0x2E80, 0x2FDF),
    (0x3000, 0x312F), (0x3190, 0x33FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xE000, 0xE000),
    (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF),
)


def _is_ideograph(ch: str) -> bool:
    return 0x3400 <= ord(ch) <= 0x9FFF


def _gb18030_plausible(text: str) -> bool:
    """True when a strict GB18030 decoding looks like real text, not Latin bytes read as GB18030.

    Latin-1/cp1252 bytes such as ``Cr\\xe8me`` decode in GB18030 to lone ideographs wedged between Latin
    letters; real Chinese has ideographs in runs or next to CJK punctuation.
    """
    for ch in text:
        o = ord(ch)
        if o > 127 and not any(lo <= o <= hi for lo, hi in _GB_PLAUSIBLE):
            return False
    n = len(text)
    suspicious = 0
    for i, ch in enumerate(text):
        if not _is_ideograph(ch):
            continue
        prev = text[i - 1] if i else " "
        nxt = text[i + 1] if i + 1 < n else " "
        if ord(prev) > 0x2FFF or ord(nxt) > 0x2FFF:
            continue  # part of a run of CJK characters
        left, right = prev.isascii() and prev.isalpha(), nxt.isascii() and nxt.isalpha()
        if left and right:
            return False  # 'Cr\xe8me' -> 'Cr' + ideograph + 'e'
        suspicious += left or right
    return not suspicious or _has_cjk_run(text)


def _has_cjk_run(text: str) -> bool:
    return any(ord(a) > 0x2FFF and ord(b) > 0x2FFF for a, b in zip(text, text[1:]))


def _kana_share(text: str) -> float:
    wide = [c for c in text if ord(c) > 127]
    return sum(0x3040 <= ord(c) <= 0x30FF for c in wide) / len(wide) if wide else 0.0


def _shift_jis_instead(data: bytes, gb_text: str) -> str | None:
    """Japanese in Shift-JIS also decodes as GB18030, but into ideographs only: written Japanese is full of
    kana, so a Shift-JIS reading rich in kana beats a GB18030 reading with none."""
    if _kana_share(gb_text) > 0:
        return None
    try:
        text = data.decode("shift_jis")
    except UnicodeDecodeError:
        return None
    return text if _kana_share(text) >= 0.3 else None


#: Below this many non-ASCII bytes charset detection guesses wildly (cp1006, big5 for 'Crème brûlée');
#: such texts go straight to cp1252, the likeliest legacy encoding of a Western tweet.
_MIN_DETECTION_BYTES = 16


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode ``data`` by the fixed ladder and return ``(text, encoding_used)``.

    BOM -> strict UTF-8 -> strict GB18030 (only when plausible) -> charset detection -> cp1252 with
    replacement characters. Mojibake repair is a separate step (:func:`repair_mojibake`).
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
        if _gb18030_plausible(text):
            japanese = _shift_jis_instead(data, text)
            return (japanese, "shift_jis") if japanese else (text, "gb18030")
    except UnicodeDecodeError:
        pass
    if sum(b > 127 for b in data) >= _MIN_DETECTION_BYTES:  # detection is noise on a handful of bytes
        try:
            from charset_normalizer import from_bytes

            best = from_bytes(data).best()
            if best is not None and best.encoding and best.encoding.lower() not in {"utf_8", "gb18030"}:
                return str(best), best.encoding.lower().replace("_", "-")
        except Exception as exc:  # noqa: BLE001 - charset detection is best effort
            log.debug("charset detection failed: %s", exc)
    return data.decode("cp1252", errors="replace"), "cp1252-replace"


def repair_mojibake(text: str) -> str:
    """Undo text that was decoded with the wrong codec earlier (``caf\u00c3\u00a9`` -> ``caf\u00e9``)."""
    import ftfy

    return ftfy.fix_encoding(text)


def clean_raw_text(text: str) -> str:
    """Normalise line breaks and strip; the text a user sees (before :func:`normalize_text`)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return unicodedata.normalize("NFC", text).strip()


def read_text(data_dir: str | Path, guid: str) -> TextResult:
    """Read ``data_dir/{guid}.txt``; never raises for a missing, empty or oddly encoded file."""
    why = validate_guid(guid)
    if why:
        return TextResult("", "", "bad_guid", detail=why)
    path = Path(data_dir) / f"{guid}.txt"
    try:
        data, truncated = read_capped(path, MAX_TEXT_BYTES, cut=True)
    except FileNotFoundError:
        return TextResult("", "", "missing", detail=f"{path.name} not found")
    except FileReadError as exc:
        return TextResult("", "", "missing", detail=exc.detail)
    except OSError as exc:
        return TextResult("", "", "missing", detail=f"{path.name}: {exc.strerror or exc}")
    if truncated:
        data = _cut_utf8(data)
    text, enc = decode_bytes(data)
    fixed = repair_mojibake(text)
    repaired = fixed != text
    raw = clean_raw_text(fixed)
    if not raw:
        return TextResult("", enc, "empty", repaired, detail="empty file" if not data else "only whitespace")
    detail = "mojibake repaired" if repaired else ""
    if enc == "cp1252-replace" and "\ufffd" in raw:
        detail = (detail + "; " if detail else "") + "undecodable bytes replaced"
    if truncated:
        detail = (detail + "; " if detail else "") + f"{TRUNCATED_DETAIL} {MAX_TEXT_BYTES:,} bytes"
    return TextResult(raw, enc, "ok", repaired, detail, truncated)


# ---------------------------------------------------------------------------------------- normalisation
_URL_RE = re.compile(r"(?:\bhttps?:/*|\bwww\.)\S*", re.IGNORECASE)
_MENTION_RE = re.compile(r"(?<![\w@])@\w+")
_RT_RE = re.compile(r"(?<!\w)RT(?=\s|:|$|@)")
_HASHTAG_RE = re.compile(r"(?<![\w#])#(\w+)")
_CAMEL_RE = re.compile(r"[A-Z]{2,}(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_a-zA-Z]+")
_SPACE_RE = re.compile(r"\s+")


def split_hashtag(tag: str) -> str:
    """``HappyHour`` -> ``Happy Hour``, ``NYC2015`` -> ``NYC 2015``, ``happy_hour`` -> ``happy hour``."""
    words: list[str] = []
    for part in tag.split("_"):
        words.extend(_CAMEL_RE.findall(part) or [part])
    return " ".join(w for w in words if w)


def _emoji_to_words(text: str) -> str:
    import emoji

    return emoji.replace_emoji(text, replace=lambda chars, data: " " + data["en"].strip(":").replace("_", " ") + " ")


def normalize_text(text: str, *, url_token: str = "", mention_token: str = "@user", drop_rt: bool = True,
                   split_hashtags: bool = True, emoji_words: bool = True) -> str:
    """Prepare a post for a text encoder.

    HTML entities unescaped; URLs replaced by ``url_token`` (dropped by default); ``@name`` replaced by
    ``mention_token``; the retweet marker ``RT`` dropped; ``#HashTags`` split into words; emoji written as
    their English names; whitespace collapsed.
    """
    text = html.unescape(text)
    text = _URL_RE.sub(f" {url_token} " if url_token else " ", text)
    if mention_token is not None:
        text = _MENTION_RE.sub(mention_token, text)
    if drop_rt:
        text = _RT_RE.sub(" ", text)
        text = re.sub(r"^[\s:]+", "", text)
    if split_hashtags:
        text = _HASHTAG_RE.sub(lambda m: split_hashtag(m.group(1)), text)
    if emoji_words:
        text = _emoji_to_words(text)
    return _SPACE_RE.sub(" ", text).strip()


def dedup_key(text: str) -> str:
    """A key under which reposts of the same text collide (case, URLs, mentions, RT, punctuation ignored)."""
    text = normalize_text(text, url_token="", mention_token="", emoji_words=False).lower()
    return _SPACE_RE.sub(" ", re.sub(r"[^\w\s]", " ", text)).strip()


# ------------------------------------------------------------------------------------------------ images
@dataclass
class ImageResult:
    """An RGB image (or a grey placeholder) with what was found on disk."""

    image: Image.Image
    status: str = "ok"  # ok | missing | bad_guid | empty_file | truncated | undecodable | decompression_bomb
    detail: str = ""
    path: Path | None = None
    format: str = ""
    mode: str = ""
    size: tuple[int, int] = (0, 0)  # original (width, height) before any reduction
    ext_mismatch: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def placeholder_image(size: tuple[int, int] = PLACEHOLDER_SIZE) -> Image.Image:
    return Image.new("RGB", size, PLACEHOLDER_COLOR)


def find_image(data_dir: str | Path, guid: str) -> Path | None:
    """The image file of ``guid``: ``{guid}.jpg`` first, then the other known extensions (any case)."""
    data_dir = Path(data_dir)
    for ext in IMAGE_EXTENSIONS:
        for candidate in (data_dir / f"{guid}{ext}", data_dir / f"{guid}{ext.upper()}"):
            try:
                if candidate.is_file():  # follows symlinks: a FIFO, a device or a loop is not an image
                    return candidate
            except OSError:  # e.g. a name the file system refuses
                continue
    return None


#: a run in which more than this share of the posts has no text file (or no image file) is refused: placeholders
#: are for a few broken posts, and a run made mostly of them means the data folder is the wrong one
MAX_MISSING_SHARE = 0.5


def check_data_dir(data_dir: str | Path, guids, text: bool = True, image: bool = True) -> None:
    """:class:`UserError` naming the folder when ``data_dir`` is not a folder, or when most ``guids`` have no
    ``{guid}.txt`` (``text``) or no image file (``image``) in it: predictions or a model made of placeholders
    would be silently wrong. One listing of the folder, no file is opened."""
    data_dir = Path(data_dir)
    hint = ("is --data-root right? It must hold train.txt, test_without_label.txt and data/{guid}.jpg|.txt "
            "(README, 'Dataset layout')")
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} not found: {hint}")
    guids = list(guids)
    if not guids or not (text or image):
        return
    try:
        names = os.listdir(data_dir)
    except OSError as exc:
        raise UserError(f"data folder {data_dir} cannot be listed ({exc.strerror or exc})") from None
    stems: dict[str, set[str]] = {"text": set(), "image": set()}
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if not dot:
            continue
        if ext == "txt":
            stems["text"].add(stem)
        elif f".{ext.lower()}" in IMAGE_EXTENSIONS and (ext.islower() or ext.isupper()):
            stems["image"].add(stem)
    for kind, wanted in (("text", text), ("image", image)):
        if not wanted:
            continue
        missing = [g for g in guids if g not in stems[kind]]
        if len(missing) > MAX_MISSING_SHARE * len(guids):
            raise UserError(f"{len(missing)} of {len(guids)} posts have no {kind} file in {data_dir} (e.g. "
                            f"{missing[0]!r}): {hint}. Placeholders stand in for a few broken posts, not for most "
                            "of them, so nothing was computed or written")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited onto ``background``."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        import numpy as np

        arr = np.asarray(img, dtype="float64")
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0
        img = Image.fromarray((arr * scale).clip(0, 255).astype("uint8"), "L")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def load_image(data_dir: str | Path, guid: str, *, draft_size: tuple[int, int] | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS,
               placeholder_size: tuple[int, int] = PLACEHOLDER_SIZE) -> ImageResult:
    """Open the image of ``guid`` as RGB; any failure yields a placeholder and a reason, never an exception.

    ``draft_size`` lets JPEG decode at a reduced scale (at least that size), which is several times faster
    when the caller resizes anyway; the whole file is still read, so truncation is still detected.
    """
    why = validate_guid(guid)
    if why:
        return ImageResult(placeholder_image(placeholder_size), "bad_guid", why)
    path = find_image(data_dir, guid)
    if path is None:
        return ImageResult(placeholder_image(placeholder_size), "missing", f"no image file for {guid}")
    res = ImageResult(placeholder_image(placeholder_size), path=path)
    try:
        size = regular_file_size(path)
        if size == 0:
            res.status, res.detail = "empty_file", f"{path.name} is empty (0 bytes)"
            return res
        if size > MAX_IMAGE_BYTES:
            res.status = "undecodable"
            res.detail = f"{path.name} is {size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,}: not read"
            return res
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                res.format, res.mode, res.size = img.format or "", img.mode, img.size
                expected = _EXT_FORMAT.get(path.suffix.lower())
                if expected and res.format and res.format != expected:
                    res.ext_mismatch = True
                    res.detail = f"{res.format} data in a {path.suffix} file"
                if img.size[0] * img.size[1] > max_pixels:
                    res.status = "decompression_bomb"
                    res.detail = f"{img.size[0]}x{img.size[1]} pixels exceeds the limit of {max_pixels}"
                    return res
                if draft_size and res.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
                    img.draft("RGB", draft_size)
                img.load()
                img = ImageOps.exif_transpose(img)
                res.image = to_rgb(img)
    except FileReadError as exc:
        res.status, res.detail = "undecodable", exc.detail
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        res.status, res.detail = "decompression_bomb", str(exc)[:200]
    except UnidentifiedImageError:
        res.status, res.detail = "undecodable", f"{path.name}: not a recognisable image"
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow raises these for broken files
        msg = str(exc)
        res.status = "truncated" if "truncated" in msg.lower() else "undecodable"
        res.detail = f"{path.name}: {msg[:200]}"
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
        res.status, res.detail = "undecodable", f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}"
    if not res.ok:
        res.image = placeholder_image(placeholder_size)
    return res
