"""Losses: each against its formula or torch's reference, ACB's running statistics, registry and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msa.cli import UserError
from msa.losses import (
    LOSS_NAMES,
    LOSSES,
    ACBLoss,
    build_loss,
    class_weights_from_counts,
    effective_number_weights,
)

COUNTS = [10, 5, 20]


def batch(n: int = 12, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g) * 2, torch.arange(n) % classes


def test_registry():
    assert LOSS_NAMES == ("ce", "weighted_ce", "focal", "acb") == tuple(LOSSES)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("dice")
    with pytest.raises(UserError, match="does not take"):
        build_loss("ce", gamma=2)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_finite_gradients_even_at_saturated_logits(name):
    logits = torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0], [-80.0, 80.0, 0.0], [5.0, 5.0, -5.0]],
                          requires_grad=True)
    targets = torch.tensor([0, 1, 1, 2])  # p_t == 1 exactly, uniform, p_t == 1, p_t ~ 0
    loss = build_loss(name, class_counts=COUNTS)(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_low_precision_logits(name):
    logits, targets = batch()
    loss = build_loss(name, class_counts=COUNTS)(logits.to(torch.bfloat16), targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_ce_equals_torch():
    logits, targets = batch()
    torch.testing.assert_close(build_loss("ce")(logits, targets), F.cross_entropy(logits, targets))
    torch.testing.assert_close(build_loss("ce", label_smoothing=0.1)(logits, targets),
                               F.cross_entropy(logits, targets, label_smoothing=0.1))


def test_weighted_ce_weights_follow_counts():
    inv = torch.tensor([1 / 10, 1 / 5, 1 / 20])
    loss = build_loss("weighted_ce", class_counts=COUNTS)
    torch.testing.assert_close(loss.weight, inv / inv.mean())
    assert loss.weight.mean().item() == pytest.approx(1.0)
    assert loss.weight[1] > loss.weight[0] > loss.weight[2]  # rarest class weighs most
    sqrt = build_loss("weighted_ce", class_counts=COUNTS, weight_power=0.5).weight
    torch.testing.assert_close(sqrt, inv.sqrt() / inv.sqrt().mean())
    logits, targets = batch()
    torch.testing.assert_close(loss(logits, targets), F.cross_entropy(logits, targets, weight=loss.weight))
    assert "weight" in loss.state_dict()


def test_class_weight_helpers():
    torch.testing.assert_close(class_weights_from_counts([1, 1, 1]), torch.ones(3))
    torch.testing.assert_close(class_weights_from_counts([4, 0], power=1.0), torch.tensor([0.4, 1.6]))  # 0 -> 1
    cb = effective_number_weights([100, 10], beta=0.99)
    raw = torch.tensor([(1 - 0.99) / (1 - 0.99**100), (1 - 0.99) / (1 - 0.99**10)])
    torch.testing.assert_close(cb, raw / raw.mean())


@pytest.mark.parametrize(("name", "kw"), [("weighted_ce", {}), ("focal", {"alpha": "counts"}),
                                          ("acb", {"class_balance": "inverse"})])
def test_losses_that_need_counts_say_so(name, kw):
    with pytest.raises(ValueError, match="class counts"):
        build_loss(name, **kw)


def test_focal_with_gamma_zero_is_ce():
    logits, targets = batch()
    torch.testing.assert_close(build_loss("focal", gamma=0.0)(logits, targets), F.cross_entropy(logits, targets))


def test_focal_formula_and_alpha():
    logits, targets = batch()
    p_t = logits.softmax(-1)[torch.arange(len(targets)), targets]
    expected = ((1 - p_t) ** 2 * -p_t.log()).mean()
    torch.testing.assert_close(build_loss("focal")(logits, targets), expected)
    assert expected < F.cross_entropy(logits, targets)
    w = class_weights_from_counts(COUNTS)
    torch.testing.assert_close(build_loss("focal", class_counts=COUNTS, alpha="counts")(logits, targets),
                               (w[targets] * (1 - p_t) ** 2 * -p_t.log()).mean())
    torch.testing.assert_close(build_loss("focal", gamma=0.0, alpha=[1.0, 2.0, 3.0])(logits, targets),
                               (torch.tensor([1.0, 2.0, 3.0])[targets] * -p_t.log()).mean())


# ------------------------------------------------------------------------------------------------------ ACB


@pytest.mark.parametrize("train", [True, False])
def test_acb_reduces_to_ce(train):
    logits, targets = batch()
    loss = build_loss("acb", class_counts=COUNTS, a=0, b=0, c=0, beta=0, alpha=0.7)
    loss.train(train)
    torch.testing.assert_close(loss(logits, targets), 0.7 * F.cross_entropy(logits, targets))


def test_acb_defaults_follow_the_report():
    loss = build_loss("acb", class_counts=COUNTS)
    assert (loss.a, loss.b, loss.c, loss.k, loss.alpha, loss.beta, loss.momentum) == (5, 1.5, 3, 2, 1, 0.1, 0.9)
    assert loss.num_classes == 3
    assert ACBLoss(num_classes=4).difficulty.tolist() == [0.75] * 4  # 1 - 1/C before any update


def test_acb_full_formula_with_per_batch_difficulty():
    """momentum=0 is the report's literal d_c = sum_{i in c}(1 - p_t) / N_c over the batch."""
    logits, targets = batch(n=9)
    a, b, c, k, alpha, beta = 5.0, 1.5, 3.0, 2.0, 1.0, 0.3
    loss = build_loss("acb", class_counts=COUNTS, momentum=0.0, beta=beta).train()
    p = logits.softmax(-1)
    p_t = p[torch.arange(9), targets]
    d = torch.stack([(1 - p_t[targets == cls]).mean() for cls in range(3)])
    w = 1 + a * torch.log(1 + d)
    g = b + c * torch.log(1 + d)
    focal = (w[targets] * (1 - p_t) ** g[targets] * -p_t.log()).mean()
    top2 = p.topk(2, dim=-1).values
    boundary = torch.exp(-k * (top2[:, 0] - top2[:, 1])).mean()
    torch.testing.assert_close(loss(logits, targets), alpha * focal + beta * boundary)
    torch.testing.assert_close(loss.difficulty, d)


