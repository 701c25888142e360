"""Sweeps from the CLI: basic and joblib launchers, a failing job, kill-and-rerun (skip + resume), DDP with Hydra,
the sweep summary and ``hybridpool-sweep-status``. Ray and submitit: tests/test_sweep_launchers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from tiny_run import TINY as BASE_TINY

from hybridpool.sweep import (
    JobPlan,
    config_hash,
    plan_job,
    status_main,
    summarize,
    sweep_name,
)
from hybridpool.sweep.callback import _check_ray_gpus

# conf/hydra/launcher/{joblib,ray}.yaml are validated against the plugins' schemas of the same name (on purpose)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated:UserWarning")

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

#: a tiny job (a few seconds): tiny_run.TINY with a CSV logger and last/best checkpoints
TINY = [*(o for o in BASE_TINY if not o.startswith(("logger=", "callbacks="))), "logger=csv", "callbacks=checkpoint"]


# ------------------------------------------------------------------------------------ helpers for the jobs
class Boom(pl.Callback):
    """Raises at the end of the first training epoch when ``value == raise_if`` (a job that fails mid-run)."""

    def __init__(self, value: float, raise_if: float):
        self.value, self.raise_if = value, raise_if

    def on_train_epoch_end(self, trainer, pl_module):
        if self.value == self.raise_if:
            raise RuntimeError(f"boom (value {self.value})")


class KillOnce(pl.Callback):
    """SIGKILLs its own process at the start of epoch ``epoch`` when ``seed == kill_seed``, once per ``marker``.

    With the basic launcher the jobs run in the sweep's process: this is a sweep killed halfway.
    """

    def __init__(self, marker: str, seed: int, kill_seed: int, epoch: int = 1):
        self.marker, self.seed, self.kill_seed, self.epoch = marker, seed, kill_seed, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if self.seed == self.kill_seed and trainer.current_epoch == self.epoch and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def run_cli(root: Path, args: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    """``python -m hybridpool.cli <args>`` in ``root`` with offline W&B; output kept in ``root/cli-N.log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "hybridpool.cli", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    n = len(list(root.glob("cli-*.log")))
    (root / f"cli-{n}.log").write_text(done.stdout + "\n----- stderr -----\n" + done.stderr)
    return done


def tail(done: subprocess.CompletedProcess) -> str:
    return f"rc={done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def sweep_dirs(root: Path, task: str = "main") -> list[Path]:
    base = root / "outputs" / task / "multirun"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def records(sweep: Path) -> dict[int, dict]:
    out = {}
    for f in sorted(sweep.glob("*/results.json")):
        rec = json.loads(f.read_text())
        out[rec["job"]["num"]] = rec
    return out


def wandb_run_dirs(job_dir: Path) -> list[Path]:
    return sorted((job_dir / "wandb").glob("offline-run-*"))


# ------------------------------------------------------------------------------------ unit tests
def test_sweep_name_is_stable_readable_and_follows_the_command():
    a = sweep_name(["pool=avg,gem", "seed=0,1", "data.num_train=64"])
    assert a == sweep_name(["pool=avg,gem", "seed=0,1", "data.num_train=64"])
    assert a.startswith("pool-avg+gem_seed-0+1-") and len(a.rsplit("-", 1)[1]) == 8
    assert a != sweep_name(["pool=avg,gem", "seed=0,1", "data.num_train=128"])  # other constants: other sweep
    assert a != sweep_name(["seed=0,1", "pool=avg,gem", "data.num_train=64"])  # other job numbering
    assert sweep_name(["seed=0"]).startswith("sweep-")
    assert "/" not in sweep_name(["data.root=/a/b,/c/d"]) and "=" not in sweep_name(["x=1,2"])


