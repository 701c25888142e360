"""Sweeps on the Ray launcher (local Ray, 2 CPUs, fake GPUs) and the submitit launcher (its local executor)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from test_sweep import TINY, records, run_cli, sweep_dirs, tail

from hybridpool.sweep import summarize

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated:UserWarning")


def test_ray_one_gpu_per_worker_workers_reused_a_killed_one_resumes_and_a_failing_job(train_env):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    marker = train_env / "killed-once"
    args = [
        "-m", *(o for o in TINY if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=2",
        "model.dropout=0.0,0.1,0.2,1.5", "hydra/launcher=ray",
        # a local Ray with 2 CPUs and 2 fake GPUs; each job asks for 1 CPU and 1 GPU
        "hydra.launcher.ray.init.num_cpus=2", "hydra.launcher.ray.init.num_gpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "hydra.launcher.ray.remote.num_cpus=1", "hydra.launcher.ray.remote.num_gpus=1",
        # job 2's worker process is SIGKILLed at the start of its second epoch, once
        "+callbacks.kill._target_=test_sweep.KillOnce", f"+callbacks.kill.marker={marker}",
        "+callbacks.kill.seed=${model.dropout}", "+callbacks.kill.kill_seed=0.2",
    ]
    done = run_cli(train_env, args, timeout=600)
    assert done.returncode == 1, tail(done)  # job 3 (dropout 1.5) is an invalid config
    assert "Ray launcher: 4 jobs on 2 workers" in done.stdout + done.stderr, tail(done)
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert [recs[i]["status"] for i in range(4)] == ["completed", "completed", "completed", "failed"]
    assert "dropout" in recs[3]["error"] and "4 jobs: 3 done, 1 failed" in done.stdout
    # jobs 0 and 1 ran at the same time in two processes, each seeing exactly one GPU, not the same one
    assert sorted(recs[i]["devices"]["CUDA_VISIBLE_DEVICES"] for i in (0, 1)) == ["0", "1"]
    (a, b) = (recs[0]["timing"], recs[1]["timing"])
    assert a["start_unix"] < b["end_unix"] and b["start_unix"] < a["end_unix"], (a, b)
    assert recs[0]["pid"] != recs[1]["pid"]
    # the killed job was tried again in a fresh worker on the same resources and resumed from its checkpoint
    killed_pid = int(marker.read_text())
    assert recs[2]["pid"] != killed_pid and recs[2]["attempts"] == 2, recs[2]
    assert recs[2]["resumed_from"].endswith("last.ckpt")
    # a worker runs job after job: job 2 started in the worker that had finished job 0 or 1, and job 3 in one of
    # the live workers (4 jobs, 3 processes: two workers and the restarted one; a task per job would take 5)
    assert killed_pid in (recs[0]["pid"], recs[1]["pid"])
    assert recs[3]["pid"] in {recs[i]["pid"] for i in range(3)} - {killed_pid}, recs[3]["pid"]
    assert len({recs[i]["pid"] for i in range(4)} | {killed_pid}) == 3


def test_submitit_local_executor(train_env):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", *TINY, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    done = run_cli(train_env, args, timeout=600)
    assert done.returncode == 0, tail(done)
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert sorted(recs) == [0, 1] and all(r["status"] == "completed" for r in recs.values())
    assert len({r["paths"]["output_dir"] for r in recs.values()}) == 2
    assert all(r["pid"] != os.getpid() for r in recs.values())
    assert (sweep / ".submitit").is_dir()
    assert json.loads((sweep / "summary.json").read_text())["counts"]["done"] == 2


# ------------------------------------------------------------------------------ the Ray workers' pieces
def test_ray_worker_options_carry_resources_and_turn_task_retries_into_restarts():
    from hybridpool.sweep.ray_workers import actor_options

    assert actor_options({"num_gpus": 1}) == {"num_gpus": 1, "num_cpus": 1, "max_restarts": 3, "max_task_retries": 3}
    opts = actor_options({"num_cpus": 4, "num_gpus": 0.5, "memory": 2**30, "max_calls": 1, "max_retries": 0,
                          "retry_exceptions": True, "resources": {"slot": 1}})
    assert opts == {"num_cpus": 4, "num_gpus": 0.5, "memory": 2**30, "resources": {"slot": 1},
                    "max_restarts": 0, "max_task_retries": 0}


@pytest.mark.parametrize(
    ("options", "cluster", "jobs", "slots"),
    [
        ({"num_cpus": 1, "num_gpus": 1}, {"CPU": 16.0, "GPU": 4.0}, 10, 4),  # one worker per GPU
        ({"num_cpus": 1, "num_gpus": 1}, {"CPU": 16.0, "GPU": 4.0}, 3, 3),  # no more workers than jobs
        ({"num_cpus": 6, "num_gpus": 1}, {"CPU": 16.0, "GPU": 4.0}, 10, 2),  # CPUs run out first
        ({"num_cpus": 1, "num_gpus": 0.5}, {"CPU": 16.0, "GPU": 2.0}, 10, 4),  # two jobs share a GPU
        ({"num_cpus": 1, "num_gpus": 0}, {"CPU": 2.0}, 16, 2),  # CPU only
        ({"num_cpus": 1, "resources": {"slot": 1}}, {"CPU": 8.0, "slot": 3.0}, 10, 3),  # custom resources
        ({"num_cpus": 1, "num_gpus": 1}, {"CPU": 8.0}, 5, 1),  # no GPU yet (autoscaler): one waits for one
    ],
)
def test_ray_slot_count_is_what_the_cluster_holds_at_once(options, cluster, jobs, slots):
    from hybridpool.sweep.ray_workers import slot_count

    assert slot_count(options, cluster, jobs) == slots


class _FakeCuda:
    def __init__(self, initialized: bool, broken: bool):
        self.initialized, self.broken, self.emptied = initialized, broken, False

    def is_initialized(self) -> bool:
        return self.initialized

    def synchronize(self) -> None:
        if self.broken:
            raise RuntimeError("CUDA error: device-side assert triggered")

    def empty_cache(self) -> None:
        self.emptied = True


@pytest.mark.parametrize(("initialized", "broken", "reusable", "emptied"),
                         [(False, False, True, False), (True, False, True, True), (True, True, False, False)])
def test_ray_worker_frees_gpu_cache_and_is_replaced_when_its_cuda_context_broke(
        monkeypatch, initialized, broken, reusable, emptied):
    import types

    from hybridpool.sweep.ray_workers import worker_reusable

    cuda = _FakeCuda(initialized, broken)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert worker_reusable() is reusable and cuda.emptied is emptied


def test_own_launcher_is_registered_when_hydras_scan_misses_it():
    from hydra.core.plugins import Plugins
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from hybridpool.sweep.callback import _register_own_launcher

    target = "hydra_plugins.hybridpool_launchers.ray_workers.RayWorkersLauncher"
    known = Plugins.instance().class_name_to_class
    known.pop(target, None)  # what setuptools' default editable install leaves Hydra with
    _register_own_launcher(OmegaConf.create({"hydra": {"launcher": {"_target_": target}}}))
    assert known[target] is get_class(target)
    cfg = OmegaConf.create({"_target_": target, "ray": {"init": {}, "remote": {"num_gpus": 0}}})
    assert type(Plugins.instance()._instantiate(cfg)).__name__ == "RayWorkersLauncher"


def test_ray_job_whose_worker_dies_past_its_retries_fails_the_sweep_after_the_others_finish(train_env):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    marker = train_env / "killed-once"
    args = [
        "-m", *(o for o in TINY if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=2", "seed=0,1,2",
        "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2", "hydra.launcher.ray.remote.num_gpus=0",
        "+hydra.launcher.ray.init.include_dashboard=false", "+hydra.launcher.ray.remote.max_retries=0",
        "+callbacks.kill._target_=test_sweep.KillOnce", f"+callbacks.kill.marker={marker}",
        "+callbacks.kill.seed=${seed}", "+callbacks.kill.kill_seed=1",
    ]
    done = run_cli(train_env, args, timeout=600)
    assert done.returncode == 1, tail(done)
    assert "job #1 lost its worker" in done.stdout + done.stderr, tail(done)
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert recs[0]["status"] == recs[2]["status"] == "completed"  # the other jobs ran to the end
    assert recs[1]["status"] == "running" and recs[1]["pid"] == int(marker.read_text())  # killed mid-run
    counts = summarize(sweep).counts
    assert (counts["done"], counts["interrupted"]) == (2, 1), counts
