"""HybridPool computes avg / max / gem / attn together (``fused=True``, the default) or branch by branch
(``fused=False``); the docstring promises the same values. These tests hold both paths to that, including the
awkward inputs a shared hand-written backward can get wrong: tied maxima, exact zeros (ReLU features), dead
channels, negative values under GeM's clamp, any branch order, repeated branches, layouts and half precision."""

from __future__ import annotations

import pytest
import torch
from pool_refs import C, randomize_, ref_avg, ref_gem

from hybridpool.pooling import GeM, GlobalMaxPool, HybridPool, KMaxPool, functional

KWARGS = {"gem": {"per_channel": True}, "attn": {"heads": 2, "learn_temperature": True}}
ORDERS = [
    ("avg", "max", "gem", "attn"),
    ("attn", "gem", "max", "avg"),
    ("gem", "attn"),
    ("max", "avg"),
    ("gem", "avg", "gem", "attn", "attn", "lse"),  # repeated kinds: only the first of each can share the pass
]


def pair(branches, mixing, **kwargs) -> tuple[HybridPool, HybridPool]:
    """The same hybrid (same parameters) computed fused and unfused, in float64."""
    branch_kwargs = {n: kw for n, kw in KWARGS.items() if n in branches}
    fused = HybridPool(C, branches=branches, mixing=mixing, branch_kwargs=branch_kwargs, **kwargs).double()
    randomize_(fused, seed=11)
    plain = HybridPool(C, branches=branches, mixing=mixing, branch_kwargs=branch_kwargs, fused=False, **kwargs)
    plain = plain.double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def awkward_map(*shape: int, seed: int = 0) -> torch.Tensor:
    """float64 values on a coarse grid (tied maxima), with exact zeros, negatives and one dead channel."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(*shape, generator=gen, dtype=torch.float64) * 2) / 2
    x = torch.where(x < -0.6, torch.zeros_like(x), x)  # exact zeros, as after a ReLU; some negatives stay
    x[0, 1] = 0.0  # a dead channel
    return x


def grads_of(layer: HybridPool, x: torch.Tensor):
    layer.zero_grad()
    x = x.clone().requires_grad_()
    out = layer(x)
    (out * torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate", "concat"])
@pytest.mark.parametrize("branches", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_fused_equals_unfused_values_and_gradients(branches, mixing):
    fused, plain = pair(branches, mixing)
    x = awkward_map(3, C, 4, 5)
    out_f, gx_f, gp_f = grads_of(fused, x)
    out_p, gx_p, gp_p = grads_of(plain, x)
    torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-9, atol=1e-12)
    for name, grad in gp_p.items():
        if grad is None:
            assert gp_f[name] is None or not gp_f[name].any(), name
        else:
            torch.testing.assert_close(gp_f[name], grad, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")
    assert torch.isfinite(gx_f).all()


@pytest.mark.parametrize("fused", [True, False])
def test_fused_extras_and_fixed_parameters(fused):
    layer = HybridPool(
        C,
        branches=("avg", "max", "gem", "attn"),
        mixing="channel",
        branch_kwargs={"gem": {"p": 2.5, "learn_p": False}, "attn": {"heads": 4, "temperature": 0.5}},
        fused=fused,
    ).double()
    randomize_(layer, seed=3)
    x = awkward_map(2, C, 3, 4, seed=1)
    out, extras = layer.forward_with_extras(x)
    attn = extras["attn"]
    assert attn.shape == (2, 4, 3, 4)
    torch.testing.assert_close(attn.sum((2, 3)), torch.ones(2, 4, dtype=torch.float64))
    desc = extras["descriptors"]
    torch.testing.assert_close(desc[:, 0], ref_avg(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(desc[:, 1], x.amax((2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(desc[:, 2], ref_gem(x, 2.5), rtol=1e-10, atol=1e-12)
    assert "gem.p" not in dict(layer.named_parameters())
    torch.testing.assert_close(out, (extras["mix"] * desc).sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: GlobalMaxPool(), id="max"),
        pytest.param(lambda: KMaxPool(k=1), id="kmax1"),
        pytest.param(lambda: HybridPool(C, branches=("avg", "max"), mixing="concat"), id="hybrid_fused"),
        pytest.param(lambda: HybridPool(C, branches=("gem", "max", "attn"), mixing="concat"), id="hybrid_fused_3"),
        pytest.param(lambda: HybridPool(C, branches=("avg", "max"), mixing="concat", fused=False), id="hybrid"),
    ],
)
def test_tied_maxima_share_the_gradient_equally(make):
    layer = make().double()
    x = torch.zeros(2, C, 3, 3, dtype=torch.float64)
    x[:, :, 0, 0] = 1.0
    x[:, :, 2, 1] = 1.0  # two maxima everywhere
    x[1, 3, 1, 1] = 1.0  # three in one channel
    x.requires_grad_()
    out = layer(x)
    names = getattr(layer, "branch_names", ["max"])
    i = names.index("max")
    out[:, i * C : (i + 1) * C].sum().backward() if out.shape[1] > C else out.sum().backward()
    top = x.detach() == x.detach().amax((2, 3), keepdim=True)
    expected = top.double() / top.sum((2, 3), keepdim=True)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_gem_on_relu_features_with_dead_channels(fused):
    """Exact zeros and all-zero channels (dead ReLUs): values clamp to eps, gradients stay finite."""
    eps = 1e-6
    x = torch.relu(awkward_map(2, C, 4, 4, seed=2)).requires_grad_()
    layer = (
        HybridPool(C, branches=("gem", "max"), mixing="concat", branch_kwargs={"gem": {"eps": eps}}, fused=fused)
        if fused
        else GeM(C, per_channel=True, eps=eps)
    ).double()
    out = layer(x)[:, :C]
    assert float(out[0, 1].detach()) == pytest.approx(eps, rel=1e-9)  # the dead channel
    torch.testing.assert_close(out.detach(), ref_gem(x.detach(), layer_p(layer), eps), rtol=1e-10, atol=1e-15)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert bool((x.grad[x.detach() == 0] == 0).all())  # clamped positions get nothing
    for param in layer.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all()


def layer_p(layer) -> torch.Tensor:
    return layer.branches["gem"].p if isinstance(layer, HybridPool) else layer.p


def test_functional_gem_on_dead_channels():
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 1, 1] = 2.0
    out = functional.gem(x, 3.0, eps=1e-6)
    torch.testing.assert_close(out, torch.tensor([[2.0 / 9 ** (1 / 3), 1e-6]]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("layout", ["channels_last", "nhwc"])
def test_fused_layouts_and_half_precision_match_unfused(dtype, layout):
    fused, plain = pair(("avg", "max", "gem", "attn"), "scalar")
    fused, plain = fused.to(torch.float32), plain.to(torch.float32)
    x = awkward_map(2, C, 5, 3, seed=4).to(dtype)
    with torch.no_grad():
        expected = plain(x.float())
        if layout == "nhwc":
            fused.input_fmt = "NHWC"
            got = fused(x.permute(0, 2, 3, 1))
        else:
            got = fused(x.contiguous(memory_format=torch.channels_last))
    assert got.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)
