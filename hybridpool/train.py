"""``hybridpool-train``: the Hydra entry point. compose -> instantiate -> fit/test -> one record per run.

Run ``hybridpool-train`` (or ``python -m hybridpool.train``) with no arguments for the main job (train.yaml's
defaults, also named ``experiment=main``: a synthetic task, the small CNN, the scalar hybrid pool; no download,
about two minutes on a 2-core CPU), or choose groups and keys on the command line::

    hybridpool-train pool=gem data=fashion_mnist trainer.max_epochs=5
    hybridpool-train -m pool=avg,gem,hybrid_scalar seed=0,1,2
    hybridpool-train experiment=frozen_mobilenet
    hybridpool-train ckpt_path=last            # resume the interrupted run with the same config
    hybridpool-train -m pool=avg,gem seed=0,1 hydra/launcher=joblib   # ray, slurm: conf/hydra/launcher

Every run writes into its Hydra output folder: ``results.json`` (:mod:`hybridpool.records`),
``csv/metrics.csv``, ``checkpoints/{best-*,last}.ckpt``, ``attention_maps/attention_maps.png``,
``split.json``, ``wandb/`` (offline runs) and ``.hydra/`` (the composed config and overrides). :func:`train`
is the same run as a function (returns the metric dict; sweepers use it) and :func:`compose_config`
composes a config without the command line.

A multirun goes to ``<log_dir>/<task_name>/multirun/<sweep name>/<job>/``, a folder named after the command, so
that running the same command again skips the jobs already completed and resumes the interrupted ones from
their last checkpoint; a failing job is recorded and the others go on (:mod:`hybridpool.sweep`;
``hybridpool-sweep-status <sweep dir>`` prints where a sweep stands).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

import hybridpool.sweep  # noqa: F401  (registers ${hybridpool.sweep_name:} in every process that runs jobs)

# conf/hydra/launcher/{basic,joblib,ray}.yaml share their names with the plugins' schemas on purpose: Hydra
# validates them against those schemas and warns that this matching is deprecated; the validation is wanted.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema")

__all__ = ["CONF_DIR_ENV", "compose_config", "config_dir", "main", "resolve_ckpt_path", "train"]

CONF_DIR_ENV = "HYBRIDPOOL_CONF_DIR"


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups.

    In order: ``$HYBRIDPOOL_CONF_DIR``; ``conf/`` beside the package (a source checkout or an editable
    install); ``hybridpool/conf`` inside an installed wheel (shipped as package data).
    """
    env = os.environ.get(CONF_DIR_ENV)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "conf", here / "conf"]
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"hybridpool's Hydra configs (train.yaml) not found; looked in {looked}. Set {CONF_DIR_ENV} to the "
        "conf/ folder of a hybridpool checkout."
    )


def _config_path_for_main() -> str | None:
    try:
        return str(config_dir())
    except FileNotFoundError:
        return None


def _say(msg: str) -> None:
    print(f"[hybridpool] {msg}", flush=True)


def compose_config(
    overrides: Sequence[str] = (), output_dir: str | os.PathLike[str] | None = None
) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides`` outside a Hydra app (tests, notebooks).

    ``output_dir`` sets ``paths.output_dir`` (otherwise taken from the Hydra run, which does not exist here).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="hybridpool"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


# --------------------------------------------------------------------------------------------- resume
def _comparable(config: dict[str, Any], output_dir: str) -> str:
    """A run config as text, minus what differs between two attempts of the same run."""
    from hybridpool.sweep import _comparable as comparable

    return comparable(config, output_dir)


