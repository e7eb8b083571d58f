"""Fusion heads: per-modality projections, one fusion from the registry, a classification/regression head.

A model is ``modality features -> projection per modality -> fusion -> head``. Inputs arrive as dicts keyed by
modality name, so nothing here assumes exactly ``text`` and ``image`` (``side``, ``audio``, ``vision`` work the
same way):

* ``feats[name]``: the pooled vector, ``(B, D_m)`` (always given);
* ``tokens[name]``: optionally the token sequence, ``(B, L_m, D_m)`` (text token states, image patch grid);
* ``masks[name]``: optionally a bool mask ``(B, L_m)`` for that sequence, ``True`` = real token, ``False`` = pad.

:class:`MultimodalClassifier` projects each modality with ``Linear(D_m, hidden) + LayerNorm + GELU + Dropout``
(the same projection is applied to the pooled vector and to the token sequence of that modality), hands the
projected tensors to a :class:`Fusion` picked by name from :data:`FUSIONS`, and maps the fused vector to
``num_outputs`` with a two-layer MLP (3 logits for MVSA; ``num_outputs=1`` for the regression tasks).

Fusions (names as in the seed reports; "combine" there is ``add`` here):

* ``concat``: concatenation of the projected modality vectors (out_dim = M * hidden);
* ``add``: element-wise sum of the projected modality vectors (hidden);
* ``attention``: a learned score per modality vector, softmax over modalities, weighted sum (hidden);
* ``attention_concat``: self-attention across the M modality vectors (+ residual, LayerNorm), then
  concatenation of the attended vectors (M * hidden);
* ``attention_add``: the same self-attention, then the sum of the attended vectors (hidden);
* ``encoder``: TransformerEncoder over one token per modality (+ learned modality-type embeddings, optional
  CLS token), pooled by the CLS token or the mean (hidden);
* ``cross_attention`` (seed 002): the query modality's tokens (image patches, or its pooled vector as one
  query) attend to the key modality's token sequence (text) under its padding mask; the pooled result is
  joined with the pooled key vector and the other modalities' pooled vectors (M * hidden).

Every fusion except ``cross_attention`` also accepts a single modality (the "retrained unimodal" ablation);
``cross_attention`` needs its query and key modalities. Fusion-specific hyper-parameters (``heads``,
``layers``, ``query``, ``key``, ...) are keyword arguments of the fusion class; ``inspect.signature`` of a class
in :data:`FUSIONS` lists them, and an unknown one is a :class:`ConfigError`.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from msa.cli import UserError

__all__ = [
    "FUSIONS",
    "FUSION_NAMES",
    "AddFusion",
    "AttentionAddFusion",
    "AttentionConcatFusion",
    "AttentionFusion",
    "ConcatFusion",
    "ConfigError",
    "CrossAttentionFusion",
    "Dropout",
    "EncoderFusion",
    "Fusion",
    "ModalitySpec",
    "MultimodalClassifier",
    "SIDE",
    "SideBranch",
    "dropout",
]


class ConfigError(UserError, ValueError):
    """A bad model/loss configuration: a ``ValueError`` in library code, a one-line ``error:`` in a CLI."""


@dataclass
class ModalitySpec:
    """One input modality: its ``name`` (dict key), feature ``dim`` and whether the fusion gets token sequences."""

    name: str
    dim: int
    tokens: bool = False  # True when the fusion gets (B, L, dim) sequences (+ masks) for this modality

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"modality name must be a plain identifier, got {self.name!r}")
        if int(self.dim) != self.dim or self.dim < 1:
            raise ConfigError(f"modality {self.name!r}: dim must be a positive integer, got {self.dim!r}")
        self.dim = int(self.dim)
        self.tokens = bool(self.tokens)

    @classmethod
    def coerce(cls, spec: ModalitySpec | dict) -> ModalitySpec:
        if isinstance(spec, ModalitySpec):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        raise ConfigError(f"a modality spec must be a ModalitySpec or a dict, got {type(spec).__name__}")


def _check_heads(hidden: int, heads: int) -> None:
    if heads < 1 or hidden % heads:
        raise ConfigError(f"hidden size {hidden} is not divisible by heads={heads}")


def _accepted(cls: type) -> list[str]:
    """The keyword-only hyper-parameters of a fusion class (``heads``, ``query``, ...)."""
    return sorted(n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY)


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` (B, L, H) over L, counting only positions where ``mask`` (B, L) is True."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


# ------------------------------------------------------------------------------------------------ dropout
#: whether this torch's CPU dropout draws its mask as :func:`dropout` does (None: not checked yet in this process)
_SAME_MASK: bool | None = None


def _uniform_dropout(x: Tensor, p: float) -> Tensor:
    keep = 1.0 - p
    noise = torch.empty_like(x, dtype=torch.float64).uniform_() < keep
    return x * noise.to(x.dtype).div_(keep)


def _same_mask() -> bool:
    """Whether :func:`_uniform_dropout` gives ``F.dropout``'s output and leaves the generator where it does, on
    this torch (checked once per process on a small tensor, the global generator's state restored)."""
    global _SAME_MASK
    if _SAME_MASK is None:
        import torch.nn.functional as F

        with torch.random.fork_rng(devices=[]):
            x = torch.randn(7, 33).t()  # a transposed view: the mask follows the memory layout
            torch.manual_seed(12345)
            a, after_a = F.dropout(x, 0.3, True), torch.rand(4)
            torch.manual_seed(12345)
            b, after_b = _uniform_dropout(x, 0.3), torch.rand(4)
        _SAME_MASK = torch.equal(a, b) and torch.equal(after_a, after_b)
    return _SAME_MASK


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``torch.nn.functional.dropout(x, p, training)``, bit for bit, about 2.8x faster on the CPU.

    On the CPU, ``F.dropout`` fills a tensor like ``x`` with ``bernoulli_(1 - p)``, which draws one double from
    the global generator per element, keeps it when it is below ``1 - p`` and stores it as 0 or 1, at ~13 ns an
    element here (a third of a token fusion's forward pass in phase 2). Drawing the same doubles with
    ``uniform_`` (the kernel of ``torch.rand``) and comparing them gives the same mask, the same outputs and
    gradients and the generator in the same state afterwards, at ~4.5 ns an element. That equality is checked
    once per process (:func:`_same_mask`; the tests check it too); where it does not hold (another torch), and on
    other devices, this is ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point() or not 0.0 < p < 1.0 or not _same_mask():
        import torch.nn.functional as F

        return F.dropout(x, p, training)
    return _uniform_dropout(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (the same outputs, faster on the CPU); a drop-in replacement with
    the same (empty) state dict."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def fast_dropouts(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` inside ``module`` (e.g. a ``TransformerEncoderLayer``'s) by :class:`Dropout`
    of the same ``p``, in place; returns ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, Dropout(child.p, child.inplace))
        else:
            fast_dropouts(child)
    return module


# ------------------------------------------------------------------------------------------------ fusions


class Fusion(nn.Module):
    """Base class: fuses projected modality tensors (all of width ``hidden``) into one ``(B, out_dim)`` vector.

    ``forward(feats, tokens, masks)`` receives the *projected* pooled vectors ``feats[name]`` ``(B, hidden)``
    and, for modalities whose spec has ``tokens=True``, the projected sequences ``tokens[name]``
    ``(B, L, hidden)`` with bool masks ``masks[name]`` ``(B, L)`` (True = real token). Modalities are used in
    the order of ``specs``.
    """

    requires_tokens: ClassVar[bool] = False
    min_modalities: ClassVar[int] = 1
    #: training time of a head with this fusion relative to ``add`` (phase 2's grid on MVSA, seconds per run): a
    #: pool of runs starts the dearest first (:func:`msa.experiment.run_groups`), so no worker idles at the end
    cost: ClassVar[float] = 1.0
    out_dim: int

    def __init__(self, specs: list[ModalitySpec], hidden: int, dropout: float, **kw):
        super().__init__()
        if kw:  # subclasses consume their own keywords; anything left is unknown
            raise ConfigError(f"fusion {type(self).__name__} does not take {sorted(kw)}; "
                              f"it accepts {_accepted(type(self)) or 'no extra arguments'}")
        self.specs = [ModalitySpec.coerce(s) for s in specs]
        self.names = [s.name for s in self.specs]
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"duplicate modality names: {self.names}")
        if len(self.specs) < self.min_modalities:
            raise ConfigError(f"fusion {type(self).__name__} needs at least {self.min_modalities} modalities, "
                              f"got {self.names}")
        if hidden < 1:
            raise ConfigError(f"hidden must be positive, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.out_dim = self.hidden

    def stack(self, feats: dict[str, Tensor]) -> Tensor:
        """The projected pooled vectors as one ``(B, M, hidden)`` tensor, in spec order."""
        return torch.stack([feats[n] for n in self.names], dim=1)

    def forward(self, feats: dict[str, Tensor], tokens: dict[str, Tensor] | None = None,
                masks: dict[str, Tensor] | None = None) -> Tensor:
        raise NotImplementedError


class ConcatFusion(Fusion):
    """``concat``: the projected modality vectors side by side, ``[h_1; ...; h_M]`` (out_dim = M * hidden)."""

    def __init__(self, specs, hidden, dropout, **kw):
        super().__init__(specs, hidden, dropout, **kw)
        self.out_dim = len(self.names) * self.hidden

    def forward(self, feats, tokens=None, masks=None):
        return torch.cat([feats[n] for n in self.names], dim=-1)


class AddFusion(Fusion):
    """``add`` (the seeds' "combine"): element-wise sum ``h_1 + ... + h_M`` (out_dim = hidden)."""

    def forward(self, feats, tokens=None, masks=None):
        return self.stack(feats).sum(dim=1)


class AttentionFusion(Fusion):
    """``attention``: modality-level attention pooling (out_dim = hidden).

    Each projected modality vector gets a learned score ``s_m = w^T tanh(W h_m + b)``; the weights
    ``a = softmax_m(s)`` mix the vectors: ``sum_m a_m h_m``. The modalities do not interact beyond competing
    for weight, which is why the seed report found it the weakest fusion on MVSA.
    """

    cost: ClassVar[float] = 1.2

    def __init__(self, specs, hidden, dropout, **kw):
        super().__init__(specs, hidden, dropout, **kw)
        self.score = nn.Sequential(nn.Linear(self.hidden, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))

    def weights(self, feats: dict[str, Tensor]) -> Tensor:
        """Attention weights over modalities, ``(B, M)`` in spec order."""
        return torch.softmax(self.score(self.stack(feats)).squeeze(-1), dim=1)

    def forward(self, feats, tokens=None, masks=None):
        x = self.stack(feats)
        a = torch.softmax(self.score(x).squeeze(-1), dim=1)
        return (a.unsqueeze(-1) * x).sum(dim=1)


class _ModalitySelfAttention(Fusion):
    """Self-attention across the stacked modality vectors: ``Z = LayerNorm(X + Dropout(MHA(X, X, X)))``.

    ``X`` is ``(B, M, hidden)``, one row per modality; every modality attends to every modality (itself
    included), so each attended vector carries information from the others while the residual keeps its own.
    """

    cost: ClassVar[float] = 1.9

    def __init__(self, specs, hidden, dropout, *, heads: int = 4, **kw):
        super().__init__(specs, hidden, dropout, **kw)
        _check_heads(self.hidden, heads)
        self.heads = heads
        self.attn = nn.MultiheadAttention(self.hidden, heads, dropout=self.dropout, batch_first=True)
        self.drop = Dropout(self.dropout)
        self.norm = nn.LayerNorm(self.hidden)

    def attend(self, feats: dict[str, Tensor]) -> Tensor:
        x = self.stack(feats)
        a, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + self.drop(a))


class AttentionConcatFusion(_ModalitySelfAttention):
    """``attention_concat`` (seed 001's "Attention+Concat"): self-attention across modalities, then concat.

    ``Z = LayerNorm(X + MHA(X, X, X))`` over ``X = [h_1, ..., h_M]`` ``(B, M, hidden)``; output
    ``[z_1; ...; z_M]`` (out_dim = M * hidden). Keyword: ``heads`` (default 4, must divide hidden).
    """

    def __init__(self, specs, hidden, dropout, *, heads: int = 4, **kw):
        super().__init__(specs, hidden, dropout, heads=heads, **kw)
        self.out_dim = len(self.names) * self.hidden

    def forward(self, feats, tokens=None, masks=None):
        return self.attend(feats).flatten(1)


class AttentionAddFusion(_ModalitySelfAttention):
    """``attention_add`` (seed 001's "Attention+Combine"): self-attention across modalities, then sum.

    ``Z = LayerNorm(X + MHA(X, X, X))`` as in ``attention_concat``; output ``z_1 + ... + z_M``
    (out_dim = hidden). Keyword: ``heads`` (default 4, must divide hidden).
    """

    def forward(self, feats, tokens=None, masks=None):
        return self.attend(feats).sum(dim=1)


class EncoderFusion(Fusion):
    """``encoder``: a small TransformerEncoder over the modality tokens (out_dim = hidden).

    The sequence is ``[CLS] + [h_m + e_m]_m`` where ``e_m`` is a learned modality-type embedding (so the
    encoder knows which row is which modality) and ``[CLS]`` a learned token; the output is the encoded CLS
    token, or the mean of the encoded modality tokens with ``cls=False``.
    Keywords: ``heads`` (4), ``layers`` (1), ``ff_mult`` (feed-forward width = ff_mult * hidden, 2),
    ``cls`` (True).
    """

    cost: ClassVar[float] = 3.4

    def __init__(self, specs, hidden, dropout, *, heads: int = 4, layers: int = 1, ff_mult: int = 2,
                 cls: bool = True, **kw):
        super().__init__(specs, hidden, dropout, **kw)
        _check_heads(self.hidden, heads)
        if layers < 1 or ff_mult < 1:
            raise ConfigError(f"encoder fusion needs layers >= 1 and ff_mult >= 1, got {layers}, {ff_mult}")
        self.use_cls = bool(cls)
        self.type_emb = nn.Parameter(torch.randn(len(self.names), self.hidden) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, self.hidden) * 0.02) if self.use_cls else None
        layer = nn.TransformerEncoderLayer(self.hidden, heads, dim_feedforward=ff_mult * self.hidden,
                                           dropout=self.dropout, activation="gelu", batch_first=True)
        self.encoder = fast_dropouts(nn.TransformerEncoder(layer, layers, enable_nested_tensor=False))

    def forward(self, feats, tokens=None, masks=None):
        x = self.stack(feats) + self.type_emb.unsqueeze(0)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        z = self.encoder(x)
        return z[:, 0] if self.cls_token is not None else z.mean(dim=1)


