"""torch.compile gives eager's values and gradients; torch.export and ONNX export run and give the same values.

The inductor compile of the four-branch hybrid is the slowest test of the folder (tens of seconds on a 2-core CPU,
most of it C++ compilation); the stand-alone GeM and attention layers are compiled with the ``aot_eager`` backend,
which traces the same graphs through dynamo and AOTAutograd (and the compile-only code paths) without C++ codegen.
"""

from __future__ import annotations

import io

import pytest
import torch
from pool_refs import C, build, layer_reference, randomize_

from hybridpool.pooling import AttentionPool, GeM, create_pool


def positive_map(*shape: int, seed: int = 0) -> torch.Tensor:
    return 0.05 + torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def eager_and_compiled(layer: torch.nn.Module, x: torch.Tensor, backend: str):
    """Output, input gradient and parameter gradients of ``layer`` eager and compiled, on a non-trivial loss."""
    results = []
    for run in (layer, torch.compile(layer, backend=backend, fullgraph=False)):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        out = run(xi)
        loss = (out * torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)).sum() + out.square().sum()
        loss.backward()
        results.append((out.detach(), xi.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    return results


def assert_same(eager, compiled, tol=1e-5):
    (out_e, gx_e, gp_e), (out_c, gx_c, gp_c) = eager, compiled
    torch.testing.assert_close(out_c, out_e, rtol=tol, atol=tol)
    torch.testing.assert_close(gx_c, gx_e, rtol=tol, atol=tol)
    assert gp_e.keys() == gp_c.keys()
    for name in gp_e:
        torch.testing.assert_close(gp_c[name], gp_e[name], rtol=tol, atol=tol, msg=f"gradient of {name}")


def test_compile_four_branch_hybrid_inductor():
    layer = create_pool("hybrid(avg,max,gem,attn)", channels=C, mixing="channel", branch_kwargs={"attn": {"heads": 2}})
    randomize_(layer, seed=1)
    x = torch.round(positive_map(2, C, 5, 6) * 6) / 6 + 0.05  # a coarse grid: tied maxima (compiled backward path)
    assert bool(((x == x.amax((2, 3), keepdim=True)).sum((2, 3)) > 1).any())
    eager, compiled = eager_and_compiled(layer, x, backend="inductor")
    assert_same(eager, compiled)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled[0].double(), layer_reference(layer.double(), x.double()), rtol=2e-5, atol=2e-6
        )
    assert all(g.abs().max() > 0 for g in eager[2].values() if g is not None)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo tracing GeM.p
@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(GeM(C, per_channel=True), id="gem_pc"),
        pytest.param(AttentionPool(C, heads=2, temperature=0.8, learn_temperature=True), id="attn_mh"),
    ],
)
def test_compile_layers_aot_eager(layer):
    randomize_(layer, seed=2)
    x = positive_map(2, C, 4, 7, seed=1)
    eager, compiled = eager_and_compiled(layer, x, backend="aot_eager")
    assert_same(eager, compiled)


# --- torch.export ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["avg", "max", "gem", "gem_pc", "lse_pc", "kmax_frac", "attn_mh", "qattn_gap", "hybrid_scalar", "hybrid_gate"],
)
def test_torch_export_runs_and_matches(name):
    layer = build(name).eval()
    x = positive_map(2, C, 4, 5, seed=3)
    program = torch.export.export(layer, (x,))
    x2 = positive_map(2, C, 4, 5, seed=4)  # same shape, other values: nothing was baked in
    exported = program.module()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), layer(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(exported(x2), layer(x2), rtol=1e-6, atol=1e-6)


# --- ONNX ------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize(
    "name", ["avg", "max", "gem", "gem_pc", "lse", "kmax_frac", "attn_mh", "hybrid_scalar", "hybrid_channel_gapinit"]
)
def test_onnx_export_runs_and_matches(name):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    layer = build(name).eval()
    x = positive_map(2, C, 4, 5, seed=5)
    buffer = io.BytesIO()
    with torch.no_grad():
        # the TorchScript-based exporter: the dynamo-based default needs onnxscript, which is not installed
        torch.onnx.export(layer, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    evaluator = ReferenceEvaluator(model)
    for seed in (5, 6):  # the traced input and another one of the same shape
        xi = positive_map(2, C, 4, 5, seed=seed)
        (y,) = evaluator.run(None, {"x": xi.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), layer(xi), rtol=1e-5, atol=1e-6)
