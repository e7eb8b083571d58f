"""The data layer: index files, guids, the decode ladder, images, text normalisation."""

from __future__ import annotations

import pytest
from PIL import Image

from msa.cli import UserError
from msa.data import (
    PLACEHOLDER_COLOR,
    decode_bytes,
    dedup_key,
    load_image,
    normalize_text,
    read_index,
    read_text,
    split_hashtag,
    to_rgb,
    validate_guid,
)
from msa.synthetic import write_index

# ------------------------------------------------------------------------------------------------- guids


@pytest.mark.parametrize("guid", ["123", "abc_1", "a-b.c", "X9"])
def test_valid_guids(guid):
    assert validate_guid(guid) is None


@pytest.mark.parametrize("guid", ["", "../x", "a/b", "a\\b", "..", "a..b", ".hidden", "a b", "a\x00b"])
def test_invalid_guids(guid):
    assert validate_guid(guid)


def test_loaders_never_touch_the_filesystem_for_bad_guids(tmp_path):
    (tmp_path / "secret.txt").write_text("do not read")
    sub = tmp_path / "data"
    sub.mkdir()
    assert read_text(sub, "../secret").status == "bad_guid"
    res = load_image(sub, "../secret")
    assert res.status == "bad_guid" and res.image.getpixel((0, 0)) == PLACEHOLDER_COLOR


# ------------------------------------------------------------------------------------------- index files


def test_index_tolerates_bom_crlf_whitespace_and_case(tmp_path):
    p = tmp_path / "train.txt"
    p.write_bytes(b"\xef\xbb\xbfguid,tag\r\n 1 , Positive \r\n\r\n2,negative\r\n")
    idx = read_index(p)
    assert idx.guids == ["1", "2"] and idx.rows["tag"].tolist() == ["positive", "negative"]
    assert idx.problems == [] and idx.had_header


def test_index_without_header_is_read_as_data(tmp_path, caplog):
    p = tmp_path / "train.txt"
    write_index(p, [("1", "positive"), ("2", "neutral")], header=False)
    idx = read_index(p)
    assert idx.guids == ["1", "2"] and not idx.had_header
    assert "no 'guid,tag' header" in caplog.text


def test_index_row_policy(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("guid,tag\n1,positive\n2,happy\n3,null\n../4,positive\n5,neutral\n5,neutral\n"
                 "6,positive\n6,negative\n7,positive,extra\n8,negative\n", encoding="utf-8")
    idx = read_index(p)
    assert idx.guids == ["1", "5", "8"]
    got = {(x.guid, x.reason, x.action) for x in idx.problems}
    assert got == {("2", "unknown_tag", "skipped"), ("3", "missing_tag", "skipped"), ("../4", "bad_guid", "skipped"),
                   ("5", "duplicate_index_row", "skipped"), ("6", "conflicting_index_rows", "removed"),
                   ("7", "bad_index_row", "skipped")}
    line_of = {x.guid: x.detail for x in idx.problems}
    assert "line 3" in line_of["2"] and "lines 8, 9" in line_of["6"]


def test_test_index_keeps_bad_guids_and_ignores_tags(tmp_path):
    p = tmp_path / "test.txt"
    p.write_text("guid,tag\n1,null\na/b,null\n3,positive\n", encoding="utf-8")
    idx = read_index(p, labelled=False)
    assert idx.guids == ["1", "a/b", "3"] and set(idx.rows["tag"]) == {"null"}
    assert [(x.guid, x.reason, x.action) for x in idx.problems] == [("a/b", "bad_guid", "kept")]


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"guid,tag\n", "no usable"),
    (b"guid,tag\n1,happy\n", "no usable"),
    (b"guid,tag\n1,positive\n2,\xff\xfe\n", "line 3"),
])
def test_index_errors_name_the_file(tmp_path, content, message):
    p = tmp_path / "train.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(UserError, match=message) as exc:
        read_index(p)
    assert "train.txt" in str(exc.value)


# ------------------------------------------------------------------------------------------------- texts


@pytest.mark.parametrize("raw, text, encoding", [
    (b"plain ascii", "plain ascii", "utf-8"),
    ("caf\u00e9 \U0001f600".encode(), "caf\u00e9 \U0001f600", "utf-8"),
    (b"\xef\xbb\xbfwith bom", "with bom", "utf-8-sig"),
    ("utf16 \u2603".encode("utf-16"), "utf16 \u2603", "utf-16"),
    ("\u201cquoted\u201d and more\u2026".encode("gbk"), "\u201cquoted\u201d and more\u2026", "gb18030"),
    ("\u4eca\u5929\u5929\u6c14\u5f88\u597d #sunny".encode("gbk"), "\u4eca\u5929\u5929\u6c14\u5f88\u597d #sunny",
     "gb18030"),
    ("\u041f\u0440\u0438\u0432\u0435\u0442 #\u043c\u0438\u0440".encode("gbk"),
     "\u041f\u0440\u0438\u0432\u0435\u0442 #\u043c\u0438\u0440", "gb18030"),
    ("\u3053\u3093\u306b\u3061\u306f\u3001\u5143\u6c17\u3067\u3059\u304b".encode("shift_jis"),
     "\u3053\u3093\u306b\u3061\u306f\u3001\u5143\u6c17\u3067\u3059\u304b", "shift_jis"),
    ("Cr\u00e8me br\u00fbl\u00e9e".encode("cp1252"), "Cr\u00e8me br\u00fbl\u00e9e", "cp1252-replace"),
    ("\u00dcber alles".encode("cp1252"), "\u00dcber alles", "cp1252-replace"),
])
def test_decode_ladder(raw, text, encoding):
    assert decode_bytes(raw) == (text, encoding)


