"""Fusion registry x loss registry on random tensors, masks, config round trip, and a tiny learning check."""

from __future__ import annotations

import json

import pytest
import torch

from msa.cli import UserError
from msa.fusions import FUSIONS, ConfigError, ModalitySpec, MultimodalClassifier
from msa.losses import LOSSES, build_loss

COUNTS = [5, 2, 9]

# Modality layouts: names deliberately not only text/image. "key" and "query" are the cross-attention roles.
LAYOUTS = {
    "two": dict(specs=[ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10)],
                cross=dict()),  # image has no tokens: its pooled vector is the single query
    "three": dict(specs=[ModalitySpec("audio", 9, tokens=True), ModalitySpec("vision", 7, tokens=True),
                         ModalitySpec("side", 5)],
                  cross=dict(query="vision", key="audio")),
}


def make_inputs(specs, batch: int, seed: int = 0, length: int = 6):
    """Random pooled features, token sequences for specs with tokens=True and masks with padded tails."""
    g = torch.Generator().manual_seed(seed)
    feats = {s.name: torch.randn(batch, s.dim, generator=g) for s in specs}
    tokens, masks = {}, {}
    for s in specs:
        if s.tokens:
            tokens[s.name] = torch.randn(batch, length, s.dim, generator=g)
            lengths = torch.tensor([length - (i % 3) * 2 for i in range(batch)])  # 6, 4, 2, 6, ...
            if batch == 1:
                lengths[0] = length - 2  # the single sample is padded too
            masks[s.name] = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return feats, tokens, masks


def build(layout: str, fusion: str, **kw) -> MultimodalClassifier:
    lay = LAYOUTS[layout]
    fusion_kw = dict(lay["cross"]) if fusion == "cross_attention" else {}
    fusion_kw.update(kw.pop("fusion_kw", {}))
    return MultimodalClassifier(lay["specs"], fusion, num_outputs=3, hidden=kw.pop("hidden", 16),
                                dropout=kw.pop("dropout", 0.1), **fusion_kw, **kw)


def test_registry_names():
    assert list(FUSIONS) == ["concat", "add", "attention", "attention_concat", "attention_add", "encoder",
                             "cross_attention"]
    assert [n for n, cls in FUSIONS.items() if cls.requires_tokens] == ["cross_attention"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("batch", [4, 1])
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_forward_backward_every_fusion_and_loss(fusion, loss_name, batch, layout):
    torch.manual_seed(0)
    model = build(layout, fusion)
    model.train()
    feats, tokens, masks = make_inputs(model.specs, batch)
    logits = model(feats, tokens, masks)
    assert logits.shape == (batch, 3)
    assert torch.isfinite(logits).all()
    targets = torch.arange(batch) % 3
    loss = build_loss(loss_name, class_counts=COUNTS)(logits, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    for spec in model.specs:
        for name, p in model.proj[spec.name].named_parameters():
            assert p.grad.abs().sum() > 0, f"projection {spec.name}.{name} got a zero gradient"


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_out_dim_matches_fused_width(fusion):
    model = build("three", fusion).eval()
    feats, tokens, masks = make_inputs(model.specs, 3)
    assert model.fuse(feats, tokens, masks).shape == (3, model.fusion.out_dim)


@pytest.mark.parametrize("fusion", [f for f, cls in FUSIONS.items() if not cls.requires_tokens])
def test_single_modality_works(fusion):
    kw = {"heads": 2} if fusion in ("attention_concat", "attention_add", "encoder") else {}
    model = MultimodalClassifier([ModalitySpec("text", 8)], fusion, hidden=8, **kw)
    assert model(make_inputs(model.specs, 2)[0]).shape == (2, 3)


# ------------------------------------------------------------------------------------------ cross attention


def _with_changed(tensors: dict, name: str, where: torch.Tensor, value: float) -> dict:
    out = dict(tensors)
    t = tensors[name].clone()
    t[where] = value
    out[name] = t
    return out


@pytest.mark.parametrize("query_tokens", [False, True])
def test_cross_attention_ignores_padded_text(query_tokens):
    torch.manual_seed(1)
    specs = [ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10, tokens=query_tokens)]
    model = MultimodalClassifier(specs, "cross_attention", hidden=16, dropout=0.0).eval()
    feats, tokens, masks = make_inputs(specs, 4)
    pad = ~masks["text"]
    assert pad.any()
    with torch.no_grad():
        ref = model(feats, tokens, masks)
        changed = model(feats, _with_changed(tokens, "text", pad, 1e3), masks)
        real = model(feats, _with_changed(tokens, "text", masks["text"] & (torch.arange(6) == 0), 5.0), masks)
    torch.testing.assert_close(changed, ref, rtol=0, atol=1e-5)
    assert not torch.allclose(real, ref)  # a real token does matter


def test_cross_attention_ignores_padded_image_queries():
    torch.manual_seed(2)
    specs = [ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10, tokens=True)]
    model = MultimodalClassifier(specs, "cross_attention", hidden=16, dropout=0.0).eval()
    feats, tokens, masks = make_inputs(specs, 4)
    with torch.no_grad():
        ref = model(feats, tokens, masks)
        changed = model(feats, _with_changed(tokens, "image", ~masks["image"], -50.0), masks)
    torch.testing.assert_close(changed, ref, rtol=0, atol=1e-5)


