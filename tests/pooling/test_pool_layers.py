"""Values of every pooling layer against float64 references, their limits, shapes, layouts and batch independence."""

from __future__ import annotations

import math

import pytest
import torch
from pool_refs import (
    CONFIGS,
    HYBRID_CONFIGS,
    LAYER_CONFIGS,
    C,
    build,
    kmax_count,
    layer_reference,
    ref_avg,
    ref_gem,
    ref_kmax,
    ref_max,
)

from hybridpool.pooling import (
    AttentionPool,
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    HybridPool,
    KMaxPool,
    LSEPool,
    QueryAttentionPool,
)

TOL = {torch.float32: {"rtol": 2e-5, "atol": 2e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def feature_map(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Mostly positive values (some negative, so GeM's clamp is exercised)."""
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1.0).to(dtype)


def width(layer) -> int:
    return C * layer.feat_mult()


# --- values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_value_matches_float64_reference(name, dtype):
    layer = build(name).to(dtype)
    x = feature_map(3, C, 5, 7, dtype=dtype)  # non-square
    with torch.no_grad():
        out = layer(x)
    assert out.dtype == dtype
    assert out.shape == (3, width(layer))
    torch.testing.assert_close(out.double(), layer_reference(layer.double(), x.double()), **TOL[dtype])


@pytest.mark.parametrize("name", ["gem_pc", "lse_pc"])
def test_per_channel_parameters_really_differ_per_channel(name):
    layer = build(name)
    value = layer.p if isinstance(layer, GeM) else layer.r
    assert value.shape == (C,)
    assert value.detach().unique().numel() == C  # the value test above ran with C different exponents


def test_learnable_gem_p_stays_at_least_one_and_lse_r_positive():
    gem = GeM(C, per_channel=True)
    lse = LSEPool(C, per_channel=True)
    with torch.no_grad():
        for param in (*gem.parameters(), *lse.parameters()):
            param.copy_(torch.linspace(-50.0, 50.0, C))
    assert bool((gem.p >= 1).all())
    assert bool((lse.r > 0).all())
    assert float(GeM(p=3.0).p.detach()) == pytest.approx(3.0, rel=1e-6)  # default start
    assert float(LSEPool(r=2.0).r.detach()) == pytest.approx(2.0, rel=1e-6)


def test_kmax_int_and_fraction_reference_counts():
    x = feature_map(2, C, 4, 5)  # N = 20
    torch.testing.assert_close(KMaxPool(k=3)(x), ref_kmax(x, 3))
    torch.testing.assert_close(KMaxPool(k=0.25)(x), ref_kmax(x, 5))
    torch.testing.assert_close(KMaxPool(k=0.5)(x), ref_kmax(x, 10))
    torch.testing.assert_close(KMaxPool(k=0.01)(x), ref_max(x))  # a fraction gives at least one value
    torch.testing.assert_close(KMaxPool(k=50)(x), ref_avg(x))  # a count is capped at H*W


# --- limits ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gem_p1_is_average_of_clamped_input(dtype):
    x = feature_map(2, C, 3, 5, dtype=dtype)
    assert bool((x < 0).any())
    eps = 1e-3
    out = GeM(p=1.0, learn_p=False, eps=eps)(x)
    torch.testing.assert_close(out.double(), ref_avg(x.double().clamp(min=eps)), **TOL[dtype])


@pytest.mark.parametrize("learn_p", [True, False])
def test_gem_large_p_approaches_max(learn_p):
    x = 1.0 + 49.0 * torch.rand(2, C, 3, 4, generator=torch.Generator().manual_seed(1))  # up to 50: 50^200 overflows
    p, n = 200.0, 12
    out = GeM(p=p, learn_p=learn_p)(x).detach().double()
    top = ref_max(x)
    assert torch.isfinite(out).all()
    # (mean x^p)^(1/p) lies in [n^(-1/p) max, max]; both bounds tend to max
    assert bool((out <= top * (1 + 1e-5)).all())
    assert bool((out >= top * n ** (-1 / p) * (1 - 1e-5)).all())
    torch.testing.assert_close(out, 50.0 * ref_gem(x / 50.0, p), rtol=1e-5, atol=0)  # 1-homogeneous; no overflow


def test_lse_small_r_is_average_and_large_r_is_max():
    x = feature_map(2, C, 4, 3)
    small = LSEPool(r=1e-6, learn_r=False)(x)
    torch.testing.assert_close(small, ref_avg(x), rtol=0, atol=1e-5)
    r, n = 1e4, 12
    large = LSEPool(r=r, learn_r=False)(x)
    top = ref_max(x)
    assert bool((large <= top + 1e-12).all())
    assert bool((large >= top - math.log(n) / r - 1e-12).all())
    large32 = LSEPool(r=r)(x.float())  # learnable r, fp32: stabilised by the max, no overflow
    torch.testing.assert_close(large32.double(), top, rtol=0, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmax_k1_is_max_and_k_hw_is_average(dtype):
    x = feature_map(2, C, 3, 5, dtype=dtype)
    assert torch.equal(KMaxPool(k=1)(x), x.amax((2, 3)))
    torch.testing.assert_close(KMaxPool(k=15)(x).double(), ref_avg(x), **TOL[dtype])
    torch.testing.assert_close(KMaxPool(k=1.0)(x).double(), ref_avg(x), **TOL[dtype])


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_at_init_and_with_constant_logits_is_gap(heads):
    x = feature_map(3, C, 4, 6)
    layer = AttentionPool(C, heads=heads, temperature=0.3).double()
    torch.testing.assert_close(layer(x), ref_avg(x), rtol=1e-12, atol=1e-12)
    x[:, 0] = torch.tensor([2.0, -1.0, 5.0], dtype=torch.float64)[:, None, None]  # channel 0: constant over H, W
    with torch.no_grad():
        layer.proj.weight.zero_()
        layer.proj.weight[:, 0] = 3.0  # non-zero projection, but the logits are constant over the positions
    torch.testing.assert_close(layer(x), ref_avg(x), rtol=1e-12, atol=1e-12)
    for mixing in ("scalar", "concat"):  # the same inside a hybrid (its attention branch may be computed apart)
        hybrid = HybridPool(C, branches=("attn", "avg"), mixing=mixing, branch_kwargs={"attn": {"heads": heads}})
        hybrid = hybrid.double()
        hybrid.branches["attn"].load_state_dict(layer.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(hybrid(x)[:, :C], ref_avg(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("query", ["gap", "learned"])
@pytest.mark.parametrize("heads", [1, 2])
def test_query_attention_at_init_is_gap(query, heads):
    x = feature_map(3, C, 5, 4, dtype=torch.float32)
    layer = QueryAttentionPool(C, heads=heads, query=query)
    torch.testing.assert_close(layer(x).double(), ref_avg(x), **TOL[torch.float32])


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
def test_hybrid_gap_init_is_exactly_gap_and_blend_gets_gradient(mixing):
    layer = HybridPool(C, branches=("max", "avg", "gem", "attn"), mixing=mixing, init="gap")
    x = feature_map(3, C, 5, 7, dtype=torch.float32).requires_grad_()
    out = layer(x)
    assert torch.equal(out, x.detach().mean((2, 3)))
    (out * torch.randn_like(out)).sum().backward()
    assert layer.blend.grad is not None
    assert float(layer.blend.grad.abs()) > 1e-4


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
@pytest.mark.parametrize("branch", ["avg", "max", "gem", "lse", "kmax", "attn", "qattn"])
def test_hybrid_with_one_hot_weights_equals_that_branch(mixing, branch):
    layer = build(f"hybrid_{mixing}")
    i = layer.branch_names.index(branch)
    with torch.no_grad():
        layer.mix_logits.fill_(-1e4)
        layer.mix_logits[i] = 0.0
        if mixing == "gate":  # the input-dependent part of the gate would otherwise move the weights
            for name, param in layer.named_parameters():
                if not name.startswith("branches.") and name != "mix_logits":
                    param.zero_()
    x = feature_map(2, C, 4, 5, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.branches[branch](x), rtol=1e-6, atol=1e-6)


def test_hybrid_blend_zero_is_the_avg_branch_whatever_the_logits():
    layer = build("hybrid_channel_gapinit")
    with torch.no_grad():
        layer.blend.zero_()
    x = feature_map(2, C, 3, 3, dtype=torch.float32)
    assert torch.equal(layer(x), x.mean((2, 3)))


# --- shapes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_of_one(name):
    layer = build(name).double()
    x = feature_map(1, C, 3, 4)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (1, width(layer))
    torch.testing.assert_close(out, layer_reference(layer, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_single_position_returns_the_features(name):
    layer = build(name).double()
    x = 0.5 + torch.rand(3, C, 1, 1, dtype=torch.float64)  # positive, so GeM's clamp does not act
    with torch.no_grad():
        out = layer(x)
    expected = x[:, :, 0, 0].repeat(1, layer.feat_mult())  # concat: every branch returns x
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", [(1, 6), (7, 1), (2, 9), (9, 2)])
@pytest.mark.parametrize("name", ["gem_pc", "lse_pc", "kmax_frac", "attn_mh", "qattn_gap", "hybrid_channel"])
def test_non_square_maps(name, hw):
    layer = build(name).double()
    x = feature_map(2, C, *hw)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer_reference(layer, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flatten_false_gives_b_cm_1_1(name):
    flat = build(name)
    unflat = build(name, flatten=False)
    x = feature_map(2, C, 3, 5, dtype=torch.float32)
    with torch.no_grad():
        out = unflat(x)
        assert out.shape == (2, width(flat), 1, 1)
        torch.testing.assert_close(out[:, :, 0, 0], flat(x), rtol=0, atol=0)
        out_x, _ = unflat.forward_with_extras(x)
        assert out_x.shape == (2, width(flat), 1, 1)


# --- layouts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_channels_last_and_nhwc_equal_nchw(name):
    layer = build(name)
    nhwc_layer = build(name, input_fmt="NHWC")
    nhwc_layer.load_state_dict(layer.state_dict())
    x = feature_map(3, C, 5, 6, dtype=torch.float32)
    tol = {"rtol": 1e-5, "atol": 1e-6}
    with torch.no_grad():
        ref = layer(x)
        torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), ref, **tol)
        torch.testing.assert_close(nhwc_layer(x.permute(0, 2, 3, 1).contiguous()), ref, **tol)
        torch.testing.assert_close(nhwc_layer(x.permute(0, 2, 3, 1)), ref, **tol)  # a non-contiguous NHWC view
        wide = feature_map(3, C, 10, 7, seed=3, dtype=torch.float32)  # a strided view that is neither layout
        view = wide[:, :, ::2, 1:]
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(layer(view), layer(view.contiguous()), **tol)
    assert not torch.allclose(ref[0], ref[1])  # the comparison is not trivially between constants


@pytest.mark.parametrize("name", ["gem", "gem_pc", "hybrid_scalar", "attn_mh"])
def test_channels_last_gradients_equal_nchw(name):
    layer = build(name)
    x = feature_map(2, C, 4, 5, dtype=torch.float32)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.contiguous(memory_format=fmt).detach().requires_grad_()
        layer.zero_grad()
        out = layer(xi)
        (out * torch.arange(out.numel()).reshape(out.shape).float()).sum().backward()
        grads.append([xi.grad, *[p.grad.clone() for p in layer.parameters()]])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- batch independence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sample_output_does_not_depend_on_the_batch(name):
    layer = build(name).double()
    x = feature_map(4, C, 3, 5)
    x = x * torch.tensor([1.0, 30.0, 0.02, 5.0], dtype=torch.float64)[:, None, None, None]  # very different samples
    with torch.no_grad():
        batch = layer(x)
        for i in range(4):
            torch.testing.assert_close(batch[i : i + 1], layer(x[i : i + 1]), rtol=1e-10, atol=1e-12)
        other = x.clone()
        other[1:] = -other[1:] * 7.0  # change every other sample
        torch.testing.assert_close(layer(other)[0], batch[0], rtol=1e-10, atol=1e-12)


def test_layers_exist_for_every_config():
    classes = {cls for cls, _ in LAYER_CONFIGS.values()}
    assert classes == {GlobalAvgPool, GlobalMaxPool, GeM, LSEPool, KMaxPool, AttentionPool, QueryAttentionPool}
    assert {kw["mixing"] for _, kw in HYBRID_CONFIGS.values()} == {"scalar", "channel", "gate", "concat"}
    assert kmax_count(0.25, 20) == 5
