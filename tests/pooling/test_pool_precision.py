"""float16 / bfloat16 inputs with large values: every layer stays finite, GeM stays accurate."""

from __future__ import annotations

import pytest
import torch
from pool_refs import CONFIGS, LAYER_CONFIGS, C, build, ref_gem

from hybridpool.pooling import GeM, HybridPool

# (dtype, largest value): 6e4 is close to float16's max (65504); 1e30 is far beyond float32's sqrt, within bfloat16
LARGE = {torch.float16: 6e4, torch.bfloat16: 1e30}


def large_map(dtype: torch.dtype, *shape: int, seed: int = 0) -> torch.Tensor:
    """Values in ``[0.01, 1] * LARGE[dtype]`` with the channel peaks at the top of the range."""
    gen = torch.Generator().manual_seed(seed)
    x = LARGE[dtype] * (0.01 + 0.99 * torch.rand(*shape, generator=gen, dtype=torch.float64))
    x[:, :, 0, 0] = LARGE[dtype]
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_large_half_inputs_give_finite_outputs(name, dtype):
    layer = build(name, randomize=False)  # as constructed: what a user drops into a model
    x = large_map(dtype, 2, C, 4, 5)
    with torch.no_grad():
        out = layer(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), f"{name} on {dtype} input up to {LARGE[dtype]:g}: {out}"


@pytest.mark.parametrize("name", [*LAYER_CONFIGS, "hybrid_scalar", "hybrid_gate"])
def test_large_fp16_inputs_finite_with_trained_weights(name):
    """Non-zero attention projections / gate weights, as after training; values up to 6e4 in float16."""
    layer = build(name)  # every parameter set to non-trivial values
    x = large_map(torch.float16, 2, C, 4, 5, seed=1)
    with torch.no_grad():
        out = layer(x)
    assert torch.isfinite(out).all(), f"{name}: {out}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gem_p8_on_large_half_input_is_accurate(dtype, per_channel):
    x = large_map(dtype, 3, C, 5, 4, seed=2)
    layer = GeM(C, p=8.0, per_channel=per_channel)
    ref = ref_gem(x.double(), 8.0)  # float64 reference of the same (rounded) values; x^8 <= 1e240 fits in fp64
    with torch.no_grad():
        out = layer(x)
        out32 = layer(x.float())
    assert out.dtype == dtype and torch.isfinite(out).all()
    rtol = 2e-3 if dtype == torch.float16 else 1.6e-2  # one rounding to the output dtype
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=0)
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gem_backward_on_large_half_input_is_finite(dtype):
    layer = GeM(C, p=8.0, per_channel=True)
    x = large_map(dtype, 2, C, 3, 3).requires_grad_()
    layer(x).float().sum().backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(next(layer.parameters()).grad).all()
    assert bool((x.grad >= 0).all()) and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate", "concat"])
def test_hybrid_half_output_close_to_float32(mixing):
    layer = build(f"hybrid_{mixing}")
    x = torch.rand(2, C, 4, 5, generator=torch.Generator().manual_seed(3)) * 4
    with torch.no_grad():
        half = layer(x.half())
        single = layer(x.half().float())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), single, rtol=1e-2, atol=1e-2)
    assert isinstance(layer, HybridPool)


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
def test_float16_hybrid_mixing_gradients_stay_finite(mixing):
    """sum(g * D) over batch and channels exceeds float16's 65504 here: the mix runs in the weights' float32."""
    torch.manual_seed(0)
    pool = HybridPool(C, branches=("avg", "max"), mixing=mixing, gate_hidden=4)
    x = large_map(torch.float16, 4, C, 3, 3).requires_grad_()
    out = pool(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(pool.mix_logits.grad).all() and torch.isfinite(x.grad).all()
    # the same gradient as with float32 input of the same values
    ref = HybridPool(C, branches=("avg", "max"), mixing=mixing, gate_hidden=4)
    ref.load_state_dict(pool.state_dict())
    ref(x.detach().float()).sum().backward()
    torch.testing.assert_close(pool.mix_logits.grad, ref.mix_logits.grad, rtol=2e-3, atol=1.0)