class CrossAttentionFusion(Fusion):
    """``cross_attention`` (seed 002's visual-guided attention): the query modality attends to the key modality.

    With ``query="image"``, ``key="text"`` (the defaults): ``Q`` = the image's projected patch tokens
    ``(B, Lq, hidden)``, or its pooled vector as a single query ``(B, 1, hidden)`` when no image tokens are
    given; ``K = V`` = the projected text token sequence ``(B, Lk, hidden)``, with ``key_padding_mask`` from
    the text mask so padded text positions get no attention.
    ``A = LayerNorm(Q + Dropout(MHA(Q, K, V)))``, pooled by the (masked) mean over query positions, and the
    output is ``[pool(A); t; other pooled modalities in spec order]`` where ``t`` is the pooled text vector
    (out_dim = M * hidden: one slot for the attended query, one for the key, one per other modality).

    The key modality's token sequence is required (``requires_tokens``): its spec must have ``tokens=True``
    and ``forward`` raises :class:`ConfigError` when ``tokens[key]`` is missing. A sample whose key mask is
    all False attends to nothing (its attention output is zero). Keywords: ``query`` ("image"),
    ``key`` ("text"), ``heads`` (4, must divide hidden).

    Note: seed 002's prose makes the image the query and the text the key/value; its code does the
    opposite. This follows the prose (and the first architecture notes); ``query="text", key="image"`` gives
    the code's variant when image tokens are available.
    """

    requires_tokens: ClassVar[bool] = True
    min_modalities: ClassVar[int] = 2
    cost: ClassVar[float] = 4.5

    def __init__(self, specs, hidden, dropout, *, query: str = "image", key: str = "text", heads: int = 4,
                 **kw):
        super().__init__(specs, hidden, dropout, **kw)
        if query == key:
            raise ConfigError(f"cross_attention needs two different modalities, got query=key={query!r}")
        for role, name in (("query", query), ("key", key)):
            if name not in self.names:
                raise ConfigError(f"cross_attention {role} modality {name!r} is not among the modalities "
                                  f"{self.names}")
        key_spec = self.specs[self.names.index(key)]
        if not key_spec.tokens:
            raise ConfigError(f"cross_attention attends over the token sequence of {key!r}: give it "
                              f"ModalitySpec(name={key!r}, ..., tokens=True) and pass its tokens and mask")
        _check_heads(self.hidden, heads)
        self.query, self.key, self.heads = query, key, heads
        self.others = [n for n in self.names if n not in (query, key)]
        self.attn = nn.MultiheadAttention(self.hidden, heads, dropout=self.dropout, batch_first=True)
        self.drop = Dropout(self.dropout)
        self.norm = nn.LayerNorm(self.hidden)
        self.out_dim = (2 + len(self.others)) * self.hidden

    def forward(self, feats, tokens=None, masks=None):
        tokens, masks = tokens or {}, masks or {}
        if self.key not in tokens:
            raise ConfigError(f"cross_attention needs the token sequence of {self.key!r} "
                              f"(tokens[{self.key!r}], shape (B, L, dim)); got tokens for {sorted(tokens)}")
        kv = tokens[self.key]
        key_mask = masks.get(self.key)
        if self.query in tokens:
            q, q_mask = tokens[self.query], masks.get(self.query)
        else:
            q, q_mask = feats[self.query].unsqueeze(1), None
        pad = None
        empty = None
        if key_mask is not None:
            key_mask = key_mask.to(torch.bool)
            empty = ~key_mask.any(dim=1)  # rows with no real key token: attend to everything, then zero out
            pad = ~key_mask & ~empty.unsqueeze(1)
        if q.shape[1] == 1:
            a = self._single_query(q, kv, pad)
        else:
            a, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)
        if empty is not None:
            a = a.masked_fill(empty.view(-1, 1, 1), 0.0)
        attended = _masked_mean(self.norm(q + self.drop(a)), q_mask)
        return torch.cat([attended, feats[self.key]] + [feats[n] for n in self.others], dim=-1)


    def _single_query(self, q: Tensor, kv: Tensor, pad: Tensor | None) -> Tensor:
        """``self.attn(q, kv, kv)`` for one query per sample, without projecting every key and value.

        Per head h: ``q_h . (W_k,h t_j + b_k,h) = (W_k,h^T q_h) . t_j + const`` and
        ``sum_j a_j (W_v,h t_j + b_v,h) = W_v,h (sum_j a_j t_j) + b_v,h sum_j a_j``, so the query is taken into
        token space and the tokens are averaged before the value projection: the same function with the same
        parameters (equal to MultiheadAttention's output to float precision; a test checks it) at a fraction
        of the cost, since per token it costs 2 * hidden * heads instead of 2 * hidden^2 multiply-adds.
        """
        import torch.nn.functional as F

        attn, heads = self.attn, self.heads
        h = self.hidden
        d = h // heads
        w_q, w_k, w_v = attn.in_proj_weight.split(h)
        b_q, _, b_v = attn.in_proj_bias.split(h)
        qh = F.linear(q[:, 0], w_q, b_q).view(-1, heads, d) * d ** -0.5  # (B, heads, d)
        u = torch.einsum("bhd,hdc->bhc", qh, w_k.view(heads, d, h))  # query in token space (B, heads, H)
        scores = torch.einsum("bhc,blc->bhl", u, kv)
        if pad is not None:
            scores = scores.masked_fill(pad.unsqueeze(1), float("-inf"))
        weights = dropout(scores.softmax(-1), attn.dropout, self.training)
        mixed = torch.einsum("bhl,blc->bhc", weights, kv)  # attention-weighted tokens (B, heads, H)
        ctx = torch.einsum("bhc,hdc->bhd", mixed, w_v.view(heads, d, h)) + b_v.view(heads, d) * weights.sum(
            -1, keepdim=True)
        return attn.out_proj(ctx.reshape(-1, h)).unsqueeze(1)


FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "add": AddFusion,
    "attention": AttentionFusion,
    "attention_concat": AttentionConcatFusion,
    "attention_add": AttentionAddFusion,
    "encoder": EncoderFusion,
    "cross_attention": CrossAttentionFusion,
}
FUSION_NAMES = tuple(FUSIONS)


# ------------------------------------------------------------------------------------- numeric side branch
#: The feature-dict key of numeric side features (:mod:`msa.side`); never a fused modality.
SIDE = "side"


class SideBranch(nn.Module):
    """A few numeric variables per sample -> ``(B, hidden)`` (seed 003's numeric branch).

    Input: raw values ``(B, C)`` in ``columns`` order, ``NaN`` = missing. A missing value is replaced by ``fill``
    (the training-split mean) and, for the columns in ``indicators`` (those that had a missing value in the
    training split, as scikit-learn's ``SimpleImputer(add_indicator=True)``), flagged by a 0/1 indicator column;
    values are standardised with the training-split ``mean`` / ``std`` and clipped to +-``clip``; an MLP
    (``Linear + LayerNorm + GELU + Dropout``) projects them to the fusion width. The statistics are constructor
    arguments, so they travel in the checkpoint's ``config.json`` (:meth:`config`); :meth:`fit` computes them.
    """

    def __init__(self, columns: list[str], fill: list[float], mean: list[float], std: list[float],
                 indicators: list[int] | None = None, hidden: int = 256, dropout: float = 0.1, clip: float = 10.0):
        super().__init__()
        self.columns = [str(c) for c in columns]
        c = len(self.columns)
        if c < 1:
            raise ConfigError("a side branch needs at least one numeric column")
        if not (len(fill) == len(mean) == len(std) == c):
            raise ConfigError(f"side statistics must have one value per column ({c}), got fill {len(fill)}, "
                              f"mean {len(mean)}, std {len(std)}")
        self.indicators = sorted({int(i) for i in (indicators or [])})
        if any(not 0 <= i < c for i in self.indicators):
            raise ConfigError(f"side indicator columns {self.indicators} out of range for {c} columns")
        self.clip = float(clip)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6), persistent=False)
        self.register_buffer("ind", torch.tensor(self.indicators, dtype=torch.long), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(c + len(self.indicators), hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 Dropout(dropout))

    @staticmethod
    def fit(x, columns: list[str]) -> dict:
        """Statistics of training rows ``x`` ``(N, C)`` (``NaN`` = missing): the keyword arguments of the branch
        apart from ``hidden`` / ``dropout``. A column with no value at all gets fill 0, mean 0, std 1; a
        constant column std 1."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != len(columns):
            raise ConfigError(f"side features must be (N, {len(columns)}), got {tuple(x.shape)}")
        miss = torch.isnan(x)
        n_obs = (~miss).sum(0)
        fill = torch.where(n_obs > 0, torch.nan_to_num(x, nan=0.0).sum(0) / n_obs.clamp_min(1), torch.zeros(()))
        filled = torch.where(miss, fill.expand_as(x), x)
        mean = filled.mean(0) if len(x) else torch.zeros(x.shape[1], dtype=x.dtype)
        std = filled.std(0, unbiased=False) if len(x) > 1 else torch.ones(x.shape[1], dtype=x.dtype)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return {"columns": list(columns), "fill": fill.tolist(), "mean": mean.tolist(), "std": std.tolist(),
                "indicators": [int(i) for i in torch.nonzero(miss.any(0)).flatten().tolist()]}

    def config(self) -> dict:
        return {"columns": self.columns, "fill": self.fill.tolist(), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "indicators": self.indicators, "clip": self.clip}

    def inputs(self, x: Tensor) -> Tensor:
        """The MLP's input: standardised, imputed values and the missing-value indicators ``(B, C + I)``."""
        if x.dim() != 2 or x.shape[-1] != len(self.columns):
            raise ConfigError(f"side features must be (B, {len(self.columns)}) for columns {self.columns}, "
                              f"got {tuple(x.shape)}")
        x = x.to(self.fill.dtype)
        miss = torch.isnan(x)
        z = ((torch.where(miss, self.fill.expand_as(x), x) - self.mean) / self.std).clamp(-self.clip, self.clip)
        return torch.cat([z, miss[:, self.ind].to(z.dtype)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.inputs(x))


# --------------------------------------------------------------------------------------------- the model


class MultimodalClassifier(nn.Module):
    """Per-modality projections + one fusion from :data:`FUSIONS` + an MLP head.

    ``specs``: list of :class:`ModalitySpec` (or their dicts, as in :meth:`config`); ``fusion``: a registry
    name; ``num_outputs``: 3 logits for the MVSA classes, 1 for regression; ``fusion_kw``: that fusion's
    keywords (``heads``, ``query``, ...). ``MultimodalClassifier(**model.config())`` rebuilds the same
    architecture, so a checkpoint is ``config()`` as JSON + the state dict.

    ``side`` (optional): the statistics of a :class:`SideBranch` (:meth:`SideBranch.fit`); its output is joined
    after the fusion (``[fused; side]`` goes to the head), so it works with every fusion, and ``feats["side"]``
    (raw values, ``NaN`` = missing) is then required.
    """

    def __init__(self, specs: list[ModalitySpec | dict], fusion: str, num_outputs: int = 3, hidden: int = 256,
                 dropout: float = 0.1, side: dict | None = None, **fusion_kw: Any):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        if num_outputs < 1:
            raise ConfigError(f"num_outputs must be >= 1, got {num_outputs}")
        self.specs = [ModalitySpec.coerce(s) for s in specs]
        if not self.specs:
            raise ConfigError("a model needs at least one modality")
        self.names = [s.name for s in self.specs]
        self.fusion_name = fusion
        self.num_outputs = int(num_outputs)
        self.hidden = int(hidden)
        self.dropout_p = float(dropout)
        self.fusion_kw = dict(fusion_kw)
        self.fusion = FUSIONS[fusion](self.specs, self.hidden, self.dropout_p, **self.fusion_kw)
        self.proj = nn.ModuleDict({
            s.name: nn.Sequential(nn.Linear(s.dim, self.hidden), nn.LayerNorm(self.hidden), nn.GELU(),
                                  Dropout(self.dropout_p))
            for s in self.specs
        })
        if SIDE in self.names and side is not None:
            raise ConfigError(f"a fused modality is named {SIDE!r}, the key of the numeric side branch: rename one")
        self.side = None if side is None else SideBranch(**side, hidden=self.hidden, dropout=self.dropout_p)
        out_dim = self.fusion.out_dim + (self.hidden if self.side is not None else 0)
        self.head = nn.Sequential(nn.Linear(out_dim, self.hidden), nn.GELU(),
                                  Dropout(self.dropout_p), nn.Linear(self.hidden, self.num_outputs))

    @property
    def requires_tokens(self) -> bool:
        return self.fusion.requires_tokens

    @property
    def token_modalities(self) -> list[str]:
        """Modalities whose token sequences the model uses (spec ``tokens=True``)."""
        return [s.name for s in self.specs if s.tokens]

    def config(self) -> dict:
        """JSON-serialisable constructor arguments: ``MultimodalClassifier(**cfg)`` rebuilds this model."""
        cfg = {"specs": [asdict(s) for s in self.specs], "fusion": self.fusion_name,
               "num_outputs": self.num_outputs, "hidden": self.hidden, "dropout": self.dropout_p, **self.fusion_kw}
        if self.side is not None:
            cfg["side"] = self.side.config()
        return cfg

    @property
    def input_names(self) -> list[str]:
        """Every key of ``feats`` the model reads: the fused modalities, then ``side`` when it has the branch."""
        return self.names + ([SIDE] if self.side is not None else [])

    @staticmethod
    def _factor(value: float | Tensor, like: Tensor) -> Tensor | float:
        if not torch.is_tensor(value):
            return float(value)
        value = value.to(device=like.device, dtype=like.dtype)
        if value.dim() == 0:
            return value
        return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))  # per-sample factor (B,) / (B, 1)

    def project(self, feats: dict[str, Tensor], tokens: dict[str, Tensor] | None = None,
                masks: dict[str, Tensor] | None = None,
                modality_mask: dict[str, float | Tensor] | None = None):
        """Projected ``(feats, tokens, masks)`` as the fusion sees them (``modality_mask`` applied)."""
        missing = [n for n in self.names if n not in feats]
        if missing:
            raise ConfigError(f"missing features for modalities {missing}; got {sorted(feats)}")
        modality_mask = modality_mask or {}
        unknown = sorted(set(modality_mask) - set(self.input_names))
        if unknown:
            raise ConfigError(f"modality_mask names unknown modalities {unknown}; the model has {self.input_names}")
        tokens, masks = tokens or {}, masks or {}
        p_feats, p_tokens, p_masks = {}, {}, {}
        for spec in self.specs:
            n = spec.name
            x = feats[n]
            if x.dim() != 2 or x.shape[-1] != spec.dim:
                raise ConfigError(f"features of {n!r} must be (B, {spec.dim}), got {tuple(x.shape)}")
            p_feats[n] = self.proj[n](x)
            if spec.tokens and n in tokens:
                t = tokens[n]
                if t.dim() != 3 or t.shape[-1] != spec.dim or t.shape[0] != x.shape[0]:
                    raise ConfigError(f"tokens of {n!r} must be (B={x.shape[0]}, L, {spec.dim}), "
                                      f"got {tuple(t.shape)}")
                if n in masks and masks[n] is not None:
                    m = masks[n]
                    if tuple(m.shape) != tuple(t.shape[:2]):
                        raise ConfigError(f"mask of {n!r} must be {tuple(t.shape[:2])}, got {tuple(m.shape)}")
                    p_masks[n] = m = m.to(torch.bool)
                    # project only the real tokens: batches are padded to their longest text (on MVSA ~2.7x
                    # the mean length), and the projection is most of the cost of a token fusion. The rows are
                    # gathered by index, not with t[m] / masked_scatter (the same values, forward and backward;
                    # ~1.3x faster for a batch of 64 x 30 MiniLM tokens on the CPU)
                    rows = m.reshape(-1).nonzero().squeeze(1)
                    real = self.proj[n](t.reshape(-1, t.shape[-1]).index_select(0, rows))
                    p_tokens[n] = real.new_zeros(t.shape[0] * t.shape[1], real.shape[-1]).index_copy(
                        0, rows, real).view(*t.shape[:2], real.shape[-1])
                else:
                    p_tokens[n] = self.proj[n](t)
            if n in modality_mask:
                p_feats[n] = p_feats[n] * self._factor(modality_mask[n], p_feats[n])
                if n in p_tokens:
                    p_tokens[n] = p_tokens[n] * self._factor(modality_mask[n], p_tokens[n])
        return p_feats, p_tokens, p_masks

    def fuse(self, feats, tokens=None, masks=None, modality_mask=None) -> Tensor:
        """The representation before the head (for probes and plots): the fusion's ``(B, fusion.out_dim)``, joined
        with the side branch's ``(B, hidden)`` when the model has one."""
        fused = self.fusion(*self.project(feats, tokens, masks, modality_mask))
        if self.side is None:
            return fused
        if SIDE not in feats:
            raise ConfigError(f"the model has a numeric side branch ({self.side.columns}) but feats has no "
                              f"{SIDE!r} entry; got {sorted(feats)}")
        s = self.side(feats[SIDE])
        if modality_mask and SIDE in modality_mask:
            s = s * self._factor(modality_mask[SIDE], s)
        return torch.cat([fused, s], dim=1)

    def forward(self, feats: dict[str, Tensor], tokens: dict[str, Tensor] | None = None,
                masks: dict[str, Tensor] | None = None,
                modality_mask: dict[str, float | Tensor] | None = None) -> Tensor:
        """Logits ``(B, num_outputs)``.

        ``modality_mask`` maps a modality name to a factor (float, 0-d tensor or per-sample ``(B,)`` tensor)
        that multiplies its projected features and tokens: ``{"image": 0.0}`` drops the image at inference
        (the masking ablation of phase 5).
        """
        return self.head(self.fuse(feats, tokens, masks, modality_mask))
