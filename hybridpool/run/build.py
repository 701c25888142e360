"""Build everything one run needs from its config: data, model, Lightning module, loggers, callbacks, trainer.

Each builder takes config nodes (``_target_`` + the constructor's arguments) and returns objects; nothing here
fits, writes a record or talks to W&B beyond creating the logger. :func:`build_run` is the whole recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hybridpool.run.wandb import WandbSession, wandb_logger_nodes

__all__ = ["BuiltRun", "build_run", "instantiate_node", "pool_identity", "run_tags"]


def instantiate_node(node: DictConfig) -> Any:
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


def _hydra_choices() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    except Exception:
        return {}


def pool_identity(pool_factory: Any, pool: Any) -> dict[str, Any]:
    """The pool's identity for the record's ``pool`` field: ``{"spec": <create_pool spec>, ...}``.

    From the factory's ``describe()`` (the configs in ``conf/pool/`` build through specs); a pool given
    otherwise (a module, a class partial) is named by its class.
    """
    describe = getattr(pool_factory, "describe", None)
    if callable(describe):
        return dict(describe())
    if isinstance(pool_factory, str):
        return {"spec": pool_factory}
    return {"spec": None, "class": type(pool).__name__}


def run_tags(cfg: DictConfig, dm: Any, model: Any, pool: dict[str, Any]) -> list[str]:
    """The run's tags: ``cfg.tags``, then ``pool:``, ``mixing:``, ``data:``, ``backbone:`` (``records.TAG_KEYS``)."""
    tags = [str(t) for t in (cfg.get("tags") or [])]
    choices = _hydra_choices()
    tags.append(f"pool:{pool.get('spec') or choices.get('pool') or type(model.pool).__name__}")
    mixing = getattr(model.pool, "mixing", None) or cfg.pool.get("mixing")
    if mixing:
        tags.append(f"mixing:{mixing}")
    tags.append(f"data:{getattr(dm, 'name', choices.get('data', type(dm).__name__))}")
    bb = model.backbone
    tags.append(f"backbone:{getattr(bb, 'name', type(bb).__name__)}")
    if model.frozen:
        tags.append("frozen-backbone")
    return list(dict.fromkeys(tags))


def describe_datamodule(dm: Any) -> Any:
    """``dm.describe()`` for the record, or its class name (a description never fails a run)."""
    describe = getattr(dm, "describe", None)
    if describe is None:
        return {"class": type(dm).__name__}
    try:
        return describe()
    except Exception as err:
        return {"class": type(dm).__name__, "describe_error": str(err)}


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



@dataclass
class BuiltRun:
    """What :func:`build_run` made for one run.

    ``datamodule`` is the data set's; ``fit_datamodule`` is what the trainer fits on (the same, or the feature
    cache over it when the backbone is frozen, with ``cache`` set).
    """

    datamodule: Any
    fit_datamodule: Any
    model: Any
    module: Any
    cache: Any
    pool: dict[str, Any]
    tags: list[str]
    loggers: list[Any]
    callbacks: list[Any]
    trainer: Any


def build_data(cfg: DictConfig) -> Any:
    """The datamodule, prepared and set up for fit: an absent dataset fails here, before anything else is built."""
    dm = instantiate_node(cfg.data)
    for step, args in (("prepare_data", ()), ("setup", ("fit",))):
        fn = getattr(dm, step, None)
        if fn is not None:
            fn(*args)
    return dm


def build_model(cfg: DictConfig, dm: Any, container: dict[str, Any]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """``(model, module, fit datamodule, feature cache or None, pool identity)`` for the datamodule ``dm``."""
    from hydra.utils import instantiate

    from hybridpool.data.features import FeatureCache, FeatureDataModule
    from hybridpool.run.module import ClassificationModule

    pool_factory = instantiate_node(cfg.pool)
    model = instantiate_node(cfg.model)(
        pool=pool_factory, num_classes=int(dm.num_classes), in_channels=int(getattr(dm, "in_channels", 3))
    )
    features = cfg.get("features") or {}
    enabled = features.get("enabled", "auto")
    use_cache = enabled is True or (enabled == "auto" and model.frozen)
    if use_cache and not model.frozen:
        raise ValueError("features.enabled=true needs a frozen backbone: set model.freeze_backbone=true")
    fit_dm, cache = dm, None
    if use_cache:
        cache = FeatureCache(
            root=features.get("root"),
            batch_size=int(features.get("batch_size", 128)),
            num_workers=int(features.get("num_workers", 0)),
            device=features.get("device"),
        )
        fit_dm = FeatureDataModule(dm, model.backbone, cache, num_workers=int(getattr(dm, "num_workers", 0)))
    module_kwargs = {**instantiate(cfg.optim, _convert_="all"), **OmegaConf.to_container(cfg.module or {})}
    module = ClassificationModule(model=model, from_features=use_cache, **module_kwargs)
    module.run_config = container
    _restore_loader_on_resume(fit_dm, module)
    return model, module, fit_dm, cache, pool_identity(pool_factory, model.pool)


def build_loggers(cfg: DictConfig, session: WandbSession, tags: list[str]) -> list[Any]:
    """The run's loggers; W&B loggers get the session's run id, group, name and the run's tags."""
    from hydra.utils import instantiate

    wandb_nodes = {id(n) for n in wandb_logger_nodes(cfg)}
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None or "_target_" not in node:
            continue
        kwargs = session.logger_kwargs(node, tags) if id(node) in wandb_nodes else {}
        loggers.append(instantiate(node, _convert_="all", **kwargs))
    return loggers


def build_callbacks(cfg: DictConfig, extra: list[Any], loggers: list[Any]) -> list[Any]:
    """``cfg.callbacks`` (each node with a ``_target_``) + ``extra``; no learning-rate monitor without a logger;
    a one-line parameter summary unless the config brings its own ``ModelSummary`` or turns the summary off; the
    time left of a long run without a progress bar (:class:`~hybridpool.run.callbacks.TimeLeft`) unless the config
    brings its own. Both only print, so they are not in the config (nor in its hash: a sweep still skips the runs
    it recorded before)."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelSummary

    from hybridpool.run.callbacks import ParameterSummary, TimeLeft

    nodes = cfg.get("callbacks") or {}
    callbacks = [instantiate(n, _convert_="all") for n in nodes.values() if n is not None and "_target_" in n]
    callbacks += list(extra)
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    wants_summary = cfg.trainer.get("enable_model_summary", True) is not False
    if wants_summary and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(ParameterSummary())  # one line instead of Lightning's table
    if not any(isinstance(c, TimeLeft) for c in callbacks):
        callbacks.append(TimeLeft())
    return callbacks


def build_run(
    cfg: DictConfig, container: dict[str, Any], session: WandbSession, extra_callbacks: list[Any]
) -> BuiltRun:
    """Data, model, module, loggers, callbacks and trainer of the run ``cfg`` (seeded by the caller)."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    dm = build_data(cfg)
    model, module, fit_dm, cache, pool = build_model(cfg, dm, container)
    tags = run_tags(cfg, dm, model, pool)
    loggers = build_loggers(cfg, session, tags)
    callbacks = build_callbacks(cfg, extra_callbacks, loggers)
    trainer_kwargs: dict[str, Any] = {}
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        trainer_kwargs["enable_checkpointing"] = False  # callbacks=none: no checkpoints at all
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, _convert_="all", **trainer_kwargs)
    return BuiltRun(dm, fit_dm, model, module, cache, pool, tags, loggers, callbacks, trainer)
