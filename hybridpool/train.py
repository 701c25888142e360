"""``hybridpool-train``: the Hydra entry point. compose -> instantiate -> fit/test -> one record per run.

Run ``hybridpool-train`` (or ``python -m hybridpool.train``) with no arguments for the main job (train.yaml's
defaults, also named ``experiment=main``: a synthetic task, the small CNN, the scalar hybrid pool; no download,
about two minutes on a 2-core CPU), or choose groups and keys on the command line::

    hybridpool-train pool=gem data=fashion_mnist trainer.max_epochs=5
    hybridpool-train -m pool=avg,gem,hybrid_scalar seed=0,1,2
    hybridpool-train experiment=frozen_mobilenet
    hybridpool-train ckpt_path=last            # resume the interrupted run with the same config

Every run writes into its Hydra output folder: ``results.json`` (:mod:`hybridpool.records`),
``csv/metrics.csv``, ``checkpoints/{best-*,last}.ckpt``, ``attention_maps/attention_maps.png``,
``split.json``, ``wandb/`` (offline runs) and ``.hydra/`` (the composed config and overrides). :func:`train`
is the same run as a function (returns the metric dict; sweepers use it) and :func:`compose_config`
composes a config without the command line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

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
    c = {k: v for k, v in config.items() if k not in ("ckpt_path", "paths")}
    return json.dumps(c, sort_keys=True, default=str).replace(str(output_dir), "<OUTPUT_DIR>")


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


def train(cfg: DictConfig, extra_callbacks: Sequence[Any] = ()) -> dict[str, float]:
    """Train and evaluate one run described by ``cfg``; return its final metrics.

    Writes ``results.json`` (status ``running`` at start, then ``completed``/``failed``/``interrupted``) and
    closes W&B in a ``finally`` so that each job of a multirun is its own W&B run, success or failure.

    Args:
        cfg: a composed ``train.yaml`` (from the Hydra app or :func:`compose_config`).
        extra_callbacks: Lightning callbacks added to those of ``cfg.callbacks``.

    Returns:
        ``{"val/acc": ..., "val/acc_best": ..., "test/acc": ..., ...}`` as floats.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from hybridpool.config import validate_config
    from hybridpool.features import FeatureCache, FeatureDataModule
    from hybridpool.module import ClassificationModule
    from hybridpool.records import RunRecord

    t0 = time.perf_counter()
    container = validate_config(cfg)
    output_dir = Path(container["paths"]["output_dir"]).absolute()
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
            _say(f"resuming the interrupted run in {resume_dir} (from {ckpt})")
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.paths.output_dir = str(resume_dir)
            container = validate_config(cfg)
            output_dir = resume_dir.absolute()
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
    record = RunRecord(
        output_dir,
        container,
        seed=container.get("seed"),
        task_name=container.get("task_name"),
        tags=container.get("tags"),
        overrides=overrides,
        enabled=rank_zero,
    )
    if ckpt is not None:
        record.data["resumed_from"] = ckpt
        record.data["attempts"] = int(previous.get("attempts", 1)) + 1 if previous else 2
    record.write()

    loggers: list[Any] = []
    wandb_info: dict[str, Any] | None = None
    metrics: dict[str, float] = {}
    trainer = None
    status_ok = False
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
        record.update(tags=auto_tags, model=model.describe(), data=_describe(dm))
        if ckpt is not None and resume_dir is not None and rank_zero:
            _keep_previous_csv(output_dir, record)
        for node in (cfg.get("logger") or {}).values():
            if node is None or "_target_" not in node:
                continue
            kwargs: dict[str, Any] = {}
            if "make_wandb_logger" in str(node._target_):
                kwargs["tags"] = auto_tags
                wid = (previous.get("wandb") or {}).get("id") if previous else None
                if wid and node.get("id") is None:
                    kwargs["id"] = wid
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
        for lg in loggers:
            lg.log_hyperparams(container)
        for lg in loggers:
            if hasattr(lg, "hybridpool_mode"):
                _ = lg.experiment  # start the W&B run now, so its folder is known even if fit fails
                from hybridpool.loggers import wandb_run_info

                wandb_info = wandb_run_info(lg)
                record.update(wandb=wandb_info)

        trainer.fit(module, datamodule=fit_dm, ckpt_path=ckpt)
        metrics.update(_metrics(trainer.callback_metrics))
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if ckpt_cb is not None and getattr(ckpt_cb, "best_model_score", None) is not None:
            metrics[f"{ckpt_cb.monitor}_best"] = float(ckpt_cb.best_model_score)
        # before test(): loading the best checkpoint restores the callback's older state
        paths = _output_paths(output_dir, trainer, loggers, callbacks, cache)
        if cfg.get("test", True) and not trainer.interrupted:
            results = trainer.test(module, datamodule=fit_dm, ckpt_path=best or None, verbose=False)
            for r in results:
                metrics.update(_metrics(r))
        if cache is not None:
            paths["feature_cache_events"] = [f"{e.kind}:{e.split}:{e.key[:12]}" for e in cache.events]
        metrics["epochs"] = float(trainer.current_epoch)
        metrics["global_step"] = float(trainer.global_step)
        metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}
        if loggers:
            summary = {f"final/{k}": v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
            for lg in loggers:
                if hasattr(lg, "hybridpool_mode"):
                    lg.experiment.summary.update(summary)
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
        if not status_ok and record.data["status"] == "running":
            record.fail(err, metrics=metrics, wandb=wandb_info)
        raise
    finally:
        _finish_wandb(loggers, ok=status_ok)
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


def _output_paths(
    output_dir: Path, trainer: Any, loggers: list[Any], callbacks: list[Any], cache: Any
) -> dict:
    from hybridpool.callbacks import AttentionMaps

    paths: dict[str, Any] = {"output_dir": str(output_dir)}
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None:
        paths["checkpoint_dir"] = ckpt_cb.dirpath
        paths["best_checkpoint"] = ckpt_cb.best_model_path or None
        paths["last_checkpoint"] = ckpt_cb.last_model_path or None
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


@hydra.main(version_base="1.3", config_path=_config_path_for_main(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


#: what ``hybridpool-train`` runs when given no arguments at all
def main() -> None:
    """Console script ``hybridpool-train``; with no arguments it runs the main job (train.yaml's defaults)."""
    if _config_path_for_main() is None:
        config_dir()  # raises the explanatory FileNotFoundError
    _hydra_main()


if __name__ == "__main__":
    main()
