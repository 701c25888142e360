"""Sweeps on the Ray launcher (local Ray, 2 CPUs, fake GPUs) and the submitit launcher (its local executor)."""

from __future__ import annotations

import json
import os

import pytest
from test_sweep import TINY, records, run_cli, sweep_dirs, tail

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated:UserWarning")


def test_ray_two_jobs_at_once_each_on_its_own_gpu_and_a_failing_one(train_env):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    args = [
        "-m", *TINY, "model.dropout=0.0,0.1,1.5", "hydra/launcher=ray",
        # a local Ray with 2 CPUs and 2 fake GPUs; each job asks for 1 CPU and 1 GPU
        "hydra.launcher.ray.init.num_cpus=2", "hydra.launcher.ray.init.num_gpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "hydra.launcher.ray.remote.num_cpus=1", "hydra.launcher.ray.remote.num_gpus=1",
    ]
    done = run_cli(train_env, args, timeout=600)
    assert done.returncode == 1, tail(done)  # job 2 (dropout 1.5) is an invalid config
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert [recs[i]["status"] for i in range(3)] == ["completed", "completed", "failed"]
    assert "dropout" in recs[2]["error"] and "3 jobs: 2 done, 1 failed" in done.stdout
    # jobs 0 and 1 each saw exactly one GPU, not the same one, and ran at the same time in two processes
    assert sorted(recs[i]["devices"]["CUDA_VISIBLE_DEVICES"] for i in (0, 1)) == ["0", "1"]
    (a, b) = (recs[0]["timing"], recs[1]["timing"])
    assert a["start_unix"] < b["end_unix"] and b["start_unix"] < a["end_unix"], (a, b)
    assert recs[0]["pid"] != recs[1]["pid"]


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
