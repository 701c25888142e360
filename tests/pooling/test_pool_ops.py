"""The C kernel as torch ops (``hybridpool::branches``, ``hybridpool::branches_backward``, ``hybridpool::lse``,
``hybridpool::lse_backward``): ``torch.library.opcheck`` (schema, fake implementation, autograd registration,
AOTAutograd) on representative inputs, ``gradcheck`` of the registered autograd formulas in float64, and what
``torch.compile(fullgraph=True)`` and ``torch.export`` of the layers see: one op, the same values and gradients as
eager; plus the one dispatch (``kernels.use_op``): without the kernel, compiled and exported code takes the
reference maths."""

from __future__ import annotations

import itertools

import pytest
import torch
from pool_refs import C, layer_reference, randomize_, ref_gem
from torch.autograd import gradcheck

from hybridpool.pooling import GeM, LSEPool, create_pool, functional, kernels
from hybridpool.pooling.kernels import native, ops

B, N = 3, 10
SUBSETS = [s for s in itertools.product([False, True], repeat=4) if any(s)]
BRANCHES = torch.ops.hybridpool.branches.default
BRANCHES_BACKWARD = torch.ops.hybridpool.branches_backward.default
LSE = torch.ops.hybridpool.lse.default
LSE_BACKWARD = torch.ops.hybridpool.lse_backward.default


def subset_id(branches) -> str:
    return "-".join(k for k, on in zip(("avg", "max", "gem", "attn"), branches, strict=True) if on)


