"""Training schedules of a hybrid pool: ``joint`` (everything trains together) or ``freeze_and_train``.

``freeze_and_train`` follows "On Global Feature Pooling for Fine-grained Visual Categorization" (ICLR 2020
submission, OpenReview H1lkCTVFwB), where jointly training a combination of two poolings suffered from gradient
conflict. :class:`hybridpool.run.module.ClassificationModule` applies it: until ``switch_epoch`` the pool (its mixing
parameters, :func:`mixing_parameters`, and its branches' own parameters) gets no update, so with ``init="gap"``
backbone and head train with plain GAP; from then on the backbone is frozen and pool and head train. This module
holds the checks and names the parameters; it imports no Lightning.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "POOL_SCHEDULES",
    "WEIGHTED_MIXING",
    "check_freeze_and_train_pool",
    "mixing_parameters",
    "resolve_switch_epoch",
]

#: how the parameters of a hybrid pool train: all together, or in two stages (see ClassificationModule)
POOL_SCHEDULES = ("joint", "freeze_and_train")
#: HybridPool mixing modes whose output is a weighted sum of the branches (freeze_and_train needs one)
WEIGHTED_MIXING = ("scalar", "channel", "gate")


def mixing_parameters(pool: nn.Module) -> list[nn.Parameter]:
    """The parameters of a :class:`~hybridpool.pooling.HybridPool` that decide its mixing weights.

    Everything of the pool outside its branches: ``mix_logits``, ``blend`` (``init="gap"``) and the gate network
    (``mixing="gate"``). The branches' own parameters (GeM ``p``, attention projections) are not included.
    """
    return [p for name, p in pool.named_parameters() if not name.startswith("branches.")]


def check_freeze_and_train_pool(pool: nn.Module) -> None:
    """Raise ``ValueError`` unless ``pool`` is a HybridPool with weighted mixing (what freeze_and_train needs)."""
    from hybridpool.pooling import HybridPool

    if not isinstance(pool, HybridPool):
        raise ValueError(
            f"pool_schedule='freeze_and_train' needs a HybridPool with weighted mixing ({', '.join(WEIGHTED_MIXING)}), "
            f"got {type(pool).__name__}; use e.g. pool=hybrid_scalar pool.init=gap, or pool_schedule='joint'"
        )
    if pool.mixing not in WEIGHTED_MIXING:
        raise ValueError(
            f"pool_schedule='freeze_and_train' needs a weighted mixing mode ({', '.join(WEIGHTED_MIXING)}), got "
            f"mixing={pool.mixing!r} (no mixing weights to freeze); use pool_schedule='joint' for it"
        )


def resolve_switch_epoch(switch_epoch: int | None, max_epochs: int | None) -> int:
    """The first epoch of stage 2 of ``freeze_and_train``: ``switch_epoch``, or ``max_epochs // 2`` if ``None``.

    Args:
        switch_epoch: ``None`` or an int ``>= 1``.
        max_epochs: the trainer's ``max_epochs`` (``None`` or ``-1``: unbounded, then ``switch_epoch`` is needed).

    Raises:
        ValueError: the switch would not leave at least one epoch in each stage (``1 <= switch < max_epochs``).
    """
    bounded = max_epochs is not None and int(max_epochs) > 0
    if switch_epoch is None:
        if not bounded:
            raise ValueError(
                "pool_schedule='freeze_and_train' with switch_epoch=null switches at half of trainer.max_epochs, "
                f"which is not set (max_epochs={max_epochs}); set module.switch_epoch"
            )
        switch = int(max_epochs) // 2  # type: ignore[arg-type]
        if switch < 1:
            raise ValueError(
                f"pool_schedule='freeze_and_train' needs trainer.max_epochs >= 2 (one epoch per stage), got "
                f"{max_epochs}"
            )
        return switch
    if isinstance(switch_epoch, bool) or not isinstance(switch_epoch, int) or switch_epoch < 1:
        raise ValueError(f"switch_epoch must be null or an int >= 1, got {switch_epoch!r}")
    if bounded and switch_epoch >= int(max_epochs):  # type: ignore[arg-type]
        raise ValueError(
            f"switch_epoch must be < trainer.max_epochs ({max_epochs}) so that stage 2 gets at least one epoch, "
            f"got {switch_epoch}"
        )
    return int(switch_epoch)
