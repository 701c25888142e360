"""Start-of-run schema check of a composed training config.

Hydra already refuses to override a key that does not exist (``model.dropuot=0.1``), but a typo inside a YAML
file (an experiment bundle, a user's own group file) or an appended ``+key=value`` would only surface deep
inside a constructor, or never. :func:`validate_config` checks the whole config before anything is built:

- every node with a ``_target_`` against the signature of the class or function it names (keys = constructor
  arguments), recursively; a ``hybridpool.pooling.pool_factory`` node (``conf/pool/``) against the constructor of
  the layer its ``spec`` names, and an unknown spec lists the known ones;
- the plain nodes (top level, ``paths``, ``features``, ``optim``, ``module``) against their known keys;
- value ranges: those a class owns come from its construction-free ``check_args`` (the check its constructor
  raises from: the datamodules' batch size, fractions, normalisation, ...; the classifier's dropout;
  ClassificationModule's multipliers, schedule, label smoothing, ...), for every ``_target_`` node that has one
  and for ``optim``/``module``; the others here: positive learning rate, non-negative weight decay (the torch
  optimizer), positive epochs and feature batch size, integer seed;
- the study switches of ``module``: ``pool_schedule`` (``freeze_and_train`` needs a HybridPool with weighted
  mixing and a ``switch_epoch`` in ``[1, trainer.max_epochs)``), ``robustness`` (``{shift, grid}``, images only:
  not with the feature cache), and ``pool.spatial_size`` of ``pool=flatten`` when it is set.

All problems are reported together in one :class:`ConfigError` (a ``ValueError``) naming each bad key by its
full dotted path, with a "did you mean" suggestion and the accepted keys.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from hybridpool.arguments import accepted_arguments, number

__all__ = ["GROUPS", "TOP_LEVEL_KEYS", "ConfigError", "validate_config"]

#: config groups of conf/ that become top-level nodes
GROUPS = ("paths", "data", "model", "pool", "optim", "trainer", "logger", "callbacks")
#: plain top-level keys of conf/train.yaml
TOP_LEVEL_KEYS = ("task_name", "tags", "seed", "ckpt_path", "test", "optimized_metric", "features", "module")
PATHS_KEYS = ("data_dir", "log_dir", "cache_dir", "output_dir")
FEATURES_KEYS = ("enabled", "root", "batch_size", "num_workers", "device")
#: ClassificationModule arguments that belong to optim/ (the rest, except model, go under module:)
OPTIM_KEYS = (
    "optimizer",
    "scheduler",
    "warmup_epochs",
    "min_lr_ratio",
    "step_size",
    "gamma",
    "backbone_lr_mult",
    "head_lr_mult",
    "pool_lr_mult",
    "pool_weight_decay",
    "pool_weights",
)
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class ConfigError(ValueError):
    """A composed config has unknown keys or invalid values; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