def resolve_ckpt_path(
    ckpt_path: str | None, output_dir: str | Path, log_dir: str | Path, task_name: str, config: dict[str, Any]
) -> tuple[str | None, Path | None]:
    """``(checkpoint file, run folder to continue in)`` for the ``ckpt_path`` config key.

    - ``null``: start fresh.
    - ``last``: ``<output_dir>/checkpoints/last.ckpt`` if present; otherwise the newest ``last.ckpt`` of an
      earlier run of the same ``task_name`` under ``log_dir`` whose recorded config equals this one (so the
      interrupted run, not just any run, is resumed). The run then continues in that run's folder.
    - a file path: load it (weights, optimizer, loop state) and write into the new output folder.
    """
    if ckpt_path is None:
        return None, None
    output_dir = Path(output_dir)
    if ckpt_path != "last":
        p = Path(ckpt_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file ({p.absolute()})")
        return str(p), None
    here = output_dir / "checkpoints" / "last.ckpt"
    if here.is_file():
        return str(here), output_dir
    root = Path(log_dir) / task_name
    mine = _comparable(config, str(output_dir))
    matches: list[tuple[float, Path]] = []
    others = 0
    for ckpt in root.glob("**/checkpoints/last.ckpt") if root.is_dir() else []:
        run_dir = ckpt.parent.parent
        try:
            record = json.loads((run_dir / "results.json").read_text())
        except (OSError, ValueError):
            others += 1
            continue
        if (
            _comparable(record.get("config", {}), record.get("paths", {}).get("output_dir", str(run_dir)))
            == mine
        ):
            matches.append((ckpt.stat().st_mtime, run_dir))
        else:
            others += 1
    if not matches:
        extra = f" ({others} last.ckpt from runs with a different config were ignored)" if others else ""
        raise FileNotFoundError(
            f"ckpt_path=last: no checkpoint to resume: {here} does not exist and no earlier run of task "
            f"'{task_name}' under {root} with the same config has checkpoints/last.ckpt{extra}. Pass "
            "ckpt_path=/path/to/file.ckpt to load a specific checkpoint."
        )
    run_dir = max(matches)[1]
    return str(run_dir / "checkpoints" / "last.ckpt"), run_dir


# --------------------------------------------------------------------------------------------- building
def _auto_tags(cfg: DictConfig, dm: Any, model: Any) -> list[str]:
    tags = [str(t) for t in (cfg.get("tags") or [])]
    choices: dict[str, Any] = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choices = dict(HydraConfig.get().runtime.choices)
    except Exception:
        choices = {}
    pool_name = choices.get("pool") or type(model.pool).__name__
    tags.append(f"pool:{pool_name}")
    mixing = getattr(model.pool, "mixing", None) or cfg.pool.get("mixing")
    if mixing:
        tags.append(f"mixing:{mixing}")
    tags.append(f"data:{getattr(dm, 'name', choices.get('data', type(dm).__name__))}")
    bb = model.backbone
    tags.append(f"backbone:{getattr(bb, 'name', type(bb).__name__)}")
    if model.frozen:
        tags.append("frozen-backbone")
    return list(dict.fromkeys(tags))


def _instantiate_all(node: DictConfig | None) -> dict[str, Any]:
    from hydra.utils import instantiate

    out: dict[str, Any] = {}
    if not node:
        return out
    for name, sub in node.items():
        if sub is not None and "_target_" in sub:
            out[str(name)] = instantiate(sub, _convert_="all")
    return out


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in values.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _preload_wandb(cfg: DictConfig) -> None:
    """Import what ``wandb.init`` imports on its first call, before torch and Lightning, when W&B will log.

    ``wandb.init`` imports W&B Launch's modules, whose pydantic models read their field docstrings through
    ``inspect.getmodule``, which scans ``sys.modules``: slow with torch, Lightning and torchvision loaded (4,000
    modules), much faster before them. It matters in every fresh process (each worker's first job; every job
    under the Ray plugin's own launcher on GPUs): ``scripts/bench_sweep.py`` records the W&B init of each job.
    """
    loggers = cfg.get("logger") or {}
    wandb_nodes = [n for n in loggers.values() if n and "make_wandb_logger" in str(n.get("_target_", ""))]
    if not wandb_nodes or all(str(n.get("mode", "auto")) == "disabled" for n in wandb_nodes):
        return
    with contextlib.suppress(Exception):  # an optimisation only: W&B's module layout is not an API
        import wandb.sdk.launch.inputs.internal  # noqa: F401


def train(
    cfg: DictConfig,
    extra_callbacks: Sequence[Any] = (),
    *,
    job: Any = None,
    plan: Any = None,
) -> dict[str, float]:
    """Train and evaluate one run described by ``cfg``; return its final metrics.

    Writes ``results.json`` (status ``running`` at start, then ``completed``/``failed``/``interrupted``, with the
    traceback on failure) and closes W&B in a ``finally`` so that each job of a multirun is its own W&B run,
    success or failure.

    Args:
        cfg: a composed ``train.yaml`` (from the Hydra app or :func:`compose_config`).
        extra_callbacks: Lightning callbacks added to those of ``cfg.callbacks``.
        job: the :class:`hybridpool.sweep.SweepJob` when run as a multirun job (W&B group, job number).
        plan: the :class:`hybridpool.sweep.JobPlan` of that job (folder to run in, checkpoint to resume);
            ``None``: ``cfg.ckpt_path`` decides (:func:`resolve_ckpt_path`).

    Returns:
        ``{"val/acc": ..., "val/acc_best": ..., "test/acc": ..., ...}`` as floats.
    """
    t_start = getattr(job, "start_unix", None) or time.time()
    _preload_wandb(cfg)
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from hybridpool.config import validate_config
    from hybridpool.features import FeatureCache, FeatureDataModule
    from hybridpool.module import ClassificationModule
    from hybridpool.records import RunRecord
    from hybridpool.sweep import config_hash

    # from the job's start: imports of torch, Lightning, ... (the first run of a process only) and the sweep's plan
    startup_s = time.time() - t_start
    t0 = time.perf_counter()
    container = validate_config(cfg)
    output_dir = Path(container["paths"]["output_dir"]).absolute()
    if plan is not None:
        ckpt, resume_dir = plan.ckpt, Path(plan.run_dir)
    else:
        ckpt, resume_dir = resolve_ckpt_path(
            container.get("ckpt_path"),
            output_dir,
            container["paths"]["log_dir"],
            container["task_name"],
            container,
        )
    previous: dict[str, Any] = {}
    if resume_dir is not None:
        if resume_dir.resolve() != output_dir.resolve():
            what = f"resuming the interrupted run in {resume_dir} (from {ckpt})" if ckpt else f"running in {resume_dir}"
            _say(what)
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.paths.output_dir = str(resume_dir)
            container = validate_config(cfg)
            output_dir = resume_dir.absolute()
        if plan is not None and plan.previous is not None:
            previous = dict(plan.previous)
        else:
            try:
                previous = json.loads((output_dir / "results.json").read_text())
            except (OSError, ValueError):
                previous = {}
    output_dir.mkdir(parents=True, exist_ok=True)

    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except Exception:
        overrides = []
    from pytorch_lightning.utilities import rank_zero_only

    rank_zero = rank_zero_only.rank == 0  # DDP: only global rank 0 writes the record, split and report
    chash = config_hash(container, output_dir)
    job_info: dict[str, Any] = job.describe() if job is not None else {"num": None, "overrides": overrides}
    job_info["config_hash"] = chash
    record = RunRecord(
        output_dir,
        container,
        seed=container.get("seed"),
        task_name=container.get("task_name"),
        tags=container.get("tags"),
        overrides=overrides,
        enabled=rank_zero,
    )
    record.data["config_hash"] = chash
    record.data["job"] = job_info
    record.data["timing"].update(start_unix=t_start, process_start_unix=_process_start_unix(), startup_s=startup_s)
    record.data["devices"] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if previous:
        record.data["attempts"] = int(previous.get("attempts") or 1) + 1
        record.data["previous_attempt"] = {
            k: previous.get(k) for k in ("status", "error", "started_at", "finished_at", "wall_time_s")
        }
    if ckpt is not None:
        record.data["resumed_from"] = ckpt
        record.data.setdefault("attempts", 2)
    record.write()

    loggers: list[Any] = []
    wandb_info: dict[str, Any] | None = None
    metrics: dict[str, float] = {}
    timing: dict[str, float] = {}
    trainer = None
    status_ok = False
    env_before = {k: os.environ.get(k) for k in _DDP_ENV}
    try:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        dm = _build(cfg.data)
        prepare = getattr(dm, "prepare_data", None)
        if prepare is not None:
            prepare()
        setup = getattr(dm, "setup", None)
        if setup is not None:
            setup("fit")  # an absent dataset fails here, before anything else is built
        write_split = getattr(dm, "write_split", None)
        if write_split is not None and rank_zero:
            record.update(paths={"split": str(write_split(output_dir / "split.json"))})
        pool_factory = _build(cfg.pool)
        model = _build(cfg.model)(
            pool=pool_factory, num_classes=int(dm.num_classes), in_channels=int(getattr(dm, "in_channels", 3))
        )
        features_cfg = cfg.get("features") or {}
        enabled = features_cfg.get("enabled", "auto")
        use_cache = enabled is True or (enabled == "auto" and model.frozen)
        if use_cache and not model.frozen:
            raise ValueError("features.enabled=true needs a frozen backbone: set model.freeze_backbone=true")
        fit_dm = dm
        cache = None
        if use_cache:
            cache = FeatureCache(
                root=features_cfg.get("root"),
                batch_size=int(features_cfg.get("batch_size", 128)),
                num_workers=int(features_cfg.get("num_workers", 0)),
                device=features_cfg.get("device"),
            )
            fit_dm = FeatureDataModule(
                dm, model.backbone, cache, num_workers=int(getattr(dm, "num_workers", 0))
            )
        module_kwargs = {
            **instantiate(cfg.optim, _convert_="all"),
            **OmegaConf.to_container(cfg.module or {}),
        }
        module = ClassificationModule(model=model, from_features=use_cache, **module_kwargs)
        module.run_config = container
        _restore_loader_on_resume(fit_dm, module)

        auto_tags = _auto_tags(cfg, dm, model)
        # the pool schedule with its switch epoch resolved; a bad switch_epoch fails here, before the trainer exists
        schedule = module.schedule_info(cfg.trainer.get("max_epochs"), bool(cfg.trainer.get("fast_dev_run")))
        record.update(tags=auto_tags, model=model.describe(), data=_describe(dm), schedule=schedule)
        if previous and rank_zero:
            _keep_previous_csv(output_dir, record)
        for node in (cfg.get("logger") or {}).values():
            if node is None or "_target_" not in node:
                continue
            kwargs: dict[str, Any] = {}
            if "make_wandb_logger" in str(node._target_):
                kwargs.update(_wandb_kwargs(node, container, job, previous))
                kwargs["tags"] = auto_tags
            loggers.append(instantiate(node, _convert_="all", **kwargs))
        callbacks = list(_instantiate_all(cfg.get("callbacks")).values()) + list(extra_callbacks)
        if not loggers:
            from pytorch_lightning.callbacks import LearningRateMonitor

            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        trainer_kwargs: dict[str, Any] = {}
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            trainer_kwargs["enable_checkpointing"] = False  # callbacks=none: no checkpoints at all
        trainer = instantiate(
            cfg.trainer, logger=loggers or False, callbacks=callbacks, _convert_="all", **trainer_kwargs
        )
        t_wandb = time.perf_counter()
        for lg in loggers:
            lg.log_hyperparams({**container, "job": job_info})
        for lg in loggers:
            if hasattr(lg, "hybridpool_mode"):
                _ = lg.experiment  # start the W&B run now, so its folder is known even if fit fails
                from hybridpool.loggers import wandb_run_info

                wandb_info = wandb_run_info(lg)
                record.update(wandb=wandb_info)
        timing["wandb_init_s"] = time.perf_counter() - t_wandb
        timing["setup_s"] = time.perf_counter() - t0 - timing["wandb_init_s"]
        record.data["devices"].update(
            torch_threads=_torch_threads(), world_size=int(getattr(trainer, "world_size", 1) or 1)
        )
        _route_ddp_children(trainer, output_dir, ckpt)

        t_fit = time.perf_counter()
        trainer.fit(module, datamodule=fit_dm, ckpt_path=ckpt)
        timing["fit_s"] = time.perf_counter() - t_fit
        metrics.update(_metrics(trainer.callback_metrics))
        ckpt_cb = _best_checkpoint_callback(trainer)
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if ckpt_cb is not None and getattr(ckpt_cb, "best_model_score", None) is not None:
            metrics[f"{ckpt_cb.monitor}_best"] = float(ckpt_cb.best_model_score)
        # before test(): loading the best checkpoint restores the callback's older state
        paths = _output_paths(output_dir, trainer, loggers, callbacks, cache)
        t_test = time.perf_counter()
        if cfg.get("test", True) and not trainer.interrupted:
            results = trainer.test(module, datamodule=fit_dm, ckpt_path=best or None, verbose=False)
            for r in results:
                metrics.update(_metrics(r))
        timing["test_s"] = time.perf_counter() - t_test
        if cache is not None:
            paths["feature_cache_events"] = [f"{e.kind}:{e.split}:{e.key[:12]}" for e in cache.events]
        metrics["epochs"] = float(trainer.current_epoch)
        metrics["global_step"] = float(trainer.global_step)
        metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}
        if loggers and rank_zero:  # other ranks hold a dummy W&B experiment
            summary = {f"final/{k}": v for k, v in metrics.items() if k.startswith(("val/", "test/", "test_"))}
            for lg in loggers:
                if hasattr(lg, "hybridpool_mode"):
                    lg.experiment.summary.update({**summary, "status": "completed"})
        record.data["timing"].update(timing)
        status = "interrupted" if trainer.interrupted else "completed"
        if status == "completed":
            record.complete(metrics, paths=paths, wandb=wandb_info)
            status_ok = True
        else:
            record.fail(
                KeyboardInterrupt("training interrupted"), metrics=metrics, paths=paths, wandb=wandb_info
            )
        return metrics
    except BaseException as err:
        record.data["timing"].update(timing)
        if not status_ok and record.data["status"] == "running":
            record.fail(err, metrics=metrics, wandb=wandb_info)
            if rank_zero:
                wandb_info = _wandb_record_failure(record, cfg, container, job, previous, wandb_info)
        with contextlib.suppress(AttributeError, TypeError):
            err._hybridpool_record = str(record.path)  # type: ignore[union-attr]
        raise
    finally:
        t_finish = time.perf_counter()
        _finish_wandb(loggers, ok=status_ok)
        if status_ok and loggers and rank_zero:
            record.data["timing"]["finish_s"] = time.perf_counter() - t_finish  # W&B finish and upload
            record.write()
        _reap_ddp_children(trainer, ok=status_ok)
        _restore_ddp_env(env_before)
        if rank_zero:
            _report(record, time.perf_counter() - t0)


