"""Shared plumbing of every global pooling layer: input checks, layouts and the output shape."""

from __future__ import annotations

import torch
from torch import nn

INPUT_FORMATS = ("NCHW", "NHWC")


def check_feature_map(x: torch.Tensor, channels: int | None = None, input_fmt: str = "NCHW") -> torch.Tensor:
    """Validate a feature map and return it as a ``(B, C, H, W)`` view (no copy).

    Args:
        x: ``(B, C, H, W)`` for ``input_fmt="NCHW"`` or ``(B, H, W, C)`` for ``"NHWC"``; floating dtype.
        channels: expected ``C``, or ``None`` to accept any.
        input_fmt: ``"NCHW"`` or ``"NHWC"``.

    Returns:
        ``(B, C, H, W)``: for NHWC input a permuted view, which is channels_last in memory.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor feature map, got {type(x).__name__}")
    if x.dim() != 4:
        layout = "(B, C, H, W)" if input_fmt == "NCHW" else "(B, H, W, C)"
        raise ValueError(f"expected a 4-D feature map {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point feature map (float16/bfloat16/float32/float64), got {x.dtype}")
    if input_fmt == "NHWC":
        x = x.permute(0, 3, 1, 2)
    elif input_fmt != "NCHW":
        raise ValueError(f"unknown input_fmt {input_fmt!r}; accepted: {', '.join(INPUT_FORMATS)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"spatial size must be at least 1x1, got H={x.shape[2]}, W={x.shape[3]}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"this pooling layer was built for {channels} channels, got a feature map with {x.shape[1]}")
    return x


def check_channels(channels: int | None, layer: str, required: bool = False) -> int | None:
    """Validate a ``channels`` constructor argument (positive int, or None where allowed)."""
    if channels is None:
        if required:
            raise ValueError(f"{layer} needs the number of input channels: pass channels=<C>")
        return None
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"{layer}: channels must be a positive int, got {channels!r}")
    return channels


class PoolBase(nn.Module):
    """Base class of the global pooling layers.

    A layer maps a feature map ``(B, C, H, W)`` (or ``(B, H, W, C)`` with ``input_fmt="NHWC"``) to
    ``(B, C * feat_mult())``, or ``(B, C * feat_mult(), 1, 1)`` with ``flatten=False``. Subclasses implement
    :meth:`pool`, which receives a validated ``(B, C, H, W)`` view and returns ``(out, extras)``.
    """

    def __init__(self, channels: int | None = None, flatten: bool = True, input_fmt: str = "NCHW") -> None:
        super().__init__()
        if input_fmt not in INPUT_FORMATS:
            raise ValueError(f"unknown input_fmt {input_fmt!r}; accepted: {', '.join(INPUT_FORMATS)}")
        self.channels = check_channels(channels, type(self).__name__)
        self.flatten = flatten
        self.input_fmt = input_fmt

    def feat_mult(self) -> int:
        """Output width divided by the input channels ``C``."""
        return 1

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x``: ``(B, C, H, W)`` -> ``((B, C * feat_mult()), extras)``."""
        raise NotImplementedError

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.flatten else out[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` (or NHWC) -> ``(B, C * feat_mult())`` (``(B, C*m, 1, 1)`` unflattened)."""
        out, _ = self.pool(check_feature_map(x, self.channels, self.input_fmt), need_extras=False)
        return self._finish(out)

    def forward_with_extras(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like :meth:`forward`, and also what the layer computed on the way, per sample.

        Returns:
            ``(out, extras)``: ``extras["attn"]`` is an attention map ``(B, heads, H, W)`` for attention layers;
            :class:`HybridPool` adds ``extras["mix"]``, the mixing weights ``(B, n_branches)`` or
            ``(B, n_branches, C)``.
        """
        out, extras = self.pool(check_feature_map(x, self.channels, self.input_fmt), need_extras=True)
        return self._finish(out), extras

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Scalars worth logging over training (learned exponents, temperatures, mixing weights)."""
        return {}

    def extra_repr(self) -> str:
        parts = [] if self.channels is None else [f"channels={self.channels}"]
        if not self.flatten:
            parts.append("flatten=False")
        if self.input_fmt != "NCHW":
            parts.append(f"input_fmt={self.input_fmt!r}")
        return ", ".join(parts)


def positive_from_raw(raw: torch.Tensor, minimum: float) -> torch.Tensor:
    """``minimum + softplus(raw)``: a value kept above ``minimum`` with a gradient everywhere."""
    return minimum + nn.functional.softplus(raw)


def raw_from_positive(value: float | torch.Tensor, minimum: float) -> torch.Tensor:
    """Inverse of :func:`positive_from_raw`; ``value`` must be greater than ``minimum``."""
    v = torch.as_tensor(value, dtype=torch.float32) - minimum
    if bool((v <= 0).any()):
        raise ValueError(f"value must be greater than {minimum}, got {value}")
    return v + torch.log(-torch.expm1(-v))  # log(exp(v) - 1), stable for large v


def scale_free_layer_norm(v: torch.Tensor) -> torch.Tensor:
    """``layer_norm`` over the last dim of ``(B, D)``, after dividing by the max magnitude.

    Layer norm does not depend on the scale of its input, but its variance overflows for activations near the top
    of float16/bfloat16 range; dividing by the per-sample max first keeps it finite.
    """
    v = v / v.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    return nn.functional.layer_norm(v, v.shape[-1:])
