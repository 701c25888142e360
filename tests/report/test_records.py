"""Reading runs: results.json trees, grouping into cells, problems, offline W&B files, the W&B API."""

from __future__ import annotations

import json
import types

import pytest
from report_helpers import AVG_SYNTH, RUNS, load_fixture_generator, write_record

from hybridpool.report.runs import (
    Unit,
    find_results,
    group_runs,
    load_runs,
    read_metrics_csv,
    read_wandb_offline,
    read_wandb_project,
)


def _cell(study, data, pool, **arms):
    for c in study.cells:
        if c.data == data and c.pool == pool and all(str(c.arms.get(k)) == str(v) for k, v in arms.items()):
            return c
    raise AssertionError(f"no cell {data}/{pool} {arms}: {[c.key for c in study.cells]}")


def test_fixture_runs_are_read_and_grouped_into_cells():
    runs = load_runs([RUNS])
    assert len(runs) == 39
    assert all(r.fixture for r in runs)
    study = group_runs(runs)
    assert study.arm_keys == ["model.post_bn"]  # the only key that varies within data x pool
    assert len(study.cells) == 8
    avg = _cell(study, "synth_detail", "avg")
    assert avg.arms == {}  # post_bn is constant on synth_detail, so it does not label cells there
    assert {u.seed: v for u, v in avg.completed("test/acc").items()} == dict(enumerate(AVG_SYNTH))
    assert {u.split for u in avg.completed("test/acc")} == {None}  # no split_seed in the config: split follows seed
    # old-style records (tag pool:hybrid_scalar, no pool field) are named by their canonical spec
    flowers_hybrid = [c for c in study.cells if c.data == "flowers17" and c.pool == "hybrid"]
    assert sorted(str(c.arms["model.post_bn"]) for c in flowers_hybrid) == ["False", "True"]
    assert _cell(study, "flowers17", "avg").backbone == "mobilenet_v2"


def test_failed_and_missing_runs_are_problems_not_averaged():
    study = group_runs(load_runs([RUNS]))
    kinds = sorted((p.kind, p.cell.split("/")[1], p.seed) for p in study.problems)
    assert kinds == [("failed", "synth_detail", 3), ("missing", "flowers17", 4)]
    failed = next(p for p in study.problems if p.kind == "failed")
    assert "FloatingPointError" in failed.detail and failed.source.endswith("results.json")
    hybrid = _cell(study, "synth_detail", "hybrid")
    assert [u.seed for u in hybrid.completed("test/acc")] == [0, 1, 2, 4]
    assert study.counts() == {"completed": 38, "failed": 1, "missing": 1}


def test_recorded_paths_are_re_rooted_at_the_run_folder():
    # the fixture records were "made" under /fixture/outputs/...: the CSV is found beside results.json
    runs = [r for r in load_runs([RUNS]) if r.pool == "gem" and r.status == "completed"]
    assert runs and all(r.metrics_csv is not None and r.metrics_csv.is_file() for r in runs)
    curves = runs[0].curves()
    assert "pool/p" in curves and "val/acc" in curves
    steps = [s for s, _ in curves["pool/p"]]
    assert steps == sorted(steps) and curves["pool/p"][0][1] == pytest.approx(3.0, abs=0.1)
    att = [r for r in load_runs([RUNS]) if r.attention is not None]
    assert {r.attention.suffix for r in att} == {".png", ".npz"}