def _build(node: DictConfig) -> Any:
    """``instantiate(node)``, re-raising the constructor's own error (not Hydra's wrapper) when there is one."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError, OSError, ImportError, KeyError)):
            raise cause from None
        raise


def _restore_loader_on_resume(datamodule: Any, module: Any) -> None:
    """When resuming, hand the training loader's generator its saved state as soon as the loader is built.

    Lightning creates the first training iterator (which draws from the loader's generator) before any epoch
    hook runs, so the module cannot do it later; wrapping the datamodule's ``train_dataloader`` is the
    earliest point where the loader exists.
    """
    original = getattr(datamodule, "train_dataloader", None)
    if original is None:
        return

    def train_dataloader() -> Any:
        loader = original()
        module.restore_loader_state(loader)
        return loader

    datamodule.train_dataloader = train_dataloader


def _keep_previous_csv(output_dir: Path, record: Any) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``; keep the interrupted attempt's rows."""
    for old in output_dir.glob("**/metrics.csv"):
        if "wandb" in old.parts:
            continue
        n = 1
        while (kept := old.with_name(f"metrics.attempt{n}.csv")).exists():
            n += 1
        old.rename(kept)
        record.update(paths={"metrics_csv_previous": str(kept)})


def _describe(dm: Any) -> Any:
    describe = getattr(dm, "describe", None)
    if describe is None:
        return {"class": type(dm).__name__}
    try:
        return describe()
    except Exception as err:  # the record must not fail because of a description
        return {"class": type(dm).__name__, "describe_error": str(err)}


def _best_checkpoint_callback(trainer: Any) -> Any:
    """The ModelCheckpoint that keeps the best model (it has a ``monitor``), else Lightning's first one, else None.

    Chosen by role, not by position: ``callbacks.last_checkpoint`` (no monitor, last.ckpt every epoch) may come
    first in a config.
    """
    monitored = [cb for cb in trainer.checkpoint_callbacks if cb.monitor is not None]
    return monitored[0] if monitored else trainer.checkpoint_callback


def _output_paths(
    output_dir: Path, trainer: Any, loggers: list[Any], callbacks: list[Any], cache: Any
) -> dict:
    from hybridpool.callbacks import AttentionMaps

    paths: dict[str, Any] = {"output_dir": str(output_dir)}
    ckpt_cb = _best_checkpoint_callback(trainer)
    if ckpt_cb is not None:
        paths["checkpoint_dir"] = ckpt_cb.dirpath
        paths["best_checkpoint"] = ckpt_cb.best_model_path or None
        # the latest checkpoint: the monitor-free ModelCheckpoint that writes last.ckpt every epoch, if any
        latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None]
        paths["last_checkpoint"] = next((p for p in latest if p), None) or ckpt_cb.last_model_path or None
    for lg in loggers:
        if type(lg).__name__ == "CSVLogger":
            paths["metrics_csv"] = str(Path(lg.log_dir) / "metrics.csv")
    for cb in callbacks:
        if isinstance(cb, AttentionMaps) and cb.saved is not None:
            paths["attention_maps"] = str(cb.saved)
    if cache is not None:
        paths["feature_cache"] = str(cache.dir)
        paths["feature_cache_events"] = [f"{e.kind}:{e.split}:{e.key[:12]}" for e in cache.events]
    return paths


