"""One run: validate -> build -> fit -> test -> record. The recipe every entry point (CLI, sweeps, tests) runs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from hybridpool.run import ddp
from hybridpool.run.console import quiet_third_party, report, say
from hybridpool.run.resume import Placement, placement_from_config
from hybridpool.run.wandb import WandbSession, preload

__all__ = ["train"]


def _task_overrides() -> list[str]:
    """The command line's task overrides when running inside a Hydra app (``[]`` otherwise)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:
        return []


def _place(cfg: DictConfig, container: dict[str, Any], placement: Placement) -> tuple[DictConfig, dict[str, Any]]:
    """``cfg`` and its resolved ``container`` moved into ``placement.run_dir`` when that is another folder."""
    from hybridpool.run.config import validate_config

    run_dir = placement.run_dir
    if run_dir is None or Path(run_dir).resolve() == Path(container["paths"]["output_dir"]).resolve():
        return cfg, container
    resuming = f"resuming the interrupted run in {run_dir} (from {placement.ckpt})"
    say(resuming if placement.ckpt else f"running in {run_dir}")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(run_dir).absolute())
    return cfg, validate_config(cfg)


def _terminated(built: Any, err: BaseException) -> SystemExit | None:
    """The interruption behind ``err`` when the process was told to stop (SIGTERM: ``scancel``, a time limit,
    preemption) and ``err`` is only a consequence, e.g. W&B's service process, signalled with the job, gone
    (``ConnectionResetError: Connection lost``); ``None`` otherwise. The run is then recorded as interrupted and
    the process exits as one (SystemExit), instead of a sweep job ending as failed."""
    if isinstance(err, (KeyboardInterrupt, SystemExit)) or built is None:
        return None
    if not getattr(built.trainer, "received_sigterm", False):  # Lightning's SIGTERM handler, during fit and test
        return None
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    stopped = SIGTERMException(f"SIGTERM received; then {type(err).__name__}: {err}")
    stopped.__cause__ = err  # the record's traceback shows both
    return stopped


