"""Build pooling layers from names or spec strings, and find their learnable parameters."""

from __future__ import annotations

import inspect
import re

from torch import nn

from ._base import PoolBase
from .hybrid import HybridPool
from .registry import SINGLE_POOLS, canonical_name

_HYBRID_SPEC = re.compile(r"^\s*hybrid\s*\((?P<branches>[^()]*)\)\s*$", re.IGNORECASE)


def known_pools() -> list[str]:
    """Names accepted by :func:`create_pool`."""
    return [*sorted(SINGLE_POOLS), "hybrid(...)"]


def _build(cls: type[PoolBase], channels: int | None, kwargs: dict) -> PoolBase:
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "channels")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{cls.__name__} got unknown argument(s) {unknown}; accepted: {', '.join(accepted)}")
    return cls(channels, **kwargs)


def create_pool(spec: str, channels: int | None = None, **kwargs) -> PoolBase:
    """Build a global pooling layer from a name or a spec string.

    Args:
        spec: a layer name (``"avg"``, ``"max"``, ``"gem"``, ``"lse"``, ``"kmax"``, ``"attn"``, ``"qattn"`` or an
            alias such as ``"gap"``) or ``"hybrid(avg,max,gem,attn)"`` (any branches; ``"hybrid"`` alone uses the
            default four).
        channels: input channels ``C`` (required by attention, per-channel and hybrid layers).
        **kwargs: constructor arguments of that layer, e.g. ``p=2.0`` or ``mixing="channel"``.

    Returns:
        The layer; ``layer.feat_mult()`` says how its output width relates to ``C``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or malformed spec.
        TypeError: an argument the layer does not take (the message lists those it does).
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'gem' or 'hybrid(avg,max)', got {type(spec).__name__}")
    match = _HYBRID_SPEC.match(spec)
    if match:
        branches = [b.strip() for b in match.group("branches").split(",") if b.strip()]
        if not branches:
            raise ValueError(f"empty branch list in {spec!r}; e.g. 'hybrid(avg,max,gem,attn)'")
        if "branches" in kwargs:
            raise ValueError(f"branches given twice: in {spec!r} and as branches={kwargs['branches']!r}")
        return _build(HybridPool, channels, {"branches": tuple(branches), **kwargs})
    if spec.strip().lower() == "hybrid":
        return _build(HybridPool, channels, kwargs)
    return _build(SINGLE_POOLS[canonical_name(spec)], channels, kwargs)


def pooling_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The learnable parameters of every pooling layer inside ``module`` (p, r, temperatures, mixing, attention).

    Put them in their own optimizer group: GeM's ``p`` barely moves at a backbone's learning rate (the GeM authors
    use 10x and no weight decay). Example::

        pool_params = pooling_parameters(model)
        ids = {id(p) for p in pool_params}
        other = [p for p in model.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW([{"params": other}, {"params": pool_params, "lr": 10 * lr, "weight_decay": 0.0}], lr)
    """
    seen: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        if isinstance(sub, PoolBase):
            for p in sub.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
    return list(seen.values())