def test_config_hash_ignores_folders_and_checkpoint_path_but_not_the_seed():
    cfg = {"seed": 0, "model": {"dropout": 0.1}, "trainer": {"default_root_dir": "/o/a"}, "ckpt_path": None,
           "paths": {"output_dir": "/o/a", "log_dir": "/o"}}
    moved = {**cfg, "trainer": {"default_root_dir": "/o/b"}, "ckpt_path": "last",
             "paths": {"output_dir": "/o/b", "log_dir": "/x"}}
    assert config_hash(cfg, "/o/a") == config_hash(moved, "/o/b")
    assert config_hash(cfg, "/o/a") != config_hash({**cfg, "seed": 1}, "/o/a")


def _fake_job(d: Path, h: str, status: str, ckpt: bool = False, num: int = 0) -> None:
    d.mkdir(parents=True)
    rec = {"status": status, "config_hash": h, "job": {"num": num, "overrides": [f"seed={num}"]},
           "metrics": {"val/acc": 0.5} if status == "completed" else {}, "wall_time_s": 1.0,
           "host": "elsewhere", "timing": {"end_unix": time.time() - 100}}
    (d / "results.json").write_text(json.dumps(rec))
    if ckpt:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.ckpt").write_text("x")


def test_plan_skips_done_resumes_interrupted_and_never_mixes_configs(tmp_path):
    sweep = tmp_path / "s"
    _fake_job(sweep / "0", "h0", "completed")
    _fake_job(sweep / "1", "h1", "running", ckpt=True, num=1)
    _fake_job(sweep / "2", "h2", "failed", num=2)
    assert plan_job("h0", sweep / "0", sweep).action == "skip"
    p = plan_job("h1", sweep / "1", sweep)
    assert (p.action, p.run_dir, Path(p.ckpt).name) == ("resume", (sweep / "1").absolute(), "last.ckpt")
    p = plan_job("h2", sweep / "2", sweep)
    assert (p.action, p.run_dir, p.previous["status"]) == ("run", (sweep / "2").absolute(), "failed")
    # the job numbering moved (same config now job 5): it still finds its earlier attempt
    assert plan_job("h0", sweep / "5", sweep).action == "skip"
    # a folder holding another config's record is never reused
    p = plan_job("new", sweep / "0", sweep)
    assert p.action == "run" and p.run_dir.name.startswith("0-") and p.previous is None
    assert plan_job("new", sweep / "7", sweep) == JobPlan("run", (sweep / "7").absolute(), None, None, "new")


