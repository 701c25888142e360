"""A sweep on a real Ray cluster (``hydra/launcher=ray_cluster``): ``ray start --head`` on localhost (tests/engines.py),
started with its own environment and working directory; the sweep command attaches to it."""

from __future__ import annotations

import time

import pytest
from test_sweep import TINY, records, run_cli, sweep_dirs, tail, wandb_run_dirs

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated:UserWarning")


def test_ray_cluster_attach_4_jobs_a_killed_worker_resumes_its_job_and_the_sweep_completes(
        train_env, ray_head, monkeypatch):
    for key, value in ray_head.env.items():  # RAY_ADDRESS: where address=auto attaches
        monkeypatch.setenv(key, value)
    marker = train_env / "killed-once"
    args = [
        "-m", *(o for o in TINY if not o.startswith(("trainer.max_epochs", "logger="))), "logger=wandb",
        "trainer.max_epochs=2", "seed=0,1,2,3", "hydra/launcher=ray_cluster",
        "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
        # job 2's worker process is SIGKILLed at the start of its second epoch, once
        "+callbacks.kill._target_=test_sweep.KillOnce", f"+callbacks.kill.marker={marker}",
        "+callbacks.kill.seed=${seed}", "+callbacks.kill.kill_seed=2",
    ]
    t0 = time.monotonic()
    done = run_cli(train_env, args, timeout=600)
    sweep_s = time.monotonic() - t0
    out = done.stdout + done.stderr
    assert done.returncode == 0, tail(done)
    assert "Ray launcher: 4 jobs on 2 workers" in out, tail(done)  # the head's 2 CPUs, 1 per job
    assert f"Using address {ray_head.address} set in the environment variable RAY_ADDRESS" in out, tail(done)
    assert "Connecting to existing Ray cluster" in out and "Started a local Ray instance" not in out, tail(done)
    # the records are where the sweep command put them (its HYBRIDPOOL_LOG_DIR), not under the head's cwd
    (sweep,) = sweep_dirs(train_env)
    assert not (ray_head.temp_dir / "cwd" / "outputs").exists()
    recs = records(sweep)
    assert sorted(recs) == [0, 1, 2, 3] and all(r["status"] == "completed" for r in recs.values())
    assert "4 jobs: 4 done" in done.stdout, tail(done)
    # every job ran in a worker process of the head's node, the killed one too
    workers = ray_head.worker_pids()
    killed_pid = int(marker.read_text())
    assert killed_pid in workers and {r["pid"] for r in recs.values()} <= workers, (killed_pid, workers)
    # the killed job was tried again in a fresh worker and resumed from its checkpoint, under the same W&B run
    assert recs[2]["pid"] != killed_pid and recs[2]["attempts"] == 2, recs[2]
    assert recs[2]["resumed_from"].endswith("last.ckpt") and recs[2]["metrics"]["epochs"] == 2
    assert {d.name.rsplit("-", 1)[1] for d in wandb_run_dirs(sweep / "2")} == {recs[2]["wandb"]["id"]}
    assert all(len(wandb_run_dirs(sweep / str(i))) == 1 for i in (0, 1, 3))
    print(f"ray cluster sweep of 4 jobs (one worker killed): {sweep_s:.1f} s")


def test_attaching_hands_the_sweep_commands_settings_to_the_workers_and_a_local_ray_gets_none():
    from omegaconf import OmegaConf

    from hybridpool.sweep.ray_workers import _init_kwargs

    environ = {"HYBRIDPOOL_LOG_DIR": "/runs", "WANDB_MODE": "offline", "WANDB_API_KEY": "secret", "TORCH_HOME": "/w",
               "HOME": "/root", "RAY_ADDRESS": "10.0.0.1:6379"}
    init = OmegaConf.create({"address": "auto", "object_store_memory": None,
                             "runtime_env": {"env_vars": {"WANDB_MODE": "online"}}})
    kwargs = _init_kwargs(init, environ)
    assert kwargs["runtime_env"]["env_vars"] == {"HYBRIDPOOL_LOG_DIR": "/runs", "WANDB_MODE": "online",
                                                 "TORCH_HOME": "/w"}  # no secret; the config's own keys win
    assert kwargs["object_store_memory"] is None and kwargs["address"] == "auto"
    local = _init_kwargs(OmegaConf.create({"address": None, "num_cpus": 2}), {"HYBRIDPOOL_LOG_DIR": "/runs"})
    assert local == {"address": None, "num_cpus": 2, "object_store_memory": 78643200}
