"""The eager CPU path (:class:`BlockedBranches`, a block of samples at a time) against :class:`FusedBranches` (the
whole batch at once, used under ``torch.compile`` and on GPUs), in float64: every subset of the four branches,
several blocks with a short last one, one or two heads, scalar or per-channel GeM exponents, tied maxima, exact
zeros, dead channels and values below GeM's clamp; plus gradcheck of the blocked backward (both power forms),
empty batches, GeM exponents below 1, and half precision / channels_last inputs against float64 references."""

from __future__ import annotations

import itertools

import pytest
import torch
from pool_refs import as_float64, layer_reference, randomize_, ref_attention, ref_avg, ref_gem

from hybridpool.pooling import HybridPool, kernels
from hybridpool.pooling.kernels import blocked, reference

B, C, N = 7, 8, 6
SUBSETS = [s for s in itertools.product([False, True], repeat=4) if any(s)]


def subset_id(branches) -> str:
    return "-".join(k for k, on in zip(("avg", "max", "gem", "attn"), branches, strict=True) if on)


@pytest.fixture
def blocks_of_three(monkeypatch):
    """Blocks of 3 samples, so that 7 samples make 3 blocks, the last one short."""
    monkeypatch.setattr(blocked, "_BLOCK_BYTES", 3 * C * N * 8)


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
    d_f, a_f, g_f = run(reference.FusedBranches, *args, branches)
    d_b, a_b, g_b = run(blocked.BlockedBranches, *args, branches)
    torch.testing.assert_close(d_b, d_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_b, a_f, rtol=1e-12, atol=1e-12)
    for name, gb, gf in zip(("x", "p", "weight", "log_temperature"), g_b, g_f, strict=True):
        if gb is None or gf is None:  # an unused input: no gradient, or an all-zero one
            assert (gb is None or not gb.any()) and (gf is None or not gf.any()), name
        else:
            torch.testing.assert_close(gb, gf, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def gradcheck_input() -> torch.Tensor:
    """Distinct float64 values in about ``[0.1, 1.1]``, some below ``eps = 1e-3`` but none near it."""
    gen = torch.Generator().manual_seed(2)
    x = 0.1 + torch.rand(B, C, N, generator=gen, dtype=torch.float64)  # distinct values
    x[1, 2] -= 0.7  # some below eps = 1e-3, none near it
    return torch.where((x - 1e-3).abs() < 0.02, x + 0.05, x)


def forms(p: torch.Tensor, x: torch.Tensor, eps: float) -> list[bool]:
    """Per sample of ``x`` ``(B, C, N)``: whether GeM's elementwise steps take the unshifted form (``x^p``)."""
    runs = blocked._power_form_runs(p, x.amax(2).clamp_min(eps).log2(), eps)
    return [unshifted for r0, r1, unshifted in runs for _ in range(r0, r1)]


@pytest.mark.parametrize("branches", SUBSETS, ids=[subset_id(s) for s in SUBSETS])
def test_blocked_gradcheck(branches, blocks_of_three):
    x = gradcheck_input()
    p, weight, log_t = parameters(2, True)
    assert forms(p, x, 1e-3) == [False] * B  # per-channel p: always the row-shifted form
    inputs = [t.requires_grad_() for t in (x, p, weight, log_t)]
    assert torch.autograd.gradcheck(
        lambda *a: blocked.BlockedBranches.apply(*a, 1e-3, branches)[0], inputs, eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize("p_value", [2.5, 5.0, 0.5])
@pytest.mark.parametrize("branches", [(False, False, True, False), (True, True, True, True)], ids=subset_id)
def test_blocked_gradcheck_unshifted_scalar_p(branches, p_value, blocks_of_three):
    """A scalar p <= 5 on moderate values takes the unshifted form (x^p, then / max^p per row) in forward and
    backward (x^(p-1)); gradcheck that form's backward, p < 1 included."""
    x = gradcheck_input()
    _, weight, log_t = parameters(2, False)
    p = torch.tensor(p_value, dtype=torch.float64)
    assert forms(p, x, 1e-3) == [True] * B
    inputs = [t.requires_grad_() for t in (x, p, weight, log_t)]
    assert torch.autograd.gradcheck(
        lambda *a: blocked.BlockedBranches.apply(*a, 1e-3, branches)[0], inputs, eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_blocked_gem_with_p_one(blocks_of_three):
    """p = 1 exactly (a fixed GeM exponent may be 1): no 0 * log 0 in the backward, clamped inputs get nothing."""
    x = torch.relu(awkward(seed=3))
    _, weight, log_t = parameters(1, False)
    p = torch.tensor(1.0, dtype=torch.float64)
    for branches in [(False, False, True, False), (True, True, True, True)]:
        d_f, _, g_f = run(reference.FusedBranches, x, p, weight, log_t, branches)
        d_b, _, g_b = run(blocked.BlockedBranches, x, p, weight, log_t, branches)
        torch.testing.assert_close(d_b, d_f, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_b[0], g_f[0], rtol=1e-10, atol=1e-12)
        assert torch.isfinite(g_b[0]).all()


def test_blocked_one_sample_wider_than_a_block(monkeypatch):
    """A sample larger than the block size still makes blocks of one sample."""
    monkeypatch.setattr(blocked, "_BLOCK_BYTES", 16)
    x = awkward(seed=4)
    args = (x, *parameters(2, False))
    d_f, _, g_f = run(reference.FusedBranches, *args, (True, True, True, True))
    d_b, _, g_b = run(blocked.BlockedBranches, *args, (True, True, True, True))
    torch.testing.assert_close(d_b, d_f, rtol=1e-12, atol=1e-12)
    for gb, gf in zip(g_b, g_f, strict=True):
        torch.testing.assert_close(gb, gf, rtol=1e-10, atol=1e-12)


def test_eager_cpu_uses_the_blocked_path(monkeypatch):
    """pool_branches picks BlockedBranches for eager float64 CPU tensors (float32 goes to the native kernel,
    FusedBranches is for compile and GPUs)."""
    calls = []
    original = blocked.BlockedBranches.apply
    monkeypatch.setattr(blocked.BlockedBranches, "apply", lambda *a: calls.append(1) or original(*a))
    kernels.pool_branches(torch.rand(2, C, 3, 3, dtype=torch.float64), (True, True, False, False))
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


@pytest.mark.parametrize(
    ("limit", "p_value", "unshifted"),
    [(0.0, 1.0, False), (0.0, 3.0, False), (100.0, 1.0, True), (100.0, 3.0, True), (100.0, 40.0, False)],
    ids=["row-shifted-p1", "row-shifted-p3", "unshifted-p1", "unshifted-p3", "row-shifted-p40"],
)
def test_blocked_gem_both_power_forms(limit, p_value, unshifted, monkeypatch, blocks_of_three):
    """GeM's two elementwise forms (x^p then / max^p per row, or (x / max)^p) against FusedBranches, float64;
    p = 40 makes x^p overflow float32 (40 * |log2 1e-6| > 100), so it takes the shifted form at the usual limit."""
    monkeypatch.setattr(blocked, "_UNSHIFTED_LOG2_LIMIT", limit)
    x = awkward(seed=9) * 3.0
    _, weight, log_t = parameters(1, False)
    p = torch.tensor(p_value, dtype=torch.float64)
    assert forms(p, x, 1e-6) == [unshifted] * B
    branches = (True, True, True, True)
    d_f, _, g_f = run(reference.FusedBranches, x, p, weight, log_t, branches)
    d_b, _, g_b = run(blocked.BlockedBranches, x, p, weight, log_t, branches)
    torch.testing.assert_close(d_b, d_f, rtol=1e-11, atol=1e-12)
    for name, gb, gf in zip(("x", "p", "weight", "log_temperature"), g_b, g_f, strict=True):
        torch.testing.assert_close(gb, gf, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("limit", [0.0, 100.0], ids=["row-shifted", "unshifted"])
def test_blocked_float32_close_to_float64(limit, monkeypatch, blocks_of_three):
    """float32 values and gradients of both power forms stay close to a float64 run of the same inputs."""
    monkeypatch.setattr(blocked, "_UNSHIFTED_LOG2_LIMIT", limit)
    gen = torch.Generator().manual_seed(10)
    x = torch.relu(torch.randn(B, C, N, generator=gen, dtype=torch.float64)) * 50.0  # zeros and values up to ~150
    _, weight, log_t = parameters(2, False)
    weight = weight * 0.01  # logits of a few units: a saturated softmax would test float32's softmax instead
    p = torch.tensor(3.3, dtype=torch.float64)
    branches = (True, True, True, True)
    d64, _, g64 = run(blocked.BlockedBranches, x, p, weight, log_t, branches)
    d32, _, g32 = run(blocked.BlockedBranches, *(t.float() for t in (x, p, weight, log_t)), branches)
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
    runs = blocked._power_form_runs(p, x.amax(2).clamp_min(1e-6).log2(), 1e-6)
    assert [r[2] for r in runs] == [True, False, True, False, True] and runs[-1][1] == B
    d_f, _, g_f = run(reference.FusedBranches, x, p, weight, log_t, branches)
    d_b, _, g_b = run(blocked.BlockedBranches, x, p, weight, log_t, branches)
    torch.testing.assert_close(d_b, d_f, rtol=1e-11, atol=0)
    for gb, gf in zip(g_b, g_f, strict=True):
        torch.testing.assert_close(gb, gf, rtol=1e-9, atol=1e-40)
    x32, p32, w32, lt32 = (t.float() for t in (x, p, weight, log_t))
    with torch.no_grad():
        batch, _, _ = blocked.blocked_forward(x32, p32, w32, lt32, 1e-6, branches)
        for i in range(B):
            alone, _, _ = blocked.blocked_forward(x32[i : i + 1], p32, w32, lt32, 1e-6, branches)
            torch.testing.assert_close(alone[0], batch[i], rtol=1e-6, atol=0, msg=f"sample {i}")


# --- empty batches -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [blocked.BlockedBranches, reference.FusedBranches], ids=["blocked", "fused"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar_p", "pc_p"])
def test_empty_batch_through_the_branch_functions(fn, per_channel):
    """B = 0: descriptors (0, 4, C), attention (0, heads, N), an empty input gradient and zero parameter gradients."""
    x = torch.empty(0, C, N, dtype=torch.float64)
    descriptors, attn, grads = run(fn, x, *parameters(2, per_channel), (True, True, True, True))
    assert descriptors.shape == (0, 4, C) and attn.shape == (0, 2, N)
    assert grads[0].shape == (0, C, N)
    for g in grads[1:]:
        assert g is None or not g.any()
    with torch.no_grad():
        descriptors, attn, _ = blocked.blocked_forward(x, *parameters(2, per_channel), 1e-6, (True, True, True, True))
    assert descriptors.shape == (0, 4, C) and attn.shape == (0, 2, N)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_empty_batch_through_hybrid_pool(grad):
    """An empty batch through HybridPool on the eager CPU path gives (0, C), and with grad a backward that works,
    as the unfused branches do."""
    layers = {
        fused: HybridPool(C, branch_kwargs={"attn": {"heads": 2}}, fused=fused).double() for fused in (True, False)
    }
    layers[False].load_state_dict(layers[True].state_dict())
    results = {}
    for fused, layer in layers.items():
        x = torch.empty(0, C, 3, 3, dtype=torch.float64, requires_grad=grad)
        with torch.set_grad_enabled(grad):
            out, extras = layer.forward_with_extras(x)
        assert out.shape == (0, C) and extras["attn"].shape == (0, 2, 3, 3)
        assert out.requires_grad == grad
        if grad:
            (out.sum() + extras["descriptors"].sum()).backward()
            assert x.grad.shape == x.shape
            results[fused] = {n: p.grad for n, p in layer.named_parameters()}
    if grad:
        assert results[True].keys() == results[False].keys()
        for name, g_fused in results[True].items():
            g_plain = results[False][name]
            assert (g_fused is None or not g_fused.any()) and (g_plain is None or not g_plain.any()), name


# --- GeM exponents below 1 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p_value", "unshifted"), [(0.5, True), (0.2, True), (-2.0, False)])
def test_blocked_gem_p_below_one_float32_close_to_float64(p_value, unshifted, blocks_of_three):
    """GeM's layers keep p >= 1, but the branch functions take any p: below 1 the backward's exponent p - 1 is the
    larger one. Forward raises x to p, backward to p - 1, so the form check bounds both: for p = -2 and values up to
    1e15, x^(p-1) would leave float32 (2^-150) although |p log2 x| < 100. float32 values and gradients stay finite
    and match FusedBranches in float64."""
    gen = torch.Generator().manual_seed(12)
    x = (10.0 ** (12.0 + 3.0 * torch.rand(B, C, N, generator=gen, dtype=torch.float64))).float().double()
    _, weight, log_t = parameters(1, False)
    p = torch.tensor(p_value, dtype=torch.float64)
    assert forms(p, x, 1e-6) == [unshifted] * B
    branches = (True, True, True, False)
    d64, _, g64 = run(reference.FusedBranches, x, p, weight, log_t, branches)
    d32, _, g32 = run(blocked.BlockedBranches, *(t.float() for t in (x, p, weight, log_t)), branches)
    assert torch.isfinite(d32).all()
    torch.testing.assert_close(d32.double(), d64, rtol=1e-5, atol=0)  # S^(1/p) multiplies S's error by 1/p
    for name, g_a, g_b in zip(("x", "p"), g32[:2], g64[:2], strict=True):
        assert torch.isfinite(g_a).all(), name
        torch.testing.assert_close(g_a.double(), g_b, rtol=5e-5, atol=1e-6 * float(g_b.abs().max()), msg=name)


# --- half precision and channels_last on the eager CPU path -----------------------------------------------------

# (dtype, largest value, rtol): float16 near its max, bfloat16 far beyond float32's sqrt; rtol a few roundings
HALF_CASES = {
    "fp16": (torch.float16, 6e4, 2e-3),
    "bf16": (torch.bfloat16, 1e30, 1.6e-2),
    "fp32": (torch.float32, 1e30, 1e-5),
}


def large_input(dtype: torch.dtype, largest: float, channels_last: bool) -> torch.Tensor:
    """``(4, C, 4, 5)``, values in ``[0.01, 1]`` times a per-sample scale up to ``largest`` (sample 0 at most 1e4),
    some exact zeros; rounded to ``dtype``, in channels_last layout if asked."""
    gen = torch.Generator().manual_seed(13)
    x = 0.01 + 0.99 * torch.rand(4, C, 4, 5, generator=gen, dtype=torch.float64)
    scales = torch.tensor([min(1.0, 1e4 / largest), 1e-2, 0.5, 1.0], dtype=torch.float64)
    x = x * scales.view(4, 1, 1, 1) * largest
    x[:, :, 1, 2] = 0.0
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def assert_close_per_sample(actual: torch.Tensor, expected: torch.Tensor, rtol: float, msg: str = "") -> None:
    """Elementwise ``rtol``, plus ``rtol`` of each sample's largest magnitude (samples differ in scale by 1e6)."""
    scale = expected.abs().flatten(1).amax(1).clamp_min(1e-300).view(-1, *[1] * (expected.dim() - 1))
    torch.testing.assert_close(actual.double() / scale, expected / scale, rtol=rtol, atol=rtol, msg=msg)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(HALF_CASES))
def test_pool_branches_half_and_channels_last_close_to_float64(case, channels_last):
    """pool_branches (eager CPU: BlockedBranches) on float16 / bfloat16 / float32 maps with large values, in either
    layout: finite descriptors, attention and gradients, close to the float64 references of the same values."""
    dtype, largest, rtol = HALF_CASES[case]
    x = large_input(dtype, largest, channels_last).requires_grad_()
    gen = torch.Generator().manual_seed(14)
    p = torch.tensor(3.0)
    weight = (torch.rand(2, C, 1, 1, generator=gen) - 0.5) / largest * 4  # logits of a few units
    log_t = torch.tensor(0.2)
    # float16's values all take GeM's unshifted form; the others both forms in one batch (x^3 leaves float32 for
    # x above 1e13)
    expected = [True] * 4 if dtype == torch.float16 else [True, False, False, False]
    assert forms(p, x.detach().float().flatten(2), 1e-6) == expected
    descriptors, attn = kernels.pool_branches(x, (True, True, True, True), p, weight, log_t)
    assert descriptors.dtype == dtype and torch.isfinite(descriptors).all() and torch.isfinite(attn).all()
    g = torch.linspace(-1.0, 2.0, descriptors.numel(), dtype=torch.float64).view_as(descriptors)
    (descriptors.double() * g).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()

    x64 = x.detach().double().contiguous().requires_grad_()
    ref_pooled, ref_attn = ref_attention(x64, weight, None, torch.exp(as_float64(log_t)), 2)
    ref_max = x64.flatten(2).amax(2)  # amax: tied maxima (bfloat16 rounding makes some) share the gradient
    ref = torch.stack([ref_avg(x64), ref_max, ref_gem(x64, 3.0), ref_pooled], dim=1)
    (ref * g).sum().backward()
    assert_close_per_sample(descriptors, ref.detach(), rtol, "descriptors")
    torch.testing.assert_close(attn.double(), ref_attn.detach(), rtol=rtol, atol=rtol)
    assert_close_per_sample(x.grad, x64.grad, rtol, "gradient of x")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(HALF_CASES))
def test_hybrid_pool_half_and_channels_last_close_to_float64(case, channels_last):
    """HybridPool (float32 parameters, eager CPU) on float16 / bfloat16 / float32 maps with large values: a finite
    output in the input's dtype, close to the float64 reference, and a finite input gradient. (Parameter gradients
    are not checked: at 1e30 the attention projection's true gradient, about x^2, lies beyond float32.)"""
    dtype, largest, rtol = HALF_CASES[case]
    layer = HybridPool(C, branch_kwargs={"attn": {"heads": 2}})
    randomize_(layer, seed=15)
    with torch.no_grad():
        layer.branches["attn"].proj.weight.mul_(4.0 / largest)  # attention logits of a few units
    x = large_input(dtype, largest, channels_last).requires_grad_()
    out = layer(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_close_per_sample(out, layer_reference(layer, x.detach().double()), 2 * rtol, "output")
    out.double().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
