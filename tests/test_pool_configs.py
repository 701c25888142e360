"""conf/pool/*.yaml build through hybridpool.pooling.pool_factory: the spec identity, and validate_config following
``spec`` to the layer's constructor."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from hybridpool.pooling import PoolFactory, create_pool, pool_spec
from hybridpool.run import config_dir
from hybridpool.run.config import ConfigError, validate_config

POOLS = sorted(p.stem for p in (config_dir() / "pool").glob("*.yaml"))
#: conf file -> the canonical spec a run records for it (describe()["spec"], the W&B tag pool:<spec>)
SPECS = {
    "attn": "attn",
    "avg": "avg",
    "cov": "cov",
    "flatten": "flatten",
    "gem": "gem",
    "gem_channel": "gem(per_channel=true)",
    "hybrid_channel": "hybrid(mixing=channel)",
    "hybrid_concat": "hybrid(mixing=concat)",
    "hybrid_gate": "hybrid(mixing=gate)",
    "hybrid_scalar": "hybrid",
    "kmax": "kmax",
    "lse": "lse",
    "max": "max",
    "qattn": "qattn",
}


def _overrides(name: str) -> list[str]:
    return [f"pool={name}", *(["pool.spatial_size=[8,8]"] if name == "flatten" else [])]


def test_every_pool_config_is_listed():
    assert sorted(SPECS) == POOLS


@pytest.mark.parametrize("name", POOLS)
def test_every_pool_config_builds_through_the_factory_with_its_spec(name, make_cfg):
    from hybridpool.models import Classifier, SmallCNN

    cfg = make_cfg(_overrides(name))
    container = validate_config(cfg)
    assert container["pool"]["_target_"] == "hybridpool.pooling.pool_factory"
    factory = instantiate(cfg.pool, _convert_="all")
    assert isinstance(factory, PoolFactory)
    described = factory.describe()
    assert described["spec"] == SPECS[name]
    # the config keys are the constructor's arguments: those not in the spec are the description's kwargs
    node = {k: v for k, v in container["pool"].items() if k not in ("_target_", "spec")}
    assert {k: v for k, v in node.items() if k not in described["kwargs"]} == {
        k: v for k, v in node.items() if f"{k}=" in described["spec"]
    }
    model = Classifier(SmallCNN(3, (8, 16)), factory, num_classes=3)  # 16 px -> 8x8 map
    assert pool_spec(model.pool) == SPECS[name]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    torch.manual_seed(0)
    built = factory(16)
    torch.manual_seed(0)
    rebuilt = create_pool(described["spec"], 16, **described["kwargs"])
    assert repr(built) == repr(rebuilt)
    assert built.state_dict().keys() == rebuilt.state_dict().keys()
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in built.state_dict().items())


@pytest.mark.parametrize(
    ("override", "path", "suggestion", "accepted"),
    [
        ("+pool.learn_pp=false", "pool.learn_pp", "learn_p", "per_channel"),
        ("+pool.mixng=gate", "pool.mixng", "mixing", "gate_hidden"),
        ("+pool.head=2", "pool.head", "heads", "learn_temperature"),
        ("+pool.reduce_dims=32", "pool.reduce_dims", "reduce_dim", "normalization"),
        ("+pool.normalisation=none", "pool.normalisation", "normalization", "iterations"),
    ],
)
def test_a_misspelled_pool_key_is_checked_against_the_spec_s_layer(override, path, suggestion, accepted, make_cfg):
    pool = {
        "pool.learn_pp": "gem",
        "pool.mixng": "hybrid_gate",
        "pool.head": "attn",
        "pool.reduce_dims": "cov",
        "pool.normalisation": "cov",
    }[path]
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg([f"pool={pool}", override]))
    msg = str(err.value)
    assert f"{path}: unknown key" in msg and f"did you mean '{suggestion}'" in msg
    assert "accepted:" in msg and accepted in msg and "spec" in msg


def test_an_unknown_spec_lists_the_known_names_at_config_check(make_cfg):
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg(["pool=avg", "pool.spec=gemm"]))
    msg = str(err.value)
    assert "pool.spec: unknown pooling 'gemm'" in msg
    for name in ("avg", "gem", "kmax", "hybrid(...)"):
        assert name in msg


def test_an_argument_in_the_spec_and_as_a_key_is_a_config_problem(make_cfg):
    with pytest.raises(ConfigError, match=r"pool\.spec: mixing given twice"):
        validate_config(make_cfg(["pool=hybrid_gate", "pool.spec='hybrid(mixing=gate)'"]))


def test_a_spec_may_carry_the_identity_arguments(make_cfg):
    cfg = make_cfg(["pool=avg", "pool.spec='gem(per_channel=true)'", "+pool.p=2.0"])
    validate_config(cfg)
    assert instantiate(cfg.pool, _convert_="all").describe() == {"spec": "gem(per_channel=true)", "kwargs": {"p": 2.0}}


def test_the_study_switches_follow_the_spec(make_cfg):
    switch = ["module.pool_schedule=freeze_and_train", "+module.switch_epoch=1", "trainer.max_epochs=2"]
    validate_config(make_cfg(["pool=hybrid_channel", "pool.init=gap", *switch]))
    with pytest.raises(ConfigError, match=r"needs a HybridPool pool with weighted mixing.*got gem"):
        validate_config(make_cfg(["pool=gem", *switch]))
    with pytest.raises(ConfigError, match=r"needs pool\.mixing in .*got 'concat'"):
        validate_config(make_cfg(["pool=hybrid_concat", *switch]))
    with pytest.raises(ConfigError, match=r"pool\.spatial_size: Flatten"):
        validate_config(make_cfg(["pool=flatten", "pool.spatial_size=[0,7]"]))
