"""Sequence models for the MMSA feature files (seed 004): per-modality sequence encoders, a fusion from
:data:`msa.fusions.FUSIONS`, a regression head; CMCBEP; and a small regression training loop.

Inputs are dicts keyed by modality name (``text``, ``audio``, ``vision``, or any subset): ``x[m]`` ``(B, L_m, D_m)``
raw features and ``lengths[m]`` ``(B,)``. Every model first standardises each feature dimension with training-split
statistics (:func:`feature_stats`, kept as buffers in the state dict, clipped to +-``clip``) and zeroes the frames
past the length; a sample of length 0 is seen as one all-zero (= mean) frame. With ``pool={m: k}`` the frames of
modality ``m`` are then averaged in windows of ``k`` (over real frames; length ``ceil(length / k)``), which makes
the unaligned files' 375-500 audio / vision frames affordable for the attention encoders on a CPU.

Encoders (:data:`ENCODERS`, ``(B, L, D) -> (B, hidden)`` and optionally the ``(B, L, hidden)`` sequence):

* ``mean``: masked mean over real frames, then a linear map (the sequence: the linear map per frame);
* ``lstm``: a per-frame linear map + GELU, an LSTM over the packed real frames, its last hidden state (keywords
  ``layers``, ``bidirectional``);
* ``transformer``: linear map + sinusoidal positions + a small TransformerEncoder with a key padding mask, masked
  mean of its outputs (keywords ``heads``, ``layers``, ``ff_mult``).

Models (:data:`MODELS`; a ``--model`` spec is ``NAME`` or ``NAME+FUSION``):

* ``mean`` / ``lstm`` / ``transformer`` (:class:`SeqRegressor`): that encoder per modality ->
  :class:`msa.fusions.MultimodalClassifier` (per-modality projection, the fusion, an MLP head with
  ``num_outputs=1``);
* ``cmcbep`` (:class:`CMCBEP`): seed 004's three modules on top of per-modality encoders (default transformer):
  lead-modality supplementation, cross-modal contrastive learning, balanced prediction (see the class).

:func:`fit_regression` trains with AdamW (weight decay on weight matrices only), warm-up + cosine schedule
(:func:`msa.trainer.make_scheduler`), gradient clipping, L1 (default) or MSE loss, and early stopping / model
selection on the validation loss of the final prediction (the validation MAE with L1); the best epoch's weights are
restored. :func:`predict` returns predictions in row order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msa.fusions import FUSIONS, ConfigError, Dropout, ModalitySpec, MultimodalClassifier, fast_dropouts
from msa.loop import run_epochs, snapshot

log = logging.getLogger(__name__)

__all__ = [
    "CMCBEP",
    "ENCODERS",
    "LOSSES",
    "MODELS",
    "POOLED_FUSIONS",
    "RegressionConfig",
    "SeqRegressor",
    "SeqTensors",
    "build_model",
    "feature_stats",
    "fit_regression",
    "frame_pool",
    "info_nce",
    "load_seq_model",
    "parse_model_spec",
    "predict",
]

#: fusions that work on pooled vectors (cross_attention needs token sequences of its own kind: not offered)
POOLED_FUSIONS = tuple(n for n, cls in FUSIONS.items() if not cls.requires_tokens)


def masks_from_lengths(lengths: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """``(real, effective)`` bool masks ``(B, L)``: ``real`` = frame < length; ``effective`` also marks frame 0 of
    a length-0 sample, so every sample has one position to pool / attend to."""
    pos = torch.arange(seq_len, device=lengths.device)
    real = pos.unsqueeze(0) < lengths.unsqueeze(1)
    eff = real.clone()
    eff[:, 0] |= lengths == 0
    return real, eff


def pool_frames(z: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Average each window of ``k`` consecutive frames of ``z`` ``(B, L, D)`` over its real frames (padded frames of
    ``z`` are zero): ``(B, ceil(L / k), D)`` and the effective mask of the new lengths ``ceil(length / k)``."""
    b, length, d = z.shape
    pad = (-length) % k
    if pad:
        z = F.pad(z, (0, 0, 0, pad))
    windows = z.shape[1] // k
    real, _ = masks_from_lengths(lengths, windows * k)
    counts = real.view(b, windows, k).sum(-1, keepdim=True).clamp_min(1).to(z.dtype)
    pooled = z.view(b, windows, k, d).sum(2) / counts
    _, eff = masks_from_lengths(torch.div(lengths + k - 1, k, rounding_mode="floor"), windows)
    return pooled, eff


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


