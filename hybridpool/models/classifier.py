"""The classifier: ``backbone -> global pool -> (BatchNorm1d) -> (dropout) -> linear``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hybridpool.arguments import ArgumentError, check_rules, number, raise_first
from hybridpool.models.backbones import Backbone

__all__ = ["Classifier", "build_pool"]

_RULES = {"dropout": functools.partial(number, low=0, high=1, high_open=True)}

PoolLike = nn.Module | str | Callable[..., nn.Module]
BackboneLike = nn.Module | Callable[..., nn.Module]


def build_pool(pool: PoolLike, channels: int) -> nn.Module:
    """A pooling layer for ``channels`` input channels from a module, a factory or a ``create_pool`` spec.

    Args:
        pool: an ``nn.Module`` (used as is), a callable taking ``channels=`` (a
            :class:`~hybridpool.pooling.PoolFactory`, what ``conf/pool/`` builds, or a partial of a pooling
            class), or a spec string for :func:`hybridpool.pooling.create_pool` such as ``"gem"``
            or ``"hybrid(avg,max,gem,attn)"`` (an unknown name raises ``ValueError`` listing the known ones).
        channels: ``C`` of the ``(B, C, H, W)`` feature map the pool receives.
    """
    if isinstance(pool, nn.Module):
        return pool
    if isinstance(pool, str):
        from hybridpool.pooling import create_pool

        return create_pool(pool, channels)
    if callable(pool):
        module = pool(channels=channels)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"the pool factory {pool!r} returned {type(module).__name__}, expected an nn.Module"
            )
        return module
    raise TypeError(
        f"pool must be an nn.Module, a factory taking channels=, or a create_pool spec string; got {pool!r}"
    )


class Classifier(nn.Module):
    """``backbone -> pool -> [BatchNorm1d] -> [Dropout] -> Linear``.

    Args:
        backbone: a :class:`~hybridpool.models.backbones.Backbone` (anything returning ``(B, C, H, W)``
            with an
            ``out_channels`` attribute) or a factory called with ``in_channels=`` (a Hydra ``_partial_``).
        pool: see :func:`build_pool`; built for ``backbone.out_channels`` channels.
        num_classes: output classes (>= 2).
        in_channels: image channels handed to a backbone factory.
        post_bn: BatchNorm1d on the pooled vector before the head (helps when pools of different scales
            are mixed).
        dropout: dropout probability before the linear head, in ``[0, 1)``.
        freeze_backbone: freeze the backbone's weights and keep it in eval mode (BatchNorm statistics fixed);
            with the feature cache, only pool + head are then trained, from cached feature maps.

    ``forward(x: (B, in_channels, H, W)) -> logits (B, num_classes)``.
    """

    def __init__(
        self,
        backbone: BackboneLike,
        pool: PoolLike,
        num_classes: int,
        in_channels: int = 3,
        post_bn: bool = False,
        dropout: float = 0.0,
        freeze_backbone: bool = False,
    ):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        raise_first(self.check_args(dropout=dropout))
        if not isinstance(backbone, nn.Module):
            backbone = backbone(in_channels=in_channels)
        if not hasattr(backbone, "out_channels"):
            raise TypeError(f"backbone {type(backbone).__name__} has no out_channels attribute")
        self.backbone = backbone
        channels = int(backbone.out_channels)
        self.pool = build_pool(pool, channels)
        # exact: feat_mult() may be a fraction (CovariancePool: d(d+1)/2 features for C channels)
        mult = self.pool.feat_mult() if hasattr(self.pool, "feat_mult") else 1
        self.embed_dim = int(channels * mult)
        self.post_bn = nn.BatchNorm1d(self.embed_dim) if post_bn else nn.Identity()
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(self.embed_dim, int(num_classes))
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.frozen = bool(freeze_backbone)
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> feature map (B, C, H', W')``."""
        if self.frozen:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward_head(
        self, fmap: torch.Tensor, return_extras: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``fmap: (B, C, H', W') -> logits (B, num_classes)`` (and the pool's extras dict if asked)."""
        extras: dict[str, torch.Tensor] = {}
        if return_extras and hasattr(self.pool, "forward_with_extras"):
            pooled, extras = self.pool.forward_with_extras(fmap)
        else:
            pooled = self.pool(fmap)
        pooled = pooled.flatten(1)
        logits = self.head(self.dropout(self.post_bn(pooled)))
        return (logits, extras) if return_extras else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> logits (B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def parameter_groups(self, pool_weights: str = "head") -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into ``backbone``, ``pool`` and ``head``; each lands in exactly one group.

        ``pool`` holds the pools' shape parameters (:func:`hybridpool.pooling.pooling_parameters` with
        ``kind="shape"``: GeM p, LSE r, temperatures, mixing logits), which get ``pool_lr_mult`` and no weight
        decay. ``head`` holds post-BN and the linear layer and also the pools' weights (``kind="weights"``:
        attention projections, query/key matrices, a gate network, a channel reduction), which train at the
        head's rate: at 10x their softmax saturates within a few steps. ``pool_weights="pool"`` puts the weights
        in ``pool`` instead (the rule before that was measured; kept to reproduce it).
        """
        from hybridpool.pooling import pooling_parameters

        if pool_weights not in ("head", "pool"):
            raise ValueError(f"pool_weights must be 'head' or 'pool', got {pool_weights!r}")
        shape_ids = {id(p) for p in pooling_parameters(self, "shape" if pool_weights == "head" else "all")}
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "pool": [], "head": []}
        pool_ids = {id(p) for p in self.pool.parameters()}
        backbone_ids = {id(p) for p in self.backbone.parameters()} - pool_ids
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if id(p) in shape_ids:
                groups["pool"].append(p)
            elif id(p) in backbone_ids:
                groups["backbone"].append(p)
            else:
                groups["head"].append(p)
        return groups

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameter elements: ``{"total", "trainable", "backbone", "pool", "head"}`` (ints).

        ``pool`` counts the pool module's parameters plus those of any pooling layer elsewhere in the model
        (the same split as :meth:`parameter_groups`, frozen ones included); ``backbone`` the rest of the
        backbone; ``head`` everything else (post-pool BatchNorm and the linear classifier). Shared parameters
        are counted once, so ``total == backbone + pool + head``; ``trainable`` counts those with
        ``requires_grad`` (a frozen backbone's are not).
        """
        from hybridpool.pooling import PoolBase

        pool_ids = {id(p) for p in self.pool.parameters()}
        for sub in self.modules():
            if isinstance(sub, PoolBase):
                pool_ids |= {id(p) for p in sub.parameters()}
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        counts = {"total": 0, "trainable": 0, "backbone": 0, "pool": 0, "head": 0}
        for p in self.parameters():  # each shared parameter once
            n = int(p.numel())
            counts["total"] += n
            if p.requires_grad:
                counts["trainable"] += n
            if id(p) in pool_ids:
                counts["pool"] += n
            elif id(p) in backbone_ids:
                counts["backbone"] += n
            else:
                counts["head"] += n
        return counts

    @staticmethod
    def check_args(**kwargs: Any) -> list[ArgumentError]:
        """The range problems of the given constructor arguments (``dropout`` in ``[0, 1)``), building nothing;
        the constructor raises the first, the config check reports them all."""
        return check_rules(_RULES, kwargs)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: backbone identity, pool class, embedding size, classes and ``params``.

        ``params`` is :meth:`parameter_counts` (``total``, ``trainable``, ``backbone``, ``pool``, ``head``).
        """
        bb = (
            self.backbone.describe()
            if isinstance(self.backbone, Backbone)
            else {"class": type(self.backbone).__name__}
        )
        return {
            "backbone": bb,
            "pool": type(self.pool).__name__,
            "embed_dim": self.embed_dim,
            "num_classes": self.num_classes,
            "frozen_backbone": self.frozen,
            "params": self.parameter_counts(),
        }
