"""SLURM sweeps (``hydra/launcher=slurm``): Hydra's submitit launcher, submitting only the jobs left to run.

Hydra's submitit launcher (hydra-submitit-launcher) submits every job of a sweep as one sbatch array, and each job
then decides in its allocation whether it has anything to do (:mod:`hybridpool.sweep.job`). On a cluster every
finished job would still wait in the queue and take an allocation to find that out, so
:func:`launch` (the launcher ``hydra_plugins.hybridpool_launchers.slurm.SlurmSweepLauncher``) first makes each
job's plan in the submitting process (:func:`~hybridpool.sweep.job.job_plan`, the plan the job itself makes) and
submits only the jobs that are not completed, as one array under their own job numbers: re-running a finished
sweep submits nothing, and after a ``scancel`` or a time-out it submits the jobs to resume.

It also waits for the jobs without needing SLURM's accounting. submitit learns that a job which wrote no result is
over from ``sacct``; a cluster without ``slurmdbd`` has no ``sacct`` ("Slurm accounting storage is disabled"), and
there submitit waits forever for a cancelled job. Here a job is over when its result file exists or when ``squeue``
(which knows a job until ``MinJobAge`` after its end) or ``sacct`` give it a final state. A job that ended without a
result (cancelled, out of memory, its node lost, out of time and not requeued) is returned to Hydra as failed once
the other jobs have finished (the sweep exits with status 1); if its run could not close its record (it was killed
outright), the record is set to ``interrupted`` with the SLURM state. The next run of the same command resumes it
from ``checkpoints/last.ckpt``.

Time limits: submitit asks SLURM for a signal ``signal_delay_s`` before the limit (``--signal=USR2@...``); on it
the job is requeued (at most ``max_num_timeout`` times) and exits, its record says ``interrupted``, and the requeued
job resumes from its last checkpoint within the same sweep. After the last requeue the job's record is closed as
``failed`` with submitit's reason ("timed-out too many times"), to be resumed by the next run of the command.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hybridpool.records import RESULTS_FILE, read_json, write_json_atomic
from hybridpool.run.console import say
from hybridpool.sweep.job import job_plan
from hybridpool.sweep.plan import JobPlan

__all__ = ["FINAL_STATES", "launch", "slurm_states", "wait_for"]

log = logging.getLogger(__name__)

#: SLURM job states after which a job runs no more (a requeued job goes through REQUEUED and PENDING instead;
#: PREEMPTED is left out: with PreemptMode=REQUEUE the job comes back)
FINAL_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "REVOKED",
     "SPECIAL_EXIT", "TIMEOUT"}
)


def slurm_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{job id: state}`` from ``squeue`` for the jobs it knows (array tasks as ``<array id>_<task>``).

    ``None`` when ``squeue`` cannot be asked (missing, failing); a job it no longer knows is absent.
    """
    if not job_ids:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}", "--format=%i|%T"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None  # none of them known any more
    states: dict[str, str] = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = (state.split() or ["UNKNOWN"])[0]
    return states


def wait_for(jobs: Sequence[Any], grace_s: float = 10.0, poll_s: float = 1.0) -> dict[int, str]:
    """Wait until every submitit job is over; return ``{index: SLURM state}`` of those that left no result.

    A job is over when its result file exists, or when its state (``squeue``, else submitit's ``sacct``) is final
    (:data:`FINAL_STATES`) or unknown to both, for ``grace_s`` seconds without a result appearing.
    """
    pending = dict(enumerate(jobs))
    over_since: dict[int, float] = {}
    lost: dict[int, str] = {}
    start = last_query = time.monotonic()
    while pending:
        for i, job in list(pending.items()):
            if job.paths.result_pickle.exists():
                pending.pop(i)
                over_since.pop(i, None)
        now = time.monotonic()
        if pending and now - last_query >= min(30.0, 2.0 + (now - start) / 20):
            last_query = now
            known = slurm_states([job.job_id for job in pending.values()])
            for i, job in list(pending.items()):
                state = (known or {}).get(job.job_id)
                if state is None:
                    state = str(job.state).split()[0]  # submitit's watcher: sacct ("UNKNOWN" without accounting)
                over = state in FINAL_STATES or (known is not None and job.job_id not in known and state == "UNKNOWN")
                if not over:
                    over_since.pop(i, None)
                elif now - over_since.setdefault(i, now) >= grace_s:
                    lost[i] = state
                    pending.pop(i)
        if pending:
            time.sleep(poll_s)
    return lost