def train(cfg: DictConfig, placement: Placement | None = None, extra_callbacks: Sequence[Any] = ()) -> dict[str, float]:
    """Train and evaluate the run ``cfg``; return its final metrics.

    Writes ``results.json`` (status ``running`` at the start, then ``completed``, ``failed`` or ``interrupted``,
    with the traceback on failure; :mod:`hybridpool.records`) and closes W&B in a ``finally``, so each job of a
    multirun is its own W&B run, success or failure.

    Args:
        cfg: a composed ``train.yaml`` (from the Hydra app or :func:`hybridpool.run.compose_config`).
        placement: where and as what to run (a sweep's decision: folder, checkpoint, earlier attempt, W&B
            group and name); ``None``: ``cfg.ckpt_path`` decides (:func:`~hybridpool.run.resume.resolve_ckpt_path`).
        extra_callbacks: Lightning callbacks added to those of ``cfg.callbacks``.

    Returns:
        ``{"val/acc": ..., "val/acc_best": ..., "test/acc": ..., "epochs": ..., ...}`` as floats.
    """
    t_start = (placement.start_unix if placement else None) or time.time()
    preload(cfg)
    quiet_third_party()
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_only

    from hybridpool.run.build import build_run, describe_datamodule
    from hybridpool.run.config import validate_config
    from hybridpool.run.outputs import (
        best_checkpoint_callback,
        cache_events,
        checkpoint_epoch,
        float_metrics,
        keep_previous_csv,
        output_paths,
    )
    from hybridpool.run.record import open_record, torch_threads

    startup_s = time.time() - t_start  # imports of torch, Lightning, ... (a process's first run only), the plan
    t0 = time.perf_counter()
    container = validate_config(cfg)
    overrides = _task_overrides()
    if placement is None:
        placement = placement_from_config(container, overrides)
    elif not placement.job:
        placement = replace(placement, job={"num": None, "overrides": overrides})
    cfg, container = _place(cfg, container, placement)
    output_dir = Path(container["paths"]["output_dir"]).absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    rank_zero = rank_zero_only.rank == 0  # DDP: only global rank 0 writes the record, split and report
    record = open_record(container, output_dir, placement, overrides, t_start, startup_s, write=rank_zero)
    session = WandbSession(
        container, record.data["job"], placement.previous, placement.wandb_group, placement.wandb_name
    )

    built = None
    metrics: dict[str, float] = {}
    timing: dict[str, float] = {}
    ok = False
    env_before = ddp.env_snapshot()
    try:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        built = build_run(cfg, container, session, list(extra_callbacks))
        dm, trainer = built.fit_datamodule, built.trainer
        write_split = getattr(built.datamodule, "write_split", None)
        if write_split is not None and rank_zero:
            record.update(paths={"split": str(write_split(output_dir / "split.json"))})
        # the pool schedule with its switch epoch resolved; a bad switch_epoch fails here, before fitting
        schedule = built.module.schedule_info(cfg.trainer.get("max_epochs"), bool(cfg.trainer.get("fast_dev_run")))
        record.update(
            tags=built.tags,
            pool=built.pool,
            model=built.model.describe(),
            data=describe_datamodule(built.datamodule),
            schedule=schedule,
        )
        if placement.previous and rank_zero:
            keep_previous_csv(output_dir, record)
        t_wandb = time.perf_counter()
        record.update(wandb=session.start(built.loggers))
        timing["wandb_init_s"] = time.perf_counter() - t_wandb
        timing["setup_s"] = time.perf_counter() - t0 - timing["wandb_init_s"]
        record.data["devices"].update(torch_threads=torch_threads(), world_size=int(trainer.world_size or 1))
        ddp.route_children(trainer, output_dir, placement.ckpt)

        t_fit = time.perf_counter()
        trainer.fit(built.module, datamodule=dm, ckpt_path=placement.ckpt)
        timing["fit_s"] = time.perf_counter() - t_fit
        metrics.update(float_metrics(trainer.callback_metrics))
        ckpt_cb = best_checkpoint_callback(trainer)
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if ckpt_cb is not None and getattr(ckpt_cb, "best_model_score", None) is not None:
            metrics[f"{ckpt_cb.monitor}_best"] = float(ckpt_cb.best_model_score)
            if best:
                metrics[f"{ckpt_cb.monitor}_best_epoch"] = checkpoint_epoch(best)
        # before test(): loading the best checkpoint restores the callback's older state
        paths = output_paths(output_dir, trainer, built.loggers, built.callbacks, built.cache)
        t_test = time.perf_counter()
        if cfg.get("test", True) and not trainer.interrupted:
            for result in trainer.test(built.module, datamodule=dm, ckpt_path=best or None, verbose=False):
                metrics.update(float_metrics(result))
        timing["test_s"] = time.perf_counter() - t_test
        if built.cache is not None:
            paths["feature_cache_events"] = cache_events(built.cache)
        metrics.update(epochs=float(trainer.current_epoch), global_step=float(trainer.global_step))
        metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}
        if rank_zero:  # other ranks hold a dummy W&B experiment
            session.summarize(built.loggers, metrics)
        record.data["timing"].update(timing)
        if trainer.interrupted:
            record.fail(KeyboardInterrupt("training interrupted"), metrics=metrics, paths=paths, wandb=session.info)
        else:
            record.complete(metrics, paths=paths, wandb=session.info)
            ok = True
        return metrics
    except BaseException as err:
        record.data["timing"].update(timing)
        stopped = _terminated(built, err)
        if not ok and record.data["status"] == "running":
            record.fail(stopped or err, metrics=metrics, wandb=session.info)
            if rank_zero:
                record.update(wandb=session.record_failure(cfg, record.data))
        for e in (err, stopped) if stopped is not None else (err,):
            with contextlib.suppress(AttributeError, TypeError):
                e._hybridpool_record = str(record.path)  # type: ignore[union-attr]
        if stopped is not None:
            raise stopped from err
        raise
    finally:
        t_finish = time.perf_counter()
        loggers = built.loggers if built is not None else []
        session.finish(loggers, ok=ok)
        if ok and loggers and rank_zero:
            record.data["timing"]["finish_s"] = time.perf_counter() - t_finish  # W&B finish and upload
            record.write()
        ddp.reap_children(built.trainer if built is not None else None, ok=ok)
        ddp.restore_env(env_before)
        if rank_zero:
            report(record, time.perf_counter() - t0)