def _finish_wandb(loggers: list[Any], ok: bool) -> None:
    if "wandb" not in sys.modules:
        return
    import wandb

    try:
        if wandb.run is not None:
            wandb.finish(exit_code=0 if ok else 1)
    except Exception as err:  # never hide the run's own error behind a W&B one
        _say(f"warning: wandb.finish() failed: {err}")
    for lg in loggers:
        if hasattr(lg, "_experiment"):
            lg._experiment = None


def _report(record: Any, seconds: float) -> None:
    d = record.data
    m = d.get("metrics") or {}
    shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("test/acc", "val/acc", "test/acc_macro") if k in m)
    _say(f"run {d['status']} in {seconds:.1f} s" + (f": {shown}" if shown else ""))
    paths = d.get("paths") or {}
    _say(f"  results:      {record.path}")
    if paths.get("metrics_csv"):
        _say(f"  metrics CSV:  {paths['metrics_csv']}")
    if paths.get("checkpoint_dir"):
        best = Path(paths["best_checkpoint"]).name if paths.get("best_checkpoint") else "-"
        _say(f"  checkpoints:  {paths['checkpoint_dir']} (best: {best}, last: last.ckpt)")
    if paths.get("attention_maps"):
        _say(f"  attention:    {paths['attention_maps']}")
    if paths.get("feature_cache"):
        _say(
            f"  feature cache: {paths['feature_cache']} ({', '.join(paths.get('feature_cache_events', []))})"
        )
    w = d.get("wandb") or {}
    if w.get("mode") == "online":
        _say(f"  W&B:          {w.get('url') or w.get('dir')}")
    elif w.get("mode") == "offline":
        _say(f"  W&B (offline, {w.get('reason')}): {w.get('dir')}")
        _say(f"  upload with:  {w.get('sync_command')}")
    if d.get("error"):
        _say(f"  error:        {d['error']}")


