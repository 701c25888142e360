"""Many heads per pass (hybridpool.run.heads, hydra/launcher=heads): a run in a group equals the run alone."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from test_sweep import records, run_cli, tail
from tiny_run import TINY

from hybridpool.records import read_results
from hybridpool.run import compose_config
from hybridpool.run.heads import _Group, copy_config, group_key, group_problem, train_heads
from hybridpool.run.resume import Placement
from hybridpool.run.train import train
from hybridpool.sweep.grouped import split_by_seed

#: a tiny frozen-backbone run: cached features of a 2-stage CNN, post-BN + dropout head, best-by-val selection
HEADS = [o for o in TINY if not o.startswith(("trainer.max_epochs", "callbacks", "logger", "data.batch_size"))] + [
    "model.freeze_backbone=true",
    "model.post_bn=true",
    "model.dropout=0.2",
    "trainer.max_epochs=3",
    "data.batch_size=16",
    "callbacks=study",
    "logger=csv",
]


def heads_cfg(out: Path, pool: str, seed: int, *extra: str):
    return copy_config(compose_config([*HEADS, f"pool={pool}", f"seed={seed}", f"paths.output_dir={out}", *extra]))


def comparable(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that do not measure time."""
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def csv_column(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def assert_same_metrics(a: dict[str, float], b: dict[str, float]) -> None:
    a, b = comparable(a), comparable(b)
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-6), (k, a[k], b[k])


def test_a_run_in_a_group_gives_the_metrics_of_the_run_alone(train_env: Path):
    alone = train(heads_cfg(train_env / "alone", "hybrid_scalar", 1))
    group = [heads_cfg(train_env / "g0", "gem", 0), heads_cfg(train_env / "g1", "hybrid_scalar", 1),
             heads_cfg(train_env / "g2", "attn", 1)]
    results = train_heads(group)
    assert all(isinstance(r, dict) for r in results), results
    assert_same_metrics(alone, results[1])
    assert "val/acc_best" in results[1] and "val/acc_best_epoch" in results[1]
    for key in ("val/acc", "val/loss", "train/loss_epoch"):  # epoch by epoch, not only at the end
        lightning, grouped = csv_column(train_env / "alone", key), csv_column(train_env / "g1", key)
        assert len(lightning) == 3 and lightning == pytest.approx(grouped, rel=1e-5)
    # another seed of the same pool in the same group is another run, not a copy
    assert results[2]["train/loss"] != results[1]["train/loss"]


def test_the_mixing_entropy_penalty_gives_the_same_run_alone_and_in_a_group(train_env: Path):
    penalty = "+module.mix_entropy_weight=0.5"
    alone = train(heads_cfg(train_env / "alone", "hybrid_channel", 2, penalty))
    group = [heads_cfg(train_env / "g0", "avg", 2), heads_cfg(train_env / "g1", "hybrid_channel", 2, penalty)]
    results = train_heads(group)
    assert_same_metrics(alone, results[1])
    plain = train_heads([heads_cfg(train_env / "plain", "hybrid_channel", 2)])[0]
    assert plain["train/loss"] != pytest.approx(alone["train/loss"], rel=1e-4)  # the penalty is in the loss


