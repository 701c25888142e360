"""Swap the global pool of an existing torchvision or timm classifier for a hybridpool layer."""

from __future__ import annotations

import types

import torch
from torch import nn

from ._base import PoolBase

SUPPORTED = "torchvision ResNet/ResNeXt/Wide-ResNet, MobileNetV2, MobileNetV3, EfficientNet, and timm models"


def _first_linear(head: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The first ``nn.Linear`` in a classifier (itself, or inside a Sequential): ``(parent, attr, linear)``."""
    if isinstance(head, nn.Linear):
        raise AssertionError("handled by the caller")
    for name, child in head.named_children():
        if isinstance(child, nn.Linear):
            return head, name, child
    raise TypeError(f"no nn.Linear found in the classifier {type(head).__name__}")


def _widened(linear: nn.Linear, pool: PoolBase) -> nn.Linear:
    """A classifier layer whose input is ``feat_mult()`` times wider.

    The block that reads an ``avg`` branch keeps the old weights and the other blocks start at zero, so a concat
    hybrid with an ``avg`` branch computes exactly what the GAP model did; without one, the layer is re-initialised.
    """
    mult = pool.feat_mult()
    new = nn.Linear(int(linear.in_features * mult), linear.out_features, bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    names = getattr(pool, "branch_names", [])
    if "avg" in names:
        with torch.no_grad():
            new.weight.zero_()
            c = linear.in_features
            i = names.index("avg")
            new.weight[:, i * c : (i + 1) * c] = linear.weight
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
    return new


def _replace_linear(parent: nn.Module, attr: str, pool: PoolBase) -> None:
    head = getattr(parent, attr)
    if isinstance(head, nn.Linear):
        setattr(parent, attr, _widened(head, pool))
        return
    owner, name, linear = _first_linear(head)
    setattr(owner, name, _widened(linear, pool))


def _check_width(pool: PoolBase, channels: int, model: nn.Module) -> None:
    if pool.channels is not None and pool.channels != channels:
        raise ValueError(
            f"the pool was built for {pool.channels} channels but {type(model).__name__}'s feature map has {channels}"
        )


def _mobilenet_v2_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.global_pool(self.features(x)), 1))


def swap_global_pool(model: nn.Module, pool: PoolBase) -> nn.Module:
    """Replace the global pool of ``model`` by ``pool``, in place, and return the model.

    Handles torchvision ResNet-family (``avgpool`` + ``fc``), MobileNetV3, EfficientNet and ConvNeXt (``avgpool`` +
    ``classifier``), MobileNetV2 (whose pooling is a function call: the model gets a ``global_pool`` module and a
    forward that uses it), and timm models (``global_pool`` directly or in ``head``, classifier from
    ``get_classifier()``). The pool keeps the output rank the model expects (``(B, C, 1, 1)`` or ``(B, C)``). When
    ``pool.feat_mult() != 1`` the classifier's first linear layer is widened to match; a model that transforms the
    pooled features before that layer (a norm, a 1x1 conv head) is refused instead. Use
    ``HybridPool(..., init="gap")`` to keep a trained model's outputs unchanged at step 0.

    Raises:
        TypeError: the model's layout is not one of those above (nothing is guessed).
        ValueError: ``pool.channels`` differs from the model's feature width.
    """
    if not isinstance(pool, PoolBase):
        raise TypeError(f"pool must be a hybridpool layer (see create_pool), got {type(pool).__name__}")
    cls = type(model).__name__
    module_path = type(model).__module__
    if module_path.startswith("timm.") and hasattr(model, "get_classifier"):
        return _swap_timm(model, pool)
    pool.flatten = False  # like torchvision's AdaptiveAvgPool2d; the model flattens (or normalises) after it
    if hasattr(model, "avgpool") and not _is_global(model.avgpool):
        raise TypeError(
            f"{cls}.avgpool is {model.avgpool!r}, not a global pool (its output feeds the classifier as a map), so a "
            f"global pool cannot replace it; supported: {SUPPORTED}"
        )
    if hasattr(model, "avgpool") and isinstance(getattr(model, "fc", None), nn.Linear):  # ResNet family
        _check_width(pool, model.fc.in_features, model)
        model.avgpool = pool
        if pool.feat_mult() != 1:
            _replace_linear(model, "fc", pool)
        return model
    has_head = hasattr(model, "classifier") and hasattr(model, "features")
    if has_head and (hasattr(model, "avgpool") or cls == "MobileNetV2"):  # V2, V3, EfficientNet, ConvNeXt
        _check_width(pool, _first_in_features(model.classifier), model)
        _require_direct_classifier(cls, _before_first_linear(model.classifier), pool)
        if hasattr(model, "avgpool"):
            model.avgpool = pool
        else:
            model.global_pool = pool
            model.forward = types.MethodType(_mobilenet_v2_forward, model)
        if pool.feat_mult() != 1:
            _replace_linear(model, "classifier", pool)
        return model
    raise TypeError(f"swap_global_pool does not know where {cls} ({module_path}) pools; supported: {SUPPORTED}")


_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Dropout)


def _before_first_linear(head: nn.Module) -> list[nn.Module]:
    """The modules a classifier applies before its first ``nn.Linear``."""
    if isinstance(head, nn.Linear):
        return []
    before = []
    for child in head.children():
        if isinstance(child, nn.Linear):
            break
        before.append(child)
    return before


def _require_direct_classifier(name: str, between: list[nn.Module], pool: PoolBase) -> None:
    """A pool ``feat_mult()`` times wider needs its output to reach a linear layer unchanged."""
    blockers = [type(m).__name__ for m in between if not isinstance(m, _PASS_THROUGH)]
    if pool.feat_mult() != 1 and blockers:
        raise TypeError(
            f"{name} applies {', '.join(blockers)} to the pooled features before its classifier's linear layer, so a "
            f"pool with feat_mult()={pool.feat_mult()} cannot be swapped in; use a mixing mode with feat_mult() == 1. "
            f"supported: {SUPPORTED}"
        )


def _is_global(pool: nn.Module) -> bool:
    """A torchvision model's ``avgpool``: a global (1x1 output) adaptive pool, or a hybridpool layer already."""
    if isinstance(pool, PoolBase):
        return True
    size = getattr(pool, "output_size", None)
    return isinstance(pool, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and size in (1, (1, 1), [1, 1])


def _first_in_features(head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    return _first_linear(head)[2].in_features


def _swap_timm(model: nn.Module, pool: PoolBase) -> nn.Module:
    owner = model if hasattr(model, "global_pool") else getattr(model, "head", None)
    old = getattr(owner, "global_pool", None) if owner is not None else None
    if not isinstance(old, nn.Module):
        raise TypeError(
            f"timm model {type(model).__name__} has no global_pool module to replace; supported: {SUPPORTED}"
        )
    _check_width(pool, model.num_features, model)
    classifier = model.get_classifier()
    children = list(owner.children())
    after_pool = children[children.index(old) + 1 :]
    between = after_pool[: after_pool.index(classifier)] if classifier in after_pool else after_pool
    _require_direct_classifier(type(model).__name__, between, pool)
    fmt = getattr(old, "input_fmt", "NCHW")
    pool.input_fmt = fmt if fmt in ("NCHW", "NHWC") else "NCHW"
    # Keep the old pool's output rank: timm heads that normalise the pooled map expect (B, C, 1, 1).
    pool.flatten = isinstance(getattr(old, "flatten", nn.Flatten()), nn.Flatten)
    owner.global_pool = pool
    if pool.feat_mult() != 1:
        if not isinstance(classifier, nn.Linear):
            raise TypeError(f"cannot widen the classifier {type(classifier).__name__} of {type(model).__name__}")
        for parent in model.modules():
            for name, child in parent.named_children():
                if child is classifier:
                    setattr(parent, name, _widened(classifier, pool))
    return model
