"""create_pool (names, aliases, spec strings, kwargs), pool_factory and the spec identity, feat_mult and
pooling_parameters."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hybridpool.pooling import (
    AttentionPool,
    Flatten,
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    HybridPool,
    KMaxPool,
    LSEPool,
    PoolFactory,
    QueryAttentionPool,
    canonical_spec,
    create_pool,
    known_pools,
    parse_spec,
    pool_config_keys,
    pool_factory,
    pool_spec,
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


# --- spec identity: pool_factory, describe(), canonical specs ---------------------------------------------------

# (spec, kwargs) -> canonical spec: the identity arguments (mixing; per_channel) at non-default values are in it
IDENTITIES = [
    (("avg", {}), "avg"),
    (("gap", {}), "avg"),
    (("GMP", {}), "max"),
    (("gem", {"p": 2.0, "learn_p": False}), "gem"),
    (("gem", {"per_channel": False}), "gem"),
    (("gem", {"per_channel": True}), "gem(per_channel=true)"),
    (("gem(per_channel=true)", {"p": 4.0}), "gem(per_channel=true)"),
    (("lse", {"per_channel": True, "r": 2.0}), "lse(per_channel=true)"),
    (("kmax", {"k": 3}), "kmax"),
    (("attn", {"heads": 2}), "attn"),
    (("qattn", {"query": "learned"}), "qattn"),
    (("flatten", {"spatial_size": [3, 4]}), "flatten"),
    (("hybrid", {}), "hybrid"),
    (("hybrid", {"mixing": "scalar", "init": "gap"}), "hybrid"),
    (("hybrid(avg,max,gem,attn)", {"mixing": "channel"}), "hybrid(mixing=channel)"),
    (("hybrid(avg, max)", {"mixing": "gate", "gate_hidden": 4}), "hybrid(mixing=gate)"),
    (("Hybrid(avg,gem,mixing=concat)", {}), "hybrid(mixing=concat)"),
    (("hybrid(mixing=channel)", {"branches": ["avg", "lse"], "branch_kwargs": {"lse": {"r": 2.0}}}),
     "hybrid(mixing=channel)"),
]


def _same_layer(a: nn.Module, b: nn.Module) -> None:
    assert type(a) is type(b) and repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(("given", "spec"), IDENTITIES, ids=[f"{s}{k}" for (s, k), _ in IDENTITIES])
def test_describe_names_the_canonical_spec_and_rebuilds_an_equal_layer(given, spec):
    factory = pool_factory(given[0], **given[1])
    described = factory.describe()
    assert described["spec"] == spec == factory.spec == canonical_spec(*given[:1], **given[1])
    assert json.loads(json.dumps(described)) == described  # the record's pool field is JSON as it is
    torch.manual_seed(0)
    built = factory(C)
    torch.manual_seed(0)
    rebuilt = create_pool(described["spec"], C, **described["kwargs"])
    _same_layer(built, rebuilt)
    assert pool_spec(built) == spec == pool_spec(rebuilt)
    assert pool_factory(described["spec"], **described["kwargs"]) == factory  # the description is a fixed point
    x = torch.rand(2, C, 3, 4)
    assert torch.equal(built(x), rebuilt(x))


def test_distinct_arms_have_distinct_specs_and_settings_do_not():
    arms = {
        "hybrid_scalar": pool_factory("hybrid", mixing="scalar"),
        "hybrid_channel": pool_factory("hybrid", mixing="channel"),
        "hybrid_gate": pool_factory("hybrid", mixing="gate"),
        "hybrid_concat": pool_factory("hybrid", mixing="concat"),
        "gem": pool_factory("gem", per_channel=False),
        "gem_channel": pool_factory("gem", per_channel=True),
        "lse": pool_factory("lse"),
        "lse_channel": pool_factory("lse", per_channel=True),
    }
    assert len({f.spec for f in arms.values()}) == len(arms)
    # settings swept as arms of one pool keep its spec (the report tells them apart by their config keys)
    assert pool_factory("hybrid", branches=["avg", "max"], init="gap").spec == "hybrid"
    assert pool_factory("gem", p=8.0, learn_p=False).spec == "gem"


def test_the_identity_defaults_are_the_constructors():
    import inspect

    from hybridpool.pooling.factory import IDENTITY_ARGS

    assert IDENTITY_ARGS == {"hybrid": ("mixing", "branch_norm"), "gem": ("per_channel",), "lse": ("per_channel",)}
    assert inspect.signature(HybridPool).parameters["mixing"].default == "scalar"
    for cls in (GeM, LSEPool):
        assert inspect.signature(cls).parameters["per_channel"].default is False


def test_parse_spec_grammar():
    assert parse_spec("gap") == ("avg", {})
    hybrid = ("hybrid", {"branches": ["avg", "max"], "mixing": "gate"})
    assert parse_spec(" Hybrid ( Avg , GMP , mixing = gate ) ") == hybrid
    assert parse_spec("gem(p=2, learn_p=false, eps=1e-4)") == ("gem", {"p": 2, "learn_p": False, "eps": 1e-4})
    assert parse_spec("hybrid(branch_kwargs=null)") == ("hybrid", {"branch_kwargs": None})
    gem = create_pool("gem(per_channel=true)", C)
    assert type(gem) is GeM and gem.p.shape == (C,)
    for bad, match in [
        ("gem()", "empty argument list"),
        ("gem(avg)", "key=value arguments"),
        ("hybrid(mixing=gate,avg)", "branches come first"),
        ("gem(p=2,p=3)", "given twice"),
        ("gem(=2)", "not a key=value"),
        ("gem(p=)", "not a key=value"),
        ("hybrid(avg,branches=[max])", "malformed|given twice|not a key"),
    ]:
        with pytest.raises(ValueError, match=match):
            create_pool(bad, channels=C)


def test_an_argument_in_the_spec_and_as_a_keyword_is_refused():
    with pytest.raises(ValueError, match="per_channel given twice"):
        pool_factory("gem(per_channel=true)", per_channel=False)
    with pytest.raises(ValueError, match="mixing given twice"):
        create_pool("hybrid(mixing=gate)", C, mixing="gate")


def test_pool_factory_checks_names_at_once_and_values_at_build():
    with pytest.raises(ValueError, match=r"unknown pooling 'gemm'.*known: .*avg"):
        pool_factory("gemm")
    with pytest.raises(TypeError, match=r"GeM got unknown argument\(s\) \['pp'\]; accepted: p, learn_p"):
        pool_factory("gem", pp=2.0)
    factory = pool_factory("hybrid", mixing="sideways")  # a value is the constructor's to check
    with pytest.raises(ValueError, match="unknown mixing 'sideways'"):
        factory(C)
    with pytest.raises(TypeError, match="already set by the pool factory"):
        pool_factory("gem", p=2.0)(C, p=3.0)
    assert pool_factory("avg")(C, flatten=False)(torch.rand(2, C, 3, 3)).shape == (2, C, 1, 1)


def test_pool_factory_takes_config_containers_and_keeps_plain_kwargs():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"branches": ["avg", "max"], "branch_kwargs": {"max": {}}})
    factory = pool_factory("hybrid", branches=node.branches, branch_kwargs=node.branch_kwargs)
    kwargs = {"branches": ["avg", "max"], "branch_kwargs": {"max": {}}}
    assert factory.describe() == {"spec": "hybrid", "kwargs": kwargs}
    assert isinstance(factory(C), HybridPool) and isinstance(factory, PoolFactory)
    flat = pool_factory("flatten", spatial_size=OmegaConf.create([3, 4]))
    assert flat(C).spatial_size == (3, 4) and flat.describe()["kwargs"] == {"spatial_size": [3, 4]}
    assert repr(flat) == "pool_factory('flatten', spatial_size=[3, 4])"


def test_pool_spec_of_built_layers():
    assert pool_spec(create_pool("hybrid(avg,max)", C, mixing="concat")) == "hybrid(mixing=concat)"
    assert pool_spec(GeM(C, per_channel=True)) == "gem(per_channel=true)"
    assert pool_spec(Flatten(spatial_size=2)) == "flatten"
    with pytest.raises(TypeError, match="not a registered pooling layer"):
        pool_spec(nn.Identity())


def test_pool_config_keys_follow_the_spec_to_the_constructor():
    assert pool_config_keys("gem") == ["spec", "p", "learn_p", "per_channel", "eps", "flatten", "input_fmt"]
    assert "mixing" in pool_config_keys("hybrid(avg,max)") and "spatial_size" in pool_config_keys("flatten")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_config_keys("gemm")


def test_pooling_parameters_split_shape_parameters_from_weights():
    def names(layer, kind):
        ids = {id(p) for p in pooling_parameters(layer, kind)}
        return {n for n, p in layer.named_parameters() if id(p) in ids}

    hybrid = create_pool("hybrid(avg,max,gem,attn)", C, init="gap")
    assert names(hybrid, "shape") == {"mix_logits", "blend", "branches.gem.raw"}
    assert names(hybrid, "weights") == {"branches.attn.proj.weight"}
    assert names(hybrid, "all") == names(hybrid, "shape") | names(hybrid, "weights")
    learned = create_pool("qattn", C, query="learned", learn_temperature=True)
    assert names(learned, "shape") == {"query", "log_temperature"} and names(learned, "weights") == {"key"}
    gap_query = create_pool("qattn", C)
    assert names(gap_query, "weights") == {"key", "query.weight", "query.bias"}
    gate = create_pool("hybrid(avg,max)", C, mixing="gate")
    assert names(gate, "weights") == {"gate.0.weight", "gate.0.bias", "gate.2.weight", "gate.2.bias"}
    with pytest.raises(ValueError, match="unknown kind 'matrices'; accepted: all, shape, weights"):
        pooling_parameters(hybrid, "matrices")
