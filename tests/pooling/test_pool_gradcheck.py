"""torch.autograd.gradcheck of every layer, with respect to the input and to every learnable parameter."""

from __future__ import annotations

import pytest
import torch
from pool_refs import CONFIGS, build, distinct_positive
from torch.autograd import gradcheck
from torch.func import functional_call

from hybridpool.pooling import GeM, HybridPool, functional

C4 = 4  # small channel count for gradcheck (still divisible by the 2 heads of the multi-head configs)


def check_layer(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """gradcheck of ``layer(x)`` w.r.t. ``x`` and all parameters, and every parameter really gets a gradient.

    Hybrids (many parameters, seven branches) use gradcheck's fast mode (random projections of the Jacobian).
    """
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = [p.detach().clone().requires_grad_() for n, p in layer.named_parameters() if p.requires_grad]

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (inp,))

    x = x.detach().clone().requires_grad_()
    fast = isinstance(layer, HybridPool)
    assert gradcheck(run, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)
    out = run(x, *params)
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), [x, *params])
    for name, grad in zip(["input", *names], grads, strict=True):
        assert grad.abs().max() > 1e-8, f"no gradient reaches {name}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradcheck_every_layer(name):
    layer = build(name, channels=C4, seed=3).double()
    check_layer(layer, distinct_positive(2, C4, 3, 2, seed=1))


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
def test_gradcheck_hybrid_gap_init_at_step_zero(mixing):
    layer = build(f"hybrid_{mixing}", channels=C4, seed=4, init="gap").double()
    with torch.no_grad():
        layer.blend.zero_()  # exactly GAP; the gradient w.r.t. blend must still be right and non-zero
    x = distinct_positive(2, C4, 2, 3, seed=2)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (inp,))

    assert gradcheck(run, (x.requires_grad_(), *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    out = run(x, *params)
    (blend_grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), params[names.index("blend")])
    assert blend_grad.abs() > 1e-6


@pytest.mark.parametrize("per_channel", [False, True])
def test_gradcheck_gem_with_clamped_inputs(per_channel):
    layer = GeM(C4, p=2.5, per_channel=per_channel, eps=1e-3).double()
    x = distinct_positive(2, C4, 3, 3, seed=5, low=-1.0, high=2.0)  # about a third below eps, none near it
    x = torch.where((x - 1e-3).abs() < 0.02, x + 0.05, x)
    x[1, 2] = -torch.linspace(0.1, 0.9, 9, dtype=torch.float64).reshape(3, 3)  # a channel entirely below eps
    assert bool((x < 0).any())
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (inp,))

    assert gradcheck(run, (x.requires_grad_(), *params), eps=1e-6, atol=1e-6, rtol=1e-4)
    grad = torch.autograd.grad(run(x, *params).sum(), x)[0]
    assert bool((grad[x.detach() < 1e-3] == 0).all())  # clamped positions get no gradient
    assert bool((grad[x.detach() > 1e-3] > 0).all())


@pytest.mark.parametrize("p_shape", [(), (C4,)])
def test_gradcheck_functional_gem_wrt_p(p_shape):
    x = distinct_positive(3, C4, 2, 3, seed=6).requires_grad_()
    p = (torch.full(p_shape, 2.0, dtype=torch.float64) + torch.rand(p_shape, dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda a, b: functional.gem(a, b), (x, p), eps=1e-6, atol=1e-6, rtol=1e-4)
    (gp,) = torch.autograd.grad(functional.gem(x, p).sum(), p)
    assert gp.shape == p_shape
    assert bool((gp.abs() > 1e-6).all())


def test_gradcheck_gem_large_p():
    layer = GeM(p=40.0).double()
    x = distinct_positive(2, 2, 3, 3, seed=7, low=1.0, high=30.0)  # 30^40 in fp64 is fine, but the point is stability
    check_layer(layer, x)


def test_gradcheck_lse_large_and_small_r():
    for r in (0.05, 10.0):  # (not 20: torch softplus switches to its linear branch at raw=20, a 2e-9 jump)
        check_layer(build("lse_pc", channels=C4, randomize=False, r=r).double(), distinct_positive(2, C4, 2, 3))


def test_gradcheck_hybrid_with_repeated_branches_and_branch_kwargs():
    layer = HybridPool(
        C4,
        branches=("gem", "gem", "attn"),
        mixing="channel",
        branch_kwargs={
            "gem": {"p": 2.0},
            "gem_1": {"p": 5.0, "per_channel": True},
            "attn": {"learn_temperature": True},
        },
    ).double()
    assert layer.branch_names == ["gem", "gem_1", "attn"]
    with torch.no_grad():
        layer.mix_logits.normal_()
        layer.branches["attn"].proj.weight.normal_()
    check_layer(layer, distinct_positive(2, C4, 3, 2, seed=8))
