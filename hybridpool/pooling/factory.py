"""Build pooling layers from spec strings, name a pool by its spec, and find the layers' learnable parameters.

**A pool's identity is its spec.** One string names a pool everywhere: in code (:func:`create_pool`), in the
configs (``conf/pool/*.yaml`` build through :func:`pool_factory`), in each run's record and W&B tag
(:meth:`PoolFactory.describe`) and in the report's tables.

Spec grammar (what :func:`create_pool` and :func:`pool_factory` accept)::

    NAME                       a registry name or alias: avg, max, gem, lse, kmax, attn, qattn, flatten, hybrid
    NAME(key=value, ...)       plus constructor arguments: gem(per_channel=true), hybrid(mixing=channel)
    hybrid(avg, max, ...)      a hybrid's branches (bare names), optionally followed by key=value arguments

Values are ``true``/``false``, ``null``, numbers, or bare words (strings). Names and aliases are case-insensitive.
An argument may be given in the spec or as a keyword argument, not both.

**The canonical spec** (:attr:`PoolFactory.spec`, ``describe()["spec"]``, :func:`pool_spec`) is the registry name
plus the *identity arguments* whose value differs from the constructor's default, sorted, without spaces:

- ``hybrid``: ``mixing`` (``hybrid`` is scalar mixing; ``hybrid(mixing=channel)``, ``hybrid(mixing=gate)``,
  ``hybrid(mixing=concat)``) and ``branch_norm`` (``hybrid(branch_norm=true)``);
- ``gem`` and ``lse``: ``per_channel`` (``gem``, ``gem(per_channel=true)``).

These arguments change what the layer is (its parameters' shapes, its output), so two configs that differ in
them are two pools (two arms of the study: the conf files ``hybrid_scalar`` / ``hybrid_channel``, ``gem`` /
``gem_channel``). Every other argument (``branches``, ``init``, ``p``, ``k``, ``heads``...) is a setting of the
same pool and stays in ``describe()["kwargs"]`` (the study varies them as arms of one pool, ``pool.p=2``). So
``pool_factory("hybrid(avg,max)", mixing="channel")`` describes itself as
``{"spec": "hybrid(mixing=channel)", "kwargs": {"branches": ["avg", "max"]}}``, and
``create_pool(d["spec"], channels, **d["kwargs"])`` rebuilds the same layer.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ._base import PoolBase
from .hybrid import HybridPool
from .registry import SINGLE_POOLS, canonical_name

__all__ = [
    "IDENTITY_ARGS",
    "PoolFactory",
    "canonical_spec",
    "create_pool",
    "known_pools",
    "parse_spec",
    "pool_config_keys",
    "pool_factory",
    "pool_spec",
    "pooling_parameters",
]

HYBRID = "hybrid"
#: per registry name, the constructor arguments that make a different pool (written into the canonical spec)
IDENTITY_ARGS: dict[str, tuple[str, ...]] = {
    HYBRID: ("mixing", "branch_norm"),
    "gem": ("per_channel",),
    "lse": ("per_channel",),
}

_SPEC = re.compile(r"^\s*(?P<name>[^\s(),=]+)\s*(?:\((?P<args>[^()]*)\))?\s*$")
_KEY = re.compile(r"^[A-Za-z_]\w*$")
_WORD = re.compile(r"^[\w.+-]+$")


def known_pools() -> list[str]:
    """Names accepted by :func:`create_pool`."""
    return [*sorted(SINGLE_POOLS), "hybrid(...)"]


# ============================================================================================ specs
def _value(text: str) -> Any:
    """A spec argument's value: ``true``/``false``, ``null``/``none``, an int, a float, else the word itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _text(value: Any) -> str:
    """The spec text of an identity argument's value (the inverse of :func:`_value`)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value) if isinstance(value, (int, float)) else str(value)
    if not isinstance(value, (int, float, str)) or not _WORD.match(text) or _value(text) != value:
        raise ValueError(f"{value!r} cannot be written into a pool spec (a bool, a number or a single word)")
    return text


def _layer_class(name: str) -> tuple[str, type[PoolBase]]:
    """``(registry name, class)`` of a name or alias; ValueError lists the known names."""
    if name.strip().lower() == HYBRID:
        return HYBRID, HybridPool
    key = canonical_name(name)
    return key, SINGLE_POOLS[key]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a spec into its registry name and the arguments written in it.

    ``parse_spec("Hybrid(avg, gmp, mixing=gate)") == ("hybrid", {"branches": ["avg", "gmp"], "mixing": "gate"})``;
    ``parse_spec("gap") == ("avg", {})``.

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: an unknown name (the message lists the known ones) or a malformed spec.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'gem' or 'hybrid(avg,max)', got {type(spec).__name__}")
    match = _SPEC.match(spec)
    if match is None:
        canonical_name(spec)  # the unknown-name error, listing the known ones
        raise ValueError(f"malformed pool spec {spec!r}; e.g. 'gem', 'gem(per_channel=true)', 'hybrid(avg,max)'")
    name, cls = _layer_class(match.group("name"))
    if match.group("args") is None:
        return name, {}
    items = [item.strip() for item in match.group("args").split(",")]
    items = [item for item in items if item]
    if not items:
        if name == HYBRID:
            raise ValueError(f"empty branch list in {spec!r}; e.g. 'hybrid(avg,max,gem,attn)'")
        raise ValueError(f"empty argument list in {spec!r}; write {name!r}, or e.g. '{name}(key=value)'")
    args: dict[str, Any] = {}
    branches: list[str] = []
    for item in items:
        key, eq, text = (part.strip() for part in item.partition("="))
        if not eq:
            if name != HYBRID:
                raise ValueError(f"{item!r} in {spec!r}: {cls.__name__} takes key=value arguments in a spec")
            if args:
                raise ValueError(f"branch {item!r} after key=value arguments in {spec!r}; branches come first")
            branches.append(canonical_name(item))
            continue
        if not _KEY.match(key) or not text:
            raise ValueError(f"{item!r} in {spec!r} is not a key=value argument")
        if key in args or (key == "branches" and branches):
            raise ValueError(f"{key} given twice in {spec!r}")
        args[key] = _value(text)
    return name, ({"branches": branches} if branches else {}) | args


def _accepted(cls: type[PoolBase]) -> list[str]:
    return [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "channels")]


def _defaults(cls: type[PoolBase]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _check_names(cls: type[PoolBase], arguments: Mapping[str, Any]) -> None:
    accepted = _accepted(cls)
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise TypeError(f"{cls.__name__} got unknown argument(s) {unknown}; accepted: {', '.join(accepted)}")


def _plain(value: Any) -> Any:
    """Mappings as dicts and sequences as lists, recursively (OmegaConf containers and tuples become JSON-able)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _resolve(spec: str, kwargs: Mapping[str, Any]) -> tuple[str, type[PoolBase], dict[str, Any]]:
    """``(registry name, layer class, every constructor argument from the spec and kwargs)``."""
    name, args = parse_spec(spec)
    cls = HybridPool if name == HYBRID else SINGLE_POOLS[name]
    twice = sorted(set(args) & set(kwargs))
    if twice:
        raise ValueError(f"{twice[0]} given twice: in {spec!r} and as {twice[0]}={kwargs[twice[0]]!r}")
    return name, cls, {**args, **kwargs}


