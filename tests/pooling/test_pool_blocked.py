"""The eager CPU path (:class:`BlockedBranches`, a block of samples at a time) against :class:`FusedBranches` (the
whole batch at once, used under ``torch.compile`` and on GPUs), in float64: every subset of the four branches,
several blocks with a short last one, one or two heads, scalar or per-channel GeM exponents, tied maxima, exact
zeros, dead channels and values below GeM's clamp; plus gradcheck of the blocked backward."""

from __future__ import annotations

import itertools

import pytest
import torch
from pool_refs import randomize_

from hybridpool.pooling import HybridPool, _fused

B, C, N = 7, 8, 6
SUBSETS = [s for s in itertools.product([False, True], repeat=4) if any(s)]


def subset_id(branches) -> str:
    return "-".join(k for k, on in zip(("avg", "max", "gem", "attn"), branches, strict=True) if on)


@pytest.fixture
def blocks_of_three(monkeypatch):
    """Blocks of 3 samples, so that 7 samples make 3 blocks, the last one short."""
    monkeypatch.setattr(_fused, "_BLOCK_BYTES", 3 * C * N * 8)


def awkward(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(B, C, N, generator=gen, dtype=torch.float64) * 2) / 2  # ties
    x = torch.where(x < -0.6, torch.zeros_like(x), x)  # exact zeros; some negatives stay
    x[0, 1] = 0.0  # a dead channel
    return x


