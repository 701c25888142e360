"""``hydra/launcher=heads``: a multirun whose frozen-backbone jobs train together, many heads per pass.

Each job is first set up as Hydra's basic launcher does (its folder, ``.hydra/`` configs, job callbacks) and
planned as any sweep job (:func:`~hybridpool.sweep.plan.plan_job`: skip a completed one, resume an interrupted
one from its checkpoint). The jobs that :func:`hybridpool.run.heads.group_problem` accepts are then trained in
groups of at most ``max_group`` that share cached features (:func:`hybridpool.run.heads.group_key`) by
:func:`hybridpool.run.heads.train_heads`, each still its own run (folder, record, CSV, W&B run); the others run
one after the other through :func:`hybridpool.run.train`, as with the basic launcher.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from hybridpool.run.console import say
from hybridpool.sweep.plan import JobPlan, SweepJob

__all__ = ["launch"]

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A job planned for a group: its resolved config, sweep identity and plan, and its ``JobReturn``."""

    index: int
    cfg: DictConfig
    job: SweepJob
    plan: JobPlan
    ret: JobReturn | None = None


class _Deferred:
    """The return value of a job that a group trains later (replaced once the group has run)."""


def _planner(pending: list[_Pending], index: list[int]) -> Any:
    """The task function of the first pass: plan the job; groupable ones are deferred, others run now."""

    def task(cfg: DictConfig) -> Any:
        from hybridpool.run.heads import copy_config, group_problem
        from hybridpool.sweep import current_job
        from hybridpool.sweep.job import earlier_metric, job_plan, run_sweep_job

        job = current_job()
        assert job is not None, "the heads launcher runs multirun jobs only"
        problem = group_problem(cfg)
        if problem is not None:
            say(f"job {job.num}: runs alone ({problem})")
            return run_sweep_job(cfg, job)
        job.start_unix = time.time()
        job.task_name = str(cfg.get("task_name") or "") or None
        try:
            plan = job_plan(cfg, job.sweep_dir)
        except Exception:
            return run_sweep_job(cfg, job)  # records the bad config as the single-run path does
        if plan.action == "skip":
            say(f"job {job.num} skipped: {plan.reason}")
            return earlier_metric(plan, cfg.get("optimized_metric"))
        pending.append(_Pending(index[0], copy_config(cfg), job, plan))
        return _Deferred()

    return task


def _run_group(items: list[_Pending]) -> None:
    """Train one group under the jobs' locks; put each job's ``optimized_metric`` (or ``None``) in its return."""
    from hybridpool.run.heads import train_heads
    from hybridpool.sweep.job import job_plan, placement_of
    from hybridpool.sweep.plan import job_lock

    with contextlib.ExitStack() as stack:
        mine: list[_Pending] = []
        for item in items:
            if not stack.enter_context(job_lock(item.plan.run_dir)):
                say(f"job {item.job.num}: {item.plan.run_dir} is being run by another process; leaving it to that one")
                continue
            # again, under the lock (another invocation may have finished it meanwhile)
            item.plan = job_plan(item.cfg, item.job.sweep_dir)
            if item.plan.action == "skip":
                continue
            mine.append(item)
        cfgs = []
        for item in mine:
            cfg = item.cfg.copy()
            with open_dict(cfg):
                cfg.paths.output_dir = str(item.plan.run_dir)
            cfgs.append(cfg)
        results = train_heads(cfgs, [placement_of(item.job, item.plan) for item in mine]) if mine else []
    for item, result in zip(mine, results, strict=True):
        key = item.cfg.get("optimized_metric")
        value = result.get(key) if isinstance(result, dict) and key else None
        _set_return(item, float(value) if value is not None else None)
    for item in items:
        if item not in mine:
            _set_return(item, None)


def _set_return(item: _Pending, value: Any) -> None:
    if item.ret is not None:
        item.ret.return_value = value
        item.ret.status = JobStatus.COMPLETED


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Plan every job, run the ungroupable ones, then train the groupable ones in groups; ``JobReturn``s in order."""
    from hybridpool.run.heads import group_key

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Heads launcher: {len(job_overrides)} jobs, groups of at most {launcher.max_group}")
    pending: list[_Pending] = []
    index = [0]
    task = _planner(pending, index)
    returns: list[JobReturn] = []
    for i, overrides in enumerate(job_overrides):
        num = initial_job_idx + i
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        index[0] = i
        ret = run_job(
            hydra_context=launcher.hydra_context, task_function=task, config=sweep_config,
            job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
        )
        returns.append(ret)
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    for item in pending:
        item.ret = returns[item.index]
    groups: dict[str, list[_Pending]] = {}
    for item in pending:
        groups.setdefault(group_key(item.cfg), []).append(item)
    for items in groups.values():
        for start in range(0, len(items), launcher.max_group):
            _run_group(items[start : start + launcher.max_group])
    return returns