# --------------------------------------------------------------------------------------------------- encoders
class SeqEncoder(nn.Module):
    """``forward(x (B, L, D), mask (B, L), need_seq) -> (pooled (B, out_dim), seq (B, L, out_dim) or None)``."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.out_dim, self.dropout = int(in_dim), int(out_dim), float(dropout)

    def forward(self, x: Tensor, mask: Tensor, need_seq: bool = False) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class MeanEncoder(SeqEncoder):
    """``mean``: ``W * mean_{real t} x_t + b`` (the linear map commutes with the mean, so it is applied once)."""

    def __init__(self, in_dim, out_dim, dropout=0.1):
        super().__init__(in_dim, out_dim, dropout)
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x, mask, need_seq=False):
        return self.lin(masked_mean(x, mask)), (self.lin(x) if need_seq else None)


class LSTMEncoder(SeqEncoder):
    """``lstm``: ``GELU(Linear(D, out))`` per frame (so the recurrence runs at the model width, not at BERT's 768),
    dropout, an LSTM over the packed real frames; pooled = its last hidden state (both directions concatenated when
    bidirectional, out_dim then even). Keywords ``layers`` (1), ``bidirectional`` (False)."""

    def __init__(self, in_dim, out_dim, dropout=0.1, *, layers: int = 1, bidirectional: bool = False):
        super().__init__(in_dim, out_dim, dropout)
        if bidirectional and out_dim % 2:
            raise ConfigError(f"a bidirectional LSTM needs an even hidden size, got {out_dim}")
        self.bidirectional = bool(bidirectional)
        self.inp = nn.Linear(in_dim, out_dim)
        self.drop = Dropout(dropout)
        self.lstm = nn.LSTM(out_dim, out_dim // (2 if bidirectional else 1), num_layers=int(layers), batch_first=True,
                            bidirectional=self.bidirectional, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x, mask, need_seq=False):
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        h = self.drop(F.gelu(self.inp(x)))
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        pooled = torch.cat([h[-2], h[-1]], dim=-1) if self.bidirectional else h[-1]
        seq = None
        if need_seq:
            seq = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return pooled, seq


def sinusoidal_positions(length: int, dim: int, device=None) -> Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


class TransformerSeqEncoder(SeqEncoder):
    """``transformer``: ``Linear(D, out) + sinusoidal positions -> TransformerEncoder`` (GELU, key padding mask),
    pooled by the masked mean. Keywords ``heads`` (4, must divide out_dim), ``layers`` (1), ``ff_mult`` (2)."""

    def __init__(self, in_dim, out_dim, dropout=0.1, *, heads: int = 4, layers: int = 1, ff_mult: int = 2):
        super().__init__(in_dim, out_dim, dropout)
        if heads < 1 or out_dim % heads:
            raise ConfigError(f"hidden size {out_dim} is not divisible by heads={heads}")
        self.inp = nn.Linear(in_dim, out_dim)
        self.drop = Dropout(dropout)
        layer = nn.TransformerEncoderLayer(out_dim, heads, dim_feedforward=ff_mult * out_dim, dropout=dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = fast_dropouts(nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False))

    def forward(self, x, mask, need_seq=False):
        h = self.drop(self.inp(x) + sinusoidal_positions(x.shape[1], self.out_dim, x.device))
        z = self.encoder(h, src_key_padding_mask=~mask)
        return masked_mean(z, mask), (z if need_seq else None)


ENCODERS: dict[str, type[SeqEncoder]] = {"mean": MeanEncoder, "lstm": LSTMEncoder,
                                         "transformer": TransformerSeqEncoder}


# ------------------------------------------------------------------------------------------------ base model
class SeqModel(nn.Module):
    """Shared parts: per-modality standardisation buffers, encoders, ``config()`` for the checkpoint."""

    kind: ClassVar[str] = ""

    def __init__(self, dims: dict[str, int], encoder: str = "mean", hidden: int = 64, dropout: float = 0.1,
                 clip: float = 10.0, encoder_kw: dict | None = None, pool: dict[str, int] | None = None):
        super().__init__()
        if not dims:
            raise ConfigError("a model needs at least one modality")
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
        self.dims = {str(m): int(d) for m, d in dims.items()}
        self.names = list(self.dims)
        self.encoder_name, self.hidden, self.dropout_p, self.clip = encoder, int(hidden), float(dropout), float(clip)
        self.encoder_kw = dict(encoder_kw or {})
        self.pool = {str(m): int(k) for m, k in (pool or {}).items() if int(k) > 1}
        unknown = sorted(set(self.pool) - set(self.dims))
        if unknown:
            raise ConfigError(f"pool names unknown modalities {unknown}; the model has {self.names}")
        for m, d in self.dims.items():
            self.register_buffer(f"mean_{m}", torch.zeros(d))
            self.register_buffer(f"std_{m}", torch.ones(d))
        try:
            self.encoders = nn.ModuleDict({m: ENCODERS[encoder](d, self.hidden, self.dropout_p, **self.encoder_kw)
                                           for m, d in self.dims.items()})
        except TypeError as exc:
            raise ConfigError(f"encoder {encoder!r}: {exc}") from None

    def set_normalization(self, stats: dict[str, dict]) -> None:
        """Training-split ``{m: {"mean": (D,), "std": (D,)}}`` from :func:`feature_stats`."""
        for m in self.names:
            getattr(self, f"mean_{m}").copy_(torch.as_tensor(stats[m]["mean"], dtype=torch.float32))
            getattr(self, f"std_{m}").copy_(torch.as_tensor(stats[m]["std"], dtype=torch.float32).clamp_min(1e-6))

    def encode(self, x: dict[str, Tensor], lengths: dict[str, Tensor], need_seq: bool = False):
        """Standardised, encoded modalities: ``{m: pooled}``, ``{m: seq or None}``, ``{m: effective mask}``."""
        missing = [m for m in self.names if m not in x or m not in lengths]
        if missing:
            raise ConfigError(f"missing inputs for modalities {missing}; got {sorted(x)}")
        pooled, seqs, masks = {}, {}, {}
        for m in self.names:
            xm = x[m].float()
            real, eff = masks_from_lengths(lengths[m].to(xm.device), xm.shape[1])
            z = ((xm - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")).clamp(-self.clip, self.clip)
            z = z * real.unsqueeze(-1).to(z.dtype)
            if m in self.pool:
                z, eff = pool_frames(z, lengths[m].to(xm.device), self.pool[m])
            pooled[m], seqs[m] = self.encoders[m](z, eff, need_seq)
            masks[m] = eff
        return pooled, seqs, masks

    def base_config(self) -> dict:
        return {"kind": self.kind, "dims": self.dims, "encoder": self.encoder_name, "hidden": self.hidden,
                "dropout": self.dropout_p, "clip": self.clip, "encoder_kw": self.encoder_kw, "pool": self.pool}

    def losses(self, out: dict, batch: dict, loss_fn: Callable, unimodal_labels: bool = False):
        """``(total loss, {part: float})`` of a batch."""
        main = loss_fn(out["pred"], batch["y"])
        return main, {"main": float(main.detach())}


class SeqRegressor(SeqModel):
    """``mean`` / ``lstm`` / ``transformer``: an encoder per modality -> :class:`MultimodalClassifier`
    (``num_outputs=1``) with the named fusion. ``forward`` returns ``{"pred": (B,)}``."""

    kind = "regressor"

    def __init__(self, dims, encoder="mean", fusion="concat", hidden=64, dropout=0.1, clip=10.0,
                 encoder_kw=None, fusion_kw=None, pool=None):
        super().__init__(dims, encoder, hidden, dropout, clip, encoder_kw, pool)
        if fusion not in POOLED_FUSIONS:
            raise ConfigError(f"fusion {fusion!r} is not available here; choose from {', '.join(POOLED_FUSIONS)}")
        self.fusion_name, self.fusion_kw = fusion, dict(fusion_kw or {})
        self.head = MultimodalClassifier([ModalitySpec(m, self.hidden) for m in self.names], fusion, num_outputs=1,
                                         hidden=self.hidden, dropout=self.dropout_p, **self.fusion_kw)

    def forward(self, x, lengths):
        pooled, _, _ = self.encode(x, lengths)
        return {"pred": self.head(pooled).squeeze(-1)}

    def config(self) -> dict:
        return {**self.base_config(), "fusion": self.fusion_name, "fusion_kw": self.fusion_kw}


def info_nce(z: dict[str, Tensor], temperature: float) -> Tensor:
    """Symmetric InfoNCE between the L2-normalised embeddings of every pair of modalities: for a pair (m, n),
    ``logits = z_m z_n^T / temperature`` over the batch, the sample's own other-modality embedding is the positive,
    the batch's other samples the negatives; ``(CE(logits) + CE(logits^T)) / 2``, averaged over the pairs.
    0 for a batch of one sample or a single modality."""
    names = list(z)
    first = z[names[0]]
    if len(names) < 2 or first.shape[0] < 2:
        return first.sum() * 0.0
    target = torch.arange(first.shape[0], device=first.device)
    parts = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            logits = z[a] @ z[b].t() / temperature
            parts.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)))
    return torch.stack(parts).mean()


class CMCBEP(SeqModel):
    """CMCBEP-CL (seed 004), an implementation of the described idea (not a reproduction of the paper's numbers).

    1. Encoders: each modality's sequence -> ``H_m`` ``(B, L_m, h)`` and ``h_m`` ``(B, h)`` (default transformer).
    2. Lead-modality supplementation. Lead weights ``a`` ``(B, M)``: with ``lead="auto"`` a per-sample softmax over
       learned scores ``s_m = w_m^T LayerNorm(h_m) + b_m`` (the modality the model finds most representative for
       that sample gets the most weight; the arg-max is the chosen lead), or one-hot for a fixed ``lead``. Each
       modality's frames query the other modalities' frames: ``c_{m<-k} = mean_{real t} MHA(Q=H_m, K=V=H_k)`` under
       k's padding mask, and ``h'_m = LayerNorm_m(h_m + sum_{k != m} a_k c_{m<-k})``: the lead supplements every
       other modality, the lead itself gets (almost) nothing.
    3. Cross-modal contrastive learning: a projection head per modality on the encoder outputs ``h_m``
       (``Linear-GELU-Linear``, L2-normalised); :func:`info_nce` between the modalities of one sample (positives)
       against the other samples of the batch (negatives), ``temperature``; weight ``cl_weight``.
    4. Balanced prediction: unimodal predictions ``y_m = MLP_m(h'_m)`` and the fused prediction
       ``y_f = MultimodalClassifier({h'_m}, fusion)``; ``y = sum_k w_k y_k`` over ``[y_f, y_1..y_M]`` with learned
       weights ``w = softmax(beta)`` (initialised equal). Training loss: ``L(y, t) + aux_weight * mean_k L(y_k, t_k)
       + cl_weight * InfoNCE`` where ``t_k`` is the label (or CH-SIMS's unimodal label with ``unimodal_labels``).
    """

    kind = "cmcbep"

    def __init__(self, dims, encoder="transformer", fusion="concat", hidden=64, dropout=0.1, clip=10.0,
                 encoder_kw=None, fusion_kw=None, pool=None, lead: str = "auto", heads: int = 4,
                 temperature: float = 0.1, cl_weight: float = 0.1, aux_weight: float = 0.5):
        super().__init__(dims, encoder, hidden, dropout, clip, encoder_kw, pool)
        if len(self.names) < 2:
            raise ConfigError(f"cmcbep needs at least two modalities, got {self.names}")
        if lead != "auto" and lead not in self.names:
            raise ConfigError(f"lead must be 'auto' or one of {self.names}, got {lead!r}")
        if fusion not in POOLED_FUSIONS:
            raise ConfigError(f"fusion {fusion!r} is not available here; choose from {', '.join(POOLED_FUSIONS)}")
        if heads < 1 or self.hidden % heads:
            raise ConfigError(f"hidden size {self.hidden} is not divisible by heads={heads}")
        if temperature <= 0 or cl_weight < 0 or aux_weight < 0:
            raise ConfigError("temperature must be > 0, cl_weight and aux_weight >= 0")
        self.fusion_name, self.fusion_kw, self.lead, self.heads = fusion, dict(fusion_kw or {}), lead, int(heads)
        self.temperature, self.cl_weight, self.aux_weight = float(temperature), float(cl_weight), float(aux_weight)
        h = self.hidden
        self.lead_score = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 1)) for m in self.names})
        self.cross = nn.ModuleDict({
            f"{m}__{k}": nn.MultiheadAttention(h, self.heads, dropout=self.dropout_p, batch_first=True)
            for m in self.names for k in self.names if k != m and (lead == "auto" or k == lead)})
        self.supp_norm = nn.ModuleDict({m: nn.LayerNorm(h) for m in self.names})
        self.unimodal = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, h), nn.GELU(), Dropout(self.dropout_p),
                                                        nn.Linear(h, 1)) for m in self.names})
        self.fused = MultimodalClassifier([ModalitySpec(m, h) for m in self.names], fusion, num_outputs=1, hidden=h,
                                          dropout=self.dropout_p, **self.fusion_kw)
        self.balance = nn.Parameter(torch.zeros(len(self.names) + 1))
        self.cl_proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))
                                      for m in self.names})

    def lead_weights(self, pooled: dict[str, Tensor]) -> Tensor:
        first = pooled[self.names[0]]
        if self.lead != "auto":
            a = torch.zeros(first.shape[0], len(self.names), device=first.device, dtype=first.dtype)
            a[:, self.names.index(self.lead)] = 1.0
            return a
        scores = torch.cat([self.lead_score[m](pooled[m]) for m in self.names], dim=1)
        return torch.softmax(scores, dim=1)

    def forward(self, x, lengths):
        pooled, seqs, masks = self.encode(x, lengths, need_seq=True)
        a = self.lead_weights(pooled)
        supplemented = {}
        for m in self.names:
            supp = torch.zeros_like(pooled[m])
            for j, k in enumerate(self.names):
                key = f"{m}__{k}"
                if key not in self.cross:
                    continue
                att, _ = self.cross[key](seqs[m], seqs[k], seqs[k], key_padding_mask=~masks[k], need_weights=False)
                supp = supp + a[:, j:j + 1] * masked_mean(att, masks[m])
            supplemented[m] = self.supp_norm[m](pooled[m] + supp)
        fused = self.fused(supplemented).squeeze(-1)
        uni = {m: self.unimodal[m](supplemented[m]).squeeze(-1) for m in self.names}
        w = torch.softmax(self.balance, dim=0)
        pred = w[0] * fused + sum(w[i + 1] * uni[m] for i, m in enumerate(self.names))
        emb = {m: F.normalize(self.cl_proj[m](pooled[m]), dim=-1) for m in self.names}
        return {"pred": pred, "fused": fused, "unimodal": uni, "lead_weights": a, "balance": w, "embeddings": emb}

    def losses(self, out, batch, loss_fn, unimodal_labels=False):
        y = batch["y"]
        main = loss_fn(out["pred"], y)
        y_uni = batch.get("y_uni") or {}
        aux_parts = [loss_fn(out["fused"], y)] + [
            loss_fn(out["unimodal"][m], y_uni[m] if unimodal_labels and m in y_uni else y) for m in self.names]
        aux = torch.stack(aux_parts).mean()
        cl = info_nce(out["embeddings"], self.temperature)
        total = main + self.aux_weight * aux + self.cl_weight * cl
        return total, {"main": float(main.detach()), "aux": float(aux.detach()), "cl": float(cl.detach())}

    def config(self) -> dict:
        return {**self.base_config(), "fusion": self.fusion_name, "fusion_kw": self.fusion_kw, "lead": self.lead,
                "heads": self.heads, "temperature": self.temperature, "cl_weight": self.cl_weight,
                "aux_weight": self.aux_weight}


#: ``--model`` names: the three encoder models and cmcbep
MODELS = {"mean": SeqRegressor, "lstm": SeqRegressor, "transformer": SeqRegressor, "cmcbep": CMCBEP}
_KINDS = {"regressor": SeqRegressor, "cmcbep": CMCBEP}


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``"lstm+attention"`` -> ``("lstm", "attention")``; ``"mean"`` -> ``("mean", None)``."""
    name, _, fusion = str(spec).strip().partition("+")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} in {spec!r}; choose from {', '.join(MODELS)} "
                          f"(optionally +FUSION, FUSION from {', '.join(POOLED_FUSIONS)})")
    if fusion and fusion not in POOLED_FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r} in {spec!r}; choose from {', '.join(POOLED_FUSIONS)}")
    return name, fusion or None


def build_model(spec: str, dims: dict[str, int], fusion: str = "concat", hidden: int = 64, dropout: float = 0.1,
                pool: dict[str, int] | None = None, cmcbep_encoder: str = "transformer", **cmcbep_kw) -> SeqModel:
    """The model named by ``spec`` (``NAME`` or ``NAME+FUSION``); ``cmcbep_kw`` go to :class:`CMCBEP` only."""
    name, spec_fusion = parse_model_spec(spec)
    fusion = spec_fusion or fusion
    if name == "cmcbep":
        return CMCBEP(dims, encoder=cmcbep_encoder, fusion=fusion, hidden=hidden, dropout=dropout, pool=pool,
                      **cmcbep_kw)
    return SeqRegressor(dims, encoder=name, fusion=fusion, hidden=hidden, dropout=dropout, pool=pool)


def frame_pool(seq_lens: dict[str, int], max_frames: int) -> dict[str, int]:
    """Window sizes ``{m: ceil(L_m / max_frames)}`` for the modalities longer than ``max_frames`` (0 = none)."""
    if max_frames <= 0:
        return {}
    return {m: -(-int(n) // max_frames) for m, n in seq_lens.items() if n > max_frames}


def load_seq_model(directory, map_location: str = "cpu") -> tuple[SeqModel, dict]:
    """Rebuild a model from its checkpoint folder (:func:`msa.checkpoint.save_checkpoint` with
    ``{"model": model.config()}``); returns ``(model in eval mode, config)``."""
    from pathlib import Path

    from safetensors.torch import load_file

    from msa.checkpoint import MODEL_FILE, read_checkpoint_config

    config = read_checkpoint_config(directory)
    cfg = dict(config["model"])
    cls = _KINDS.get(cfg.pop("kind", None))
    if cls is None:
        raise ConfigError(f"{directory} is not a checkpoint of a sequence model")
    model = cls(**cfg)
    model.load_state_dict(load_file(str(Path(directory) / MODEL_FILE), device=map_location), strict=True)
    return model.eval(), config


# ---------------------------------------------------------------------------------------------------- data
def feature_stats(split, modalities, chunk: int = 256) -> dict[str, dict]:
    """Per-dimension mean and std of each modality's real frames (frame < length) of ``split`` (an
    :class:`msa.mmsa.Split`), in float64 over chunks of rows; a constant dimension gets std 1."""
    stats = {}
    for m in modalities:
        feats, lengths = split.features[m], split.lengths[m]
        d = feats.shape[2]
        s, ss, cnt = np.zeros(d), np.zeros(d), 0
        pos = np.arange(feats.shape[1])
        for start in range(0, feats.shape[0], chunk):
            x = feats[start:start + chunk].astype(np.float64)
            mask = (pos[None, :] < lengths[start:start + chunk, None])[..., None]
            s += (x * mask).sum(axis=(0, 1))
            ss += (x * x * mask).sum(axis=(0, 1))
            cnt += int(mask.sum())
        mean = s / max(cnt, 1)
        std = np.sqrt(np.maximum(ss / max(cnt, 1) - mean ** 2, 0.0))
        std[std < 1e-6] = 1.0
        stats[m] = {"mean": mean.astype(np.float32).tolist(), "std": std.astype(np.float32).tolist()}
    return stats


class SeqTensors:
    """A split as torch tensors (sharing the numpy memory); :meth:`batch` cuts rows trimmed to the batch's
    longest sequence per modality."""

    def __init__(self, split, modalities):
        self.modalities = list(modalities)
        self.x = {m: torch.from_numpy(split.features[m]) for m in self.modalities}
        self.lengths = {m: torch.from_numpy(split.lengths[m]) for m in self.modalities}
        self.y = torch.from_numpy(split.labels)
        self.y_uni = {m: torch.from_numpy(v) for m, v in split.unimodal_labels.items() if m in self.modalities}

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(self, idx: Tensor, device="cpu") -> dict:
        x, lengths = {}, {}
        for m in self.modalities:
            lens = self.lengths[m][idx]
            cut = max(1, int(lens.max())) if len(lens) else 1
            x[m] = self.x[m][idx, :cut].to(device)
            lengths[m] = lens.to(device)
        return {"x": x, "lengths": lengths, "y": self.y[idx].to(device),
                "y_uni": {m: v[idx].to(device) for m, v in self.y_uni.items()}}


# ------------------------------------------------------------------------------------------------ training
LOSSES = {"l1": nn.L1Loss, "mse": nn.MSELoss}


@dataclass
class RegressionConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    patience: int = 8
    grad_clip: float = 1.0
    seed: int = 42
    loss: str = "l1"
    unimodal_labels: bool = False
    device: str = "cpu"

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict(model: SeqModel, data: SeqTensors, device="cpu", batch_size: int = 256, extras: bool = False):
    """Predictions ``(N,)`` in row order; with ``extras`` a dict of every per-sample output (``pred``, and for
    cmcbep ``fused``, ``unimodal_<m>``, ``lead_weights`` ``(N, M)``)."""
    model.eval()
    outs: dict[str, list] = {}
    for idx in torch.arange(len(data)).split(batch_size):
        out = model(**{k: v for k, v in data.batch(idx, device).items() if k in ("x", "lengths")})
        flat = {"pred": out["pred"]}
        if extras:
            flat.update({k: out[k] for k in ("fused", "lead_weights") if k in out})
            flat.update({f"unimodal_{m}": v for m, v in (out.get("unimodal") or {}).items()})
        for k, v in flat.items():
            outs.setdefault(k, []).append(v.float().cpu())
    res = {k: torch.cat(v).numpy() for k, v in outs.items()}
    if not res:
        res = {"pred": np.zeros(0, dtype=np.float32)}
    return res if extras else res["pred"]


def fit_regression(model: SeqModel, train: SeqTensors, valid: SeqTensors, cfg: RegressionConfig,
                   on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` on ``train``; pick the epoch with the lowest validation loss of the final prediction
    (L1 -> validation MAE), stop after ``patience`` epochs without improvement, restore that epoch's weights.

    Returns ``{"history": [per-epoch dict], "best_epoch", "best_val_loss", "seconds"}``."""
    from msa.trainer import TrainConfig, make_scheduler, seed_everything

    if cfg.loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if len(train) == 0 or len(valid) == 0:
        raise ConfigError("training and validation splits must not be empty")
    seed_everything(cfg.seed)
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    loss_fn = LOSSES[cfg.loss]()
    # weight decay on matrices only: biases, norms and cmcbep's balance logits are not pulled towards 0
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
    steps = math.ceil(len(train) / cfg.batch_size)
    scheduler = make_scheduler(optimizer, TrainConfig(warmup_ratio=cfg.warmup_ratio, scheduler=cfg.scheduler,
                                                      num_epochs=cfg.epochs), max(1, cfg.epochs * steps))
    task = _Regression(model, train, valid, cfg, loss_fn, optimizer, scheduler, gen, device)
    t_start = time.time()
    loop = run_epochs(task, cfg.epochs, cfg.patience, on_epoch=on_epoch)
    if task.best_state is not None:
        model.load_state_dict(task.best_state)
    model.eval()
    return {"history": loop.history, "best_epoch": loop.best_epoch, "best_val_loss": -loop.best_score,
            "seconds": time.time() - t_start}


class _Regression:
    """:func:`fit_regression`'s adapter for :func:`msa.loop.run_epochs`: one epoch of the regressor, scored by
    minus the validation loss of the final prediction; the best epoch's weights are kept."""

    def __init__(self, model, train, valid, cfg, loss_fn, optimizer, scheduler, gen, device):
        self.model, self.train, self.valid, self.cfg, self.loss_fn = model, train, valid, cfg, loss_fn
        self.optimizer, self.scheduler, self.gen, self.device = optimizer, scheduler, gen, device
        self.y_valid = valid.y.numpy().astype(np.float64)
        self.best_state = None

    def run_epoch(self, epoch: int) -> tuple[dict, float]:
        model, cfg = self.model, self.cfg
        model.train()
        t0, seen, sums = time.time(), 0, {}
        for idx in torch.randperm(len(self.train), generator=self.gen).split(cfg.batch_size):
            batch = self.train.batch(idx, self.device)
            out = model(batch["x"], batch["lengths"])
            loss, parts = model.losses(out, batch, self.loss_fn, cfg.unimodal_labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            seen += len(idx)
            for k, v in {"train_loss": float(loss.detach()), **{f"train_{k}": v for k, v in parts.items()}}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        pred = predict(model, self.valid, self.device).astype(np.float64)
        err = pred - self.y_valid
        val_loss = float(np.mean(np.abs(err))) if cfg.loss == "l1" else float(np.mean(err ** 2))
        corr = (float(np.corrcoef(pred, self.y_valid)[0, 1]) if np.ptp(pred) > 0 and np.ptp(self.y_valid) > 0
                else float("nan"))
        row = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}, "val_loss": val_loss,
               "val_MAE": float(np.mean(np.abs(err))), "val_Corr": corr, "lr": self.scheduler.get_last_lr()[0],
               "seconds": round(time.time() - t0, 3)}
        if not math.isfinite(row["train_loss"]):
            raise ConfigError(f"training diverged at epoch {epoch} (loss {row['train_loss']}): lower the learning "
                              "rate")
        return row, -val_loss

    def keep(self, epoch: int, row: dict, score: float) -> None:
        self.best_state = snapshot(self.model)

    def end_epoch(self, epoch: int, row: dict, state) -> None:
        pass