def test_acb_running_difficulty_updates_only_in_train_mode():
    logits, targets = batch()
    loss = build_loss("acb", class_counts=COUNTS, momentum=0.9)
    before = loss.difficulty.clone()
    loss.eval()
    loss(logits, targets)
    torch.testing.assert_close(loss.difficulty, before)
    loss.train()
    loss(logits, targets)
    p_t = logits.softmax(-1)[torch.arange(len(targets)), targets]
    batch_d = torch.stack([(1 - p_t[targets == cls]).mean() for cls in range(3)])
    torch.testing.assert_close(loss.difficulty, 0.9 * before + 0.1 * batch_d)
    # classes absent from a batch keep their value
    after = loss.difficulty.clone()
    loss(logits[targets == 0], targets[targets == 0])
    assert loss.difficulty[0] != after[0]
    torch.testing.assert_close(loss.difficulty[1:], after[1:])
    # the buffer is saved and restored with the state dict
    state = loss.state_dict()
    assert "difficulty" in state
    fresh = build_loss("acb", class_counts=COUNTS)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.difficulty, loss.difficulty)


def test_acb_upweights_the_class_with_lower_p_t():
    # class 0 samples are predicted badly (p_t ~ 0.1), class 1 well (p_t ~ 0.9), class 2 in between
    logits = torch.tensor([[-1.1, 1.1, 0.0]] * 4 + [[0.0, 2.8, 0.0]] * 4 + [[0.0, 0.0, 1.0]] * 4)
    targets = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    loss = build_loss("acb", class_counts=[1, 1, 1], momentum=0.0).train()
    loss(logits, targets)
    d = loss.difficulty
    assert d[0] > d[2] > d[1]
    w, g = loss.class_weights(), loss.focal_exponents()
    assert w[0] > w[2] > w[1] and g[0] > g[2] > g[1]
    torch.testing.assert_close(w, 1 + 5 * torch.log1p(d))
    torch.testing.assert_close(g, 1.5 + 3 * torch.log1p(d))
    # the hard class also dominates the gradient: compare per-class gradient norms of the logits
    x = logits.clone().requires_grad_(True)
    loss.eval()(x, targets).backward()
    grad_norm = torch.stack([x.grad[targets == cls].norm() for cls in range(3)])
    assert grad_norm[0] > grad_norm[1]