def test_read_metrics_csv_skips_empty_cells(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,pool/mix/avg,step,val/acc\n,0.25,0,\n0,,9,0.5\n,0.3,10,\n")
    assert read_metrics_csv(p) == {
        "pool/mix/avg": [(0.0, 0.25), (10.0, 0.3)],
        "epoch": [(9.0, 0.0)],
        "val/acc": [(9.0, 0.5)],
    }


def test_unfinished_duplicated_and_metricless_runs_are_reported(tmp_path):
    for seed in (0, 1, 2):
        write_record(tmp_path / f"a{seed}", seed=seed, pool="avg")
        write_record(tmp_path / f"g{seed}", seed=seed, pool="gem")
    write_record(
        tmp_path / "a1_again", seed=1, pool="avg", finished_at="2026-02-01T00:00:00+00:00", metrics={"test/acc": 0.6}
    )
    write_record(tmp_path / "g3", seed=3, pool="gem", status="running", metrics={})
    write_record(tmp_path / "g4", seed=4, pool="gem", metrics={"val/acc": 0.4})
    study = group_runs(load_runs([tmp_path]))
    kinds = sorted((p.kind, p.seed) for p in study.problems)
    assert ("running", 3) in kinds and ("no-metric", 4) in kinds and ("duplicate", 1) in kinds
    assert ("missing", 3) in kinds and ("missing", 4) in kinds  # avg lacks the seeds gem ran
    running = next(p for p in study.problems if p.kind == "running")
    assert "killed" in running.detail
    avg = _cell(study, "synth_texture", "avg")
    assert avg.completed("test/acc")[Unit(None, 1)] == 0.6  # the latest finished duplicate is used


def test_find_results_rejects_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        find_results([tmp_path / "nope"])
    assert find_results([tmp_path]) == []


def test_offline_wandb_run_is_read_with_the_installed_wandb(offline_wandb_run):
    folder, run_id = offline_wandb_run
    runs = read_wandb_offline([folder])
    assert len(runs) == 1
    r = runs[0]
    assert r.wandb_id == run_id and r.status == "completed"
    assert (r.pool, r.data, r.backbone, r.seed, r.task) == ("gem", "synth_texture", "SmallCNN", 3, "t")
    assert r.metrics["test/acc"] == pytest.approx(0.75)
    assert r.config["pool"]["p"] == 3.0
    curve = r.curves()["pool/p"]
    assert [v for _, v in curve] == pytest.approx([3.0, 3.5, 4.0])
    assert [s for s, _ in curve] == [0.0, 10.0, 20.0]  # trainer/global_step is the x axis


def test_offline_wandb_run_with_a_record_is_not_counted_twice(offline_wandb_run, tmp_path):
    folder, run_id = offline_wandb_run
    assert len(load_runs([folder])) == 1  # no results.json: the W&B file is the run
    write_record(folder, seed=3, pool="gem", wandb={"id": run_id, "mode": "offline"})
    runs = load_runs([folder])
    assert len(runs) == 1 and runs[0].source.endswith("results.json")
    (folder / "results.json").unlink()


class _FakeRun:
    def __init__(self, i, state):
        self.id = f"r{i}"
        self.state = state
        self.tags = ["pool:avg", "data:cub", "backbone:mobilenet_v2"]
        self.config = {"seed": i, "task_name": "study"}
        self.summary = types.SimpleNamespace(_json_dict={"final/test/acc": 0.5 + i / 100, "_runtime": 12})

    def scan_history(self):
        return [{"_step": 0, "pool/mix/avg": 0.25}, {"_step": 5, "pool/mix/avg": 0.3}]


def test_wandb_project_reader_with_a_stand_in_api():
    api = types.SimpleNamespace(runs=lambda path: [_FakeRun(0, "finished"), _FakeRun(1, "crashed")])
    runs = read_wandb_project("me/hybridpool", api=api)
    assert [r.status for r in runs] == ["completed", "failed"]
    assert runs[0].metrics["test/acc"] == 0.5 and runs[0].wall_time_s == 12
    assert runs[0].source == "wandb:me/hybridpool/r0"
    assert runs[0].curves()["pool/mix/avg"] == [(0.0, 0.25), (5.0, 0.3)]


def test_wandb_project_reader_offline_says_what_to_do(monkeypatch):
    import wandb

    def no_api(*a, **k):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "Api", no_api)
    with pytest.raises(RuntimeError, match=r"results\.json"):
        read_wandb_project("me/hybridpool")
    with pytest.raises(ValueError, match="ENTITY/PROJECT"):
        read_wandb_project("hybridpool")


def test_fixture_generator_reproduces_the_committed_fixture(tmp_path):
    files = load_fixture_generator().write_fixtures(tmp_path)
    assert len(files) == 39
    for f in tmp_path.rglob("*"):
        if f.is_file():
            committed = RUNS / f.relative_to(tmp_path)
            assert committed.is_file(), f"{committed} is not committed; run tests/report/fixtures/make_fixtures.py"
            assert committed.read_bytes() == f.read_bytes(), f"{committed} differs from make_fixtures.py's output"
    record = json.loads((RUNS / "sweep_synth" / "0" / "results.json").read_text())
    assert record["fixture"] and record["schema"] == 1


def test_the_train_test_gap_uses_the_eval_mode_training_accuracy_where_recorded(tmp_path):
    write_record(tmp_path / "eval", seed=0, metrics={"test/acc": 0.5, "train/acc": 0.7, "train_eval/acc": 0.9})
    write_record(tmp_path / "running", seed=1, metrics={"test/acc": 0.5, "train/acc": 0.7})
    gaps = {run.seed: run.metrics["gap/train-test"] for run in load_runs([tmp_path])}
    assert gaps[0] == pytest.approx(0.4) and gaps[1] == pytest.approx(0.2)


def test_a_switch_the_config_lacks_counts_as_its_default_not_as_an_older_rule(tmp_path):
    from hybridpool.report.claims import S, cell_label

    for seed in (0, 1):
        write_record(tmp_path / f"h{seed}", seed=seed, pool="hybrid")
        rec = write_record(tmp_path / f"e{seed}", seed=seed, pool="hybrid")
        data = json.loads(rec.read_text())
        data["config"]["module"] = {"mix_entropy_weight": 0.1}
        rec.write_text(json.dumps(data))
    cells = sorted(group_runs(load_runs([tmp_path])).cells, key=lambda c: c.arms["module.mix_entropy_weight"])
    assert [c.arms["module.mix_entropy_weight"] for c in cells] == [0.0, 0.1]
    assert [cell_label(c) for c in cells] == ["Hybrid (scalar)", "Hybrid (scalar) [mix_entropy_weight=0.1]"]
    assert S("hybrid").find(cells)[0] is cells[0]