def parameters(heads: int, per_channel: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    p = 2.0 + torch.rand((C,) if per_channel else (), generator=gen, dtype=torch.float64)
    weight = torch.randn(heads, C, generator=gen, dtype=torch.float64)
    log_t = torch.tensor(0.3, dtype=torch.float64)
    return p, weight, log_t


def run(fn, x, p, weight, log_t, branches, eps=1e-6):
    inputs = [t.clone().requires_grad_() for t in (x, p, weight, log_t)]
    descriptors, attn = fn.apply(*inputs, eps, branches)
    loss = (descriptors * torch.linspace(-1.0, 2.0, descriptors.numel(), dtype=x.dtype).view_as(descriptors)).sum()
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return descriptors.detach(), attn.detach(), grads


@pytest.mark.parametrize(("heads", "per_channel"), [(1, False), (2, True)], ids=["1head-scalar_p", "2heads-pc_p"])
@pytest.mark.parametrize("branches", SUBSETS, ids=[subset_id(s) for s in SUBSETS])
def test_blocked_equals_fused(branches, heads, per_channel, blocks_of_three):
    x = awkward()
    args = (x, *parameters(heads, per_channel))
    d_f, a_f, g_f = run(_fused.FusedBranches, *args, branches)
    d_b, a_b, g_b = run(_fused.BlockedBranches, *args, branches)
    torch.testing.assert_close(d_b, d_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_b, a_f, rtol=1e-12, atol=1e-12)
    for name, gb, gf in zip(("x", "p", "weight", "log_temperature"), g_b, g_f, strict=True):
        if gb is None or gf is None:  # an unused input: no gradient, or an all-zero one
            assert (gb is None or not gb.any()) and (gf is None or not gf.any()), name
        else:
            torch.testing.assert_close(gb, gf, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("branches", SUBSETS, ids=[subset_id(s) for s in SUBSETS])
def test_blocked_gradcheck(branches, blocks_of_three):
    gen = torch.Generator().manual_seed(2)
    x = 0.1 + torch.rand(B, C, N, generator=gen, dtype=torch.float64)  # distinct values
    x[1, 2] -= 0.7  # some below eps = 1e-3, none near it
    x = torch.where((x - 1e-3).abs() < 0.02, x + 0.05, x)
    p, weight, log_t = parameters(2, True)
    inputs = [t.requires_grad_() for t in (x, p, weight, log_t)]
    assert torch.autograd.gradcheck(
        lambda *a: _fused.BlockedBranches.apply(*a, 1e-3, branches)[0], inputs, eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_blocked_gem_with_p_one(blocks_of_three):
    """p = 1 exactly (a fixed GeM exponent may be 1): no 0 * log 0 in the backward, clamped inputs get nothing."""
    x = torch.relu(awkward(seed=3))
    _, weight, log_t = parameters(1, False)
    p = torch.tensor(1.0, dtype=torch.float64)
    for branches in [(False, False, True, False), (True, True, True, True)]:
        d_f, _, g_f = run(_fused.FusedBranches, x, p, weight, log_t, branches)
        d_b, _, g_b = run(_fused.BlockedBranches, x, p, weight, log_t, branches)
        torch.testing.assert_close(d_b, d_f, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_b[0], g_f[0], rtol=1e-10, atol=1e-12)
        assert torch.isfinite(g_b[0]).all()


def test_blocked_one_sample_wider_than_a_block(monkeypatch):
    """A sample larger than the block size still makes blocks of one sample."""
    monkeypatch.setattr(_fused, "_BLOCK_BYTES", 16)
    x = awkward(seed=4)
    args = (x, *parameters(2, False))
    d_f, _, g_f = run(_fused.FusedBranches, *args, (True, True, True, True))
    d_b, _, g_b = run(_fused.BlockedBranches, *args, (True, True, True, True))
    torch.testing.assert_close(d_b, d_f, rtol=1e-12, atol=1e-12)
    for gb, gf in zip(g_b, g_f, strict=True):
        torch.testing.assert_close(gb, gf, rtol=1e-10, atol=1e-12)


def test_eager_cpu_uses_the_blocked_path(monkeypatch):
    """pool_branches picks BlockedBranches for eager CPU tensors (FusedBranches is for compile and GPUs)."""
    calls = []
    original = _fused.BlockedBranches.apply
    monkeypatch.setattr(_fused.BlockedBranches, "apply", lambda *a: calls.append(1) or original(*a))
    _fused.pool_branches(torch.rand(2, C, 3, 3), (True, True, False, False))
    assert calls


@pytest.mark.parametrize("per_channel", [False, True])
def test_no_grad_forward_equals_grad_forward(per_channel, blocks_of_three):
    """Under torch.no_grad() the branches run without an autograd.Function (nothing kept for backward)."""
    layer = HybridPool(C, branch_kwargs={"gem": {"per_channel": per_channel}, "attn": {"heads": 2}}).double()
    randomize_(layer, seed=5)
    x = awkward(seed=6).view(B, C, 2, 3)
    with_grad = layer(x)
    assert with_grad.requires_grad
    with torch.no_grad():
        without = layer(x)
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-12, atol=1e-12)


def test_compiled_no_grad_forward_equals_eager():
    """The compiled inference path (branch_forward without FusedBranches) gives eager's values."""
    layer = HybridPool(C, branch_kwargs={"attn": {"heads": 2}})
    randomize_(layer, seed=7)
    x = 0.05 + torch.rand(3, C, 4, 5, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        eager = layer(x)
        compiled = torch.compile(layer, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("limit", [0.0, 100.0], ids=["row-shifted", "unshifted"])
@pytest.mark.parametrize("p_value", [1.0, 3.0, 40.0])
def test_blocked_gem_both_power_forms(limit, p_value, monkeypatch, blocks_of_three):
    """GeM's two elementwise forms (x^p then / max^p per row, or (x / max)^p) against FusedBranches, float64;
    p = 40 makes x^p overflow float32, so it always takes the shifted form."""
    monkeypatch.setattr(_fused, "_UNSHIFTED_LOG2_LIMIT", limit)
    x = awkward(seed=9) * 3.0
    _, weight, log_t = parameters(1, False)
    p = torch.tensor(p_value, dtype=torch.float64)
    branches = (True, True, True, True)
    d_f, _, g_f = run(_fused.FusedBranches, x, p, weight, log_t, branches)
    d_b, _, g_b = run(_fused.BlockedBranches, x, p, weight, log_t, branches)
    torch.testing.assert_close(d_b, d_f, rtol=1e-11, atol=1e-12)
    for name, gb, gf in zip(("x", "p", "weight", "log_temperature"), g_b, g_f, strict=True):
        torch.testing.assert_close(gb, gf, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("limit", [0.0, 100.0], ids=["row-shifted", "unshifted"])
def test_blocked_float32_close_to_float64(limit, monkeypatch, blocks_of_three):
    """float32 values and gradients of both power forms stay close to a float64 run of the same inputs."""
    monkeypatch.setattr(_fused, "_UNSHIFTED_LOG2_LIMIT", limit)
    gen = torch.Generator().manual_seed(10)
    x = torch.relu(torch.randn(B, C, N, generator=gen, dtype=torch.float64)) * 50.0  # zeros and values up to ~150
    _, weight, log_t = parameters(2, False)
    weight = weight * 0.01  # logits of a few units: a saturated softmax would test float32's softmax instead
    p = torch.tensor(3.3, dtype=torch.float64)
    branches = (True, True, True, True)
    d64, _, g64 = run(_fused.BlockedBranches, x, p, weight, log_t, branches)
    d32, _, g32 = run(_fused.BlockedBranches, *(t.float() for t in (x, p, weight, log_t)), branches)
    torch.testing.assert_close(d32.double(), d64, rtol=2e-6, atol=1e-5)
    for name, g_a, g_b in zip(("x", "p", "weight", "log_temperature"), g32, g64, strict=True):
        torch.testing.assert_close(g_a.double(), g_b, rtol=2e-5, atol=2e-5, msg=f"gradient of {name}")


def test_blocked_mixed_power_forms_in_one_block_and_batch_independence():
    """Samples whose x^p would overflow float32 take the shifted form next to samples that do not, in one block:
    values and gradients match FusedBranches, and in float32 each sample's output is the same alone and in the
    batch (the form is chosen per sample; elementwise kernels may still round a vector's tail differently)."""
    x = torch.relu(awkward(seed=11)) + 0.25
    x[2] *= 1e25  # log2 ~ 83: 3 * 83 > 100, this sample takes the shifted form
    x[5] *= 1e20  # log2 ~ 66: shifted as well
    _, weight, log_t = parameters(1, False)
    weight = weight * 1e-27  # keep the softmax finite next to the large sample
    p = torch.tensor(3.0, dtype=torch.float64)
    branches = (True, True, True, True)
    runs = _fused._power_form_runs(p, x.amax(2).clamp_min(1e-6).log2(), 1e-6)
    assert [r[2] for r in runs] == [True, False, True, False, True] and runs[-1][1] == B
    d_f, _, g_f = run(_fused.FusedBranches, x, p, weight, log_t, branches)
    d_b, _, g_b = run(_fused.BlockedBranches, x, p, weight, log_t, branches)
    torch.testing.assert_close(d_b, d_f, rtol=1e-11, atol=0)
    for gb, gf in zip(g_b, g_f, strict=True):
        torch.testing.assert_close(gb, gf, rtol=1e-9, atol=1e-40)
    x32, p32, w32, lt32 = (t.float() for t in (x, p, weight, log_t))
    with torch.no_grad():
        batch, _, _ = _fused.blocked_forward(x32, p32, w32, lt32, 1e-6, branches)
        for i in range(B):
            alone, _, _ = _fused.blocked_forward(x32[i : i + 1], p32, w32, lt32, 1e-6, branches)
            torch.testing.assert_close(alone[0], batch[i], rtol=1e-6, atol=0, msg=f"sample {i}")
