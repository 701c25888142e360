"""hybridpool.pooling: global pooling layers for (B, C, H, W) feature maps; depends on torch only.

>>> from hybridpool.pooling import create_pool
>>> pool = create_pool("hybrid(avg,max,gem,attn)", channels=512, mixing="channel")
"""

from . import functional
from ._base import PoolBase
from .attention import AttentionPool, QueryAttentionPool
from .factory import create_pool, known_pools, pooling_parameters
from .flatten import Flatten
from .hybrid import MIXING_MODES, HybridPool
from .layers import GeM, GlobalAvgPool, GlobalMaxPool, KMaxPool, LSEPool
from .surgery import swap_global_pool

__all__ = [
    "MIXING_MODES",
    "AttentionPool",
    "Flatten",
    "GeM",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "HybridPool",
    "KMaxPool",
    "LSEPool",
    "PoolBase",
    "QueryAttentionPool",
    "create_pool",
    "functional",
    "known_pools",
    "pooling_parameters",
    "swap_global_pool",
]
