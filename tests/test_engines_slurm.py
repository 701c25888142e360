"""Sweeps through a real SLURM controller (``hydra/launcher=slurm``): munge, slurmctld and slurmd on localhost
(tests/engines.py), jobs submitted with sbatch as an array by submitit, run by slurmd through srun.

- a 4-job array, each job with its own folder, record, offline W&B run and fake GPU (gres), read back by the
  sweep summary; the same command again submits nothing;
- ``scancel`` mid-run: recorded as interrupted, the re-run submits that job alone and resumes it from its checkpoint;
- time limits: a job signalled before its limit is requeued and resumes within the sweep; one that runs out of
  requeues is recorded (failed, with submitit's reason), not lost, and the next run resumes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from test_sweep import HERE, REPO, TINY, records, run_cli, sweep_dirs, tail, wandb_run_dirs

from hybridpool.sweep import summarize

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated:UserWarning")

#: the tiny job with an offline W&B run and last/best checkpoints
JOB = [*(o for o in TINY if not o.startswith("logger=")), "logger=wandb"]


def slurm_launcher(cluster, **keys) -> list[str]:
    """``hydra/launcher=slurm`` on the test cluster: 1 CPU per job, no GPU unless asked (2 CPUs: 2 jobs at a time)."""
    values = {"partition": cluster.partition, "gpus_per_node": "null", "cpus_per_gpu": "null", "mem_gb": "null",
              "cpus_per_task": 1, "timeout_min": 10, **keys}
    return ["hydra/launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in values.items())]


class Stall(pl.Callback):
    """A job that hangs: at the start of epoch ``epoch`` it sleeps up to ``seconds``, on its first ``times`` attempts.

    The attempts are counted in ``marker`` (one line per stall, the process id). It naps in short steps, so signals
    are handled at once, and a SIGTERM ends the nap as the end of a long batch would (Lightning then stops the run).
    """

    def __init__(self, marker: str, times: int = 1, epoch: int = 1, seconds: float = 240.0):
        self.marker, self.times, self.epoch, self.seconds = Path(marker), int(times), int(epoch), float(seconds)

    def on_train_epoch_start(self, trainer, pl_module):
        stalls = self.marker.read_text().split() if self.marker.exists() else []
        if trainer.current_epoch != self.epoch or len(stalls) >= self.times:
            return
        self.marker.write_text("".join(f"{pid}\n" for pid in [*stalls, os.getpid()]))
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not trainer.received_sigterm:
            time.sleep(0.1)


def start_cli(root: Path, args: list[str]) -> subprocess.Popen:
    """``python -m hybridpool.cli <args>`` in the background, as ``run_cli`` runs it; output in ``root/bg-N.log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "HYDRA_FULL_ERROR": "1"}
    n = len(list(root.glob("bg-*.log")))
    log = open(root / f"bg-{n}.log", "w")  # noqa: SIM115  (closed by finish_cli)
    proc = subprocess.Popen([sys.executable, "-m", "hybridpool.cli", *args], cwd=root, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def finish_cli(proc: subprocess.Popen, timeout: float, cluster=None) -> str:
    """Wait for ``proc``; return its output. With ``cluster``: requeued jobs start at once (SLURM holds a requeued
    batch job for 120 s, its BeginTime; the tests do not wait for that)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            break
        if cluster is not None:
            for job_id, state in cluster.jobs().items():
                if state == "PENDING" and cluster.job_info(job_id).get("Reason") == "BeginTime":
                    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
        time.sleep(1)
    proc.log.close()  # type: ignore[attr-defined]
    return Path(proc.log.name).read_text()  # type: ignore[attr-defined]


def wait_for_file(path: Path, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        assert proc is None or proc.poll() is None, f"the sweep ended early (rc={proc.returncode})"
        time.sleep(0.5)


def status(sweep: Path) -> subprocess.CompletedProcess:
    """``python -m hybridpool.sweep <sweep>``: the summary read back from the records."""
    return subprocess.run([sys.executable, "-m", "hybridpool.sweep", str(sweep)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)


def test_slurm_array_of_4_jobs_each_its_own_gpu_folder_and_wandb_run_then_rerun_submits_nothing(train_env, slurm):
    before = set(slurm.jobs())
    args = ["-m", *JOB, "pool=avg,gem", "seed=0,1", *slurm_launcher(slurm, gpus_per_node=1)]
    t0 = time.monotonic()
    done = run_cli(train_env, args, timeout=600)
    sweep_s = time.monotonic() - t0
    assert done.returncode == 0, tail(done) + slurm.logs()
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert sorted(recs) == [0, 1, 2, 3] and all(r["status"] == "completed" for r in recs.values())
    assert {r["paths"]["output_dir"] for r in recs.values()} == {str(sweep / str(i)) for i in range(4)}
    # one sbatch array: the controller knows 4 new jobs, <array>_0 .. <array>_3, each ended COMPLETED; the job ids
    # SLURM gave are in the records (submitit's job environment -> hydra.job.id -> record job.id)
    new = slurm.ended(set(slurm.jobs()) - before)
    arrays = {k.split("_")[0] for k in new}
    assert len(arrays) == 1 and len(new) == 4 and set(new.values()) == {"COMPLETED"}, new
    (array,) = arrays
    assert sorted(r["job"]["id"] for r in recs.values()) == sorted(new)
    info = slurm.job_info(f"{array}_0")
    assert info["Partition"] == slurm.partition and info["TimeLimit"] == "00:10:00", info
    assert info.get("TresPerNode", "").endswith("gpu:1"), info  # sbatch --gpus-per-node=1
    assert all(r["pid"] != os.getpid() for r in recs.values())
    assert (sweep / ".submitit" / f"{array}_0").is_dir()
    # gres: each job saw one fake GPU, and two jobs running at the same time never the same one
    gpus = {i: r["devices"]["CUDA_VISIBLE_DEVICES"] for i, r in recs.items()}
    assert set(gpus.values()) <= {"0", "1"}, gpus
    overlapping = [(i, j) for i in recs for j in recs if i < j
                   and recs[i]["timing"]["start_unix"] < recs[j]["timing"]["end_unix"]
                   and recs[j]["timing"]["start_unix"] < recs[i]["timing"]["end_unix"]]
    assert overlapping, "no two jobs ran at the same time (2 CPUs, 2 GPUs: they should)"
    assert all(gpus[i] != gpus[j] for i, j in overlapping), (gpus, overlapping)
    for i in range(4):  # each job its own offline W&B run in the sweep's group
        (run_dir,) = wandb_run_dirs(sweep / str(i))
        assert recs[i]["wandb"]["group"] == f"main:{sweep.name}" and recs[i]["wandb"]["id"] in run_dir.name
    assert "4 jobs: 4 done" in done.stdout, tail(done)
    read_back = status(sweep)
    assert read_back.returncode == 0 and "4 jobs: 4 done" in read_back.stdout, read_back.stdout + read_back.stderr
    assert all(str(sweep / str(i)) in read_back.stdout for i in range(4))

    jobs_before_rerun = slurm.jobs()
    submitit_before = sorted(p.name for p in (sweep / ".submitit").iterdir())
    t0 = time.monotonic()
    again = run_cli(train_env, args, timeout=300)
    rerun_s = time.monotonic() - t0
    assert again.returncode == 0, tail(again)
    assert "nothing to submit: all 4 jobs completed earlier" in again.stdout and "4 jobs: 4 skipped" in again.stdout
    assert slurm.jobs() == jobs_before_rerun  # no sbatch: the controller knows no new job
    assert sorted(p.name for p in (sweep / ".submitit").iterdir()) == submitit_before  # nor a submission file
    print(f"slurm sweep of 4 jobs: {sweep_s:.1f} s; re-run of the finished sweep: {rerun_s:.1f} s")


def test_slurm_job_cancelled_mid_run_is_interrupted_and_the_rerun_resumes_it_alone(train_env, slurm):
    marker = train_env / "stalled"
    args = ["-m", *(o for o in JOB if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=3", "seed=0,1",
            "+callbacks.stall._target_=test_engines_slurm.Stall", f"+callbacks.stall.marker={marker}",
            "+callbacks.stall.times=${seed}", *slurm_launcher(slurm)]  # job 1 (seed 1) hangs in epoch 1, once
    t0 = time.monotonic()
    proc = start_cli(train_env, args)
    wait_for_file(marker, 240, proc)
    (sweep,) = sweep_dirs(train_env)
    job_id = records(sweep)[1]["job"]["id"]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()  # epoch 0 was saved
    slurm.run("scancel", job_id)
    out = finish_cli(proc, 300)
    first_s = time.monotonic() - t0
    assert proc.returncode == 1, out[-6000:] + slurm.logs()  # a job ended without a result: the sweep fails
    assert f"SLURM job {job_id}) ended CANCELLED without a result" in out, out[-6000:]
    assert "2 jobs: 1 done, 1 interrupted" in out, out[-6000:]  # the summary, printed all the same
    assert slurm.ended({job_id}) == {job_id: "CANCELLED"}
    recs = records(sweep)
    assert recs[0]["status"] == "completed" and recs[1]["status"] == "interrupted", recs[1].get("error")
    assert "SIGTERM" in recs[1]["error"] or "CANCELLED" in recs[1]["error"], recs[1]["error"]
    read_back = status(sweep)
    assert read_back.returncode == 2 and "1 done, 1 interrupted" in read_back.stdout, read_back.stdout
    wandb_id = recs[1]["wandb"]["id"]

    before = set(slurm.jobs())
    t0 = time.monotonic()
    again = run_cli(train_env, args, timeout=400)  # the same command
    second_s = time.monotonic() - t0
    assert again.returncode == 0, tail(again)
    assert "job 0 skipped" in again.stdout and "submitted 1 of 2 jobs" in again.stdout, tail(again)
    assert "2 jobs: 1 done, 1 skipped" in again.stdout
    new = [k for k in slurm.jobs() if k not in before]
    assert len(new) == 1, new  # only the interrupted job went to SLURM
    recs = records(sweep)
    assert recs[1]["status"] == "completed" and recs[1]["job"]["id"] == new[0]
    assert recs[1]["attempts"] == 2 and recs[1]["resumed_from"].endswith("last.ckpt")
    assert recs[1]["previous_attempt"]["status"] == "interrupted"
    assert recs[1]["metrics"]["epochs"] == 3 and recs[1]["wandb"]["id"] == wandb_id  # the same W&B run, continued
    print(f"slurm scancel: first run {first_s:.1f} s, re-run {second_s:.1f} s")


def test_slurm_time_limit_requeues_and_resumes_then_out_of_requeues_is_recorded_not_lost(train_env, slurm):
    """``timeout_min=1`` (SLURM's smallest limit), USR2 ``signal_delay_s`` before it, one requeue allowed. Seed 1
    hangs on its first attempt only: requeued, it resumes and completes in the same sweep. Seed 2 hangs on two
    attempts: its second time-out has no requeue left; it is recorded as failed with the reason, and the next run
    of the command resumes it from its checkpoint."""
    markers = train_env / "stalls"
    args = ["-m", *(o for o in JOB if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=2", "seed=1,2",
            "+callbacks.stall._target_=test_engines_slurm.Stall", f"+callbacks.stall.marker={markers}-" + "${seed}",
            "+callbacks.stall.times=${seed}",
            *slurm_launcher(slurm, timeout_min=1, signal_delay_s=1, max_num_timeout=1)]
    t0 = time.monotonic()
    proc = start_cli(train_env, args)
    out = finish_cli(proc, 480, cluster=slurm)
    first_s = time.monotonic() - t0
    assert proc.returncode == 1, out[-6000:] + slurm.logs()  # one job failed
    (sweep,) = sweep_dirs(train_env)
    recs = records(sweep)
    assert sorted(recs) == [0, 1], out[-6000:] + slurm.logs()
    requeued, exhausted = recs[0], recs[1]
    assert requeued["status"] == "completed", requeued.get("error")
    assert requeued["attempts"] == 2 and requeued["resumed_from"].endswith("last.ckpt")
    assert requeued["previous_attempt"]["status"] == "interrupted"  # submitit's exit after the requeue
    assert requeued["metrics"]["epochs"] == 2
    # out of requeues: submitit's reason when its handler runs first; when Lightning's SIGTERM handler stops the
    # fit first (a loaded machine), the run records itself interrupted by the SIGTERM. Either way: recorded, with
    # its checkpoint, and resumed below.
    if exhausted["status"] == "failed":
        assert "timed-out too many times" in exhausted["error"], exhausted["error"]
    else:
        assert exhausted["status"] == "interrupted" and "SIGTERM" in exhausted["error"], exhausted["error"]
    assert exhausted["attempts"] == 2 and (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    for rec in recs.values():
        assert slurm.job_info(rec["job"]["id"])["Restarts"] == "1"  # each requeued once by SLURM
    assert f"2 jobs: 1 done, 1 {exhausted['status']}" in out, out[-6000:]
    counts = summarize(sweep).counts
    assert (counts["done"], counts[exhausted["status"]]) == (1, 1), counts

    t0 = time.monotonic()
    again = run_cli(train_env, args, timeout=400)
    second_s = time.monotonic() - t0
    assert again.returncode == 0, tail(again)
    assert "submitted 1 of 2 jobs" in again.stdout and "2 jobs: 1 done, 1 skipped" in again.stdout, tail(again)
    rec = records(sweep)[1]
    assert rec["status"] == "completed" and rec["attempts"] == 3 and rec["resumed_from"].endswith("last.ckpt")
    assert rec["metrics"]["epochs"] == 2
    print(f"slurm time limits: first run {first_s:.1f} s, re-run {second_s:.1f} s")


class _FakeJob:
    def __init__(self, job_id: str, folder: Path, result: bool):
        self.job_id, self.state = job_id, "UNKNOWN"  # submitit's state without sacct
        self.paths = type("Paths", (), {"result_pickle": folder / f"{job_id}_result.pkl"})()
        if result:
            self.paths.result_pickle.write_text("x")


def test_wait_for_knows_a_jobs_end_from_its_result_or_from_squeue_without_accounting(tmp_path, monkeypatch):
    from hybridpool.sweep import slurm as slurm_launcher_module

    jobs = [_FakeJob("7_0", tmp_path, result=True), _FakeJob("7_1", tmp_path, result=False),
            _FakeJob("7_2", tmp_path, result=False), _FakeJob("7_3", tmp_path, result=False)]
    # 7_1 was cancelled, 7_2 is gone from squeue (MinJobAge), 7_3 runs and then writes its result
    calls = []

    def states(ids):
        calls.append(list(ids))
        if len(calls) > 1:
            jobs[3].paths.result_pickle.write_text("x")
        return {"7_1": "CANCELLED", "7_3": "RUNNING"}

    monkeypatch.setattr(slurm_launcher_module, "slurm_states", states)
    lost = slurm_launcher_module.wait_for(jobs, grace_s=0.0, poll_s=0.01)
    assert lost == {1: "CANCELLED", 2: "UNKNOWN"}
    assert calls[0] == ["7_1", "7_2", "7_3"]  # a job with a result is not asked about


def test_a_missing_engine_skips_with_its_reason_unless_the_engines_are_required(monkeypatch, tmp_path):
    import engines

    monkeypatch.setattr(engines.shutil, "which", lambda name, path=None: None)  # nothing installed
    monkeypatch.delenv(engines.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"munged, slurmctld, slurmd.*apt-get install slurm-wlm munge"):
        engines.start_slurm(tmp_path)
    monkeypatch.setenv(engines.REQUIRE_ENV, "1")  # CI
    with pytest.raises(pytest.fail.Exception, match="HYBRIDPOOL_REQUIRE_ENGINES is set"):
        engines.start_slurm(tmp_path)
