"""The functional forms in hybridpool.pooling.functional, against float64 references."""

from __future__ import annotations

import pytest
import torch
from pool_refs import ref_attention, ref_avg, ref_gem, ref_kmax, ref_lse, ref_max, ref_softmax

from hybridpool.pooling import functional as F


def feature_map(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.8


TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def test_public_names():
    assert set(F.__all__) >= {"global_avg_pool", "global_max_pool", "gem", "lse_pool", "kmax_pool", "attention_pool"}


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 1, 7)])
def test_avg_max(shape):
    x = feature_map(*shape)
    torch.testing.assert_close(F.global_avg_pool(x), ref_avg(x), **TIGHT)
    torch.testing.assert_close(F.global_max_pool(x), ref_max(x), **TIGHT)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.7, torch.tensor(2.2), torch.tensor([1.5, 3.0, 6.0])])
def test_gem(p):
    x = feature_map(2, 3, 4, 5)
    torch.testing.assert_close(F.gem(x, p), ref_gem(x, p), **TIGHT)
    torch.testing.assert_close(F.gem(x, p, eps=0.3), ref_gem(x, p, eps=0.3), **TIGHT)


@pytest.mark.parametrize("r", [0.1, 1.0, 7.0, torch.tensor([0.5, 2.0, 9.0])])
def test_lse(r):
    x = feature_map(2, 3, 4, 5)
    torch.testing.assert_close(F.lse_pool(x, r), ref_lse(x, r), **TIGHT)


def test_lse_does_not_overflow():
    x = torch.full((1, 2, 3, 3), 100.0)
    x[0, 0, 0, 0] = 101.0
    out = F.lse_pool(x, 50.0)  # exp(5000) would overflow without the max shift
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref_lse(x, 50.0), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(("k", "count"), [(1, 1), (4, 4), (20, 20), (99, 20), (0.05, 1), (0.5, 10), (1.0, 20)])
def test_kmax(k, count):
    x = feature_map(2, 3, 4, 5)
    assert F.resolve_k(k, 20) == count
    torch.testing.assert_close(F.kmax_pool(x, k), ref_kmax(x, count), **TIGHT)


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.5, -0.2])
def test_resolve_k_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="k"):
        F.resolve_k(bad, 10)


@pytest.mark.parametrize("bad", [True, "3", None])
def test_resolve_k_rejects_wrong_types(bad):
    with pytest.raises(TypeError, match="k must be"):
        F.resolve_k(bad, 10)


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_pool_and_spatial_softmax(heads):
    x = feature_map(2, 6, 3, 4)
    weight = torch.randn(heads, 6, dtype=torch.float64)
    bias = torch.randn(heads, dtype=torch.float64)
    logits = torch.einsum("kc,bchw->bkhw", weight, x) + bias[None, :, None, None]
    pooled, attn = F.attention_pool(x, logits, 0.6)
    ref_pooled, ref_map = ref_attention(x, weight, bias, 0.6, heads)
    torch.testing.assert_close(pooled, ref_pooled, **TIGHT)
    torch.testing.assert_close(attn, ref_map, **TIGHT)
    soft = F.spatial_softmax(logits, 2.0)
    torch.testing.assert_close(soft.flatten(2), ref_softmax(logits.flatten(2) / 2.0, 2), **TIGHT)


def test_attention_pool_checks_its_arguments():
    x = feature_map(2, 6, 3, 4)
    with pytest.raises(ValueError, match="divisible by heads"):
        F.attention_pool(x, torch.zeros(2, 4, 3, 4))
    with pytest.raises(ValueError, match="do not match"):
        F.attention_pool(x, torch.zeros(2, 2, 4, 3))


def test_per_channel_parameter_of_the_wrong_size_is_rejected():
    x = feature_map(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"per-channel \(3,\)"):
        F.lse_pool(x, torch.ones(4))
    with pytest.raises(ValueError, match=r"per-channel \(3,\)"):
        F.gem(x, torch.full((2,), 3.0))


def test_functional_gem_rejects_p_below_one_whatever_the_grad_mode():
    """The same call must not succeed or fail depending on torch.is_grad_enabled()."""
    x = feature_map(2, 3, 4, 5).abs()
    with torch.no_grad(), pytest.raises(ValueError, match="p >= 1"):
        F.gem(x, 0.5)
    with pytest.raises(ValueError, match="p >= 1"):
        F.gem(x, 0.5)


def test_functional_forms_keep_the_batch():
    x = feature_map(1, 4, 2, 3)
    outs = [
        F.global_avg_pool(x),
        F.global_max_pool(x),
        F.gem(x),
        F.lse_pool(x),
        F.kmax_pool(x, 2),
        F.attention_pool(x, torch.zeros(1, 2, 2, 3))[0],
    ]
    assert all(o.shape == (1, 4) for o in outs)