def _job_return(sweep_config: DictConfig | None, overrides: Sequence[str], status: JobStatus, value: Any) -> JobReturn:
    """A ``JobReturn`` for a job Hydra's launcher did not run (skipped here, or lost on the cluster)."""
    if sweep_config is None:
        return JobReturn(overrides=list(overrides), status=status, _return_value=value)
    task_config = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
    return JobReturn(
        overrides=list(overrides),
        cfg=task_config,
        hydra_cfg=sweep_config.hydra,
        working_dir=os.getcwd(),
        task_name=str(sweep_config.hydra.job.name),
        status=status,
        _return_value=value,
    )


def _plan(
    launcher: Any, overrides: Sequence[str], num: int, sweep_dir: Path
) -> tuple[JobPlan | None, DictConfig | None]:
    """Job ``num``'s plan and config as the job will see them (``(None, None)`` when they cannot be made here)."""
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    try:
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.num = num
            sweep_config.hydra.job.id = f"job_id_for_{num}"
        hydra_config.set_config(sweep_config)  # for ${hydra:...} while the job's folder is worked out, as run_job
        output_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(output_dir.absolute())
        hydra_config.set_config(sweep_config)
        task_config = copy.deepcopy(sweep_config)
        with read_write(task_config), open_dict(task_config):
            del task_config["hydra"]
        return job_plan(task_config, sweep_dir), sweep_config
    except Exception as err:  # a bad config: the job records the error itself
        log.debug(f"job #{num}: no plan before submitting ({type(err).__name__}: {err}); submitting it")
        return None, None
    finally:
        hydra_config.cfg = saved


def _mark_interrupted(run_dir: Path, job_id: str, state: str) -> bool:
    """Set the record that SLURM job ``job_id`` left ``running`` in ``run_dir`` to ``interrupted``."""
    path = run_dir / RESULTS_FILE
    record = read_json(path)
    if record is None or record.get("status") != "running" or (record.get("job") or {}).get("id") != job_id:
        return False
    record.update(
        status="interrupted",
        error=f"SLURM job {job_id} ended {state} while running (the run could not close its record)",
    )
    record.setdefault("timing", {})["end_unix"] = time.time()
    write_json_atomic(path, record)
    return True


def _executor(launcher: Any) -> Any:
    """The submitit executor of the launcher's keys, as Hydra's submitit launcher builds it."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    kind = launcher._EXECUTOR
    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{kind}_{k}": v for k, v in params.items()})
    return executor


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Submit the jobs that are not completed as one SLURM array; return every job's ``JobReturn`` in order."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
    results: list[JobReturn | None] = [None] * len(job_overrides)
    todo: list[tuple[int, JobPlan | None, DictConfig | None]] = []
    for i, overrides in enumerate(job_overrides):
        num = initial_job_idx + i
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        plan, sweep_config = _plan(launcher, overrides, num, sweep_dir)
        if plan is not None and plan.action == "skip":
            say(f"job {num} skipped: {plan.reason}")
            key = (sweep_config or {}).get("optimized_metric")
            value = ((plan.previous or {}).get("metrics") or {}).get(key) if key else None
            results[i] = _job_return(sweep_config, overrides, JobStatus.COMPLETED, value)
        else:
            todo.append((i, plan, sweep_config))
    if not todo:
        say(f"nothing to submit: all {len(job_overrides)} jobs completed earlier")
        return results  # type: ignore[return-value]
    state = Singleton.get_state()
    params = [
        (list(job_overrides[i]), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}", state)
        for i, _, _ in todo
    ]
    jobs = _executor(launcher).map_array(launcher, *zip(*params, strict=True))
    array = jobs[0].job_id.split("_")[0]
    say(f"submitted {len(jobs)} of {len(job_overrides)} jobs as SLURM array {array} "
        f"(job numbers {', '.join(str(initial_job_idx + i) for i, _, _ in todo)})")
    lost = wait_for(jobs)
    for k, ((i, plan, sweep_config), job) in enumerate(zip(todo, jobs, strict=True)):
        num = initial_job_idx + i
        if k in lost:
            run_dir = plan.run_dir if plan is not None else sweep_dir / str(num)
            marked = _mark_interrupted(run_dir, job.job_id, lost[k])
            err = RuntimeError(
                f"job #{num} (SLURM job {job.job_id}) ended {lost[k]} without a result"
                + (" (its record was left running: now interrupted)" if marked else "")
                + f"; see {job.paths.stdout}. Run the same command again to resume it."
            )
            log.error(str(err))
            results[i] = _job_return(sweep_config, job_overrides[i], JobStatus.FAILED, err)
            continue
        try:
            results[i] = job.results()[0]
        except Exception as err:  # the job's process raised past the run (submitit's FailedJobError)
            log.error(f"job #{num} (SLURM job {job.job_id}) failed: {err}")
            results[i] = _job_return(sweep_config, job_overrides[i], JobStatus.FAILED, err)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