# --------------------------------------------------------------------------------------------- sweeps, DDP
#: environment variables Lightning's DDP launcher sets in the launching process (restored after each run, so
#: the next job of a sweep running in the same process does not think it is a DDP child)
_DDP_PARENT_ENV = "HYBRIDPOOL_DDP_PARENT_PID"
_DDP_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    _DDP_PARENT_ENV,
)


def _process_start_unix() -> float | None:
    """When this process started (Unix time, from /proc; ``None`` elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _torch_threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:
        return None


def _hydra_quote(value: Any) -> str:
    """``value`` as a single-quoted Hydra override value."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _route_ddp_children(trainer: Any, output_dir: Path, ckpt: str | None) -> None:
    """Make Lightning's DDP child processes join this run instead of starting Hydra runs of their own.

    Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running the script with the parent's ``sys.argv``
    plus ``hydra.run.dir`` (Lightning's ``_hydra_subprocess_cmd``). Inside a multirun that re-runs the whole
    sweep (``-m`` and the sweep lists are in ``sys.argv``) into the wrong folder, and under a launcher worker
    (joblib, Ray) ``sys.argv`` is not ours at all. The children are started instead as single runs of this
    job's own overrides, in this run's folder, without writing ``.hydra/`` (and from the same checkpoint when
    resuming). Only the global rank 0 writes the record and the W&B run.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd
        from pytorch_lightning.strategies.launchers import subprocess_script
    except ImportError:
        return
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if not isinstance(launcher, subprocess_script._SubprocessScriptLauncher) or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    task_overrides = [str(o) for o in hc.overrides.task if not str(o).startswith(("ckpt_path=", "+ckpt_path="))]
    if ckpt is not None:
        task_overrides.append(f"ckpt_path={_hydra_quote(ckpt)}")
    config_args: list[str] = []
    for src in hc.runtime.get("config_sources") or []:
        if src.get("provider") == "command-line" and src.get("schema") == "file":
            config_args += ["--config-dir", str(src.path)]
    try:
        cwd = get_original_cwd()
    except ValueError:
        cwd = os.getcwd()

    def command(local_rank: int) -> tuple[list[str], str]:
        return (
            [
                sys.executable,
                "-m",
                "hybridpool.train",
                *config_args,
                *task_overrides,
                f"hydra.run.dir={_hydra_quote(output_dir)}",
                f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null",
            ],
            cwd,
        )

    subprocess_script._hydra_subprocess_cmd = command
    os.environ[_DDP_PARENT_ENV] = str(os.getpid())  # the children die with this process (_die_with_ddp_parent)


def _die_with_ddp_parent() -> None:
    """In a DDP child (rank > 0) started by :func:`_route_ddp_children`: get SIGKILLed when the launching
    process dies (killed sweep), instead of waiting forever in a collective as an orphan."""
    parent = os.environ.get(_DDP_PARENT_ENV)
    if not parent or os.environ.get("LOCAL_RANK", "0") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # already gone before the signal was armed
        os._exit(1)


def _reap_ddp_children(trainer: Any, ok: bool) -> None:
    """After a DDP run on rank 0: wait for the other ranks to exit (kill them on failure) and disarm Lightning's
    child-process observer, which would otherwise SIGKILL this process, and with it the rest of a sweep, when
    a finished run's child exits non-zero later."""
    import threading

    procs = list(getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None) or [])
    if not procs:
        return
    for t in threading.enumerate():
        if t.name == "child-process-observer":
            t._run = lambda: True  # type: ignore[attr-defined]
    deadline = time.monotonic() + (120.0 if ok else 5.0)
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            p.kill()
            p.wait()
    bad = [p.returncode for p in procs if p.returncode not in (0, None)]
    if bad:
        _say(f"warning: DDP child process(es) exited with {bad}")