def inputs(dtype=torch.float32, heads: int = 2, per_channel: bool = False, p_value: float = 2.5, seed: int = 0):
    """``(x (B, C, N), p, weight (heads, C), log_temperature)``, leaves that require a gradient; distinct values."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.05 + torch.rand(B, C, N, generator=gen, dtype=torch.float64)
    p = p_value + 0.5 * torch.rand((C,) if per_channel else (), generator=gen, dtype=torch.float64)
    weight = torch.randn(heads, C, generator=gen, dtype=torch.float64)
    log_t = torch.tensor(0.2, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (x, p, weight, log_t)]


@pytest.fixture(autouse=True)
def _kernel_built():
    assert native.available(), "no native kernel: is a C compiler (cc) installed?"


# --- opcheck ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "per_channel", "p_value"),
    [(torch.float32, False, 2.5), (torch.float32, True, 2.5), (torch.float32, False, 0.5), (torch.float64, True, 2.5)],
    ids=["f32-kernel", "f32-kernel-pc_p", "f32-p_below_1-torch_form", "f64-torch_form"],
)
@pytest.mark.parametrize(
    "branches", [(True, True, True, True), (False, False, True, False), (False, True, False, True)]
)
def test_opcheck_branches(branches, dtype, per_channel, p_value):
    x, p, weight, log_t = inputs(dtype, per_channel=per_channel, p_value=p_value)
    args = (x, p, weight, log_t, 1e-6, list(branches), branches[2], False)
    torch.library.opcheck(BRANCHES, args)


def test_opcheck_branches_exact_avg_and_no_grad_statistics():
    x, p, weight, log_t = inputs()
    torch.library.opcheck(BRANCHES, (x, p, weight, log_t, 1e-6, [True, False, True, False], True, True))
    x, p, weight, log_t = (t.detach() for t in inputs())
    torch.library.opcheck(BRANCHES, (x, p, weight, log_t, 1e-6, [True, True, True, True], False, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32-kernel", "f64-torch_form"])
@pytest.mark.parametrize(("need_x", "need_w"), [(True, True), (True, False), (False, True)])
def test_opcheck_branches_backward(dtype, need_x, need_w):
    x, p, weight, log_t = (t.detach() for t in inputs(dtype))
    branches = [True, True, True, True]
    descriptors, attn, peak, _, _, _ = BRANCHES(x, p, weight, log_t, 1e-6, branches, False, False)
    grad = torch.randn_like(descriptors)
    coef = torch.rand(B, C, dtype=dtype)
    scaled_weight = weight * torch.exp(-log_t)
    args = (x, p, scaled_weight, peak, attn, grad, coef, 1e-6, branches, need_x, need_w)
    torch.library.opcheck(BRANCHES_BACKWARD, args)


@pytest.mark.parametrize(
    ("dtype", "r_value", "per_channel"),
    [(torch.float32, 1.5, False), (torch.float32, 0.7, True), (torch.float32, -0.5, False), (torch.float64, 1.5, True)],
    ids=["f32-kernel", "f32-kernel-pc_r", "f32-negative_r-torch_form", "f64-torch_form"],
)
def test_opcheck_lse(dtype, r_value, per_channel):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, C, N, generator=gen, dtype=dtype).requires_grad_()
    r = (r_value * (1 + 0.3 * torch.rand((C,) if per_channel else (), generator=gen, dtype=dtype))).requires_grad_()
    torch.library.opcheck(LSE, (x, r))
    y, _, peak, total = LSE(x.detach(), r.detach())
    torch.library.opcheck(LSE_BACKWARD, (x.detach(), r.detach(), torch.randn_like(y), peak, total))


# --- gradcheck of the registered autograd formulas (float64: the op's torch form) -----------------------------


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar_p", "pc_p"])
@pytest.mark.parametrize("branches", SUBSETS, ids=[subset_id(s) for s in SUBSETS])
def test_gradcheck_branches_op_float64(branches, per_channel):
    args = inputs(torch.float64, per_channel=per_channel)

    def run(*tensors):
        return ops.branches(*tensors, 1e-3, branches)[0]

    assert gradcheck(run, args, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("r_value", [1.3, -0.8], ids=["positive_r", "negative_r"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar_r", "pc_r"])
def test_gradcheck_lse_op_float64(r_value, per_channel):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, C, N, generator=gen, dtype=torch.float64).requires_grad_()
    r = (
        r_value * (1 + 0.3 * torch.rand((C,) if per_channel else (), generator=gen, dtype=torch.float64))
    ).requires_grad_()
    assert gradcheck(ops.lse, (x, r), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_lse_op_negative_r_float32_gradients_match_float64():
    """r <= 0 runs the op's torch form in float32 (the kernel needs r > 0): values and both gradients match float64."""
    gen = torch.Generator().manual_seed(3)
    x64 = torch.randn(B, C, N, generator=gen, dtype=torch.float64)
    r64 = -0.5 - torch.rand(C, generator=gen, dtype=torch.float64)
    g = torch.randn(B, C, generator=gen, dtype=torch.float64)
    results = []
    for dtype in (torch.float32, torch.float64):
        x, r = x64.to(dtype).requires_grad_(), r64.to(dtype).requires_grad_()
        y = ops.lse(x, r)
        y.backward(g.to(dtype))
        results.append([t.detach().double() for t in (y, x.grad, r.grad)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)


def test_branches_op_without_p_statistics_refuses_p_gradient():
    x, p, weight, log_t = inputs()
    out = BRANCHES(x, p, weight, log_t, 1e-6, [False, False, True, False], False, False)[0]
    with pytest.raises(RuntimeError, match="need_p_grad=False"):
        out.sum().backward()


# --- torch.compile(fullgraph=True) and torch.export --------------------------------------------------------------


def count_kernel_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name in ("native_forward", "native_backward", "lse_forward", "lse_backward"):
        original = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    return calls


def outputs_and_grads(layer: torch.nn.Module, run, x: torch.Tensor):
    """Output, input gradient and parameter gradients of ``run`` (``layer`` or a compiled ``layer``)."""
    layer.zero_grad()
    xi = x.clone().requires_grad_()
    out = run(xi)
    loss = (out * torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)).sum() + out.square().sum()
    loss.backward()
    return out.detach(), xi.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def assert_same(eager, compiled, tol=1e-5):
    (out_e, gx_e, gp_e), (out_c, gx_c, gp_c) = eager, compiled
    torch.testing.assert_close(out_c, out_e, rtol=tol, atol=tol)
    torch.testing.assert_close(gx_c, gx_e, rtol=tol, atol=tol)
    assert gp_e.keys() == gp_c.keys()
    for name in gp_e:
        torch.testing.assert_close(gp_c[name], gp_e[name], rtol=tol, atol=tol, msg=f"gradient of {name}")


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo tracing GeM.p
@pytest.mark.parametrize(
    ("make", "backend"),
    [
        pytest.param(
            lambda: create_pool("hybrid(avg,max,gem,attn)", channels=C, mixing="scalar"), "inductor", id="hybrid"
        ),
        pytest.param(lambda: GeM(C), "inductor", id="gem"),
        pytest.param(lambda: GeM(C, per_channel=True), "aot_eager", id="gem_pc"),
        pytest.param(lambda: LSEPool(C, r=0.7, per_channel=True), "aot_eager", id="lse_pc"),
    ],
)
def test_compile_fullgraph_runs_the_kernel_op(make, backend, monkeypatch):
    """torch.compile(fullgraph=True) on a CPU in float32: no graph break, the C kernel runs forward and backward
    (the op, not inductor's re-derivation of the maths), and values and gradients equal eager's."""
    torch._dynamo.reset()
    layer = make()
    randomize_(layer, seed=1)
    x = torch.round((0.05 + torch.rand(2, C, 5, 6, generator=torch.Generator().manual_seed(3))) * 6) / 6  # ties
    eager = outputs_and_grads(layer, layer, x)
    calls = count_kernel_calls(monkeypatch)
    compiled = outputs_and_grads(layer, torch.compile(layer, backend=backend, fullgraph=True), x)
    assert {"native_forward", "native_backward"} <= set(calls) or {"lse_forward", "lse_backward"} <= set(calls)
    assert_same(eager, compiled)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled[0].double(), layer_reference(layer.double(), x.double()), rtol=2e-5, atol=2e-6
        )