def test_acb_boundary_term_prefers_a_margin():
    targets = torch.tensor([0])
    loss = build_loss("acb", a=0, b=0, c=0, alpha=0.0, beta=1.0, k=2.0).eval()
    tie = loss(torch.tensor([[1.0, 1.0, -5.0]]), targets)
    margin = loss(torch.tensor([[3.0, 0.0, -5.0]]), targets)
    assert tie.item() == pytest.approx(1.0, abs=1e-6) and margin < tie


def test_acb_class_balance_variants():
    loss = build_loss("acb", class_counts=COUNTS, class_balance="effective_number", cb_beta=0.99)
    torch.testing.assert_close(loss.prior_weight, effective_number_weights(COUNTS, 0.99))
    torch.testing.assert_close(loss.class_weights(), loss.prior_weight * (1 + 5 * math.log1p(2 / 3)))
    # Cui et al.'s class-balanced focal loss: no adaptive part, gamma = b, no boundary term
    logits, targets = batch()
    cb_focal = build_loss("acb", class_counts=COUNTS, a=0, c=0, b=2.0, beta=0, class_balance="effective_number",
                          cb_beta=0.99)
    w = effective_number_weights(COUNTS, 0.99)
    expected = build_loss("focal", alpha=w.tolist())(logits, targets)
    torch.testing.assert_close(cb_focal(logits, targets), expected)
    with pytest.raises(ValueError, match="class_balance"):
        build_loss("acb", class_counts=COUNTS, class_balance="sqrt")


def test_acb_checks_shapes():
    loss = build_loss("acb", class_counts=COUNTS)
    with pytest.raises(ValueError, match="3 classes"):
        loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("acb", class_counts=COUNTS, num_classes=4)


# ------------------------------------------------------------------- ACB against a hand computation (plain math)
ACB_LOGITS = [[2.0, 0.5, -1.0], [0.2, 0.1, 1.5], [-0.5, 1.0, 0.3]]
ACB_TARGETS = [0, 1, 1]  # class 2 is absent from the batch: its difficulty keeps its initial value
ACB_CONST = {"a": 5.0, "b": 1.5, "c": 3.0, "k": 2.0, "alpha": 1.0, "beta": 0.2, "momentum": 0.5}


def _softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def _hand_difficulty(logits, targets, momentum):
    """d_c after one training-mode forward: m * (1 - 1/C) + (1 - m) * batch mean of (1 - p_t) over class c."""
    d = [2.0 / 3.0] * 3
    for cls in range(3):
        miss = [1.0 - _softmax(z)[t] for z, t in zip(logits, targets) if t == cls]
        if miss:
            d[cls] = momentum * d[cls] + (1.0 - momentum) * sum(miss) / len(miss)
    return d


def _hand_acb(logits, targets, d, a, b, c, k, alpha, beta, **_):
    """The formula of docs/phase3.md with the difficulties ``d`` held fixed."""
    focal, boundary = [], []
    for z, t in zip(logits, targets):
        p = _softmax(z)
        w, g = 1 + a * math.log(1 + d[t]), b + c * math.log(1 + d[t])
        focal.append(w * (1 - p[t]) ** g * -math.log(p[t]))
        p1, p2 = sorted(p, reverse=True)[:2]
        boundary.append(math.exp(-k * (p1 - p2)))
    return alpha * sum(focal) / len(focal) + beta * sum(boundary) / len(boundary)


