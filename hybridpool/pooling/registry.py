"""Names of the single pooling layers, shared by :class:`HybridPool` and :func:`create_pool`."""

from __future__ import annotations

from ._base import PoolBase
from .attention import AttentionPool, QueryAttentionPool
from .covariance import CovariancePool
from .flatten import Flatten
from .layers import GeM, GlobalAvgPool, GlobalMaxPool, KMaxPool, LSEPool

SINGLE_POOLS: dict[str, type[PoolBase]] = {
    "avg": GlobalAvgPool,
    "max": GlobalMaxPool,
    "gem": GeM,
    "lse": LSEPool,
    "kmax": KMaxPool,
    "attn": AttentionPool,
    "qattn": QueryAttentionPool,
    "cov": CovariancePool,  # second order: (B, d(d+1)/2), not (B, C); not a HybridPool branch
    "flatten": Flatten,  # not a pooling: the whole map to the head; needs spatial_size=(H, W)
}

ALIASES: dict[str, str] = {
    "gap": "avg",
    "mean": "avg",
    "gmp": "max",
    "logsumexp": "lse",
    "k-max": "kmax",
    "kmaxpool": "kmax",
    "attention": "attn",
    "query_attn": "qattn",
    "simpool": "qattn",
    "covariance": "cov",
    "bilinear": "cov",  # the layer; the bilinear CNN's own normalisation is cov(normalization=signed_sqrt)
    "isqrt": "cov",
    "isqrt_cov": "cov",
    "second_order": "cov",
}


def canonical_name(name: str) -> str:
    """Map a layer name or alias (case-insensitive) to its canonical name; ValueError lists the known ones."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SINGLE_POOLS:
        known = ", ".join(sorted(SINGLE_POOLS)) + ", hybrid(...)"
        raise ValueError(f"unknown pooling {name!r}; known: {known} (aliases: {', '.join(sorted(ALIASES))})")
    return key
