"""Flatten: no pooling at all, the whole feature map goes to the fully connected head.

The baseline that global pooling replaced: AlexNet and VGG (Simonyan & Zisserman, ICLR 2015) flatten the last
feature map into one long vector for a fully connected classifier; Network in Network (Lin et al., ICLR 2014)
introduced global average pooling in its place, arguing that GAP is more robust to spatial translations of the
input and has no parameters to overfit. With this layer as the "pool" of a :class:`~hybridpool.models.Classifier`
the head is ``Linear(C * H * W, num_classes)``: a position-dependent classifier to compare GAP with.

The layer keeps the order of a NCHW ``flatten(1)``: feature ``c * H * W + h * W + w`` is channel ``c`` at
``(h, w)``, for channels_last and NHWC inputs too. Its width depends on the spatial size of the feature map,
so that size is fixed at construction (``spatial_size``) and ``feat_mult()`` is ``H * W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange

from ._base import PoolBase

__all__ = ["Flatten"]


def _spatial_pair(spatial_size: int | Sequence[int] | None) -> tuple[int, int]:
    """``7`` or ``(7, 7)`` or ``[7, 5]`` -> ``(H, W)``; a ValueError says what was given otherwise."""
    if spatial_size is None:
        raise ValueError(
            "Flatten needs the spatial size of the feature map it flattens: pass spatial_size=(H, W) (or an int "
            "for a square map), e.g. spatial_size=(7, 7) for MobileNetV2/ResNet at 224 px; from the command line "
            "pool=flatten pool.spatial_size=[7,7]"
        )
    if isinstance(spatial_size, bool):
        raise ValueError(f"Flatten: spatial_size must be an int or a pair (H, W) of ints, got {spatial_size!r}")
    if isinstance(spatial_size, int):
        pair: tuple = (spatial_size, spatial_size)
    elif isinstance(spatial_size, Sequence) and not isinstance(spatial_size, str) and len(spatial_size) == 2:
        pair = tuple(spatial_size)
    else:
        raise ValueError(f"Flatten: spatial_size must be an int or a pair (H, W) of ints, got {spatial_size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"Flatten: spatial_size must hold positive ints (H, W), got {spatial_size!r}")
    return int(pair[0]), int(pair[1])


class Flatten(PoolBase):
    """Flatten the feature map: ``(B, C, H, W)`` -> ``(B, C * H * W)`` in NCHW order; no parameters.

    Args:
        channels: input channels ``C`` (optional; checked when given).
        spatial_size: ``(H, W)`` of the feature maps this layer will receive (an int for ``H == W``); required,
            because the output width ``C * H * W`` (``feat_mult() == H * W``) sizes the classifier's head. A
            feature map of another size raises a ``ValueError`` naming both sizes.
        flatten: ``False`` returns ``(B, C * H * W, 1, 1)``.
        input_fmt: ``"NCHW"`` or ``"NHWC"`` (a ``(B, H, W, C)`` input); the output order is NCHW's either way.
    """

    def __init__(
        self,
        channels: int | None = None,
        spatial_size: int | Sequence[int] | None = None,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        super().__init__(channels, flatten, input_fmt)
        self.spatial_size = _spatial_pair(spatial_size)

    def feat_mult(self) -> int:
        """``H * W``: the output has ``C * H * W`` features."""
        return self.spatial_size[0] * self.spatial_size[1]

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x``: ``(B, C, H, W)`` (any memory layout) -> ``((B, C * H * W), {})``, feature ``(c * H + h) * W + w``."""
        h, w = x.shape[-2:]
        if (h, w) != self.spatial_size:
            eh, ew = self.spatial_size
            raise ValueError(
                f"Flatten was built for a {eh}x{ew} feature map (spatial_size=({eh}, {ew})) but got a {h}x{w} one "
                f"(input shape {tuple(x.shape)} as (B, C, H, W)); set spatial_size=({h}, {w}) "
                f"(pool.spatial_size=[{h},{w}]) or feed images of the size it was built for"
            )
        return rearrange(x, "b c h w -> b (c h w)"), {}  # a reshape: copies a channels_last view into NCHW order

    def extra_repr(self) -> str:
        return ", ".join(s for s in (super().extra_repr(), f"spatial_size={self.spatial_size}") if s)
