"""One job of a multirun: skip it if done, resume it if interrupted, run it otherwise; never raise.

The job's plan (:func:`~hybridpool.sweep.plan.plan_job`) becomes a plain :class:`~hybridpool.run.Placement`
handed to :func:`hybridpool.run.train`; the run knows nothing of sweeps.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hybridpool.records import RunRecord, config_hash
from hybridpool.run.console import say
from hybridpool.run.resume import Placement
from hybridpool.sweep.plan import JobPlan, SweepJob, job_lock, plan_job

__all__ = ["job_plan", "placement_of", "run_sweep_job"]


def placement_of(job: SweepJob, plan: JobPlan) -> Placement:
    """The run's placement for a sweep job: the plan's folder and checkpoint, the sweep's W&B group and name."""
    return Placement(
        run_dir=Path(plan.run_dir),
        ckpt=plan.ckpt,
        previous=plan.previous,
        job=job.describe(),
        wandb_group=job.wandb_group,
        wandb_name=job.wandb_name,
        start_unix=job.start_unix,
    )


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The job's resolved config without importing torch (a skip stays cheap); a bad config raises ConfigError."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        container.pop("hydra", None)
        return container
    except Exception:
        from hybridpool.run.config import validate_config

        return validate_config(cfg)  # raises the explanatory ConfigError


def job_plan(cfg: DictConfig, sweep_dir: Path) -> JobPlan:
    """What the job of the composed ``cfg`` does in ``sweep_dir`` (skip, resume or run): the job's own plan, which a
    launcher can also make before submitting it (:mod:`hybridpool.sweep.slurm`). A bad config raises ConfigError."""
    container = _resolved(cfg)
    output_dir = Path(container["paths"]["output_dir"]).absolute()
    return plan_job(config_hash(container, output_dir), output_dir, sweep_dir)


def earlier_metric(plan: JobPlan, key: str | None) -> float | None:
    """A skipped job's ``optimized_metric`` ``key`` from its earlier, completed attempt (``None`` if absent)."""
    value = ((plan.previous or {}).get("metrics") or {}).get(key) if key else None
    return float(value) if value is not None else None


def record_early_failure(cfg: DictConfig, job: SweepJob, err: BaseException) -> None:
    """A job that failed before :func:`~hybridpool.run.train` wrote its record (a bad config): write a failed one."""
    from hybridpool.run.wandb import WandbSession

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    record = RunRecord(
        job.output_dir, container, seed=container.get("seed"), task_name=container.get("task_name"),
        overrides=job.overrides,
    )
    record.data["job"] = job.describe()
    record.fail(err)
    session = WandbSession(container, record.data["job"], group=job.wandb_group, name=job.wandb_name)
    info = session.record_failure(cfg, record.data)
    if info is not None:
        record.update(wandb=info)
        session.finish([], ok=False)


def run_sweep_job(cfg: DictConfig, job: SweepJob) -> float | None:
    """Run one multirun job; return its ``optimized_metric`` (``None`` when failed or absent).

    An exception is recorded (``results.json`` and W&B: status ``failed`` with the traceback) and the job
    returns ``None`` so that every launcher goes on with the other jobs; the sweep's summary lists it and
    ``hybridpool-train`` exits with status 1 at the end.
    """
    from hybridpool.run.train import train

    job.start_unix = time.time()
    key = cfg.get("optimized_metric")
    label = f"job {job.num}" if job.num is not None else "job"
    try:
        job.task_name = str(cfg.get("task_name") or "") or None
        plan = job_plan(cfg, job.sweep_dir)
        with job_lock(plan.run_dir) as acquired:
            if not acquired:
                say(f"{label}: {plan.run_dir} is being run by another process; leaving it to that one")
                return None
            plan = job_plan(cfg, job.sweep_dir)  # again, under the lock
            if plan.action == "skip":
                say(f"{label} skipped: {plan.reason}")
                return earlier_metric(plan, key)
            if plan.action == "resume" or plan.previous is not None:
                say(f"{label}: {plan.reason}")
            metrics = train(cfg, placement_of(job, plan))
        return metrics.get(key) if key else None
    except Exception as err:
        say(f"{label} FAILED: {type(err).__name__}: {err}")
        traceback.print_exc()
        if getattr(err, "_hybridpool_record", None) is None:
            try:
                record_early_failure(cfg, job, err)
            except Exception as record_err:
                say(f"warning: could not write the failed record: {record_err}")
        return None