def test_cross_attention_all_padded_row_stays_finite():
    specs = [ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10)]
    model = MultimodalClassifier(specs, "cross_attention", hidden=16)
    feats, tokens, masks = make_inputs(specs, 3)
    masks["text"][1] = False
    out = model(feats, tokens, masks)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cross_attention_errors():
    specs = [ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10)]
    model = MultimodalClassifier(specs, "cross_attention", hidden=16)
    feats, _, _ = make_inputs(specs, 2)
    with pytest.raises(ValueError, match="token sequence of 'text'"):
        model(feats)
    with pytest.raises(ValueError, match="tokens=True"):
        MultimodalClassifier([ModalitySpec("text", 12), ModalitySpec("image", 10)], "cross_attention")
    with pytest.raises(ValueError, match="'audio' is not among"):
        MultimodalClassifier(specs, "cross_attention", key="audio")
    with pytest.raises(ValueError, match="needs at least 2"):
        MultimodalClassifier([ModalitySpec("text", 12, tokens=True)], "cross_attention")


def test_unpadded_sequences_without_masks():
    specs = [ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10, tokens=True)]
    model = MultimodalClassifier(specs, "cross_attention", hidden=16)
    feats, tokens, _ = make_inputs(specs, 2)
    assert model(feats, tokens).shape == (2, 3)


# -------------------------------------------------------------------------------------- config and errors


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_config_rebuilds_identical_model(fusion):
    kw = {"attention_concat": dict(heads=2), "attention_add": dict(heads=2),
          "encoder": dict(heads=2, layers=2, cls=False)}.get(fusion, {})
    torch.manual_seed(3)
    model = build("three", fusion, fusion_kw=kw).eval()
    cfg = json.loads(json.dumps(model.config()))
    clone = MultimodalClassifier(**cfg).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.config() == model.config()
    feats, tokens, masks = make_inputs(model.specs, 3)
    with torch.no_grad():
        torch.testing.assert_close(clone(feats, tokens, masks), model(feats, tokens, masks))


def test_bad_configurations():
    specs = LAYOUTS["two"]["specs"]
    with pytest.raises(ValueError, match="unknown fusion"):
        MultimodalClassifier(specs, "bilinear")
    with pytest.raises(UserError, match="does not take"):
        MultimodalClassifier(specs, "concat", heads=4)
    with pytest.raises(ValueError, match="divisible"):
        MultimodalClassifier(specs, "attention_concat", hidden=10, heads=4)
    with pytest.raises(ValueError, match="duplicate"):
        MultimodalClassifier([ModalitySpec("a", 3), ModalitySpec("a", 3)], "concat")
    with pytest.raises(ValueError, match="identifier"):
        ModalitySpec("a.b", 3)
    model = MultimodalClassifier(specs, "concat", hidden=8)
    feats, _, _ = make_inputs(specs, 2)
    with pytest.raises(ConfigError, match="missing features"):
        model({"text": feats["text"]})
    with pytest.raises(ConfigError, match=r"\(B, 10\)"):
        model({**feats, "image": torch.randn(2, 11)})
    with pytest.raises(ConfigError, match="unknown modalities"):
        model(feats, modality_mask={"audio": 0.0})