def _restore_ddp_env(before: dict[str, str | None]) -> None:
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0 or before.get("LOCAL_RANK") is not None:
        return  # a DDP child (or a process started by an outer launcher) keeps its environment
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:
        _say(f"warning: could not close the process group: {err}")


def _wandb_kwargs(node: Any, container: dict[str, Any], job: Any, previous: dict[str, Any]) -> dict[str, Any]:
    """W&B run id (the earlier attempt's, so a resumed job stays one run), group and name of a sweep job."""
    kwargs: dict[str, Any] = {}
    wid = (previous.get("wandb") or {}).get("id") if previous else None
    if wid and node.get("id") is None:
        kwargs["id"] = wid
    if job is not None:
        if node.get("group") in (None, container.get("task_name")):
            kwargs["group"] = job.wandb_group
        if node.get("name") is None:
            name = f"#{job.num} " + " ".join(job.overrides) if job.num is not None else " ".join(job.overrides)
            kwargs["name"] = name[:128]
    return kwargs


def _wandb_record_failure(
    record: Any, cfg: DictConfig, container: dict[str, Any], job: Any, previous: dict[str, Any], info: Any
) -> Any:
    """Put a failed run's error and traceback into its W&B run; start one if the failure came before it.

    Best effort: W&B trouble never hides the run's own error.
    """
    try:
        failure = {
            "status": record.data.get("status"),
            "error": record.data.get("error"),
            "traceback": (record.data.get("traceback") or "")[-4000:],
        }
        import wandb

        if wandb.run is None:
            node = next(
                (
                    n
                    for n in (cfg.get("logger") or {}).values()
                    if n is not None and "make_wandb_logger" in str(n.get("_target_", ""))
                ),
                None,
            )
            if node is None:
                return info
            from hydra.utils import instantiate

            from hybridpool.loggers import wandb_run_info

            lg = instantiate(node, _convert_="all", **_wandb_kwargs(node, container, job, previous))
            lg.log_hyperparams({**container, "job": record.data.get("job")})
            _ = lg.experiment
            info = wandb_run_info(lg)
            record.update(wandb=info)
        if wandb.run is not None:
            wandb.run.summary.update(failure)
    except Exception as err:
        _say(f"warning: could not record the failure in W&B: {err}")
    return info


