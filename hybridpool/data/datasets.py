"""Small map-style datasets that yield ``(image, label)`` with ``image`` a ``(C, H, W)`` float tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ArrayImageDataset", "ImageFileDataset", "TransformedDataset", "load_rgb"]


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to an RGB PIL image (grey and palette images are converted)."""
    with Image.open(path) as img:
        return img.convert("RGB")


class ImageFileDataset(Dataset):
    """Image files with integer labels.

    Args:
        paths: ``N`` image paths.
        labels: ``(N,)`` integer labels in ``0..K-1``.
        transform: PIL image -> ``(C, H, W)`` tensor.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
    ):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[index])), int(self.labels[index])


class ArrayImageDataset(Dataset):
    """Images held in memory as a ``uint8`` array ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB).

    Each item is passed to ``transform`` as a ``uint8`` tensor ``(H, W)`` or ``(H, W, 3)`` (no copy), e.g.
    :class:`~hybridpool.data.transforms.SmallImageTransform`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(torch.from_numpy(self.images[index])), int(self.labels[index])


class TransformedDataset(Dataset):
    """Wrap a dataset yielding ``(PIL image, label)`` (a torchvision dataset built without a transform)."""

    def __init__(self, base: Any, transform: Callable[[Image.Image], torch.Tensor]):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[index]
        if isinstance(img, Image.Image) and img.mode != "RGB":
            img = img.convert("RGB")
        return self.transform(img), int(label)