# ----------------------------------------------------------------------------------------- modality mask


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_modality_mask_zero_removes_a_modality(fusion):
    torch.manual_seed(4)
    model = build("two", fusion).eval()
    feats, tokens, masks = make_inputs(model.specs, 4)
    other = {**feats, "image": torch.randn(4, 10) * 3}
    with torch.no_grad():
        a = model(feats, tokens, masks, modality_mask={"image": 0.0})
        b = model(other, tokens, masks, modality_mask={"image": 0.0})
        c = model(other, tokens, masks)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(b, c)


def test_modality_mask_per_sample_tensor():
    torch.manual_seed(5)
    model = build("two", "attention_concat").eval()
    feats, tokens, masks = make_inputs(model.specs, 4)
    factor = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        mixed = model(feats, tokens, masks, modality_mask={"text": factor})
        kept = model(feats, tokens, masks)
        dropped = model(feats, tokens, masks, modality_mask={"text": 0.0})
    torch.testing.assert_close(mixed[[0, 2]], kept[[0, 2]])
    torch.testing.assert_close(mixed[[1, 3]], dropped[[1, 3]])


def test_regression_head():
    model = MultimodalClassifier(LAYOUTS["two"]["specs"], "encoder", num_outputs=1, hidden=8, heads=2)
    feats, _, _ = make_inputs(model.specs, 5)
    assert model(feats).shape == (5, 1)


# ---------------------------------------------------------------------------------------------- learning