def _record_early_failure(cfg: DictConfig, job: Any, err: BaseException) -> None:
    """A sweep job that failed before :func:`train` wrote its record (a bad config): write a failed one."""
    from hybridpool.records import RunRecord

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    record = RunRecord(
        job.output_dir,
        container,
        seed=container.get("seed"),
        task_name=container.get("task_name"),
        overrides=job.overrides,
    )
    record.data["job"] = job.describe()
    record.fail(err)
    info = _wandb_record_failure(record, cfg, container, job, {}, None)
    if info is not None:
        _finish_wandb([], ok=False)


def _run_sweep_job(cfg: DictConfig, job: Any) -> float | None:
    """One job of a multirun: skip it if done, resume it if interrupted, run it otherwise; never raise.

    An exception is recorded (``results.json`` and W&B: status ``failed`` with the traceback) and the job
    returns ``None`` so that every launcher goes on with the other jobs; the sweep's summary lists it and
    ``hybridpool-train`` exits with status 1 at the end.
    """
    import traceback

    job.start_unix = time.time()
    from hybridpool.config import validate_config
    from hybridpool.sweep import config_hash, job_lock, plan_job

    key = cfg.get("optimized_metric")
    label = f"job {job.num}" if job.num is not None else "job"
    try:
        job.task_name = str(cfg.get("task_name") or "") or None
        try:  # the resolved config, as validate_config gives it, without importing torch: a skip stays cheap
            container = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(container, dict)
            container.pop("hydra", None)
        except Exception:
            container = validate_config(cfg)  # raises the explanatory ConfigError
        output_dir = Path(container["paths"]["output_dir"]).absolute()
        chash = config_hash(container, output_dir)
        plan = plan_job(chash, output_dir, job.sweep_dir)
        with job_lock(plan.run_dir) as acquired:
            if not acquired:
                _say(f"{label}: {plan.run_dir} is being run by another process; leaving it to that one")
                return None
            plan = plan_job(chash, output_dir, job.sweep_dir)  # again, under the lock
            if plan.action == "skip":
                _say(f"{label} skipped: {plan.reason}")
                value = ((plan.previous or {}).get("metrics") or {}).get(key) if key else None
                return float(value) if value is not None else None
            if plan.action == "resume" or plan.previous is not None:
                _say(f"{label}: {plan.reason}")
            metrics = train(cfg, job=job, plan=plan)
        return metrics.get(key) if key else None
    except Exception as err:
        _say(f"{label} FAILED: {type(err).__name__}: {err}")
        traceback.print_exc()
        if getattr(err, "_hybridpool_record", None) is None:
            try:
                _record_early_failure(cfg, job, err)
            except Exception as record_err:
                _say(f"warning: could not write the failed record: {record_err}")
        return None


@hydra.main(version_base="1.3", config_path=_config_path_for_main(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hybridpool.sweep import current_job

    job = current_job()
    if job is not None:  # a multirun job: a failure is recorded and the sweep goes on
        return _run_sweep_job(cfg, job)
    metrics = train(cfg)  # a single run: a failure is recorded, then raised (exit status 1)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


#: what ``hybridpool-train`` runs when given no arguments at all
def main() -> None:
    """Console script ``hybridpool-train``; with no arguments it runs the main job (train.yaml's defaults).

    A multirun ends with the sweep's summary and exits with status 1 when any job failed.
    """
    if _config_path_for_main() is None:
        config_dir()  # raises the explanatory FileNotFoundError
    _die_with_ddp_parent()
    _hydra_main()
    from hybridpool.sweep import last_summary

    summary = last_summary()
    if summary is not None and summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