def _split(name: str, cls: type[PoolBase], arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(canonical spec, the other arguments)``: identity arguments that differ from the default go in the spec."""
    defaults = _defaults(cls)
    identity = {
        k: arguments[k]
        for k in IDENTITY_ARGS.get(name, ())
        if k in arguments and (k not in defaults or arguments[k] != defaults[k])
    }
    rest = {k: v for k, v in arguments.items() if k not in identity}
    if not identity:
        return name, rest
    return f"{name}({','.join(f'{k}={_text(v)}' for k, v in sorted(identity.items()))})", rest


def canonical_spec(spec: str, **kwargs: Any) -> str:
    """The canonical spec of the pool ``create_pool(spec, **kwargs)`` builds (see the module docstring).

    ``canonical_spec("gap") == "avg"``; ``canonical_spec("hybrid(avg,max)", mixing="gate") == "hybrid(mixing=gate)"``;
    ``canonical_spec("gem", per_channel=False) == "gem"``.
    """
    return pool_factory(spec, **kwargs).spec


def pool_spec(layer: nn.Module) -> str:
    """The canonical spec of a built layer: its registry name and identity arguments (``pool_spec(GeM()) == "gem"``).

    Raises ``TypeError`` for a module that is not a registered pooling layer.
    """
    if isinstance(layer, HybridPool):
        name = HYBRID
    else:
        names = [n for n, cls in SINGLE_POOLS.items() if type(layer) is cls]
        if not names:
            raise TypeError(f"{type(layer).__name__} is not a registered pooling layer; known: {known_pools()}")
        name = names[0]
    cls = type(layer)
    return _split(name, cls, {k: getattr(layer, k) for k in IDENTITY_ARGS.get(name, ()) if hasattr(layer, k)})[0]


def pool_config_keys(spec: str) -> list[str]:
    """The keys a ``pool_factory`` config node may have for ``spec``: ``spec`` and the layer's constructor arguments
    (all but ``channels``, which the model passes). ValueError for an unknown spec, listing the known names."""
    name, _ = parse_spec(spec)
    return ["spec", *_accepted(HybridPool if name == HYBRID else SINGLE_POOLS[name])]


# ============================================================================================ building
def _build(cls: type[PoolBase], channels: int | None, kwargs: Mapping[str, Any]) -> PoolBase:
    _check_names(cls, kwargs)
    return cls(channels, **kwargs)


def create_pool(spec: str, channels: int | None = None, **kwargs) -> PoolBase:
    """Build a global pooling layer from a spec string.

    Args:
        spec: a layer name (``"avg"``, ``"max"``, ``"gem"``, ``"lse"``, ``"kmax"``, ``"attn"``, ``"qattn"``,
            ``"flatten"`` or an alias such as ``"gap"``), ``"hybrid(avg,max,gem,attn)"`` (any branches;
            ``"hybrid"`` alone uses the default four), optionally with arguments such as
            ``"gem(per_channel=true)"`` or ``"hybrid(mixing=channel)"`` (the grammar is in the module docstring).
        channels: input channels ``C`` (required by attention, per-channel and hybrid layers).
        **kwargs: constructor arguments of that layer, e.g. ``p=2.0`` or ``mixing="channel"``.

    Returns:
        The layer; ``layer.feat_mult()`` says how its output width relates to ``C``; :func:`pool_spec` names it.

    Raises:
        ValueError: unknown name (the message lists the known ones), malformed spec, or an argument given both in
            the spec and as a keyword.
        TypeError: an argument the layer does not take (the message lists those it does).
    """
    _, cls, arguments = _resolve(spec, kwargs)
    return _build(cls, channels, arguments)


class PoolFactory:
    """A pool not built yet: a spec plus constructor arguments, called with the feature map's channels.

    Made by :func:`pool_factory` (the ``_target_`` of ``conf/pool/*.yaml``). ``factory(channels, **more)``
    builds the layer (``more``: call-time arguments the factory does not hold, none in the configs).

    Attributes:
        spec: the canonical spec (the pool's identity; see the module docstring).
        kwargs: the other constructor arguments, JSON-able (lists, dicts, scalars).
        name: the registry name (``"hybrid"``, ``"gem"``...). layer_class: the class it builds.
        arguments: every constructor argument it was given, from the spec and the keywords.
    """

    def __init__(self, spec: str, **kwargs: Any) -> None:
        self.name, self.layer_class, self.arguments = _resolve(spec, _plain(kwargs))
        _check_names(self.layer_class, self.arguments)
        self.spec, self.kwargs = _split(self.name, self.layer_class, self.arguments)

    def __call__(self, channels: int | None = None, **more: Any) -> PoolBase:
        twice = sorted(set(more) & set(self.arguments))
        if twice:
            raise TypeError(f"{twice} already set by the pool factory {self!r}")
        return _build(self.layer_class, channels, {**self.arguments, **more})

    def describe(self) -> dict[str, Any]:
        """``{"spec": <canonical spec>, "kwargs": {<the other arguments>}}``, JSON-able: the pool's record entry.

        ``create_pool(d["spec"], channels, **d["kwargs"])`` builds the same layer as ``factory(channels)``.
        """
        return {"spec": self.spec, "kwargs": _plain(self.kwargs)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoolFactory) and other.describe() == self.describe()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"pool_factory({self.spec!r}{args})"


def pool_factory(spec: str, **kwargs: Any) -> PoolFactory:
    """A :class:`PoolFactory` for ``spec`` and constructor arguments ``kwargs``; checks names now, values at build.

    ``conf/pool/*.yaml`` are ``{_target_: hybridpool.pooling.pool_factory, spec: <name>, <constructor args>}``;
    the classifier calls the result with its backbone's channels. Record the pool with ``factory.describe()``.

    Raises:
        ValueError: unknown name (listing the known ones), malformed spec, or an argument given twice.
        TypeError: an argument the layer does not take (listing those it does).
    """
    return PoolFactory(spec, **kwargs)


# ============================================================================================ parameters
POOLING_PARAMETER_KINDS = ("all", "shape", "weights")


def _is_weight(sub: nn.Module, name: str, p: nn.Parameter) -> bool:
    """A weight matrix or a projection's parameter, as opposed to a shape parameter (p, r, temperature, mixing)."""
    owner = sub.get_submodule(name.rsplit(".", 1)[0]) if "." in name else sub
    return p.ndim >= 2 or isinstance(owner, (nn.Linear, nn.Conv1d, nn.Conv2d))


def pooling_parameters(module: nn.Module, kind: str = "all") -> list[nn.Parameter]:
    """The learnable parameters of every pooling layer inside ``module``.

    Args:
        module: any model (or a pooling layer).
        kind: ``"all"``; ``"shape"``: the few numbers that shape a pool (GeM ``p``, LSE ``r``, temperatures,
            mixing logits and blend, a learned query vector); ``"weights"``: weight matrices and the parameters
            of projections (attention projections, query and key matrices, a gate network, a channel reduction).

    Give the shape parameters their own optimizer group: GeM's ``p`` barely moves at a backbone's learning rate
    (the GeM authors use 10x and no weight decay). Train the weights with the head instead: at 10x, Adam moves
    each entry of a ``C x C`` or ``1 x C`` projection by about ``10 * lr`` per step, so attention logits (a sum
    over ``C`` channels) jump by ``10 * lr * C`` times the feature scale and the softmax saturates within a few
    steps (the attention pools' collapse on frozen MobileNetV2 features, ``paper/``). Example::

        shape = pooling_parameters(model, "shape")
        ids = {id(p) for p in shape}
        other = [p for p in model.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW([{"params": other}, {"params": shape, "lr": 10 * lr, "weight_decay": 0.0}], lr)
    """
    if kind not in POOLING_PARAMETER_KINDS:
        raise ValueError(f"unknown kind {kind!r}; accepted: {', '.join(POOLING_PARAMETER_KINDS)}")
    seen: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        if isinstance(sub, PoolBase):
            for name, p in sub.named_parameters():
                if p.requires_grad and (kind == "all" or (kind == "weights") == _is_weight(sub, name, p)):
                    seen.setdefault(id(p), p)
    return list(seen.values())