def test_read_text_repairs_mojibake_and_records_it(tmp_path):
    (tmp_path / "1.txt").write_bytes("caf\u00e9 \u2013 nice".encode().decode("latin-1").encode())
    res = read_text(tmp_path, "1")
    assert res.ok and res.raw == "caf\u00e9 \u2013 nice" and res.repaired and res.encoding == "utf-8"


def test_read_text_statuses(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b" \r\n\t")
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb \r\n")
    assert read_text(tmp_path, "missing").status == "missing"
    assert read_text(tmp_path, "empty").status == "empty"
    assert read_text(tmp_path, "blank").status == "empty"
    assert read_text(tmp_path, "crlf").raw == "a\nb"


def test_lossy_decode_is_flagged(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"broken \x81 byte")
    res = read_text(tmp_path, "x")
    assert res.ok and res.encoding == "cp1252-replace" and "replaced" in res.detail


# ----------------------------------------------------------------------------------------- normalisation


def test_normalize_text():
    raw = "RT @Some_One: Loving this #HappyHour!! &amp; more http://t.co/abc www.x.com http:/\u2026 \U0001f600 #NYC2015"
    assert normalize_text(raw) == "@user: Loving this Happy Hour!! & more grinning face NYC 2015"
    assert normalize_text(raw, url_token="URL", mention_token="@USER", emoji_words=False).count("URL") == 3
    assert normalize_text("  spaced \n\n out  ") == "spaced out"
    assert normalize_text("ART is not RT") == "ART is not"  # only the standalone retweet marker goes
    assert normalize_text("email a@b.com") == "email a@b.com"


@pytest.mark.parametrize("tag, words", [("HappyHour", "Happy Hour"), ("happy_hour", "happy hour"),
                                        ("NYC2015", "NYC 2015"), ("iPhoneX", "i Phone X"), ("lol", "lol")])
def test_split_hashtag(tag, words):
    assert split_hashtag(tag) == words


def test_dedup_key_ignores_retweets_urls_and_punctuation():
    assert dedup_key("RT @a: So happy!! http://t.co/1") == dedup_key("so happy http://t.co/2") == "so happy"
    assert dedup_key("so happy") != dedup_key("so sad")


# ------------------------------------------------------------------------------------------------ images


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "RGBA", "LA", "P", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (8, 8), (250, 10, 10)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (8, 8)


def test_transparency_goes_onto_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    pal.info["transparency"] = 0
    assert to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_colours_survive(tmp_path):
    _save(Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK"), tmp_path / "c.jpg")
    res = load_image(tmp_path, "c")
    r, g, b = res.image.getpixel((8, 8))
    assert res.ok and res.mode == "CMYK" and r > 150 and g < 80 and b < 80


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(Image.new("RGB", (40, 20), (0, 0, 255)), tmp_path / "e.jpg", exif=exif)
    res = load_image(tmp_path, "e")
    assert res.ok and res.size == (40, 20) and res.image.size == (20, 40)


def test_png_named_jpg_is_read_and_flagged(tmp_path):
    _save(Image.new("RGB", (10, 10), (0, 255, 0)), tmp_path / "p.jpg", format="PNG")
    res = load_image(tmp_path, "p")
    assert res.ok and res.format == "PNG" and res.ext_mismatch and res.image.getpixel((5, 5)) == (0, 255, 0)


def test_png_extension_is_found(tmp_path):
    _save(Image.new("RGB", (10, 10)), tmp_path / "q.png")
    assert load_image(tmp_path, "q").ok and not load_image(tmp_path, "q").ext_mismatch


def test_broken_images_become_placeholders(tmp_path):
    from msa.synthetic import _png_header_only

    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all" * 50)
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    _save(Image.effect_noise((200, 200), 60).convert("RGB"), tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    expected = {"zero": "empty_file", "junk": "undecodable", "bomb": "decompression_bomb", "trunc": "truncated",
                "absent": "missing"}
    for guid, status in expected.items():
        res = load_image(tmp_path, guid)
        assert res.status == status, (guid, res.status, res.detail)
        assert res.image.mode == "RGB" and res.image.getpixel((0, 0)) == PLACEHOLDER_COLOR and res.detail


def test_pixel_limit_is_a_parameter(tmp_path):
    _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    assert load_image(tmp_path, "big", max_pixels=5000).status == "decompression_bomb"
    assert load_image(tmp_path, "big").ok


def test_draft_decoding_keeps_original_size(tmp_path):
    _save(Image.new("RGB", (640, 480), (10, 200, 10)), tmp_path / "d.jpg")
    res = load_image(tmp_path, "d", draft_size=(64, 64))
    assert res.ok and res.size == (640, 480) and res.image.size[0] < 640 and res.image.size[0] >= 64