def test_compiled_gem_with_p_below_one_takes_the_torch_form_inside_the_op():
    """p < 1 is data: decided inside the op (the torch form), not in the compiled graph, which has no break."""
    x = 0.05 + torch.rand(2, C, 4, 5, generator=torch.Generator().manual_seed(4))
    p = torch.tensor(0.5)
    compiled = torch.compile(functional.gem, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, p).double(), ref_gem(x.double(), 0.5), rtol=2e-5, atol=2e-6)


def op_targets(program: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function" and "hybridpool" in str(n.target)]


@pytest.mark.parametrize(
    ("pool", "op"),
    [
        pytest.param(
            lambda: create_pool("hybrid(avg,max,gem,attn)", channels=C), "hybridpool.branches.default", id="hybrid"
        ),
        pytest.param(lambda: GeM(C), "hybridpool.branches.default", id="gem"),
        pytest.param(lambda: LSEPool(C, r=0.7, per_channel=True), "hybridpool.lse.default", id="lse"),
    ],
)
def test_torch_export_of_a_model_shows_the_op(pool, op):
    """A small model (conv, pool, linear) exports with the pool as one custom op node; the exported program gives
    the model's values on other inputs of the same shape."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, C, 3, padding=1), torch.nn.ReLU(), pool(), torch.nn.Linear(C, 4))
    model.eval()
    x = torch.rand(2, 3, 6, 5)
    program = torch.export.export(model, (x,))
    assert op_targets(program) == [op]
    x2 = torch.rand(2, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x2), model(x2), rtol=1e-6, atol=1e-6)


def test_without_the_kernel_compiled_and_exported_code_take_the_reference(tmp_path, monkeypatch):
    """HYBRIDPOOL_NATIVE=0: kernels.use_op is False, also while tracing, so the exported graph has no custom op and
    compiled code gives the same values from the reference maths."""
    monkeypatch.setenv("HYBRIDPOOL_NATIVE", "0")
    native.library.cache_clear()
    torch._dynamo.reset()
    try:
        layer = create_pool("hybrid(avg,max,gem,attn)", channels=C).eval()
        x = 0.05 + torch.rand(2, C, 4, 5)
        assert not kernels.use_op(x)
        program = torch.export.export(layer, (x,))
        assert op_targets(program) == []
        with torch.no_grad():
            compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
            torch.testing.assert_close(compiled, layer(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-6, atol=1e-6)
    finally:
        monkeypatch.delenv("HYBRIDPOOL_NATIVE")
        native.library.cache_clear()
        torch._dynamo.reset()