def _hand_acb_grad(logits, targets, d, a, b, c, k, alpha, beta, **_):
    """dL/dz with w_c, g_c constant: the focal term through p_t, the boundary term through both top-two p."""
    n = len(logits)
    grad = []
    for z, t in zip(logits, targets):
        p = _softmax(z)
        w, g = 1 + a * math.log(1 + d[t]), b + c * math.log(1 + d[t])
        q = 1 - p[t]
        df_dpt = w * (-g * q ** (g - 1) * -math.log(p[t]) - q ** g / p[t])
        m1, m2 = sorted(range(3), key=lambda j: -p[j])[:2]
        bnd = math.exp(-k * (p[m1] - p[m2]))
        row = []
        for j in range(3):
            dpt = p[t] * ((j == t) - p[j])
            dgap = p[m1] * ((j == m1) - p[j]) - p[m2] * ((j == m2) - p[j])
            row.append((alpha * df_dpt * dpt + beta * -k * bnd * dgap) / n)
        grad.append(row)
    return grad


def test_acb_value_and_gradient_against_a_hand_computation():
    d = _hand_difficulty(ACB_LOGITS, ACB_TARGETS, ACB_CONST["momentum"])
    assert d[2] == pytest.approx(2 / 3)
    expected = _hand_acb(ACB_LOGITS, ACB_TARGETS, d, **ACB_CONST)
    expected_grad = _hand_acb_grad(ACB_LOGITS, ACB_TARGETS, d, **ACB_CONST)
    # the explicit gradient formula agrees with central finite differences of the hand-computed loss
    eps = 1e-6
    for i in range(3):
        for j in range(3):
            up = [row[:] for row in ACB_LOGITS]
            down = [row[:] for row in ACB_LOGITS]
            up[i][j] += eps
            down[i][j] -= eps
            fd = (_hand_acb(up, ACB_TARGETS, d, **ACB_CONST) - _hand_acb(down, ACB_TARGETS, d, **ACB_CONST)) / (2 * eps)
            assert expected_grad[i][j] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # the module: value, gradient w.r.t. the logits, and the updated running difficulty
    loss = build_loss("acb", class_counts=COUNTS, **ACB_CONST).train()
    logits = torch.tensor(ACB_LOGITS, requires_grad=True)
    value = loss(logits, torch.tensor(ACB_TARGETS))
    value.backward()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(logits.grad, torch.tensor(expected_grad), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.difficulty, torch.tensor(d), rtol=1e-6, atol=1e-6)
    # eval mode reads the stored difficulty: the same value again, and no further update
    assert loss.eval()(torch.tensor(ACB_LOGITS), torch.tensor(ACB_TARGETS)).item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(loss.difficulty, torch.tensor(d), rtol=1e-6, atol=1e-6)


def test_weighted_ce_effective_number_weights():
    loss = build_loss("weighted_ce", class_counts=COUNTS, weights="effective_number", cb_beta=0.9)
    raw = torch.tensor([(1 - 0.9) / (1 - 0.9**n) for n in COUNTS])
    torch.testing.assert_close(loss.weight, raw / raw.mean())
    logits, targets = batch()
    torch.testing.assert_close(loss(logits, targets), F.cross_entropy(logits, targets, weight=loss.weight))
    default = build_loss("weighted_ce", class_counts=COUNTS)
    torch.testing.assert_close(default.weight, class_weights_from_counts(COUNTS))  # inverse frequency by default
    with pytest.raises(ValueError, match="effective_number"):
        build_loss("weighted_ce", class_counts=COUNTS, weights="sqrt")
