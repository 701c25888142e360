"""Hydra's Ray launcher with long-lived workers: one Ray actor per slot runs job after job.

The Ray launcher (hydra-ray-launcher) runs each job as a Ray task. A task that holds a GPU gets a fresh worker
process every time (Ray's ``max_calls=1`` for GPU tasks), so every job pays the process start and the imports of
torch, Lightning and W&B again (10.3 s per job on a 2-core CPU, ``benchmarks/sweep_cpu_ray_gpu_path.txt``). Here
each slot of the sweep is a Ray actor holding the resources of one job (``hydra.launcher.ray.remote``:
``num_gpus``, ``num_cpus``, ...) for its whole life: Ray sets its ``CUDA_VISIBLE_DEVICES`` to its own GPU(s)
once, and it imports once and runs the sweep's jobs one after the other, like joblib's workers. The config keys
are the plugin's own (``hydra.launcher.ray.init`` and ``.remote``); ``conf/hydra/launcher/ray.yaml`` selects this
launcher.

- Slots: as many as the Ray cluster can hold at once (its CPUs, GPUs and custom resources over one job's
  request), at most one per job.
- A worker whose process dies in a job (SIGKILL, out of memory) is restarted by Ray on the same resources and
  the job is tried again, resuming from its last checkpoint (``max_retries``, as for the plugin's tasks: 3 by
  default). When it dies more often, its job is returned to Hydra as failed once the other jobs have run; Hydra
  raises its error (exit status 1) and the job's folder stays as it was left, resumed by the next run of the
  same command.
- After each job the worker frees what torch cached on its GPU; a worker whose CUDA context broke (a sticky
  CUDA error such as a device-side assert) is replaced by a fresh one before the next job.
- Attached to a running cluster (``hydra/launcher=ray_cluster``: ``ray start`` elsewhere, with its own environment
  and working directory), the jobs still write where the sweep command says: each job gets the sweep folder as an
  absolute path, and the workers get the command's ``HYBRIDPOOL_*``, ``WANDB_*`` (not ``WANDB_API_KEY``) and
  ``TORCH_HOME`` variables (:func:`forwarded_env`, as Ray's ``runtime_env.env_vars``; keys given in
  ``hydra.launcher.ray.init.runtime_env.env_vars`` win).

To run one job per task as the plugin does, select
``hydra.launcher._target_=hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["JobWorker", "actor_options", "forwarded_env", "launch", "slot_count", "worker_reusable"]

log = logging.getLogger(__name__)

#: the plugin's tasks are retried 3 times (Ray's default ``max_retries``) when their process dies
DEFAULT_RETRIES = 3
#: ``ray.remote`` options that only make sense for tasks
_TASK_ONLY = ("max_calls", "max_retries", "retry_exceptions", "num_returns")


#: the sweep command's variables handed to the workers of a cluster started elsewhere: where a job reads and
#: writes (``paths.*`` read ``HYBRIDPOOL_*``), how W&B logs, where pretrained weights are
FORWARDED_ENV_PREFIXES = ("HYBRIDPOOL_", "WANDB_", "TORCH_HOME")
#: never copied into Ray's job config (readable on the cluster's dashboard): log workers in with ``wandb login``
NOT_FORWARDED = frozenset({"WANDB_API_KEY"})


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that the workers of an attached cluster get (:data:`FORWARDED_ENV_PREFIXES`)."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and k not in NOT_FORWARDED}


def actor_options(remote: Mapping[str, Any]) -> dict[str, Any]:
    """``hydra.launcher.ray.remote`` (options of the plugin's ``ray.remote`` task) as the options of a worker actor.

    Resources (``num_cpus``, ``num_gpus``, ``memory``, ``resources``, ...) carry over; an actor asks for one CPU
    unless told otherwise, as a task does. ``max_retries`` becomes the actor's restarts and its method's retries.
    """
    options = {k: v for k, v in remote.items() if k not in _TASK_ONLY}
    options.setdefault("num_cpus", 1)
    retries = remote.get("max_retries", DEFAULT_RETRIES)
    options.setdefault("max_restarts", retries)
    options.setdefault("max_task_retries", retries)
    return options


def slot_count(options: Mapping[str, Any], cluster: Mapping[str, float], jobs: int) -> int:
    """How many workers run at once: as many as ``cluster`` (``ray.cluster_resources()``) holds, at most ``jobs``.

    At least one: on a cluster that has none of a requested resource yet (an autoscaler may add it) the worker
    waits for it, as the plugin's tasks would.
    """
    request = {"CPU": float(options.get("num_cpus") or 0), "GPU": float(options.get("num_gpus") or 0)}
    request.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    fits = [math.floor(cluster.get(name, 0.0) / amount + 1e-9) for name, amount in request.items() if amount > 0]
    return max(1, min([jobs, *fits]))


def worker_reusable() -> bool:
    """Free torch's cached GPU memory after a job; ``False`` when this process's CUDA context is broken."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return True
    gc.collect()  # the finished job's tensors, held in reference cycles, before the cache is emptied
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except RuntimeError as err:  # e.g. "CUDA error: device-side assert triggered" sticks to the context
        log.warning("worker %s: CUDA context unusable after the job (%s); a fresh worker replaces it", os.getpid(), err)
        return False
    return True


class JobWorker:
    """A Ray actor (one slot of the sweep) that runs Hydra jobs one after the other in its process."""

    def run(
        self, hydra_context: Any, sweep_config: DictConfig, task_function: Any, singleton_state: dict[Any, Any]
    ) -> tuple[JobReturn, bool]:
        """Run one job as the plugin's task would; returns its ``JobReturn`` and whether this worker can go on."""
        from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

        result = _run_job(hydra_context, sweep_config, task_function, singleton_state)
        return result, worker_reusable()


def _failed(sweep_config: DictConfig, err: BaseException) -> JobReturn:
    """The ``JobReturn`` of a job whose worker died more often than it may restart."""
    task_config = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
    return JobReturn(
        overrides=list(sweep_config.hydra.overrides.task),
        cfg=task_config,
        hydra_cfg=sweep_config.hydra,
        working_dir=str(sweep_config.hydra.sweep.dir),
        task_name=str(sweep_config.hydra.job.name),
        status=JobStatus.FAILED,
        _return_value=err,
    )


def _sweep_config(launcher: Any, overrides: Sequence[str], num: int, sweep_dir: Path) -> DictConfig:
    """The config of job number ``num`` (as the plugin composes it), in the sweep folder ``sweep_dir``.

    The folder is set as an absolute path: ``hydra.sweep.dir`` reads ``paths.log_dir`` from the environment (and
    a relative one from the working directory), which on a worker of another machine are not the command's.
    """
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"job_id_for_{num}"
        sweep_config.hydra.job.num = num
        sweep_config.hydra.sweep.dir = str(sweep_dir)
    return sweep_config


def _init_kwargs(init_cfg: DictConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """``ray.init`` arguments: the launcher's ``ray.init``; attaching to a cluster, with :func:`forwarded_env`."""
    kwargs = OmegaConf.to_container(init_cfg, resolve=True) or {}
    assert isinstance(kwargs, dict)
    kwargs.setdefault("object_store_memory", 78643200)  # as the plugin: enough for small hosts
    if kwargs.get("address") or environ.get("RAY_ADDRESS"):
        runtime_env = dict(kwargs.get("runtime_env") or {})
        runtime_env["env_vars"] = {**forwarded_env(environ), **(runtime_env.get("env_vars") or {})}
        kwargs["runtime_env"] = runtime_env
    return kwargs


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Run the jobs on ``slot_count`` long-lived workers; returns their ``JobReturn`` in job order."""
    import ray

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if ray.is_initialized():
        log.info("Ray is already running.")
    else:
        kwargs = _init_kwargs(launcher.ray_cfg.init, os.environ)
        shown = {k: v for k, v in kwargs.items() if k != "runtime_env"}
        log.info(f"Initializing ray with config: {shown}")
        ray.init(**kwargs)

    options = actor_options(OmegaConf.to_container(launcher.ray_cfg.remote, resolve=True) or {})
    slots = slot_count(options, ray.cluster_resources(), len(job_overrides))
    request = ", ".join(f"{k}={options[k]}" for k in ("num_cpus", "num_gpus", "resources") if options.get(k))
    log.info(f"Ray launcher: {len(job_overrides)} jobs on {slots} workers ({request} each), sweep dir: {sweep_dir}")
    worker_class = ray.remote(**options)(JobWorker)
    idle = [worker_class.remote() for _ in range(slots)]
    running: dict[Any, tuple[Any, int, DictConfig]] = {}
    results: list[JobReturn | None] = [None] * len(job_overrides)
    try:
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        # each job's config is composed one ahead of a free worker, not all up front (the workers would wait)
        configs = (
            (i, _sweep_config(launcher, o, initial_job_idx + i, sweep_dir)) for i, o in enumerate(job_overrides)
        )
        next_job = next(configs, None)
        while next_job is not None or running:
            while idle and next_job is not None:
                worker, (i, sweep_config) = idle.pop(), next_job
                ref = worker.run.remote(launcher.hydra_context, sweep_config, launcher.task_function, state)
                running[ref] = (worker, i, sweep_config)
                next_job = next(configs, None)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            worker, i, sweep_config = running.pop(ref)
            try:
                results[i], reusable = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died in this job more often than it may restart
                log.error(f"job #{initial_job_idx + i} lost its worker: {err}")
                results[i], reusable = _failed(sweep_config, err), False
            if not reusable:
                ray.kill(worker)
                worker = worker_class.remote() if next_job is not None else None
            if worker is not None:
                idle.append(worker)
    finally:
        for worker in idle + [w for w, _, _ in running.values()]:
            ray.kill(worker)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
