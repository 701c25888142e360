"""The entropy penalty on a HybridPool's mixing weights (``module.mix_entropy_weight``): value, gradient, effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybridpool.models import Classifier, SmallCNN
from hybridpool.pooling import HybridPool
from hybridpool.run.config import ConfigError, validate_config
from hybridpool.run.module import ClassificationModule, mixing_entropy


def reference_entropy(mix: torch.Tensor) -> float:
    """Mean over samples (and channels) of -sum_i w_i log w_i / log n, in float64 with Python loops."""
    w = mix.double()
    w = w.unsqueeze(-1) if w.ndim == 2 else w
    b, n, c = w.shape
    values = [
        -sum(float(w[s, i, k]) * math.log(float(w[s, i, k])) for i in range(n)) / math.log(n)
        for s in range(b)
        for k in range(c)
    ]
    return sum(values) / len(values)


def test_mixing_entropy_is_one_for_uniform_zero_for_one_branch_and_matches_a_reference():
    assert float(mixing_entropy(torch.full((3, 4), 0.25))) == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert float(mixing_entropy(one_hot)) == pytest.approx(0.0, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    per_sample = torch.softmax(torch.randn(5, 3, generator=gen, dtype=torch.float64), 1)
    per_channel = torch.softmax(torch.randn(2, 4, 6, generator=gen, dtype=torch.float64), 1)
    for mix in (per_sample, per_channel):
        assert float(mixing_entropy(mix)) == pytest.approx(reference_entropy(mix), rel=1e-12)
    assert float(mixing_entropy(torch.ones(4, 1))) == 0.0  # a single branch has nothing to choose
    with pytest.raises(ValueError, match=r"\(B, n_branches\)"):
        mixing_entropy(torch.ones(4))


def test_mixing_entropy_gradient_matches_finite_differences():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: mixing_entropy(torch.softmax(z, 1)), (logits,))


def _hybrid_module(weight: float, mixing: str = "scalar") -> ClassificationModule:
    torch.manual_seed(0)
    pool = HybridPool(8, ("avg", "max", "gem"), mixing=mixing)
    model = Classifier(SmallCNN(3, (8,)), pool, 3)
    return ClassificationModule(model, mix_entropy_weight=weight, from_features=True)


def test_training_loss_adds_the_weighted_entropy_of_this_batch_to_cross_entropy():
    x, y = torch.rand(6, 8, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for mixing in ("scalar", "channel", "gate"):
        module = _hybrid_module(0.3, mixing)
        loss, logits = module.training_loss(x, y)
        _, extras = module.model.forward_head(x, return_extras=True)
        expected = F.cross_entropy(logits, y) + 0.3 * mixing_entropy(extras["mix"])
        torch.testing.assert_close(loss, expected)
        plain, _ = _hybrid_module(0.0, mixing).training_loss(x, y)
        torch.testing.assert_close(plain, F.cross_entropy(logits, y))  # the same initial weights, no penalty


def test_the_penalty_drives_the_mixing_towards_one_branch():
    # spatially constant maps: every branch gives the same descriptor, so cross-entropy cannot move the mixing
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 8, 1, 1, generator=gen).expand(32, 8, 4, 4)
    y = torch.randint(0, 3, (32,), generator=gen)
    entropies = {}
    for weight in (0.0, 1.0):
        module = _hybrid_module(weight)
        with torch.no_grad():
            module.model.pool.mix_logits.copy_(torch.tensor([0.2, 0.0, -0.2]))
        start = _entropy_of(module)
        opt = torch.optim.SGD(module.parameters(), lr=2.0)  # (Adam would blow rounding noise up to full steps)
        for _ in range(40):
            loss, _ = module.training_loss(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        entropies[weight] = _entropy_of(module)
    assert entropies[0.0] == pytest.approx(start, abs=1e-4)
    assert entropies[1.0] < 0.3 * start, entropies


def _entropy_of(module: ClassificationModule) -> float:
    weights = torch.stack(list(module.model.pool.effective_weights().values()))  # (n_branches,)
    return float(mixing_entropy(weights.unsqueeze(0)))


def test_a_pool_without_mixing_weights_is_refused_with_the_fix(make_cfg):
    with pytest.raises(ValueError, match="mixing scalar, channel or gate"):
        ClassificationModule(Classifier(SmallCNN(3, (8,)), "avg", 3), mix_entropy_weight=0.1)
    concat = Classifier(SmallCNN(3, (8,)), HybridPool(8, ("avg", "max"), mixing="concat"), 3)
    with pytest.raises(ValueError, match="mixing='concat'"):
        ClassificationModule(concat, mix_entropy_weight=0.1)
    with pytest.raises(ValueError, match="mix_entropy_weight"):
        ClassificationModule(concat, mix_entropy_weight=-1.0)
    with pytest.raises(ConfigError, match=r"module\.mix_entropy_weight.*pool=hybrid_scalar"):
        validate_config(make_cfg(["pool=gem", "+module.mix_entropy_weight=0.1"]))
    accepted = validate_config(make_cfg(["pool=hybrid_gate", "+module.mix_entropy_weight=0.1"]))
    assert accepted["module"]["mix_entropy_weight"] == 0.1
