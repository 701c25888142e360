"""The report names a run's pool by its canonical spec: the record's ``pool.spec``, else the old ``pool:`` tag."""

from __future__ import annotations

import json

import pytest
from report_helpers import write_record

from hybridpool.report.analysis import analyse, pool_name
from hybridpool.report.runs import LEGACY_POOL_NAMES, group_runs, load_runs, pool_key, run_from_record

NEW_HYBRID_NODE = {
    "_target_": "hybridpool.pooling.pool_factory",
    "spec": "hybrid",
    "branches": ["avg", "max", "gem", "attn"],
    "mixing": "channel",
    "init": "uniform",
}
OLD_HYBRID_NODE = {**NEW_HYBRID_NODE, "_target_": "hybridpool.pooling.HybridPool", "_partial_": True}
del OLD_HYBRID_NODE["spec"]


def _record(pool_field=None, tags=("data:cub", "backbone:mobilenet_v2"), node=None, seed=0, acc=0.5):
    record = {
        "status": "completed",
        "task_name": "t",
        "seed": seed,
        "tags": list(tags),
        "metrics": {"test/acc": acc},
        "config": {"seed": seed, "pool": node or {}, "model": {"post_bn": True}},
    }
    if pool_field is not None:
        record["pool"] = pool_field
    return record


def test_a_new_record_is_named_by_its_pool_spec_field():
    pool = {"spec": "hybrid(mixing=channel)", "kwargs": {"branches": ["avg", "max", "gem", "attn"]}}
    tags = ("pool:hybrid(mixing=channel)", "mixing:channel")
    run = run_from_record(_record(pool, tags=tags, node=NEW_HYBRID_NODE), "x")
    assert run.pool == "hybrid(mixing=channel)" and run.mixing == "channel"
    # the field wins over a tag that says otherwise: the tag is not parsed back
    assert run_from_record(_record({"spec": "gem"}, tags=("pool:avg",)), "x").pool == "gem"


def test_an_old_record_is_named_from_its_conf_name_tag():
    for conf, spec in {**LEGACY_POOL_NAMES, "avg": "avg", "gem": "gem", "flatten": "flatten"}.items():
        assert run_from_record(_record(tags=(f"pool:{conf}",)), "x").pool == spec
    assert run_from_record(_record(tags=("pool:hybrid_channel",), node=OLD_HYBRID_NODE), "x").mixing == "channel"


@pytest.mark.parametrize(
    ("node", "spec"),
    [
        (OLD_HYBRID_NODE, "hybrid(mixing=channel)"),
        ({"_target_": "hybridpool.pooling.GeM", "_partial_": True, "per_channel": True}, "gem(per_channel=true)"),
        ({"_target_": "hybridpool.pooling.GlobalAvgPool", "_partial_": True}, "avg"),
        (NEW_HYBRID_NODE, "hybrid(mixing=channel)"),
        ({"_target_": "hybridpool.pooling.pool_factory", "spec": "gap"}, "avg"),
        ({"_target_": "my.own.Pool"}, "Pool"),
    ],
)
def test_without_field_or_tag_the_config_node_names_the_pool(node, spec):
    assert run_from_record(_record(node=node), "x").pool == spec


def test_old_and_new_records_of_one_pool_share_a_cell(tmp_path):
    """The committed records (tag pool:hybrid_channel, class _target_) and new ones (pool field, factory _target_)."""

    def config(seed, node):
        return {"seed": seed, "task_name": "t", "pool": node, "model": {"post_bn": True}}

    for seed in range(3):
        write_record(tmp_path / f"old{seed}", seed=seed, pool="hybrid_channel", config=config(seed, OLD_HYBRID_NODE))
        new_config = config(seed + 3, NEW_HYBRID_NODE)
        new = write_record(tmp_path / f"new{seed}", seed=seed + 3, pool="hybrid(mixing=channel)", config=new_config)
        record = json.loads(new.read_text())
        record["pool"] = {"spec": "hybrid(mixing=channel)", "kwargs": {"branches": ["avg", "max", "gem", "attn"]}}
        new.write_text(json.dumps(record))
        avg = {"_target_": "hybridpool.pooling.GlobalAvgPool", "_partial_": True}
        write_record(tmp_path / f"avg{seed}", seed=seed, pool="avg", config=config(seed, avg))
        write_record(tmp_path / f"avg{seed + 3}", seed=seed + 3, pool="avg", config=config(seed + 3, avg))
    study = group_runs(load_runs([tmp_path]))
    hybrid = [c for c in study.cells if c.pool == "hybrid(mixing=channel)"]
    assert len(hybrid) == 1 and len(hybrid[0].runs) == 6 and hybrid[0].arms == {}
    assert not {"pool._target_", "pool._partial_", "pool.spec"} & set(study.arm_keys)


def test_display_names_are_keyed_by_spec_and_old_names_still_work():
    assert pool_name("hybrid") == "Hybrid (scalar)" == pool_name("hybrid_scalar")
    assert pool_name("hybrid(mixing=gate)") == "Hybrid (gate)" == pool_name("hybrid_gate")
    assert pool_name("gem(per_channel=true)") == "GeM (per-channel p)"
    assert pool_name("gem(per_channel=true)", latex=True) == "GeM (per-channel $p$)"
    assert pool_name("lse(mystery=1)") == "lse(mystery=1)"  # an unknown spec is shown as it is
    assert pool_key("hybrid_concat") == "hybrid(mixing=concat)" and pool_key("kmax") == "kmax"


def test_a_baseline_may_be_given_by_its_old_conf_name(tmp_path):
    for seed in range(3):
        write_record(tmp_path / f"s{seed}", seed=seed, pool="hybrid_scalar")
        write_record(tmp_path / f"a{seed}", seed=seed, pool="avg", metrics={"test/acc": 0.4 + seed / 10})
    analysis = analyse(group_runs(load_runs([tmp_path])), baseline="hybrid_scalar")
    assert analysis.baseline == "hybrid" and [c.cell.pool for c in analysis.comparisons] == ["avg"]
