"""``hydra/launcher=heads``: a multirun whose frozen-backbone jobs train together, many heads per pass.

Each job is first set up as Hydra's basic launcher does (its folder, ``.hydra/`` configs, job callbacks) and
planned as any sweep job (:func:`~hybridpool.sweep.plan.plan_job`: skip a completed one, resume an interrupted
one from its checkpoint). The jobs that :func:`hybridpool.run.heads.group_problem` accepts are then trained in
groups of at most ``max_group`` that share cached features (:func:`hybridpool.run.heads.group_key`) by
:func:`hybridpool.run.heads.train_heads`, each still its own run (folder, record, CSV, W&B run); the others run
one after the other through :func:`hybridpool.run.train`, as with the basic launcher.

With ``n_jobs`` > 1 each group is split into ``n_jobs`` parts that keep the runs of one seed together (they share
each step's batch), and the parts train at once in as many worker processes (spawned; ``cpu_count // n_jobs``
torch threads each unless ``OMP_NUM_THREADS`` is set). The launcher holds every job's lock meanwhile. A worker
that is told to stop (SIGINT, or SIGTERM from the launcher when it is interrupted) records its unfinished runs as
interrupted, each with its last epoch's checkpoint, as one process does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from hybridpool.run.console import say
from hybridpool.sweep.plan import JobPlan, SweepJob

__all__ = ["launch", "moved", "split_by_seed"]

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


def _claim(items: list[_Pending], stack: contextlib.ExitStack) -> list[_Pending]:
    """The jobs of ``items`` this process gets to train: their locks taken on ``stack``, planned again under them."""
    from hybridpool.sweep.job import job_plan
    from hybridpool.sweep.plan import job_lock

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
    return mine


def _inputs(mine: list[_Pending]) -> tuple[list[DictConfig], list[Any]]:
    """``train_heads``' arguments for the claimed jobs: configs pointed at their run folders, and placements."""
    from hybridpool.sweep.job import placement_of

    cfgs = [moved(item.cfg, item.plan.run_dir) for item in mine]
    return cfgs, [placement_of(item.job, item.plan) for item in mine]


def moved(cfg: DictConfig, run_dir: str | Path) -> DictConfig:
    """The resolved ``cfg`` with every path under its ``paths.output_dir`` moved under ``run_dir`` (checkpoint and
    attention-map folders, the CSV logger's ``save_dir``, ...), as resolving it with that ``output_dir`` would give."""
    old, new = str(cfg.paths.output_dir).rstrip("/"), str(run_dir).rstrip("/")
    if old == new:
        return cfg

    def move(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: move(v) for k, v in node.items()}
        if isinstance(node, list):
            return [move(v) for v in node]
        if isinstance(node, str) and (node == old or node.startswith(old + "/")):
            return new + node[len(old) :]
        return node

    return OmegaConf.create(move(OmegaConf.to_container(cfg, resolve=True)))


def _set_returns(items: list[_Pending], mine: list[_Pending], results: Sequence[Any]) -> None:
    """Each job's ``optimized_metric`` (``None`` for a failed run and for the jobs another process has)."""
    for item, result in zip(mine, results, strict=True):
        key = item.cfg.get("optimized_metric")
        value = result.get(key) if isinstance(result, dict) and key else None
        _set_return(item, float(value) if value is not None else None)
    for item in items:
        if item not in mine:
            _set_return(item, None)


def _run_group(items: list[_Pending]) -> None:
    """Train one group in this process, under the jobs' locks."""
    from hybridpool.run.heads import train_heads

    with contextlib.ExitStack() as stack:
        mine = _claim(items, stack)
        results = train_heads(*_inputs(mine)) if mine else []
    _set_returns(items, mine, results)


def split_by_seed(items: Sequence[Any], parts: int, seed_of: Any) -> list[list[Any]]:
    """``items`` in at most ``parts`` lists of similar length, the items of one ``seed_of(item)`` in one list.

    Runs of one seed draw the same batches, so a worker that has all of them gathers each batch once. With fewer
    seeds than ``parts`` the items are dealt out one by one instead (every worker busy, batches gathered again).
    """
    if parts <= 1:
        return [list(items)] if items else []
    by_seed: dict[Any, list[Any]] = {}
    for item in items:
        by_seed.setdefault(seed_of(item), []).append(item)
    if len(by_seed) < parts:
        buckets = [list(items[i::parts]) for i in range(parts)]
    else:
        buckets = [[] for _ in range(parts)]
        for same_seed in sorted(by_seed.values(), key=len, reverse=True):
            min(buckets, key=len).extend(same_seed)
    return [b for b in buckets if b]


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop_when_orphaned(parent: int) -> None:
    """SIGTERM this process once its launcher ``parent`` is gone (killed), so its runs are recorded interrupted."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _train_in_worker(cfgs: list[DictConfig], placements: list[Any], threads: int | None) -> list[Any]:
    """A worker process's group: ``train_heads``' results, errors as ``"Type: message"`` (they cross processes)."""
    import torch

    from hybridpool.run.heads import train_heads

    signal.signal(signal.SIGTERM, _stop)  # SystemExit: train_heads records the unfinished runs as interrupted
    launcher = os.getppid()
    threading.Thread(target=_stop_when_orphaned, args=(launcher,), daemon=True).start()
    if threads:
        torch.set_num_threads(threads)
    try:
        results = train_heads(cfgs, placements)
    except (KeyboardInterrupt, SystemExit):
        if os.getppid() != launcher:  # the runs are recorded; nobody is left to report to
            os._exit(143)
        raise
    return [r if isinstance(r, dict) else f"{type(r).__name__}: {r}" for r in results]


def _run_in_workers(chunks: list[list[_Pending]], n_jobs: int) -> None:
    """Train the ``chunks`` (groups) on ``n_jobs`` spawned worker processes, under the jobs' locks."""
    threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // n_jobs)
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack, ProcessPoolExecutor(n_jobs, mp_context=context) as pool:
        claimed = [(items, _claim(items, stack)) for items in chunks]
        for items, mine in claimed:
            if not mine:
                _set_returns(items, mine, [])
        futures = {
            pool.submit(_train_in_worker, *_inputs(mine), threads): (items, mine) for items, mine in claimed if mine
        }
        try:
            for future in as_completed(futures):
                items, mine = futures[future]
                try:
                    results = future.result()
                except Exception as err:  # the worker died (killed, out of memory): its runs keep their checkpoints
                    jobs = ", ".join(str(item.job.num) for item in mine)
                    say(f"heads worker of jobs {jobs} died ({type(err).__name__}: {err}); a re-run resumes them")
                    results = [None] * len(mine)
                _set_returns(items, mine, results)
        except BaseException:
            for process in list(getattr(pool, "_processes", {}).values()):  # let each worker record its runs
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
            raise


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
    log.info(
        f"Heads launcher: {len(job_overrides)} jobs, groups of at most {launcher.max_group}, "
        f"{launcher.n_jobs} process(es)"
    )
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
    chunks: list[list[_Pending]] = []
    for items in groups.values():
        parts = split_by_seed(items, launcher.n_jobs, lambda item: item.cfg.get("seed"))
        for part in parts:
            chunks += [part[start : start + launcher.max_group] for start in range(0, len(part), launcher.max_group)]
    if launcher.n_jobs == 1:
        for chunk in chunks:
            _run_group(chunk)
    elif chunks:
        _run_in_workers(chunks, launcher.n_jobs)
    return returns