def test_status_command_counts_states_and_spots_killed_jobs(tmp_path, capsys):
    sweep = tmp_path / "s"
    _fake_job(sweep / "0", "h0", "completed")
    _fake_job(sweep / "1", "h1", "failed", num=1)
    (sweep / "sweep.json").write_text(json.dumps({
        "name": "s", "expected_jobs": [["seed=0"], ["seed=1"], ["seed=2"]],
        "invocations": [{"start_unix": time.time() - 50}],
    }))
    s = summarize(sweep)
    assert s.counts == {"done": 0, "skipped": 1, "failed": 1, "interrupted": 0, "running": 0, "pending": 1}
    assert status_main([str(sweep)]) == 1
    out = capsys.readouterr().out
    assert "1 skipped, 1 failed, 1 pending" in out and "(not started)" in out and str(sweep / "0") in out
    # a record left "running" by a process that no longer exists on this host is an interrupted job
    rec = json.loads((sweep / "1" / "results.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rec.update(status="running", host=os.uname().nodename, pid=dead.pid)
    (sweep / "1" / "results.json").write_text(json.dumps(rec))
    assert summarize(sweep).counts["interrupted"] == 1
    assert status_main([str(sweep), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["counts"]["interrupted"] == 1
    assert status_main([str(tmp_path / "nothing")]) == 3


def test_status_after_the_grid_grew_matches_jobs_by_their_overrides(tmp_path):
    """Seeds 0,1 then 0,1,2: the second invocation numbers its jobs anew (max seed=0 was job 2, is now job 3); each
    job is found in the folder of its earlier number, and none is counted twice or shown as pending."""
    sweep = tmp_path / "s"
    old_grid = [["pool=avg", "seed=0"], ["pool=avg", "seed=1"], ["pool=max", "seed=0"], ["pool=max", "seed=1"]]
    for num, overrides in enumerate(old_grid):
        _fake_job(sweep / str(num), f"h{num}", "completed", num=num)
        rec = json.loads((sweep / str(num) / "results.json").read_text())
        rec["job"]["overrides"] = overrides
        (sweep / str(num) / "results.json").write_text(json.dumps(rec))
    new_grid = [[f"pool={p}", f"seed={s}"] for p in ("avg", "max") for s in range(3)]
    (sweep / "sweep.json").write_text(json.dumps({
        "name": "s", "expected_jobs": new_grid, "invocations": [{"start_unix": time.time() - 50}],
    }))
    s = summarize(sweep)
    assert s.counts == {"done": 0, "skipped": 4, "failed": 0, "interrupted": 0, "running": 0, "pending": 2}
    by_num = {j.num: j for j in s.jobs}
    assert sorted(by_num) == list(range(6)) and len(s.jobs) == 6
    assert Path(by_num[3].dir).name == "2" and by_num[3].overrides == ["pool=max", "seed=0"]
    assert by_num[2].state == by_num[5].state == "pending"


@pytest.mark.parametrize("target", ["hydra_plugins.hybridpool_launchers.ray_workers.RayWorkersLauncher",
                                    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"])
def test_ray_launcher_asking_for_gpus_on_a_machine_without_any_is_refused(monkeypatch, target):
    from omegaconf import OmegaConf

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    launcher = {"_target_": target,
                "ray": {"init": {"address": None, "num_gpus": None}, "remote": {"num_gpus": 1}}}
    cfg = OmegaConf.create({"hydra": {"launcher": launcher}})
    with pytest.raises(ValueError, match=r"remote\.num_gpus=0"):
        _check_ray_gpus(cfg)
    cfg.hydra.launcher.ray.remote.num_gpus = 0
    _check_ray_gpus(cfg)
    cfg.hydra.launcher.ray.remote.num_gpus = 1
    cfg.hydra.launcher.ray.init.num_gpus = 2  # fake GPUs: allowed
    _check_ray_gpus(cfg)


def _compose_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hybridpool.run import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    ("choice", "plugin", "keys"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher", {"n_jobs"}),
        ("ray", "hydra_plugins.hydra_ray_launcher", {"ray"}),
        ("ray_cluster", "hydra_plugins.hydra_ray_launcher", {"ray"}),
        ("slurm", "hydra_plugins.hydra_submitit_launcher",
         {"partition", "timeout_min", "gpus_per_node", "cpus_per_gpu", "mem_gb", "array_parallelism"}),
    ],
)
def test_launcher_configs_compose(choice, plugin, keys):
    pytest.importorskip(plugin)
    cfg = _compose_hydra([f"hydra/launcher={choice}"])
    launcher = cfg.hydra.launcher
    assert keys <= set(launcher)
    if choice.startswith("ray"):  # one long-lived worker per slot (hybridpool/ray_workers.py)
        assert launcher._target_ == "hydra_plugins.hybridpool_launchers.ray_workers.RayWorkersLauncher"
    if choice == "ray":
        assert launcher.ray.remote.num_gpus == 1 and launcher.ray.init.address is None
    if choice == "ray_cluster":
        assert launcher.ray.init.address == "auto" and launcher.ray.init.object_store_memory is None


def test_optuna_search_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose_hydra(["+hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optim.optimizer.lr", "optim.pool_lr_mult", "pool.mixing"}
    assert cfg.optimized_metric == "val/acc" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"


# ------------------------------------------------------------------------------------ CLI sweeps
def test_basic_2x2_then_rerun_skips_everything(train_env):
    done = run_cli(train_env, ["-m", *TINY, "pool=avg,gem", "seed=0,1"])
    assert done.returncode == 0, tail(done)
    (sweep,) = sweep_dirs(train_env)
    assert sweep.name.startswith("pool-avg+gem_seed-0+1-")
    recs = records(sweep)
    assert sorted(recs) == [0, 1, 2, 3]
    assert {r["paths"]["output_dir"] for r in recs.values()} == {str(sweep / str(i)) for i in range(4)}
    assert all(r["status"] == "completed" for r in recs.values())
    assert {(r["config"]["seed"], r["job"]["overrides"][-2]) for r in recs.values()} == {
        (s, f"pool={p}") for p in ("avg", "gem") for s in (0, 1)
    }
    assert len({r["config_hash"] for r in recs.values()}) == 4
    assert "sweep pool-avg+gem_seed-0+1-" in done.stdout and "4 jobs: 4 done" in done.stdout
    assert json.loads((sweep / "summary.json").read_text())["counts"]["done"] == 4
    mtimes = {i: (sweep / str(i) / "results.json").stat().st_mtime for i in range(4)}

    again = run_cli(train_env, ["-m", *TINY, "pool=avg,gem", "seed=0,1"])
    assert again.returncode == 0, tail(again)
    assert sweep_dirs(train_env) == [sweep]  # the same command finds the same folder
    assert "4 jobs: 4 skipped" in again.stdout and again.stdout.count("skipped: completed earlier") == 4
    assert {i: (sweep / str(i) / "results.json").stat().st_mtime for i in range(4)} == mtimes

    status = subprocess.run([sys.executable, "-m", "hybridpool.sweep", str(sweep)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert status.returncode == 0 and "4 jobs: 4 skipped" in status.stdout, status.stdout + status.stderr
    assert "pool=gem seed=1" in status.stdout


def test_joblib_2x2_runs_two_processes_each_job_in_its_own_folder(train_env):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    done = run_cli(train_env, ["-m", *TINY, "pool=avg,gem", "seed=0,1", "hydra/launcher=joblib",
                               "hydra.launcher.n_jobs=2"])
    assert done.returncode == 0, tail(done)
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert sorted(recs) == [0, 1, 2, 3] and all(r["status"] == "completed" for r in recs.values())
    assert len({r["paths"]["output_dir"] for r in recs.values()}) == 4
    assert len({r["pid"] for r in recs.values()}) == 2  # two worker processes, each reused
    assert "4 jobs: 4 done" in done.stdout


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(train_env):
    from hybridpool.run.wandb import read_wandb_run

    # job 0 trains, job 1 raises mid-training, job 2 has an invalid config (dropout 1.5)
    args = ["-m", *[o for o in TINY if not o.startswith("logger=")], "logger=wandb", "model.dropout=0.0,0.1,1.5",
            "+callbacks.boom._target_=test_sweep.Boom", "+callbacks.boom.value=${model.dropout}",
            "+callbacks.boom.raise_if=0.1"]
    done = run_cli(train_env, args)
    assert done.returncode == 1, tail(done)  # failures make the sweep's exit status 1, after the summary
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert [recs[i]["status"] for i in range(3)] == ["completed", "failed", "failed"]
    assert "RuntimeError: boom" in recs[1]["error"] and "on_train_epoch_end" in recs[1]["traceback"]
    assert "dropout" in recs[2]["error"] and "ConfigError" in recs[2]["traceback"]
    assert "3 jobs: 1 done, 2 failed" in done.stdout and "error: RuntimeError: boom" in done.stdout
    groups = set()
    for i in range(3):  # each job its own W&B run, in the sweep's group; the failures carry their traceback
        (run_dir,) = wandb_run_dirs(sweep / str(i))
        run = read_wandb_run(run_dir)
        groups.add(recs[i]["wandb"]["group"])
        assert run["config"]["job"]["num"] == i and "model.dropout=" in " ".join(run["config"]["job"]["overrides"])
        if i:
            assert run["exit_code"] == 1 and run["summary"]["status"] == "failed", run
            assert recs[i]["error"].split(":")[0] in run["summary"]["error"]
            assert "Traceback" in run["summary"]["traceback"]
        else:
            assert run["exit_code"] == 0 and run["summary"]["status"] == "completed"
    assert groups == {f"main:{sweep.name}"}


RESULT_KEYS = ("val/acc", "val/loss", "test/acc", "test/loss", "train/loss", "epochs")


def test_sweep_killed_halfway_then_rerun_ends_like_an_uninterrupted_one(train_env):
    marker = train_env / "killed-once"
    args = ["-m", *[o for o in TINY if not o.startswith(("logger=", "trainer.max_epochs"))], "logger=wandb",
            "trainer.max_epochs=2", "data.augment=true", "model.dropout=0.3", "seed=0,1,2",
            "+callbacks.kill._target_=test_sweep.KillOnce", f"+callbacks.kill.marker={marker}",
            "+callbacks.kill.seed=${seed}", "+callbacks.kill.kill_seed=1"]
    first = run_cli(train_env, args)
    assert first.returncode == -signal.SIGKILL, tail(first)
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert sorted(recs) == [0, 1] and recs[0]["status"] == "completed" and recs[1]["status"] == "running"
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    status = subprocess.run([sys.executable, "-m", "hybridpool.sweep", str(sweep)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert status.returncode == 2 and "1 done, 1 interrupted, 1 pending" in status.stdout, status.stdout
    wandb_id_1 = recs[1]["wandb"]["id"]

    second = run_cli(train_env, args)  # the same command
    assert second.returncode == 0, tail(second)
    assert "job 0 skipped" in second.stdout and "resuming from" in second.stdout
    assert "3 jobs: 2 done, 1 skipped" in second.stdout
    recs = records(sweep)
    assert [recs[i]["status"] for i in range(3)] == ["completed"] * 3
    assert recs[1]["attempts"] == 2 and recs[1]["resumed_from"].endswith("last.ckpt")
    assert recs[1]["wandb"]["id"] == wandb_id_1
    assert len(wandb_run_dirs(sweep / "0")) == 1 and len(wandb_run_dirs(sweep / "2")) == 1  # no new W&B run
    assert {d.name.rsplit("-", 1)[1] for d in wandb_run_dirs(sweep / "1")} == {wandb_id_1}  # one run, 2 parts

    reference = train_env / "uninterrupted"
    ref = run_cli(train_env, [*args, f"hydra.sweep.dir={reference}"])  # marker exists: nothing is killed
    assert ref.returncode == 0, tail(ref)
    ref_recs = records(reference)
    assert {r["config_hash"] for r in ref_recs.values()} == {r["config_hash"] for r in recs.values()}
    for i in range(3):
        for k in RESULT_KEYS:
            assert recs[i]["metrics"][k] == pytest.approx(ref_recs[i]["metrics"][k], abs=1e-6), (i, k)


def test_ddp_with_two_gloo_processes_gives_one_record_and_one_wandb_run(train_env):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.sync_batchnorm=false"]
    base = [o for o in TINY if not o.startswith(("logger=", "trainer.max_epochs", "data.batch_size"))]
    args = ["-m", *base, *ddp, "logger=wandb", "data.batch_size=16", "trainer.max_epochs=2", "seed=0"]
    done = run_cli(train_env, args)
    assert done.returncode == 0, tail(done)
    # the rank-1 process joined the job's folder: no run folder of its own, no second sweep
    assert not (train_env / "outputs" / "main" / "runs").exists()
    (sweep,) = sweep_dirs(train_env)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    job = sweep / "0"
    assert len(list(train_env.rglob("results.json"))) == 1
    rec = json.loads((job / "results.json").read_text())
    assert rec["status"] == "completed" and rec["devices"]["world_size"] == 2
    assert (job / "train_ddp_process_1.log").is_file()
    assert len(list(train_env.rglob("offline-run-*"))) == 1 and len(wandb_run_dirs(job)) == 1
    assert rec["metrics"]["epochs"] == 2
