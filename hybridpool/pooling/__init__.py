"""hybridpool.pooling: global pooling layers for (B, C, H, W) feature maps; depends on torch only.

>>> from hybridpool.pooling import create_pool, pool_factory, pool_spec
>>> pool = create_pool("hybrid(avg,max,gem,attn)", channels=512, mixing="channel")
>>> pool_spec(pool)  # a pool's one name: its canonical spec (see hybridpool.pooling.factory)
'hybrid(mixing=channel)'
>>> pool_factory("gem", per_channel=True).describe()  # what conf/pool/*.yaml build, and what a run records
{'spec': 'gem(per_channel=true)', 'kwargs': {}}
"""

from . import functional
from ._base import PoolBase
from .attention import AttentionPool, QueryAttentionPool
from .covariance import CovariancePool
from .factory import (
    PoolFactory,
    canonical_spec,
    create_pool,
    known_pools,
    parse_spec,
    pool_config_keys,
    pool_factory,
    pool_spec,
    pooling_parameters,
)
from .flatten import Flatten
from .hybrid import MIXING_MODES, HybridPool
from .layers import GeM, GlobalAvgPool, GlobalMaxPool, KMaxPool, LSEPool
from .surgery import swap_global_pool

__all__ = [
    "MIXING_MODES",
    "AttentionPool",
    "CovariancePool",
    "Flatten",
    "GeM",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "HybridPool",
    "KMaxPool",
    "LSEPool",
    "PoolBase",
    "PoolFactory",
    "QueryAttentionPool",
    "canonical_spec",
    "create_pool",
    "functional",
    "known_pools",
    "parse_spec",
    "pool_config_keys",
    "pool_factory",
    "pool_spec",
    "pooling_parameters",
    "swap_global_pool",
]