def _separable_problem(n: int = 96, seed: int = 0):
    """Three classes; both modalities carry the class as a mean shift, text tokens repeat it with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    text_means, image_means = torch.randn(3, 8, generator=g) * 2, torch.randn(3, 6, generator=g) * 2
    text = text_means[y] + 0.5 * torch.randn(n, 8, generator=g)
    image = image_means[y] + 0.5 * torch.randn(n, 6, generator=g)
    text_tokens = text.unsqueeze(1) + 0.5 * torch.randn(n, 5, 8, generator=g)
    lengths = 2 + torch.randint(0, 4, (n,), generator=g)
    mask = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)
    text_tokens[~mask] = 7.0  # padding junk must not matter
    specs = [ModalitySpec("text", 8, tokens=True), ModalitySpec("image", 6)]
    return specs, {"text": text, "image": image}, {"text": text_tokens}, {"text": mask}, y


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_each_fusion_learns_a_separable_problem(fusion):
    torch.manual_seed(0)
    specs, feats, tokens, masks, y = _separable_problem()
    model = MultimodalClassifier(specs, fusion, hidden=16, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = build_loss("ce")
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn(model(feats, tokens, masks), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(feats, tokens, masks).argmax(-1) == y).float().mean().item()
    assert acc > 0.9, f"{fusion}: train accuracy {acc:.2f}"


def _tokens_only_problem(n: int, seed: int):
    """Only the real text tokens carry the label: pooled vectors are noise and padding holds other noise."""
    specs, feats, tokens, masks, y = _separable_problem(n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    feats = {name: torch.randn(v.shape, generator=g) for name, v in feats.items()}
    junk = torch.randn(n, 1, 8, generator=g).expand(-1, 5, -1)
    tokens["text"] = torch.where(masks["text"].unsqueeze(-1), tokens["text"], junk)
    return specs, feats, tokens, masks, y


@pytest.mark.parametrize(("fusion", "expect_learns"), [("cross_attention", True), ("concat", False)])
def test_cross_attention_generalises_from_the_text_tokens(fusion, expect_learns):
    """Held-out accuracy: cross_attention reads the token sequence; concat (pooled vectors only) cannot."""
    torch.manual_seed(0)
    specs, feats, tokens, masks, y = _tokens_only_problem(192, seed=0)
    part = {"train": slice(0, 96), "test": slice(96, 192)}

    def sub(d, name):
        return {k: v[part[name]] for k, v in d.items()}

    model = MultimodalClassifier(specs, fusion, hidden=16, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = build_loss("ce")
    for _ in range(200):
        opt.zero_grad()
        loss_fn(model(sub(feats, "train"), sub(tokens, "train"), sub(masks, "train")), y[part["train"]]).backward()
        opt.step()
    with torch.no_grad():
        pred = model.eval()(sub(feats, "test"), sub(tokens, "test"), sub(masks, "test")).argmax(-1)
    acc = (pred == y[part["test"]]).float().mean().item()
    if expect_learns:
        assert acc > 0.9, f"{fusion}: held-out accuracy {acc:.2f}"
    else:
        assert acc < 0.6, f"{fusion}: held-out accuracy {acc:.2f} without access to the informative tokens"


def test_single_query_cross_attention_equals_multihead_attention():
    """The fast path for one (pooled) query is the same function as nn.MultiheadAttention."""
    torch.manual_seed(0)
    specs = [ModalitySpec("text", 12, tokens=True), ModalitySpec("image", 10)]
    model = MultimodalClassifier(specs, "cross_attention", hidden=16, dropout=0.2, heads=4).eval()
    fusion = model.fusion
    q, kv = torch.randn(5, 1, 16), torch.randn(5, 7, 16)
    pad = torch.zeros(5, 7, dtype=torch.bool)
    pad[0, 3:] = True
    pad[2, 1:] = True
    ref, _ = fusion.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)
    fast = fusion._single_query(q, kv, pad)
    assert torch.allclose(ref, fast, atol=1e-5)
    assert torch.allclose(fusion.attn(q, kv, kv, need_weights=False)[0], fusion._single_query(q, kv, None),
                          atol=1e-5)


# ------------------------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.3717])
@pytest.mark.parametrize("shape", [(7, 3), (128, 512), (40, 9, 16)])
def test_fast_dropout_is_torch_dropout_bit_for_bit(shape, p, dtype):
    import torch.nn.functional as F

    from msa import fusions

    assert fusions._same_mask()  # this torch draws the same mask both ways, so the fast path runs
    for x in (torch.randn(*shape).to(dtype), torch.randn(*shape[::-1]).to(dtype).transpose(0, -1)):
        torch.manual_seed(7)
        want, want_after = F.dropout(x, p, True), torch.rand(5)
        torch.manual_seed(7)
        got, got_after = fusions.dropout(x, p, True), torch.rand(5)
        assert torch.equal(got, want) and got.dtype == want.dtype
        assert torch.equal(got_after, want_after)  # the generator is left where torch's dropout leaves it
    x = torch.randn(5, 6)
    assert fusions.dropout(x, 0.4, False) is x and fusions.dropout(x, 0.0, True) is x


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_fast_dropout_trains_every_fusion_as_torch_dropout_does(fusion, monkeypatch):
    """A few optimiser steps of every fusion with the fast dropout and with torch's (forced by pretending the
    masks differ): the same losses and weights, bit for bit."""
    from msa import fusions

    def train(fast: bool) -> tuple[list[float], dict]:
        monkeypatch.setattr(fusions, "_SAME_MASK", None if fast else False)
        torch.manual_seed(3)
        model = build("two", fusion, dropout=0.4, fusion_kw={"layers": 2} if fusion == "encoder" else {})
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())  # every dropout is the fast one
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        feats, tokens, masks = make_inputs(model.specs, 8)
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(feats, tokens, masks), torch.arange(8) % 3)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses, {k: v.clone() for k, v in model.state_dict().items()}

    (fast_losses, fast_state), (torch_losses, torch_state) = train(True), train(False)
    assert fast_losses == torch_losses
    assert fast_state.keys() == torch_state.keys()
    assert all(torch.equal(fast_state[k], torch_state[k]) for k in fast_state)


def test_fast_dropout_falls_back_where_masks_differ(monkeypatch):
    import torch.nn.functional as F

    from msa import fusions

    monkeypatch.setattr(fusions, "_SAME_MASK", False)
    calls = []
    monkeypatch.setattr(F, "dropout", lambda x, p, training: calls.append(p) or x)
    x = torch.randn(4, 4)
    assert fusions.dropout(x, 0.25, True) is x and calls == [0.25]
