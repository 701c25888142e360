"""The native CPU kernel (``kernels/native.c`` through its torch op, :func:`kernels.ops.branches`, float32)
against :class:`kernels.reference.FusedBranches` in float64: values and every gradient for all subsets of the four
branches, one or two heads, scalar or per-channel GeM exponents, both forms of GeM's powers (flat and shifted per
row), tied maxima, values below GeM's clamp; plus which path ``pool_branches`` takes, the build cache, the fallback
without a compiler, threads, NaN inputs and empty batches.

The kernel must build here: a missing compiler fails these tests instead of skipping them (``.ci/run`` installs
one)."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from pool_refs import randomize_, ref_attention

from hybridpool.pooling import AttentionPool, HybridPool, LSEPool, kernels
from hybridpool.pooling.functional import lse_pool
from hybridpool.pooling.kernels import native, ops, reference

B, C, N = 5, 8, 13
SUBSETS = [s for s in itertools.product([False, True], repeat=4) if any(s)]
F32 = {"rtol": 2e-5, "atol": 2e-6}  # float32 kernel against float64 maths


def subset_id(branches) -> str:
    return "-".join(k for k, on in zip(("avg", "max", "gem", "attn"), branches, strict=True) if on)


def awkward(seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """float64 ``(B, C, N)``: ties, exact zeros, negatives, values below the clamp and a dead channel."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(B, C, N, generator=gen, dtype=torch.float64) * 2) / 2
    x = torch.where(x < -0.6, torch.zeros_like(x), x) * scale
    x[0, 1] = 0.0
    x[1, 2, 3] = 1e-9  # below eps
    return x