def _suggest(key: str, accepted: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _unknown(path: str, key: str, accepted: Iterable[str], where: str) -> str:
    accepted = sorted(accepted)
    return (
        f"{path}: unknown key '{key}' for {where}; {_suggest(key, accepted)}accepted: {', '.join(accepted)}"
    )


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _locate(target: str) -> Any:
    from hydra.utils import get_object

    return get_object(target)


def _signature_keys(obj: Any) -> tuple[set[str], bool]:
    """Parameter names of ``obj``'s constructor/call, and whether it also takes other keywords (``**kwargs``
    that do not go to a base constructor, see :func:`hybridpool.arguments.accepted_arguments`)."""
    names, var_kw = accepted_arguments(obj)
    return set(names), var_kw


def _check_arg_ranges(obj: Any, node: Mapping[str, Any], path: str, problems: list[str]) -> None:
    """The range problems ``obj.check_args(**arguments)`` finds (a static- or classmethod of the class, the one
    its constructor raises from), each at ``<path>.<argument>``. The arguments are the node's values over the
    constructor's defaults; values not known yet (``???``) and nested ``_target_`` nodes are left out."""
    if not isinstance(inspect.getattr_static(obj, "check_args", None), (staticmethod, classmethod)):
        return
    params, _ = accepted_arguments(obj)
    args = {name: p.default for name, p in params.items() if p.default is not p.empty}
    for key, value in node.items():
        if key in HYDRA_KEYS or value == "???" or (isinstance(value, Mapping) and "_target_" in value):
            args.pop(str(key), None)
        else:
            args[str(key)] = value
    for err in obj.check_args(**args):
        problems.append(err.at(_join(path, err.arg)))


def _pool_spec_keys(obj: Any, node: Mapping[str, Any], path: str, problems: list[str]) -> set[str] | None:
    """For a ``hybridpool.pooling.pool_factory`` node, the keys it takes: ``spec`` and the constructor arguments of
    the layer its ``spec`` names (``None`` for any other target). An unknown or malformed spec, or an argument given
    both in the spec and as a key, is a problem at ``<path>.spec``."""
    from hybridpool.pooling import pool_config_keys, pool_factory

    if obj is not pool_factory:
        return None
    spec = node.get("spec")
    if spec is None:
        problems.append(f"{_join(path, 'spec')}: missing; name the pool, e.g. spec: gem (see conf/pool/)")
        return {str(k) for k in node}
    try:
        keys = set(pool_config_keys(spec))
    except (TypeError, ValueError) as err:
        problems.append(f"{_join(path, 'spec')}: {err}")
        return {str(k) for k in node}
    if all(k in keys or k in HYDRA_KEYS for k in node):
        try:
            pool_factory(**{str(k): v for k, v in node.items() if k not in HYDRA_KEYS})
        except (TypeError, ValueError) as err:
            problems.append(f"{_join(path, 'spec')}: {err}")
    return keys


def _pool_layer(node: Mapping[str, Any]) -> tuple[type | None, Mapping[str, Any]]:
    """The layer class a pool node builds and its constructor arguments (a ``pool_factory`` node: through its spec)."""
    from hybridpool.pooling import pool_factory

    if not node.get("_target_"):
        return None, node
    try:
        obj = _locate(str(node.get("_target_")))
    except Exception:
        return None, node
    if obj is pool_factory:
        try:
            factory = pool_factory(**{str(k): v for k, v in node.items() if k not in HYDRA_KEYS})
        except (TypeError, ValueError):  # reported by _pool_spec_keys
            return None, node
        return factory.layer_class, factory.arguments
    return (obj if isinstance(obj, type) else None), node


def _check_targets(node: Any, path: str, problems: list[str]) -> None:
    """Recursively check every ``_target_`` node under ``node`` against its constructor's signature."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None:
            try:
                obj = _locate(str(target))
            except Exception as err:
                problems.append(f"{_join(path, '_target_')}: cannot import '{target}' ({err})")
                obj = None
            if obj is not None:
                names, var_kw = _signature_keys(obj)
                where = str(target)
                spec_keys = _pool_spec_keys(obj, node, path, problems)
                if spec_keys is not None:  # a pool_factory node: the keys of its spec's layer
                    names, var_kw, where = spec_keys, False, f"pool spec {node.get('spec')!r}"
                if not var_kw:
                    for key in node:
                        if key in HYDRA_KEYS:
                            continue
                        if key not in names:
                            problems.append(_unknown(_join(path, str(key)), str(key), names, where))
                _check_arg_ranges(obj, node, path, problems)
        for key, value in node.items():
            if key not in HYDRA_KEYS:
                _check_targets(value, _join(path, str(key)), problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, f"{path}[{i}]", problems)


def _check_keys(node: Any, path: str, accepted: Iterable[str], where: str, problems: list[str]) -> None:
    if node is None:
        return
    if not isinstance(node, Mapping):
        problems.append(f"{path}: expected a mapping of {where} keys, got {node!r}")
        return
    accepted = set(accepted)
    for key in node:
        if key not in accepted:
            problems.append(_unknown(_join(path, str(key)), str(key), accepted, where))


def _check_range(problems: list[str], path: str, value: Any, *bounds: float, required: bool = False, **kw: Any) -> None:
    """A range checked here, of a value no hybridpool constructor owns (torch's optimizer, Lightning's trainer, ...):
    :func:`hybridpool.arguments.number` (``bounds`` and ``kw``) at ``path``; ``None`` passes unless ``required``."""
    problem = number(path, value, *bounds, optional=not required, **kw)
    if problem is not None:
        problems.append(problem.at(path))


def _mapping(container: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    node = container.get(key)
    return node if isinstance(node, Mapping) else {}


def _check_study_switches(container: Mapping[str, Any], problems: list[str]) -> None:
    """``module.pool_schedule``/``switch_epoch``, ``module.robustness`` and ``pool.spatial_size`` (Flatten)."""
    from hybridpool.pooling import Flatten, HybridPool
    from hybridpool.pooling.flatten import _spatial_pair
    from hybridpool.run.robustness import check_robustness
    from hybridpool.run.schedule import POOL_SCHEDULES, WEIGHTED_MIXING, resolve_switch_epoch

    module = _mapping(container, "module")
    pool = _mapping(container, "pool")
    trainer = _mapping(container, "trainer")
    pool_cls, pool_args = _pool_layer(pool)
    schedule = module.get("pool_schedule", "joint")
    switch = module.get("switch_epoch")
    if schedule not in POOL_SCHEDULES:
        problems.append(f"module.pool_schedule: unknown schedule {schedule!r}; accepted: {', '.join(POOL_SCHEDULES)}")
    elif schedule == "freeze_and_train":
        if pool_cls is not None and not issubclass(pool_cls, HybridPool):
            problems.append(
                f"module.pool_schedule: freeze_and_train needs a HybridPool pool with weighted mixing "
                f"(pool=hybrid_scalar, hybrid_channel or hybrid_gate, with pool.init=gap), got "
                f"{pool.get('spec') or pool.get('_target_')}"
            )
        elif pool_cls is not None and pool_args.get("mixing", "scalar") not in WEIGHTED_MIXING:
            problems.append(
                f"module.pool_schedule: freeze_and_train needs pool.mixing in {', '.join(WEIGHTED_MIXING)}, got "
                f"{pool_args.get('mixing')!r}"
            )
        max_epochs = None if trainer.get("fast_dev_run") else trainer.get("max_epochs")
        if not trainer.get("fast_dev_run") or switch is not None:
            try:
                resolve_switch_epoch(switch, max_epochs)
            except ValueError as err:
                problems.append(f"module.switch_epoch: {err}")
    elif switch is not None:
        problems.append(f"module.switch_epoch: {switch!r} is only used with module.pool_schedule=freeze_and_train")
    entropy_weight = module.get("mix_entropy_weight") or 0
    weighted = pool_cls is None or (
        issubclass(pool_cls, HybridPool) and pool_args.get("mixing", "scalar") in WEIGHTED_MIXING
    )
    if entropy_weight and not weighted:
        problems.append(
            f"module.mix_entropy_weight: {entropy_weight} penalises a HybridPool's mixing weights; the pool "
            f"{pool.get('spec') or pool.get('_target_')} has none (use pool=hybrid_scalar, hybrid_channel or "
            "hybrid_gate, or module.mix_entropy_weight=0)"
        )
    try:
        robust = check_robustness(module.get("robustness"))
    except ValueError as err:
        problems.append(f"module.robustness: {err}")
        robust = {}
    if robust:
        features = _mapping(container, "features")
        enabled = features.get("enabled", "auto")
        frozen = bool(_mapping(container, "model").get("freeze_backbone", False))
        if enabled is True or (enabled == "auto" and frozen):
            problems.append(
                "module.robustness: the robustness tests transform test images, but this run trains from cached "
                "backbone features (model.freeze_backbone=true with features.enabled=auto/true); set "
                "features.enabled=false (the frozen backbone then runs on images) or module.robustness=null"
            )
    if pool_cls is not None and issubclass(pool_cls, Flatten):
        size = pool_args.get("spatial_size")
        if size != "???":  # not set yet: an experiment or the command line sets it (pool.spatial_size=[7,7])
            try:
                _spatial_pair(size)
            except ValueError as err:
                problems.append(f"pool.spatial_size: {err}")


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Check a composed training config; return it as a resolved plain dict.

    Raises:
        ConfigError: (a ``ValueError``) listing every unknown key (full dotted path, nearest accepted key,
            accepted keys) and every out-of-range value, e.g. ``optim.optimizer.lr: must be > 0, got -0.1``.
    """
    from hybridpool.run.module import ClassificationModule

    if isinstance(cfg, (DictConfig, ListConfig)):
        try:
            container = OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:
            raise ConfigError([f"the config cannot be resolved: {err}"]) from err
    else:
        container = dict(cfg)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    problems: list[str] = []

    _check_keys(container, "", (*GROUPS, *TOP_LEVEL_KEYS), "the top-level config (conf/train.yaml)", problems)
    for group in ("data", "model", "pool", "optim", "trainer"):
        if container.get(group) is None:
            problems.append(f"{group}: missing; choose one with {group}=<name> (see conf/{group}/)")
    _check_keys(container.get("paths"), "paths", PATHS_KEYS, "paths", problems)
    _check_keys(
        container.get("features"), "features", FEATURES_KEYS, "features (the feature cache)", problems
    )

    module_args, _ = _signature_keys(ClassificationModule)
    _check_keys(
        container.get("optim"), "optim", OPTIM_KEYS, "optim (ClassificationModule arguments)", problems
    )
    module_keys = module_args - set(OPTIM_KEYS) - {"model", "from_features"}
    _check_keys(
        container.get("module"), "module", module_keys, "module (ClassificationModule arguments)", problems
    )
    for group in ("logger", "callbacks"):
        node = container.get(group)
        if node is not None and not isinstance(node, Mapping):
            problems.append(f"{group}: expected a mapping of name -> {{_target_: ...}}, got {node!r}")
        elif isinstance(node, Mapping):
            for name, sub in node.items():
                if sub is not None and (not isinstance(sub, Mapping) or "_target_" not in sub):
                    problems.append(f"{group}.{name}: expected a node with a _target_, got {sub!r}")
    for key in ("data", "model", "pool", "trainer", "logger", "callbacks"):
        node = container.get(key)
        if (
            isinstance(node, Mapping)
            and key in ("data", "model", "pool", "trainer")
            and "_target_" not in node
        ):
            problems.append(f"{key}: expected a node with a _target_ (see conf/{key}/)")
        _check_targets(node, key, problems)
    optim = container.get("optim")
    if isinstance(optim, Mapping):
        _check_targets(optim.get("optimizer"), "optim.optimizer", problems)

    # ----------------------------------------------------------------- values
    optim = optim if isinstance(optim, Mapping) else {}
    opt = optim.get("optimizer") if isinstance(optim.get("optimizer"), Mapping) else {}
    _check_range(problems, "optim.optimizer.lr", opt.get("lr"), low=0, low_open=True, required="lr" in opt)
    _check_range(problems, "optim.optimizer.weight_decay", opt.get("weight_decay"), low=0)
    _check_range(problems, "optim.optimizer.momentum", opt.get("momentum"), low=0, high=1)
    module = container.get("module") if isinstance(container.get("module"), Mapping) else {}
    # the module's own ranges (multipliers, schedule, label smoothing, ...), as its constructor raises them
    for err in ClassificationModule.check_args(**{**module, **optim}):
        problems.append(err.at(f"{'optim' if err.arg in OPTIM_KEYS else 'module'}.{err.arg}"))
    _check_study_switches(container, problems)
    trainer = container.get("trainer") if isinstance(container.get("trainer"), Mapping) else {}
    epochs = trainer.get("max_epochs")
    if epochs is not None and epochs != -1:
        _check_range(problems, "trainer.max_epochs", epochs, low=1)  # or -1: no limit
    features = container.get("features") if isinstance(container.get("features"), Mapping) else {}
    if features.get("enabled", "auto") not in ("auto", True, False):
        problems.append(f"features.enabled: must be auto, true or false, got {features.get('enabled')!r}")
    _check_range(problems, "features.batch_size", features.get("batch_size"), low=1)
    seed = container.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(f"seed: must be an integer, got {seed!r}")
    tags = container.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, (str, int, float)) for t in tags)
    ):
        problems.append(f"tags: must be a list of strings, got {tags!r}")
    ckpt = container.get("ckpt_path")
    if ckpt is not None and not isinstance(ckpt, str):
        problems.append(f"ckpt_path: must be null, 'last' or a checkpoint file path, got {ckpt!r}")
    if problems:
        raise ConfigError(problems)
    return container
