"""create_pool (names, aliases, spec strings, kwargs), feat_mult and pooling_parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybridpool.pooling import (
    AttentionPool,
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    HybridPool,
    KMaxPool,
    LSEPool,
    QueryAttentionPool,
    create_pool,
    known_pools,
    pooling_parameters,
)

C = 8
NAMES = {
    "avg": GlobalAvgPool,
    "max": GlobalMaxPool,
    "gem": GeM,
    "lse": LSEPool,
    "kmax": KMaxPool,
    "attn": AttentionPool,
    "qattn": QueryAttentionPool,
}
ALIASES = {
    "gap": GlobalAvgPool,
    "mean": GlobalAvgPool,
    "gmp": GlobalMaxPool,
    "logsumexp": LSEPool,
    "k-max": KMaxPool,
    "kmaxpool": KMaxPool,
    "attention": AttentionPool,
    "query_attn": QueryAttentionPool,
    "simpool": QueryAttentionPool,
}


@pytest.mark.parametrize(("name", "cls"), [*NAMES.items(), *ALIASES.items()])
def test_every_name_and_alias(name, cls):
    layer = create_pool(name, channels=C)
    assert type(layer) is cls
    assert layer.feat_mult() == 1
    assert layer(torch.rand(2, C, 3, 4)).shape == (2, C)
    assert type(create_pool(f"  {name.upper()} ", channels=C)) is cls  # whitespace and case


def test_known_pools_lists_every_name():
    assert set(known_pools()) >= {*NAMES, "hybrid(...)"}


@pytest.mark.parametrize(
    ("spec", "branches"),
    [
        ("hybrid(avg,max,gem,attn)", ["avg", "max", "gem", "attn"]),
        ("hybrid(gem, lse)", ["gem", "lse"]),
        ("  HYBRID ( Avg ,  GMP , k-max )  ", ["avg", "max", "kmax"]),
        ("hybrid(gap,simpool,logsumexp)", ["avg", "qattn", "lse"]),
        ("hybrid(gem,gem,avg)", ["gem", "gem_1", "avg"]),
        ("hybrid(avg,)", ["avg"]),
        ("hybrid", ["avg", "max", "gem", "attn"]),
        ("Hybrid", ["avg", "max", "gem", "attn"]),
    ],
)
def test_hybrid_specs(spec, branches):
    layer = create_pool(spec, channels=C)
    assert isinstance(layer, HybridPool)
    assert layer.branch_names == branches
    assert layer.feat_mult() == 1
    assert layer(torch.rand(2, C, 3, 3)).shape == (2, C)


def test_hybrid_branch_types():
    layer = create_pool("hybrid(avg,max,gem,lse,kmax,attn,qattn)", channels=C)
    assert [type(b) for b in layer.branches.values()] == list(NAMES.values())


@pytest.mark.parametrize("n", [1, 2, 4])
def test_feat_mult_of_concat_is_the_number_of_branches(n):
    spec = f"hybrid({','.join(['avg', 'max', 'gem', 'attn'][:n])})"
    layer = create_pool(spec, channels=C, mixing="concat")
    assert layer.feat_mult() == n
    assert layer(torch.rand(3, C, 2, 5)).shape == (3, n * C)
    for mixing in ("scalar", "channel", "gate"):
        assert create_pool(spec, channels=C, mixing=mixing).feat_mult() == 1


def test_kwargs_are_forwarded():
    gem = create_pool("gem", p=2.0, learn_p=False, eps=1e-4)
    assert float(gem.p) == 2.0 and gem.eps == 1e-4 and list(gem.parameters()) == []
    gem_pc = create_pool("gem", channels=C, per_channel=True)
    assert gem_pc.p.shape == (C,)
    assert create_pool("lse", r=3.0).r.item() == pytest.approx(3.0, rel=1e-6)
    assert create_pool("kmax", k=5).k == 5
    attn = create_pool("attn", channels=C, heads=4, temperature=2.0)
    assert attn.heads == 4 and float(attn.temperature) == pytest.approx(2.0)
    assert create_pool("qattn", channels=C, query="learned").query_mode == "learned"
    assert create_pool("avg", flatten=False)(torch.rand(2, C, 3, 3)).shape == (2, C, 1, 1)
    assert create_pool("max", input_fmt="NHWC")(torch.rand(2, 3, 3, C)).shape == (2, C)
    hybrid = create_pool(
        "hybrid(avg,gem,attn)", channels=C, mixing="channel", init="gap", branch_kwargs={"gem": {"p": 5.0}}
    )
    assert hybrid.mixing == "channel" and hybrid.init == "gap"
    assert float(hybrid.branches["gem"].p.detach()) == pytest.approx(5.0, rel=1e-6)
    assert create_pool("hybrid(avg,max)", channels=C, mixing="gate", gate_hidden=3).stats()["mix/avg"] == 0.5


def test_unknown_name_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"'foo'.*avg.*gem.*kmax.*lse.*max.*qattn") as err:
        create_pool("foo", channels=C)
    for name in (*NAMES, "hybrid"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match=r"'foo'.*known"):
        create_pool("hybrid(avg,foo)", channels=C)
    with pytest.raises(ValueError, match="unknown pooling"):
        create_pool("hybrid(avg,hybrid(max))", channels=C)
    with pytest.raises(ValueError, match="unknown pooling"):
        create_pool("", channels=C)


def test_malformed_hybrid_specs():
    with pytest.raises(ValueError, match="empty branch list"):
        create_pool("hybrid()", channels=C)
    with pytest.raises(ValueError, match="empty branch list"):
        create_pool("hybrid( , )", channels=C)
    with pytest.raises(ValueError, match="branches given twice"):
        create_pool("hybrid(avg,max)", channels=C, branches=("gem",))


def test_unknown_kwarg_is_a_type_error_listing_the_accepted_ones():
    with pytest.raises(TypeError, match=r"GeM.*\['q'\].*accepted: p, learn_p, per_channel, eps"):
        create_pool("gem", q=3.0)
    with pytest.raises(TypeError, match=r"HybridPool.*\['mix'\].*accepted:.*mixing.*init.*branch_kwargs"):
        create_pool("hybrid(avg,max)", channels=C, mix="scalar")
    with pytest.raises(TypeError, match=r"AttentionPool.*\['head'\].*accepted:.*heads"):
        create_pool("attn", channels=C, head=2)


def test_spec_must_be_a_string():
    with pytest.raises(TypeError, match="spec must be a string"):
        create_pool(GeM, channels=C)


# --- pooling_parameters ----------------------------------------------------------------------------------------


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_pooling_parameters_single_layers():
    gem, gem_fixed = GeM(), GeM(learn_p=False)
    assert ids(pooling_parameters(gem)) == ids(gem.parameters()) and len(pooling_parameters(gem)) == 1
    assert pooling_parameters(gem_fixed) == []
    assert len(pooling_parameters(LSEPool(C, per_channel=True))) == 1
    assert pooling_parameters(LSEPool(learn_r=False)) == []
    assert pooling_parameters(GlobalAvgPool()) == [] and pooling_parameters(KMaxPool()) == []
    attn = AttentionPool(C)
    assert id(attn.proj.weight) in ids(pooling_parameters(attn))
    assert ids(pooling_parameters(attn)) == ids(attn.parameters())  # the temperature is fixed: a buffer
    attn_t = AttentionPool(C, learn_temperature=True)
    assert ids(pooling_parameters(attn_t)) == ids(attn_t.parameters())
    assert len(pooling_parameters(attn_t)) == len(pooling_parameters(attn)) + 1
    assert id(attn_t.log_temperature) in ids(pooling_parameters(attn_t))
    qattn = QueryAttentionPool(C, query="learned", learn_temperature=True)
    assert ids(pooling_parameters(qattn)) == ids(qattn.parameters()) and len(pooling_parameters(qattn)) == 3


def test_pooling_parameters_in_a_model_skip_the_backbone_and_frozen_ones():
    pool = create_pool("hybrid(avg,max,gem,lse,attn,qattn)", channels=C, mixing="gate", init="gap", gate_hidden=4)
    model = nn.Sequential(nn.Conv2d(3, C, 3), nn.BatchNorm2d(C), nn.ReLU(), pool, nn.Linear(C, 2))
    found = pooling_parameters(model)
    assert ids(found) == ids(pool.parameters())
    assert len(found) == len(set(ids(found)))  # no duplicates
    for backbone in (model[0].weight, model[0].bias, model[1].weight, model[4].weight):
        assert id(backbone) not in ids(found)
    for wanted in (pool.mix_logits, pool.blend, pool.branches["gem"].p, pool.branches["lse"].r):
        if wanted.is_leaf:
            assert id(wanted) in ids(found)
    # p and r are reparameterised: their raw parameters are what the optimizer needs, and they are found
    for name in ("gem", "lse"):
        (raw,) = pool.branches[name].parameters()
        assert id(raw) in ids(found)
    assert id(pool.branches["attn"].proj.weight) in ids(found)
    pool.branches["gem"].requires_grad_(False)
    assert len(pooling_parameters(model)) == len(found) - 1


def test_pooling_parameters_make_an_optimizer_group():
    model = nn.Sequential(nn.Conv2d(3, C, 3), GeM())
    pool_params = pooling_parameters(model)
    others = [p for p in model.parameters() if id(p) not in ids(pool_params)]
    opt = torch.optim.SGD([{"params": others}, {"params": pool_params, "lr": 1.0, "weight_decay": 0.0}], lr=0.0)
    p_before = float(model[1].p.detach())
    model(torch.rand(2, 3, 6, 6)).sum().backward()
    opt.step()
    assert float(model[1].p.detach()) != p_before  # only the pool's group had a learning rate
    assert model[0].weight.grad is not None
