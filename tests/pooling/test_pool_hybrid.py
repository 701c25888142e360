"""HybridPool mixing, what layers expose (stats, forward_with_extras, attention maps) and attention_entropy."""

from __future__ import annotations

import math

import pytest
import torch
from pool_refs import (
    ALL_BRANCHES,
    C,
    build,
    query_of,
    randomize_,
    ref_attention,
    ref_avg,
    ref_max,
    ref_query_attention,
    ref_softmax,
    ref_static_weights,
    reference,
)

from hybridpool.pooling import AttentionPool, GeM, HybridPool, LSEPool, QueryAttentionPool, functional, pool_factory

B = 3


def feature_map(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1.0).to(dtype)


# --- mixing by hand-set logits ---------------------------------------------------------------------------------


def test_scalar_mixing_with_hand_set_logits():
    layer = HybridPool(C, branches=("avg", "max", "gem", "attn"), mixing="scalar").double()
    with torch.no_grad():
        layer.mix_logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64))
        only_param(layer.branches["gem"]).fill_(0.4)
        layer.branches["attn"].proj.weight.copy_(torch.linspace(-1, 1, C).reshape(1, C, 1, 1))
    x = feature_map(B, C, 4, 6)
    w = torch.softmax(torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64), 0)
    x64 = x.clamp(min=1e-6)
    p = 1 + math.log1p(math.exp(0.4))
    gem = (x64**p).mean((2, 3)) ** (1 / p)
    attn_w = torch.softmax(torch.einsum("c,bchw->bhw", torch.linspace(-1, 1, C).double(), x).flatten(1), 1)
    attn = (x.flatten(2) * attn_w[:, None, :]).sum(2)
    expected = w[0] * x.mean((2, 3)) + w[1] * x.amax((2, 3)) + w[2] * gem + w[3] * attn
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_channel_mixing_with_hand_set_logits():
    layer = HybridPool(C, branches=("avg", "max"), mixing="channel").double()
    logits = torch.stack([torch.linspace(-2, 2, C), torch.linspace(1, -1, C)]).double()
    with torch.no_grad():
        layer.mix_logits.copy_(logits)
    x = feature_map(B, C, 3, 5)
    w = torch.exp(logits) / torch.exp(logits).sum(0)
    expected = w[0] * x.mean((2, 3)) + w[1] * x.amax((2, 3))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_concat_is_branch_outputs_side_by_side():
    layer = build("hybrid_concat").double()
    x = feature_map(B, C, 3, 5)
    with torch.no_grad():
        out = layer(x)
    assert layer.feat_mult() == len(ALL_BRANCHES)
    assert out.shape == (B, C * len(ALL_BRANCHES))
    for i, branch in enumerate(layer.branches.values()):
        torch.testing.assert_close(out[:, i * C : (i + 1) * C], reference(branch, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
def test_gap_init_blend_mixes_gap_and_the_learned_mixture(mixing):
    layer = HybridPool(C, branches=("max", "avg", "gem"), mixing=mixing, init="gap").double()
    randomize_(layer, seed=2)
    with torch.no_grad():
        layer.blend.fill_(0.3)
        if mixing == "gate":  # keep the input-independent part only, so the weights are softmax(mix_logits)
            for name, param in layer.named_parameters():
                if name.startswith("gate."):
                    param.zero_()
    x = feature_map(B, C, 4, 4)
    desc = torch.stack([x.amax((2, 3)), x.mean((2, 3)), reference(layer.branches["gem"], x)], 1)  # (B, 3, C)
    logits = layer.mix_logits.detach()
    w = ref_softmax(logits, 0)
    mixed = (w[None, :, None] * desc).sum(1) if w.dim() == 1 else (w[None] * desc).sum(1)
    expected = 0.7 * x.mean((2, 3)) + 0.3 * mixed
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_gate_weights_are_per_sample_and_start_at_the_static_weights():
    layer = build("hybrid_gate", randomize=False).double()
    with torch.no_grad():
        layer.mix_logits.copy_(torch.linspace(-1, 1, len(ALL_BRANCHES)))
    x = feature_map(4, C, 3, 5) * torch.tensor([1.0, 4.0, 0.1, 2.0], dtype=torch.float64)[:, None, None, None]
    with torch.no_grad():
        _, extras = layer.forward_with_extras(x)
    static = ref_softmax(torch.linspace(-1, 1, len(ALL_BRANCHES)).double(), 0)
    torch.testing.assert_close(extras["mix"], static.expand(4, -1), rtol=1e-6, atol=1e-7)  # fresh gate: no input term

    randomize_(layer, seed=5, scale=2.0)
    with torch.no_grad():
        out, extras = layer.forward_with_extras(x)
    mix = extras["mix"]
    assert mix.shape == (4, len(ALL_BRANCHES))
    assert bool((mix > 0).all())
    torch.testing.assert_close(mix.sum(1), torch.ones(4, dtype=torch.float64))
    assert (mix[0] - mix[1]).abs().max() > 1e-3  # input-conditioned: different samples, different weights
    torch.testing.assert_close(out, reference(layer, x, gate_weights=mix), rtol=1e-10, atol=1e-12)


# --- stats -----------------------------------------------------------------------------------------------------


def only_param(layer: torch.nn.Module) -> torch.nn.Parameter:
    """The single learnable parameter of a GeM / LSE layer (its raw, reparameterised exponent)."""
    (param,) = layer.parameters()
    return param


def _inverse_softplus(v: float) -> float:
    return math.log(math.expm1(v))


def test_gem_stats_after_setting_p_by_hand():
    gem = GeM()
    with torch.no_grad():
        only_param(gem).fill_(_inverse_softplus(1.5))  # documented reparameterisation: p = 1 + softplus(raw)
    assert float(gem.p.detach()) == pytest.approx(2.5, abs=1e-5)
    assert gem.stats() == {"p": pytest.approx(2.5, abs=1e-5)}
    pc = GeM(4, per_channel=True)
    with torch.no_grad():
        only_param(pc).copy_(torch.tensor([_inverse_softplus(v - 1) for v in (2.0, 3.0, 4.0, 5.0)]))
    stats = pc.stats()
    assert set(stats) == {"p", "p_std"}
    assert stats["p"] == pytest.approx(3.5, abs=1e-5)
    assert stats["p_std"] == pytest.approx(math.sqrt(1.25), abs=1e-5)
    assert GeM(p=4.0, learn_p=False).stats() == {"p": pytest.approx(4.0)}


def test_lse_and_attention_stats():
    lse = LSEPool(r=0.75)
    assert lse.stats() == {"r": pytest.approx(0.75, abs=1e-5)}
    with torch.no_grad():
        only_param(lse).fill_(_inverse_softplus(2.0))  # r = softplus(raw)
    assert lse.stats() == {"r": pytest.approx(2.0, abs=1e-5)}
    attn = AttentionPool(C, temperature=0.5, learn_temperature=True)
    assert attn.stats() == {"temperature": pytest.approx(0.5, abs=1e-6)}
    with torch.no_grad():
        attn.log_temperature.fill_(math.log(2.0))
    assert attn.stats() == {"temperature": pytest.approx(2.0, abs=1e-6)}
    assert QueryAttentionPool(C, temperature=3.0).stats() == {"temperature": pytest.approx(3.0, abs=1e-6)}


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
def test_hybrid_stats_mixing_weights(mixing):
    layer = HybridPool(C, branches=("avg", "max", "gem", "lse", "attn"), mixing=mixing)
    with torch.no_grad():
        layer.mix_logits.copy_(torch.randn(layer.mix_logits.shape) * 2)
        only_param(layer.branches["gem"]).fill_(_inverse_softplus(1.5))
    stats = layer.stats()
    names = layer.branch_names
    weights = ref_static_weights(layer)  # (n,) or (n, C)
    for i, name in enumerate(names):
        assert stats[f"mix/{name}"] == pytest.approx(float(weights[i].mean()), abs=1e-6)
        if mixing == "channel":
            assert stats[f"mix/{name}_std"] == pytest.approx(float(weights[i].std(unbiased=False)), abs=1e-6)
            assert stats[f"mix/{name}_std"] > 0
        else:
            assert f"mix/{name}_std" not in stats
    assert sum(stats[f"mix/{n}"] for n in names) == pytest.approx(1.0, abs=1e-6)
    assert stats["gem/p"] == pytest.approx(2.5, abs=1e-5)
    assert stats["lse/r"] == pytest.approx(1.0, abs=1e-5)
    assert stats["attn/temperature"] == pytest.approx(1.0)
    assert HybridPool(C, mixing="concat", branches=("avg", "gem")).stats() == {"gem/p": pytest.approx(3.0, abs=1e-5)}


def test_hybrid_gap_init_stats_and_effective_weights():
    layer = HybridPool(C, branches=("max", "avg", "gem"), mixing="scalar", init="gap")
    stats = layer.stats()
    assert stats["mix/avg"] == pytest.approx(1.0)
    assert stats["mix/max"] == pytest.approx(0.0) and stats["mix/gem"] == pytest.approx(0.0)
    assert stats["mix/blend"] == 0.0
    with torch.no_grad():
        layer.blend.fill_(0.5)
        layer.mix_logits.copy_(torch.tensor([1.0, 0.0, -1.0]))
    w = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)
    eff = layer.effective_weights()
    assert set(eff) == {"max", "avg", "gem"}
    assert float(eff["avg"]) == pytest.approx(0.5 + 0.5 * float(w[1]), abs=1e-6)
    assert float(eff["max"]) == pytest.approx(0.5 * float(w[0]), abs=1e-6)
    assert layer.stats()["mix/blend"] == pytest.approx(0.5)


# --- forward_with_extras ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_map_is_the_softmax_used(heads):
    layer = AttentionPool(C, heads=heads, temperature=0.8).double()
    randomize_(layer, seed=1, scale=2.0)
    x = feature_map(B, C, 3, 5)
    with torch.no_grad():
        out, extras = layer.forward_with_extras(x)
    ref_out, ref_map = ref_attention(x, layer.proj.weight, layer.proj.bias, layer.temperature, heads)
    attn = extras["attn"]
    assert attn.shape == (B, heads, 3, 5)
    torch.testing.assert_close(attn.sum((2, 3)), torch.ones(B, heads, dtype=torch.float64))
    torch.testing.assert_close(attn, ref_map, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    assert attn.std() > 1e-3  # the projection made a non-uniform map


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("query", ["gap", "learned"])
def test_query_attention_map_is_the_softmax_used(query, similarity):
    layer = QueryAttentionPool(C, heads=2, query=query, similarity=similarity, temperature=1.3).double()
    randomize_(layer, seed=4, scale=2.0)
    x = feature_map(B, C, 4, 3)
    with torch.no_grad():
        out, extras = layer.forward_with_extras(x)
        q = query_of(layer, x)
    ref_out, ref_map = ref_query_attention(x, layer.key, q, layer.temperature, 2, layer.similarity)
    assert extras["attn"].shape == (B, 2, 4, 3)
    torch.testing.assert_close(extras["attn"].sum((2, 3)), torch.ones(B, 2, dtype=torch.float64))
    torch.testing.assert_close(extras["attn"], ref_map, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate", "concat"])
def test_hybrid_extras(mixing):
    layer = build(f"hybrid_{mixing}").double()
    x = feature_map(B, C, 3, 4)
    n = len(ALL_BRANCHES)
    with torch.no_grad():
        out, extras = layer.forward_with_extras(x)
        plain = layer(x)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    desc = extras["descriptors"]
    assert desc.shape == (B, n, C)
    for i, branch in enumerate(layer.branches.values()):
        torch.testing.assert_close(desc[:, i], reference(branch, x), rtol=1e-10, atol=1e-12)
    attn = extras["attn"]  # the first attention branch's map ...
    assert attn.shape == (B, 2, 3, 4)
    torch.testing.assert_close(attn.sum((2, 3)), torch.ones(B, 2, dtype=torch.float64))
    a_branch, q_branch = layer.branches["attn"], layer.branches["qattn"]
    ref_a = ref_attention(x, a_branch.proj.weight, None, a_branch.temperature, 2)[1]
    ref_q = ref_query_attention(x, q_branch.key, query_of(q_branch, x), q_branch.temperature, 2, "cosine")[1]
    torch.testing.assert_close(attn, ref_a, rtol=1e-10, atol=1e-12)
    # ... and every attention branch's map under "<branch>.attn"
    torch.testing.assert_close(extras["attn.attn"], ref_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(extras["qattn.attn"], ref_q, rtol=1e-10, atol=1e-12)
    if mixing == "concat":
        assert "mix" not in extras
        return
    mix = extras["mix"]
    if mixing == "channel":
        assert mix.shape == (B, n, C)
        torch.testing.assert_close(mix, ref_static_weights(layer).expand(B, n, C), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close((mix * desc).sum(1), out, rtol=1e-10, atol=1e-12)
    else:
        assert mix.shape == (B, n)
        if mixing == "scalar":
            torch.testing.assert_close(mix, ref_static_weights(layer).expand(B, n), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.einsum("bn,bnc->bc", mix, desc), out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mix.sum(1), torch.ones(mix.sum(1).shape, dtype=torch.float64))


def test_single_layers_extras():
    x = feature_map(B, C, 3, 4)
    assert GeM()(x).shape == (B, C)
    _, extras = GeM().forward_with_extras(x)
    assert extras == {}


# --- functional.attention_entropy ------------------------------------------------------------------------------


def test_attention_entropy_limits():
    uniform = torch.full((2, 3, 4, 5), 1 / 20)
    torch.testing.assert_close(functional.attention_entropy(uniform), torch.full((2, 3), math.log(20)))
    onehot = torch.zeros(2, 3, 4, 5)
    onehot[:, :, 1, 2] = 1.0
    torch.testing.assert_close(functional.attention_entropy(onehot), torch.zeros(2, 3))
    two = torch.zeros(1, 1, 2, 2)
    two[0, 0, 0] = 0.5
    torch.testing.assert_close(functional.attention_entropy(two), torch.full((1, 1), math.log(2)))


def test_attention_entropy_of_a_fresh_attention_layer_is_maximal():
    _, extras = AttentionPool(C, heads=2).forward_with_extras(feature_map(2, C, 3, 3, dtype=torch.float32))
    torch.testing.assert_close(functional.attention_entropy(extras["attn"]), torch.full((2, 2), math.log(9)))


@pytest.mark.parametrize("mixing", ["scalar", "channel", "gate"])
def test_branch_norm_mixes_rms_normalised_descriptors_at_the_avg_scale(mixing):
    layer = HybridPool(C, ("avg", "max", "gem"), mixing=mixing, branch_norm=True).double()
    randomize_(layer, seed=3)
    x = feature_map(B, C, 4, 5)
    out, extras = layer.forward_with_extras(x)
    d = torch.stack([ref_avg(x), ref_max(x), reference(layer.branches["gem"], x)], dim=1)  # (B, 3, C)
    rms = d.pow(2).mean(-1, keepdim=True).sqrt()
    w = extras["mix"].double()  # (B, n) or (B, n, C)
    mixed = (w.unsqueeze(-1) * (d / rms)).sum(1) if w.ndim == 2 else (w * (d / rms)).sum(1)
    torch.testing.assert_close(out, mixed * rms[:, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer(x[1:2]), out[1:2], rtol=1e-12, atol=1e-14)  # independent of the batch


def test_branch_norm_with_init_gap_starts_as_gap_and_names_another_pool():
    layer = HybridPool(C, ("avg", "max", "gem", "attn"), init="gap", branch_norm=True).double()
    x = feature_map(B, C, 3, 3) * 50.0  # branches on very different scales
    torch.testing.assert_close(layer(x), ref_avg(x), rtol=1e-12, atol=1e-12)
    assert pool_factory("hybrid", branch_norm=True).spec == "hybrid(branch_norm=true)"
    assert pool_factory("hybrid", branch_norm=False).spec == "hybrid"
    with pytest.raises(ValueError, match="branch_norm=True needs a weighted mixing mode"):
        HybridPool(C, ("avg", "max"), mixing="concat", branch_norm=True)
