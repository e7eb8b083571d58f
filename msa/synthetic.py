"""Small synthetic datasets in the MVSA layout, for tests and demos.

:func:`make_dataset` writes ``data/{guid}.jpg`` + ``data/{guid}.txt``, ``train.txt`` and
``test_without_label.txt``. The label is learnable from the image (background colour and a shape) and from
the text (sentiment words), each cue with some noise, so that a multimodal model beats either modality.
:func:`add_faulty_samples` adds one sample per failure kind the data layer must survive and returns what
the audit is expected to say about each.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

from msa.data import LABELS

_COLORS = {"positive": (60, 170, 90), "negative": (190, 50, 50), "neutral": (120, 120, 140)}
_WORDS = {
    "positive": ["love", "happy", "great", "beautiful", "amazing", "wonderful", "best", "fun", "smile", "excited"],
    "negative": ["hate", "sad", "terrible", "awful", "angry", "worst", "broken", "cry", "disaster", "ugly"],
    "neutral": ["today", "photo", "street", "meeting", "report", "bus", "table", "window", "update", "map"],
}
_FILLER = ["the", "a", "this", "at", "with", "my", "in", "on", "#photo", "@friend", "RT", "http://t.co/x1"]


def _draw_image(label: str, rng: random.Random, size: int, cue: bool) -> Image.Image:
    shown = label if cue else rng.choice(LABELS)
    base = _COLORS[shown]
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in base)
    img = Image.new("RGB", (size + rng.randint(0, size), size), jitter)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    x, y, r = rng.randint(w // 4, 3 * w // 4), rng.randint(h // 4, 3 * h // 4), size // 5
    if shown == "positive":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 230, 80))
    elif shown == "negative":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=(30, 30, 30))
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=(230, 230, 230))
    return img


def _write_text(label: str, rng: random.Random, cue: bool) -> str:
    shown = label if cue else rng.choice(LABELS)
    words = rng.sample(_WORDS[shown], 2) + rng.sample(_FILLER, 4) + rng.sample(_WORDS["neutral"], 2)
    rng.shuffle(words)
    return " ".join(words)


def make_dataset(root: str | Path, n_train: int = 90, n_test: int = 15, seed: int = 0, image_size: int = 64,
                 cue_prob: float = 0.85, label_probs: tuple[float, float, float] = (0.3, 0.15, 0.55)) -> Path:
    """Write a synthetic MVSA-style dataset under ``root`` and return ``root``.

    Each modality shows the true label with probability ``cue_prob`` (else a random label), so both cues
    together are more reliable than either alone. Labels follow ``label_probs`` (negative, neutral, positive).
    """
    root = Path(root)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train_rows, test_rows = [], []
    for i in range(n_train + n_test):
        guid = str(i + 1)
        label = rng.choices(LABELS, weights=label_probs)[0]
        _draw_image(label, rng, image_size, rng.random() < cue_prob).save(data / f"{guid}.jpg", quality=90)
        (data / f"{guid}.txt").write_text(_write_text(label, rng, rng.random() < cue_prob) + "\n", encoding="utf-8")
        (train_rows if i < n_train else test_rows).append((guid, label if i < n_train else "null"))
    write_index(root / "train.txt", train_rows)
    write_index(root / "test_without_label.txt", test_rows)
    return root


def write_index(path: str | Path, rows, header: bool = True, newline: str = "\n", bom: bool = False) -> None:
    text = ("guid,tag" + newline if header else "") + "".join(f"{g},{t}{newline}" for g, t in rows)
    Path(path).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels but holds no data: a decompression bomb that
    costs nothing to write."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def add_faulty_samples(root: str | Path, seed: int = 1) -> dict[str, dict]:
    """Add one labelled sample per failure kind to a dataset made by :func:`make_dataset`.

    Rewrites ``train.txt`` with a BOM, CRLF line ends, padded fields and faulty rows, and adds faulty test
    rows. Returns ``{guid: {"reason": audit reason or None, "action": ..., "encoding": ...}}`` describing
    what phase 0 must report for each.
    """
    root = Path(root)
    data = root / "data"
    rng = random.Random(seed)
    expect: dict[str, dict] = {}

    def good_image(guid: str, label: str = "positive", ext: str = ".jpg") -> None:
        _draw_image(label, rng, 48, True).save(data / f"{guid}{ext}")

    def text(guid: str, content: bytes | str, label: str = "positive") -> None:
        raw = content if isinstance(content, bytes) else content.encode("utf-8")
        (data / f"{guid}.txt").write_bytes(raw)

    # --- texts
    cases = {
        "enc_gbk": ("\u201c\u4eca\u5929\u5929\u6c14\u5f88\u597d\u201d happy day\u2026".encode("gbk"), "gb18030", None),
        "enc_cp1252": ("Cr\u00e8me br\u00fbl\u00e9e at the caf\u00e9, love it".encode("cp1252"), "cp1252-replace",
                       None),
        "enc_bom": (b"\xef\xbb\xbfgreat day with friends", "utf-8-sig", None),
        "enc_utf16": ("wonderful sunset \u2600".encode("utf-16"), "utf-16", None),
        "enc_mojibake": ("caf\u00e9 time, love it".encode("utf-8").decode("latin-1").encode("utf-8"), "utf-8",
                         "text_repaired"),
        "enc_crlf": (b"first line\r\nsecond line\r\n", "utf-8", None),
    }
    for guid, (raw, enc, reason) in cases.items():
        good_image(guid)
        text(guid, raw)
        expect[guid] = {"reason": reason, "action": "repaired" if reason else None, "encoding": enc}
    good_image("text_empty")
    text("text_empty", b"")
    expect["text_empty"] = {"reason": "empty_text", "action": "removed"}
    good_image("text_blank")
    text("text_blank", b"   \r\n  ")
    expect["text_blank"] = {"reason": "empty_text", "action": "removed"}
    good_image("text_missing")
    expect["text_missing"] = {"reason": "missing_text", "action": "removed"}

    # --- images
    text("img_missing", "happy photo")
    expect["img_missing"] = {"reason": "missing_image", "action": "removed"}
    text("img_zero", "happy photo")
    (data / "img_zero.jpg").write_bytes(b"")
    expect["img_zero"] = {"reason": "empty_image_file", "action": "removed"}
    text("img_truncated", "happy photo")
    buf = data / "img_truncated.jpg"
    _draw_image("positive", rng, 96, True).save(buf, quality=95)
    raw = buf.read_bytes()
    buf.write_bytes(raw[: len(raw) // 2])
    expect["img_truncated"] = {"reason": "truncated_image", "action": "removed"}
    text("img_garbage", "happy photo")
    (data / "img_garbage.jpg").write_bytes(bytes(rng.randrange(256) for _ in range(2048)))
    expect["img_garbage"] = {"reason": "undecodable_image", "action": "removed"}
    text("img_bomb", "happy photo")
    (data / "img_bomb.png").write_bytes(_png_header_only(20000, 20000))
    expect["img_bomb"] = {"reason": "decompression_bomb", "action": "removed"}
    text("img_png_as_jpg", "happy photo")
    _draw_image("positive", rng, 48, True).save(data / "img_png_as_jpg.jpg", format="PNG")
    expect["img_png_as_jpg"] = {"reason": "image_format_mismatch", "action": "kept"}
    text("img_png", "happy photo")
    good_image("img_png", ext=".png")
    expect["img_png"] = {"reason": None}
    for guid, mode in (("img_cmyk", "CMYK"), ("img_gray", "L"), ("img_rgba", "RGBA"), ("img_la", "LA"),
                       ("img_palette", "P")):
        text(guid, "happy photo")
        img = _draw_image("positive", rng, 48, True)
        if mode == "CMYK":
            img.convert("CMYK").save(data / f"{guid}.jpg")
        elif mode == "L":
            img.convert("L").save(data / f"{guid}.jpg")
        elif mode == "P":
            pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            pal.save(data / f"{guid}.png", transparency=0)
        else:
            conv = img.convert(mode)
            conv.putalpha(128)
            conv.save(data / f"{guid}.png")
        expect[guid] = {"reason": None}
    text("img_exif", "happy photo")
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(data / "img_exif.jpg", exif=exif)
    expect["img_exif"] = {"reason": None}

    # --- duplicates: same image and text with the same label (one removed) or different labels (all removed)
    dup_img = _draw_image("positive", rng, 64, True)
    for guid in ("dup_a", "dup_b", "conf_a", "conf_b"):
        dup_img.save(data / f"{guid}.jpg", quality=92 if guid.endswith("a") else 80)
    text("dup_a", "RT @someone: So happy with this view! http://t.co/abc")
    text("dup_b", "So happy with this view!  http://t.co/xyz")
    text("conf_a", "what a day #Sunday")
    text("conf_b", "What a day! #sunday")
    expect["dup_a"] = {"reason": None}
    expect["dup_b"] = {"reason": "near_duplicate", "action": "removed"}
    expect["conf_a"] = {"reason": "conflicting_duplicates", "action": "removed"}
    expect["conf_b"] = {"reason": "conflicting_duplicates", "action": "removed"}

    # --- index-file faults
    for guid in ("idx_unknown", "idx_null", "idx_repeat", "idx_conflict"):
        good_image(guid)
        text(guid, "nice photo")
    expect["idx_unknown"] = {"reason": "unknown_tag", "action": "skipped"}
    expect["idx_null"] = {"reason": "missing_tag", "action": "skipped"}
    expect["idx_repeat"] = {"reason": "duplicate_index_row", "action": "skipped", "kept": True}  # first copy kept
    expect["idx_conflict"] = {"reason": "conflicting_index_rows", "action": "removed"}
    expect["../escape"] = {"reason": "bad_guid", "action": "skipped"}
    expect["sub/dir"] = {"reason": "bad_guid", "action": "skipped"}

    labels = {"conf_b": "negative", "idx_unknown": "happy", "idx_null": "null"}
    lines = (root / "train.txt").read_text(encoding="utf-8").splitlines()[1:]
    rows = [tuple(x.split(",")) for x in lines]
    for guid in expect:
        if not guid.startswith("idx_") and "/" not in guid:
            rows.append((guid, labels.get(guid, "positive")))
    rows += [("idx_unknown", "happy"), ("idx_null", "null"), ("idx_repeat", "positive"), ("idx_repeat", "positive"),
             ("idx_conflict", "positive"), ("idx_conflict", "negative"), ("../escape", "positive"),
             ("sub/dir", "negative")]
    body = "".join(f"  {g} , {t.upper() if i % 7 == 0 else t}\r\n" for i, (g, t) in enumerate(rows))
    body += "\r\n" + "too,many,fields\r\n"
    expect["too"] = {"reason": "bad_index_row", "action": "skipped"}
    (root / "train.txt").write_bytes(b"\xef\xbb\xbfguid,tag\r\n" + body.encode("utf-8"))

    # --- faulty test rows: never removed, placeholders instead
    test_lines = (root / "test_without_label.txt").read_text(encoding="utf-8").splitlines()
    text("test_noimage", "a photo")
    (data / "test_zero.jpg").write_bytes(b"")
    test_lines += ["test_noimage,null", "test_zero,null", "test/../bad,null"]
    (root / "test_without_label.txt").write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    expect["test_noimage"] = {"reason": "missing_image", "action": "placeholder", "test": True}
    expect["test_zero"] = {"reason": "empty_image_file", "action": "placeholder", "test": True}
    expect["test/../bad"] = {"reason": "bad_guid", "action": "kept", "test": True}
    return expect
