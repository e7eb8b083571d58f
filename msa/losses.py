"""Classification losses for the imbalanced 3-class task: ``ce``, ``weighted_ce``, ``focal``, ``acb``.

Every loss is built the same way, ``build_loss(name, class_counts=train_counts, **kw)``, and is an
``nn.Module`` whose ``forward(logits, targets)`` returns a scalar: ``logits`` ``(B, C)`` (any float dtype; the
loss is computed in float32), ``targets`` ``(B,)`` class indices. ``class_counts`` are the training-split counts
per class, in label order; losses that do not use them ignore them, so a phase can pass them to every loss.
Constants are keywords; their defaults are documented per class.

Class weights from counts (``weighted_ce``, ``focal`` with ``alpha="counts"``, ACB's ``class_balance``) are
normalised to mean 1 over the classes, so they change the balance between classes, not the loss scale. A class
with a zero count is treated as having a count of 1.

ACB, the Adaptive Class-Balancing loss of seed 001 (docs/phase3.md)::

    d_c  = running mean of (1 - p_t) over the samples of class c         (buffer ``difficulty``)
    w_c  = 1 + a * log(1 + d_c)                                          (a = 5)
    g_c  = b + c * log(1 + d_c)                                          (b = 1.5, c = 3)
    L    = alpha * mean_i[ w_{y_i} (1 - p_t,i)^{g_{y_i}} (-log p_t,i) ] + beta * mean_i[ exp(-k (p1_i - p2_i)) ]
                                                                         (alpha = 1, beta = 0.1, k = 2)

``p_t`` is the softmax probability of the true class, ``p1 >= p2`` the two largest probabilities of a sample.
The seed report gives a, b, c and k (the ``2`` in ``e^{-2(p1 - p2)}``) but no values for alpha and beta:
alpha = 1 and beta = 0.1 are this project's choice. The report defines ``d_c`` on the samples at hand,
``sum_{i in c} (1 - p_t^i) / N_c``; ``momentum=0`` gives exactly that per-batch statistic, the default
``momentum=0.9`` smooths it into an exponential running mean (updated in training mode only, saved in the
state dict). Seed 000 cites Cui et al.'s class-balanced loss (effective number of samples) for ACB:
``class_balance="effective_number"`` (with ``cb_beta``) multiplies ``w_c`` by those count-based weights, and
``a=0, c=0, b=gamma, beta=0, class_balance="effective_number"`` is Cui et al.'s class-balanced focal loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msa.fusions import ConfigError

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "ACBLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "WeightedCrossEntropyLoss",
    "build_loss",
    "class_weights_from_counts",
    "effective_number_weights",
]

_EPS = 1e-12


def _counts(class_counts: Sequence[int] | None, what: str) -> list[float]:
    if class_counts is None:
        raise ConfigError(f"{what} needs the training class counts (class_counts=[n_0, n_1, ...])")
    counts = [float(c) for c in class_counts]
    if len(counts) < 2 or any(c < 0 or not math.isfinite(c) for c in counts):
        raise ConfigError(f"{what}: class_counts must be >= 2 non-negative numbers, got {list(class_counts)}")
    return counts


def class_weights_from_counts(class_counts: Sequence[int], power: float = 1.0) -> Tensor:
    """Inverse-frequency class weights ``(1 / n_c) ** power``, normalised to mean 1 over the classes.

    ``power=1`` is plain inverse frequency, ``0.5`` its square root, ``0`` uniform weights.
    """
    counts = torch.tensor(_counts(class_counts, "class weights"), dtype=torch.float64).clamp_min(1.0)
    w = counts.pow(-float(power))
    return (w / w.mean()).to(torch.float32)


def effective_number_weights(class_counts: Sequence[int], beta: float = 0.9999) -> Tensor:
    """Cui et al. (CVPR 2019) class-balanced weights ``(1 - beta) / (1 - beta ** n_c)``, normalised to mean 1."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"cb_beta must be in [0, 1), got {beta}")
    counts = torch.tensor(_counts(class_counts, "effective-number weights"), dtype=torch.float64).clamp_min(1.0)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w / w.mean()).to(torch.float32)