def test_each_run_of_a_group_writes_its_own_record_csv_and_wandb_run(train_env: Path):
    cfgs = [heads_cfg(train_env / f"r{i}", pool, 0, "logger=wandb") for i, pool in enumerate(("avg", "attn"))]
    train_heads(cfgs)
    ids = set()
    for i, pool in enumerate(("avg", "attn")):
        rec = read_results(train_env / f"r{i}")
        assert rec["status"] == "completed" and rec["pool"]["spec"] == pool
        assert rec["timing"]["group_size"] == 2 and rec["metrics"]["epochs"] == 3.0
        runs = list((train_env / f"r{i}" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1 and rec["wandb"]["id"] in runs[0].name
        ids.add(rec["wandb"]["id"])
        assert len(csv_column(train_env / f"r{i}", "val/acc")) == 3
        assert not (train_env / f"r{i}" / "checkpoints" / "last.ckpt").exists()  # removed once completed
    assert len(ids) == 2
    assert (train_env / "r1" / "attention_maps" / "attention_maps.npz").is_file()  # attn has maps, avg none
    assert not (train_env / "r0" / "attention_maps").exists()


def test_a_failing_run_is_recorded_and_leaves_the_others_untouched(train_env: Path, monkeypatch):
    clean = train_heads([heads_cfg(train_env / "clean", "gem", 0)])[0]
    step = _Group.train_step

    def flaky(self, run):
        if run.out_dir.name == "bad" and run.step == 2:
            raise RuntimeError("boom in step 2")
        return step(self, run)

    monkeypatch.setattr(_Group, "train_step", flaky)
    results = train_heads([heads_cfg(train_env / "bad", "avg", 0), heads_cfg(train_env / "good", "gem", 0)])
    assert isinstance(results[0], RuntimeError)
    bad = read_results(train_env / "bad")
    assert bad["status"] == "failed" and "boom in step 2" in bad["error"] and "flaky" in bad["traceback"]
    assert read_results(train_env / "good")["status"] == "completed"
    assert_same_metrics(clean, results[1])


def test_an_interrupted_group_resumes_each_run_from_its_checkpoint(train_env: Path, monkeypatch):
    full = train_heads([heads_cfg(train_env / "full", "hybrid_scalar", 3)])[0]
    end_epoch = _Group.end_epoch

    def stop_after_two(self, run):
        end_epoch(self, run)
        if run.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Group, "end_epoch", stop_after_two)
    cut = heads_cfg(train_env / "cut", "hybrid_scalar", 3)
    with pytest.raises(KeyboardInterrupt):
        train_heads([cut])
    rec = read_results(train_env / "cut")
    ckpt = train_env / "cut" / "checkpoints" / "last.ckpt"
    assert rec["status"] == "interrupted" and ckpt.is_file()
    monkeypatch.setattr(_Group, "end_epoch", end_epoch)
    resumed = train_heads([cut], [Placement(ckpt=str(ckpt), previous=rec, job={"num": None, "overrides": []})])[0]
    assert_same_metrics(full, resumed)
    assert read_results(train_env / "cut")["attempts"] == 2
    assert csv_column(train_env / "cut", "val/acc") == pytest.approx(csv_column(train_env / "full", "val/acc"))


def test_group_problem_names_what_keeps_a_run_out_of_a_group(train_env: Path):
    out = train_env / "x"
    assert group_problem(heads_cfg(out, "avg", 0)) is None
    assert "freeze_backbone" in group_problem(heads_cfg(out, "avg", 0, "model.freeze_backbone=false"))
    assert "pool_schedule" in group_problem(
        heads_cfg(out, "hybrid_scalar", 0, "module.pool_schedule=freeze_and_train", "pool.init=gap")
    )
    assert "accumulate_grad_batches" in group_problem(heads_cfg(out, "avg", 0, "+trainer.accumulate_grad_batches=2"))
    assert "num_workers" in group_problem(heads_cfg(out, "avg", 0, "data.num_workers=2"))
    with pytest.raises(ValueError, match="freeze_backbone"):
        train_heads([heads_cfg(out, "avg", 0, "model.freeze_backbone=false")])
    # seeds and pools share a group; other data does not
    assert group_key(heads_cfg(out, "avg", 0)) == group_key(heads_cfg(out, "gem", 0, "data.batch_size=8"))
    assert group_key(heads_cfg(out, "avg", 0)) != group_key(heads_cfg(out, "avg", 0, "data.num_train=48"))


def test_heads_launcher_groups_frozen_jobs_runs_the_others_alone_and_skips_on_rerun(train_env: Path):
    sweep = train_env / "sweep"
    args = ["-m", *[o for o in HEADS if not o.startswith("model.freeze_backbone")], "pool=avg,attn",
            "model.freeze_backbone=true,false", "trainer.max_epochs=2", "hydra/launcher=heads",
            f"hydra.sweep.dir={sweep}"]
    done = run_cli(train_env, args)
    assert done.returncode == 0, tail(done)
    recs = records(sweep)
    assert len(recs) == 4 and all(r["status"] == "completed" for r in recs.values()), tail(done)
    grouped = [r for r in recs.values() if r["timing"].get("group_size")]
    assert len(grouped) == 2 and all(r["config"]["model"]["freeze_backbone"] for r in grouped)
    assert "runs alone (the backbone trains" in done.stdout
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"].get("done") == 4
    again = run_cli(train_env, args)
    assert again.returncode == 0, tail(again)
    assert json.loads((sweep / "summary.json").read_text())["counts"].get("skipped") == 4
    assert again.stdout.count("skipped: completed earlier") == 4


def test_runs_of_one_seed_gather_each_training_batch_once(train_env: Path, monkeypatch):
    gather = _Group.gather
    calls = []
    monkeypatch.setattr(_Group, "gather", lambda self, *a: calls.append(1) or gather(self, *a))
    fetch = _Group.fetch
    gathered = []

    def counting_fetch(self, run, index):
        before = len(calls)
        out = fetch(self, run, index)
        gathered.append(len(calls) - before)
        return out

    monkeypatch.setattr(_Group, "fetch", counting_fetch)

    steps = 3 * 4  # 3 epochs of 64 training samples in batches of 16

    def gathers(seeds: tuple[int, int]) -> int:
        gathered.clear()
        pools = zip(("avg", "gem"), seeds, strict=True)
        train_heads([heads_cfg(train_env / f"s{seeds[0]}{seeds[1]}-{p}", p, s) for p, s in pools])
        assert len(gathered) == 2 * steps  # every run took every step
        return sum(gathered)

    assert gathers((0, 0)) == steps  # one gather per step for both runs
    assert gathers((0, 1)) == 2 * steps  # different seeds, different batch orders (and synthetic images)


def test_the_dense_float32_splits_give_the_batch_by_batch_metrics(train_env: Path, monkeypatch):
    from hybridpool.data.features import CachedFeatureDataset
    from hybridpool.run import heads

    reads = []
    getitem = CachedFeatureDataset.__getitem__
    monkeypatch.setattr(CachedFeatureDataset, "__getitem__", lambda self, i: reads.append(len(i)) or getitem(self, i))
    dense = train_heads([heads_cfg(train_env / "dense", "gem", 3)])[0]
    assert len(reads) == 3 and sum(reads) > 64  # train, val and test: each read once, whole
    monkeypatch.setattr(heads, "DENSE_SPLITS_BYTES", 0)  # nothing fits: batch by batch, as a lone run reads
    reads.clear()
    streamed = train_heads([heads_cfg(train_env / "streamed", "gem", 3)])[0]
    assert len(reads) > 3 * 4 and max(reads) <= 16
    assert_same_metrics(dense, streamed)


def test_split_by_seed_keeps_a_seeds_runs_together_and_balances_the_workers():
    items = [(pool, seed) for pool in ("avg", "gem", "attn") for seed in range(5)]
    parts = split_by_seed(items, 2, lambda item: item[1])
    assert sorted(len(p) for p in parts) == [6, 9]
    for part in parts:  # no seed in two parts
        assert not {s for _, s in part} & {s for other in parts if other is not part for _, s in other}
    assert sorted(item for part in parts for item in part) == sorted(items)
    one_seed = split_by_seed(items[::5], 2, lambda item: item[1])  # 3 runs of seed 0: dealt out
    assert [len(p) for p in one_seed] == [2, 1]
    assert split_by_seed(items, 1, lambda item: item[1]) == [items]


def test_heads_launcher_on_two_worker_processes_gives_the_one_process_metrics(train_env: Path):
    grid = ["-m", *HEADS, "pool=avg,gem", "seed=0,1", "trainer.max_epochs=2", "hydra/launcher=heads"]

    def sweep(name: str, *extra: str):
        done = run_cli(train_env, [*grid, f"hydra.sweep.dir={train_env / name}", *extra])
        assert done.returncode == 0, tail(done)
        return done, {(r["pool"]["spec"], r["seed"]): r for r in records(train_env / name).values()}

    two, by_two = sweep("two", "hydra.launcher.n_jobs=2")
    _, by_one = sweep("one")
    assert len(by_two) == 4 and all(r["status"] == "completed" for r in by_two.values()), tail(two)
    assert two.stdout.count("heads: 2 runs in one group") == 2  # one seed's two pools per worker
    assert {r["timing"]["group_size"] for r in by_two.values()} == {2}
    assert {r["timing"]["group_size"] for r in by_one.values()} == {4}
    for key, rec in by_two.items():
        assert_same_metrics(rec["metrics"], by_one[key]["metrics"])
    again, _ = sweep("two", "hydra.launcher.n_jobs=2")
    assert again.stdout.count("skipped: completed earlier") == 4, tail(again)
    bad = run_cli(train_env, [*grid, "hydra.launcher.n_jobs=0", f"hydra.sweep.dir={train_env / 'bad'}"])
    assert bad.returncode != 0 and "hydra.launcher.n_jobs must be >= 1, got 0" in bad.stdout + bad.stderr


def test_a_job_placed_in_another_folder_writes_everything_there(train_env: Path):
    # folder 0 already holds the avg run, so the gem job (also job 0) gets a folder of its own: its CSV, maps and
    # checkpoints go there, and the avg run's files stay as they were
    sweep = train_env / "sweep"
    grid = ["-m", *HEADS, "seed=0", "trainer.max_epochs=2", "hydra/launcher=heads", f"hydra.sweep.dir={sweep}"]
    first = run_cli(train_env, [*grid, "pool=avg"])
    assert first.returncode == 0, tail(first)
    avg_csv = (sweep / "0" / "csv" / "metrics.csv").read_text()
    second = run_cli(train_env, [*grid, "pool=attn"])
    assert second.returncode == 0, tail(second)
    (attn_dir,) = [d for d in sweep.iterdir() if d.name.startswith("0-")]
    rec = read_results(attn_dir)
    assert rec["status"] == "completed" and rec["pool"]["spec"] == "attn"
    assert rec["paths"]["metrics_csv"] == str(attn_dir / "csv" / "metrics.csv")
    assert len(csv_column(attn_dir, "val/acc")) == 2
    assert (attn_dir / "attention_maps" / "attention_maps.npz").is_file()
    assert (sweep / "0" / "csv" / "metrics.csv").read_text() == avg_csv
    assert not (sweep / "0" / "attention_maps").exists()