def parameters(heads: int, per_channel: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    p = 2.0 + torch.rand((C,) if per_channel else (), generator=gen, dtype=torch.float64)
    weight = torch.randn(heads, C, generator=gen, dtype=torch.float64)
    return p, weight, torch.tensor(0.3, dtype=torch.float64)


def run(fn, x, p, weight, log_t, branches, *extra, eps=1e-6):
    inputs = [t.clone().requires_grad_() for t in (x, p, weight, log_t)]
    descriptors, attn = fn(*inputs, eps, branches, *extra)
    ramp = torch.linspace(-1.0, 2.0, descriptors.numel(), dtype=x.dtype).view_as(descriptors)
    grads = torch.autograd.grad((descriptors * ramp).sum(), inputs, allow_unused=True)
    return descriptors.detach(), attn.detach(), grads


def assert_native_matches_float64(x, p, weight, log_t, branches, tol=F32):
    d64, a64, g64 = run(reference.FusedBranches.apply, x, p, weight, log_t, branches)
    d32, a32, g32 = run(ops.branches, *(t.float() for t in (x, p, weight, log_t)), branches)
    scale = d64.abs().max().clamp_min(1.0)
    torch.testing.assert_close(d32.double() / scale, d64 / scale, **tol)
    if branches[3]:
        torch.testing.assert_close(a32.double(), a64, **tol)
    for name, g_native, g_ref in zip(("x", "p", "weight", "log_t"), g32, g64, strict=True):
        assert (g_native is None) == (g_ref is None), name
        if g_ref is not None:
            g_scale = g_ref.abs().max().clamp_min(1e-3)
            torch.testing.assert_close(g_native.double() / g_scale, g_ref / g_scale, **tol, msg=name)


def test_the_kernel_builds_here():
    assert native.library() is not None, "no native kernel: is a C compiler (cc) installed?"


@pytest.mark.parametrize(("heads", "per_channel"), [(1, False), (2, True)], ids=["1head-scalar_p", "2heads-pc_p"])
@pytest.mark.parametrize("branches", SUBSETS, ids=[subset_id(s) for s in SUBSETS])
def test_native_equals_float64_fused(branches, heads, per_channel):
    assert_native_matches_float64(awkward(), *parameters(heads, per_channel), branches)


@pytest.mark.parametrize(("scale", "p", "flat"), [(1.0, 3.0, True), (1e12, 8.0, False)], ids=["flat", "shifted"])
def test_both_forms_of_gem_powers(scale, p, flat):
    """GeM's powers over a whole block of channels (flat) while x^p and x^(p-1) stay normal floats, that is while
    max(|p|, |p - 1|) * max(|log2 eps|, |log2 max|) <= 100; else shifted row by row by each row's max (here values
    up to 1e12 with p = 8, where the flat x^p would overflow). Both match float64."""
    x = awkward(seed=3, scale=scale).abs() + 0.01 * scale
    bound = max(abs(math.log2(1e-6)), float(x.amax().log2().abs()))
    assert (p * bound <= 100) == flat
    _, weight, log_t = parameters(1, False)
    assert_native_matches_float64(x, torch.tensor(p, dtype=torch.float64), weight, log_t, (True, True, True, False))


def test_no_grad_forward_equals_grad_forward():
    x, (p, weight, log_t) = awkward(seed=4).float(), (t.float() for t in parameters(2, True))
    with_grad, attn, _ = run(ops.branches, x, p, weight, log_t, (True, True, True, True))
    without, attn_ng, _ = native.native_forward(x, p, weight, log_t, 1e-6, (True, True, True, True))
    torch.testing.assert_close(without, with_grad, rtol=0, atol=0)
    torch.testing.assert_close(attn_ng, attn, rtol=0, atol=0)


def test_threads_and_batch_independence():
    """Two threads split the batch: the same values as one thread and as each sample alone."""
    x = torch.rand(9, C, N) + 0.1
    p, weight, log_t = (t.float() for t in parameters(2, False))
    args = (p, weight, log_t, 1e-6, (True, True, True, True))
    torch.set_num_threads(2)
    two, _, _ = native.native_forward(x, *args)
    torch.set_num_threads(1)
    one, _, _ = native.native_forward(x, *args)
    torch.testing.assert_close(two, one, rtol=0, atol=0)
    for i in range(9):
        alone, _, _ = native.native_forward(x[i : i + 1].contiguous(), *args)
        torch.testing.assert_close(alone[0], one[i], rtol=0, atol=0)


def test_empty_batch_and_nan_rows():
    p, weight, log_t = (t.float() for t in parameters(1, False))
    branches = (True, True, True, True)
    empty, attn, _ = native.native_forward(torch.rand(0, C, N), p, weight, log_t, 1e-6, branches)
    assert empty.shape == (0, 4, C) and attn.shape == (0, 1, N)
    x = torch.rand(2, C, N)
    x[1, 3, 5] = float("nan")
    out, _, _ = native.native_forward(x, p, weight, log_t, 1e-6, branches)
    assert torch.isnan(out[1, 0, 3]) and torch.isnan(out[1, 1, 3])  # avg and max of the NaN row
    assert torch.isfinite(out[0]).all()


def test_pool_branches_routes_float32_cpu_to_the_kernel(monkeypatch):
    calls = []
    original = native.native_forward
    monkeypatch.setattr(native, "native_forward", lambda *a: calls.append(a[0].dtype) or original(*a))
    p = torch.tensor(3.0, requires_grad=True)
    kernels.pool_branches(torch.rand(2, C, 3, 3), (True, False, True, False), p=p)
    kernels.pool_branches(torch.rand(2, C, 3, 3, dtype=torch.float64), (True, False, True, False), p=p.double())
    kernels.pool_branches(torch.rand(2, C, 3, 3), (True, False, True, False), p=torch.tensor(0.5))  # p < 1: torch
    assert calls == [torch.float32]


def test_hybrid_pool_on_the_kernel_matches_float64():
    """The whole layer (channel mixing, per-channel GeM, two heads, channels_last input) in float32 on the kernel
    against the same layer in float64 on the torch path."""
    layer = HybridPool(C, mixing="channel", branch_kwargs={"gem": {"per_channel": True}, "attn": {"heads": 2}})
    randomize_(layer, seed=2)
    x = (torch.rand(3, C, 4, 5) + 0.05).to(memory_format=torch.channels_last)
    ref = layer.double()(x.double())
    out = layer.float()(x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_attention_pool_runs_on_the_kernel_and_matches_float64(monkeypatch):
    """AttentionPool on its own (2 heads, learnable temperature) takes the kernel in float32; its output, attention
    maps and the gradients of the projection, the temperature and the input match the float64 torch path."""
    calls = []
    original = native.native_forward
    monkeypatch.setattr(native, "native_forward", lambda *a: calls.append(a[5]) or original(*a))
    layer = AttentionPool(C, heads=2, temperature=0.7, learn_temperature=True)
    randomize_(layer, seed=4)
    x64 = torch.randn(3, C, 4, 5, dtype=torch.float64)
    results = {}
    for dtype in (torch.float64, torch.float32):
        layer = layer.to(dtype)
        layer.zero_grad()
        x = x64.to(dtype).detach().requires_grad_()
        out, extras = layer.forward_with_extras(x)
        (out * torch.linspace(-1, 2, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        grads = (x.grad, layer.proj.weight.grad, layer.log_temperature.grad)
        results[dtype] = [t.detach().double().clone() for t in (out, extras["attn"], *grads)]
    assert calls == [(False, False, False, True)]  # float32 only
    for got, want in zip(results[torch.float32], results[torch.float64], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    ref_out, ref_attn = ref_attention(x64, layer.proj.weight, None, layer.temperature.double(), 2)
    torch.testing.assert_close(results[torch.float64][0], ref_out)
    torch.testing.assert_close(results[torch.float64][1], ref_attn)


def test_gap_init_stays_bit_exact_on_the_kernel(monkeypatch):
    calls = []
    original = native.native_forward
    monkeypatch.setattr(native, "native_forward", lambda *a: calls.append(1) or original(*a))
    layer = HybridPool(C, init="gap")
    x = torch.randn(3, C, 5, 7)
    assert torch.equal(layer(x), x.mean((2, 3)))
    with torch.no_grad():
        assert torch.equal(layer(x), x.mean((2, 3)))
    assert calls


def test_build_cache_and_switch(tmp_path, monkeypatch):
    """The library is built once into HYBRIDPOOL_NATIVE_DIR and reused; HYBRIDPOOL_NATIVE=0 switches it off."""
    monkeypatch.setenv("HYBRIDPOOL_NATIVE_DIR", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library() is not None
        (built,) = tmp_path.glob("hybridpool_native_*.so")
        stamp = built.stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library() is not None
        assert built.stat().st_mtime_ns == stamp and list(tmp_path.iterdir()) == [built]
        monkeypatch.setenv("HYBRIDPOOL_NATIVE", "0")
        native.library.cache_clear()
        assert native.library() is None
    finally:
        native.library.cache_clear()


def test_without_a_compiler_one_warning_and_the_torch_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDPOOL_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-hybridpool")
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler 'no-such-compiler-hybridpool'"):
            assert native.library() is None
        layer = HybridPool(C)
        x = torch.rand(2, C, 3, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the warning came once, from the first call
            out = layer(x)
        torch.testing.assert_close(out.double(), layer.double()(x.double()), rtol=1e-5, atol=1e-6)
    finally:
        native.library.cache_clear()


def test_a_failing_build_warns_with_the_compiler_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDPOOL_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_FLAGS", (*native._FLAGS, "-fno-such-flag-hybridpool"))
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no-such-flag-hybridpool"):
            assert native.library() is None
        assert not list(tmp_path.glob("*.so"))  # no half-written library left behind
    finally:
        native.library.cache_clear()


# ---------------------------------------------------------------------------------------------- log-sum-exp pooling
def lse64(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """float64 LSE pooling through torch.logsumexp: ``x`` ``(B, C, N)``, ``r`` ``()`` or ``(C,)`` -> ``(B, C)``."""
    r3 = r.view(1, -1, 1) if r.dim() else r
    return (torch.logsumexp(x * r3, dim=2) - math.log(x.shape[2])) / r


@pytest.mark.parametrize("scale", [1.0, 40.0], ids=["unit", "large"])  # large: r x up to ~500, exp(r x) overflows
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar_r", "channel_r"])
def test_lse_kernel_matches_float64_values_and_gradients(per_channel, scale):
    x64 = awkward(seed=5, scale=scale)
    gen = torch.Generator().manual_seed(6)
    r64 = torch.rand(C, generator=gen, dtype=torch.float64) * 2 + 0.2 if per_channel else torch.tensor(1.7).double()
    g = torch.randn(B, C, generator=gen, dtype=torch.float64)
    grads = {}
    for name, dtype in (("kernel", torch.float32), ("torch32", torch.float32), ("ref", torch.float64)):
        x, r = x64.to(dtype).requires_grad_(), r64.to(dtype).requires_grad_()
        y = ops.lse(x, r) if name == "kernel" else lse64(x, r)
        torch.autograd.backward(y, g.to(dtype))
        grads[name] = [t.detach().double() for t in (y, x.grad, r.grad)]
    # float32 error: within 2e-6 * scale + 2e-5 relative, or within twice torch's own float32 error. dL/dr sums
    # B * N terms with the cancellation E_w[x] - y; where torch's float32 logsumexp is off by ~3e-6 there, the
    # kernel's error follows the summation order its vector width gives (-march=native), so it is CPU-dependent.
    kernel, torch32, ref = grads["kernel"], grads["torch32"], grads["ref"]
    for what, got, torch_got, want in zip(("y", "dx", "dr"), kernel, torch32, ref, strict=True):
        err, torch_err = (got - want).abs(), (torch_got - want).abs()
        allowed = torch.maximum(2e-6 * scale + 2e-5 * want.abs(), 2 * torch_err)
        assert (err <= allowed).all(), f"{what}: error {err.max():.3g}, torch float32 {torch_err.max():.3g}"


def test_lse_kernel_non_finite_rows_follow_torch():
    """A -inf entry counts as exp(-inf) = 0; rows of -inf, +inf or NaN give what torch.logsumexp gives."""
    x = torch.rand(2, C, N) * 3
    x[0, 0, 4] = -math.inf
    x[0, 1] = -math.inf
    x[0, 2, 3] = math.inf
    x[1, 5, 6] = math.nan
    r = torch.tensor(0.8)
    got = ops.lse(x, r)
    torch.testing.assert_close(got, lse64(x.double(), r.double()).float(), rtol=2e-5, atol=2e-6, equal_nan=True)
    assert got[0, 1] == -math.inf and got[0, 2] == math.inf and math.isnan(got[1, 5])


def test_lse_kernel_threads_and_batch_independence():
    x, r = torch.randn(9, C, N), torch.rand(C) + 0.5
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = ops.lse(x, r)
        torch.set_num_threads(1)
        one = ops.lse(x, r)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(two, one, rtol=0, atol=0)
    torch.testing.assert_close(ops.lse(x[4:5].contiguous(), r)[0], one[4], rtol=0, atol=0)


def test_lse_pool_routes_float32_cpu_to_the_kernel(monkeypatch):
    """LSEPool (scalar and per-channel r, channels_last input, half precision) takes the kernel in float32 and
    torch.logsumexp in float64; the two agree."""
    calls = []
    original = native.lse_forward
    monkeypatch.setattr(native, "lse_forward", lambda *a: calls.append(a[0].dtype) or original(*a))
    for layer in (LSEPool(r=2.5), LSEPool(C, r=0.7, per_channel=True)):
        x = torch.randn(3, C, 4, 5).to(memory_format=torch.channels_last)
        calls.clear()
        out = layer(x)
        ref = layer.double()(x.double())
        layer.float()
        assert calls == [torch.float32]
        torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-6)
        half = layer(x.bfloat16())
        assert half.dtype == torch.bfloat16 and calls == [torch.float32, torch.float32]


def test_lse_with_a_non_positive_r_takes_torch(monkeypatch):
    calls = []
    original = native.lse_forward
    monkeypatch.setattr(native, "lse_forward", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, C, 3, 3)
    out = lse_pool(x, torch.tensor(-0.5))
    assert not calls
    torch.testing.assert_close(out.double(), lse64(x.double().flatten(2), torch.tensor(-0.5).double()), **F32)