def _check_inputs(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits (B, C) and targets (B,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")


def _one_minus_pt(logp_t: Tensor) -> Tensor:
    """``1 - p_t`` computed as ``-expm1(log p_t)`` (accurate near p_t = 1), floored at a tiny epsilon so that
    ``(1 - p_t) ** g`` has a finite gradient for every exponent g >= 0, including 0."""
    return (-torch.expm1(logp_t)).clamp_min(_EPS)


class CrossEntropyLoss(nn.Module):
    """``ce``: plain cross-entropy, ``F.cross_entropy(logits, targets, label_smoothing=label_smoothing)``."""

    def __init__(self, class_counts: Sequence[int] | None = None, *, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)


class WeightedCrossEntropyLoss(nn.Module):
    """``weighted_ce``: cross-entropy with class weights ``w_c ∝ (1 / n_c) ** weight_power`` (mean 1).

    Needs ``class_counts``. ``weight_power=1`` (default) is inverse frequency, ``0.5`` its square root. As in
    ``torch.nn.CrossEntropyLoss(weight=w)``, the batch loss is ``sum_i w_{y_i} l_i / sum_i w_{y_i}``.
    The weights are the buffer ``weight``.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, *, weight_power: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.register_buffer("weight", class_weights_from_counts(_counts(class_counts, "weighted_ce"),
                                                                 weight_power))
        self.weight_power = float(weight_power)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        return F.cross_entropy(logits.float(), targets, weight=self.weight, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """``focal``: ``mean_i[ alpha_{y_i} (1 - p_t,i) ** gamma * (-log p_t,i) ]`` (Lin et al., 2017).

    ``gamma`` (default 2; 0 gives cross-entropy). ``alpha``: ``None`` (default, no class weights),
    ``"counts"`` (inverse-frequency weights from ``class_counts`` with ``weight_power``, mean 1), or an
    explicit per-class sequence. The mean is a plain mean over the batch.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, *, gamma: float = 2.0,
                 alpha: str | Sequence[float] | None = None, weight_power: float = 1.0):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if alpha is None:
            weight = None
        elif isinstance(alpha, str):
            if alpha != "counts":
                raise ConfigError(f"focal alpha must be None, 'counts' or per-class weights, got {alpha!r}")
            weight = class_weights_from_counts(_counts(class_counts, "focal with alpha='counts'"), weight_power)
        else:
            weight = torch.tensor([float(a) for a in alpha], dtype=torch.float32)
        self.register_buffer("alpha", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        logp_t = F.log_softmax(logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
        loss = _one_minus_pt(logp_t).pow(self.gamma) * (-logp_t)
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise ValueError(f"focal alpha has {self.alpha.numel()} classes, logits have {logits.shape[1]}")
            loss = loss * self.alpha[targets]
        return loss.mean()


class ACBLoss(nn.Module):
    """``acb``: Adaptive Class-Balancing loss (seed 001; formulas in the module docstring).

    Keywords (defaults): ``a`` (5) and ``b`` (1.5), ``c`` (3) shape the class weight ``w_c = 1 + a log(1 + d_c)``
    and the focal exponent ``g_c = b + c log(1 + d_c)``; ``k`` (2) the boundary term ``exp(-k (p1 - p2))``;
    ``alpha`` (1) and ``beta`` (0.1, not given by the report) weight the focal and boundary terms;
    ``momentum`` (0.9) of the running class difficulty ``d_c`` (0 = the report's per-batch statistic);
    ``class_balance`` (None | "inverse" | "effective_number") multiplies ``w_c`` by count-based weights
    (``weight_power`` for "inverse", ``cb_beta`` for Cui et al.'s effective number; needs ``class_counts``);
    ``num_classes`` (default: ``len(class_counts)``, else 3).

    ``d_c`` is the buffer ``difficulty``, initialised to ``1 - 1/C`` (the difficulty of an uninformed, uniform
    prediction). In training mode each forward first updates ``d_c <- m d_c + (1 - m) mean_{i in c}(1 - p_t,i)``
    for the classes present in the batch (statistics detached), then computes the loss with the updated
    values; in eval mode ``d_c`` is only read. ``w_c`` and ``g_c`` are constants for backprop; the boundary
    term is differentiated through both top probabilities.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, *, a: float = 5.0, b: float = 1.5,
                 c: float = 3.0, k: float = 2.0, alpha: float = 1.0, beta: float = 0.1, momentum: float = 0.9,
                 class_balance: str | None = None, weight_power: float = 1.0, cb_beta: float = 0.9999,
                 num_classes: int | None = None):
        super().__init__()
        if class_counts is not None:
            n = len(_counts(class_counts, "acb"))
            if num_classes is not None and num_classes != n:
                raise ConfigError(f"acb: num_classes={num_classes} but class_counts has {n} entries")
            num_classes = n
        num_classes = 3 if num_classes is None else int(num_classes)
        if num_classes < 2:
            raise ConfigError(f"acb needs at least 2 classes, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"acb momentum must be in [0, 1), got {momentum}")
        if b < 0 or c < 0 or a < 0:
            raise ConfigError(f"acb a, b, c must be >= 0 (weights and focal exponents), got {a}, {b}, {c}")
        self.a, self.b, self.c, self.k = float(a), float(b), float(c), float(k)
        self.alpha, self.beta, self.momentum = float(alpha), float(beta), float(momentum)
        self.num_classes = num_classes
        self.class_balance = class_balance
        if class_balance is None:
            prior = torch.ones(num_classes)
        elif class_balance == "inverse":
            prior = class_weights_from_counts(_counts(class_counts, "acb class_balance='inverse'"), weight_power)
        elif class_balance == "effective_number":
            prior = effective_number_weights(_counts(class_counts, "acb class_balance='effective_number'"),
                                             cb_beta)
        else:
            raise ConfigError(f"acb class_balance must be None, 'inverse' or 'effective_number', "
                              f"got {class_balance!r}")
        self.register_buffer("prior_weight", prior)
        self.register_buffer("difficulty", torch.full((num_classes,), 1.0 - 1.0 / num_classes))

    def class_weights(self) -> Tensor:
        """``w_c = prior_c * (1 + a log(1 + d_c))`` from the current running difficulty, ``(C,)``."""
        return self.prior_weight * (1.0 + self.a * torch.log1p(self.difficulty))

    def focal_exponents(self) -> Tensor:
        """``g_c = b + c log(1 + d_c)``, ``(C,)``."""
        return self.b + self.c * torch.log1p(self.difficulty)

    @torch.no_grad()
    def _update(self, one_minus_pt: Tensor, targets: Tensor) -> None:
        sums = torch.zeros_like(self.difficulty).index_add_(0, targets, one_minus_pt.to(self.difficulty.dtype))
        counts = torch.bincount(targets, minlength=self.num_classes).to(self.difficulty.dtype)
        present = counts > 0
        batch_mean = sums / counts.clamp_min(1.0)
        updated = self.momentum * self.difficulty + (1.0 - self.momentum) * batch_mean
        self.difficulty.copy_(torch.where(present, updated, self.difficulty))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"acb was built for {self.num_classes} classes, logits have {logits.shape[1]}")
        logp = F.log_softmax(logits.float(), dim=-1)
        logp_t = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        one_minus_pt = _one_minus_pt(logp_t)
        if self.training:
            self._update(one_minus_pt.detach(), targets)
        w = self.class_weights()[targets]
        g = self.focal_exponents()[targets]
        focal = (w * one_minus_pt.pow(g) * (-logp_t)).mean()
        if self.beta == 0.0:
            return self.alpha * focal
        top2 = logp.exp().topk(2, dim=-1).values
        boundary = torch.exp(-self.k * (top2[:, 0] - top2[:, 1])).mean()
        return self.alpha * focal + self.beta * boundary

    def extra_repr(self) -> str:
        return (f"a={self.a}, b={self.b}, c={self.c}, k={self.k}, alpha={self.alpha}, beta={self.beta}, "
                f"momentum={self.momentum}, class_balance={self.class_balance}")


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "weighted_ce": WeightedCrossEntropyLoss,
    "focal": FocalLoss,
    "acb": ACBLoss,
}
LOSS_NAMES = tuple(LOSSES)


def build_loss(name: str, class_counts: Sequence[int] | None = None, **kw) -> nn.Module:
    """The loss ``name`` from :data:`LOSSES` with its keywords; ``class_counts`` are the training counts.

    An unknown name or keyword, or a missing ``class_counts`` where the loss needs them, is a
    :class:`msa.fusions.ConfigError` (a ``ValueError``).
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    factory = LOSSES[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        accepted = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY)
        raise ConfigError(f"loss {name!r} does not take {unknown}; it accepts {accepted}")
    return factory(class_counts, **kw)


class ClassBalancedCrossEntropyLoss(WeightedCrossEntropyLoss):
    """``weighted_ce`` with a choice of class weights (registered under that name; the defaults are unchanged).

    ``weights="inverse"`` (default): inverse frequency ``(1 / n_c) ** weight_power``, as
    :class:`WeightedCrossEntropyLoss`; ``weights="effective_number"``: Cui et al.'s
    ``(1 - cb_beta) / (1 - cb_beta ** n_c)``. Both are normalised to mean 1 and kept in the buffer ``weight``.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, *, weights: str = "inverse",
                 weight_power: float = 1.0, cb_beta: float = 0.9999, label_smoothing: float = 0.0):
        if weights not in ("inverse", "effective_number"):
            raise ConfigError(f"weighted_ce weights must be 'inverse' or 'effective_number', got {weights!r}")
        super().__init__(class_counts, weight_power=weight_power, label_smoothing=label_smoothing)
        self.weights = weights
        if weights == "effective_number":
            self.weight.copy_(effective_number_weights(_counts(class_counts, "weighted_ce"), cb_beta))
        self.cb_beta = float(cb_beta)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, weight={[round(w, 4) for w in self.weight.tolist()]}"


LOSSES["weighted_ce"] = ClassBalancedCrossEntropyLoss
__all__.append("ClassBalancedCrossEntropyLoss")
