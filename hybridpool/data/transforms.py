"""Image transforms per dataset family (torchvision ``transforms.v2``; their ``repr`` describes them).

Families:
    * small images (Fashion-MNIST 28x28 grey, CIFAR 32x32), held in memory as ``uint8`` arrays: random crop
      with zero padding + optional horizontal flip for training; the eval transform only converts (and
      resizes if ``image_size`` differs). A light tensor transform (:class:`SmallImageTransform`), since
      torchvision's per-image overhead dominates at this size.
    * natural / fine-grained images (CUB, flowers, DTD, ...): ``RandomResizedCrop(image_size,
      scale=(min_scale, 1))`` + flip for training; ``Resize(int(image_size * 256 / 224))`` +
      ``CenterCrop(image_size)`` for evaluation.

The natural-image pipelines take a PIL image; every pipeline returns a ``(C, H, W)`` ``float32`` tensor,
in ``[0, 1]`` before normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_CHOICES",
    "RepeatChannels",
    "SmallImageTransform",
    "natural_image_transforms",
    "normalization",
    "small_image_transforms",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
NORMALIZE_CHOICES = ("imagenet", "dataset", "none")

Stats = tuple[Sequence[float], Sequence[float]]


class RepeatChannels:
    """Repeat a one-channel image tensor ``(1, H, W)`` to ``(channels, H, W)`` (grey -> RGB backbones)."""

    def __init__(self, channels: int):
        self.channels = int(channels)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-3] == self.channels:
            return img
        if img.shape[-3] != 1:
            raise ValueError(
                f"RepeatChannels({self.channels}) expects 1 or {self.channels} channels, "
                f"got a tensor of shape {tuple(img.shape)}"
            )
        return img.expand(*img.shape[:-3], self.channels, *img.shape[-2:]).contiguous()

    def __repr__(self) -> str:
        return f"RepeatChannels(channels={self.channels})"


def _fit_channels(values: Sequence[float], channels: int) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) == channels:
        return vals
    if len(vals) == 1:
        return vals * channels
    if channels == 1:
        return [sum(vals) / len(vals)]
    raise ValueError(f"cannot fit {len(vals)} normalisation values to {channels} channels")


def normalization(
    normalize: str, channels: int, dataset_stats: Callable[[], Stats]
) -> tuple[list[float], list[float]] | None:
    """Per-channel ``(mean, std)`` for ``normalize`` in ``{"imagenet", "dataset", "none"}`` (None: none).

    Args:
        normalize: ``"imagenet"`` (ImageNet mean/std, for pretrained backbones; averaged to one value for
            one-channel images), ``"dataset"`` (the dataset's own per-channel mean/std, from
            ``dataset_stats()``), or ``"none"`` (no normalisation: values stay in ``[0, 1]``).
        channels: number of channels of the tensor that will be normalised.
        dataset_stats: called only for ``"dataset"``; returns ``(mean, std)`` sequences.

    Values are rounded to 4 decimals (they appear in ``describe()``).
    """
    if normalize == "none":
        return None
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif normalize == "dataset":
        mean, std = dataset_stats()
    else:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
    mean_r = [round(v, 4) for v in _fit_channels(mean, channels)]
    std_r = [round(max(v, 1e-3), 4) for v in _fit_channels(std, channels)]
    return mean_r, std_r


class SmallImageTransform:
    """Fast transform of a small ``uint8`` image tensor ``(H, W)`` or ``(H, W, C)`` to ``(C', S, S)`` float.

    Steps, in order: resize to ``image_size`` (bilinear, antialiased; only if the side differs), random
    crop of side ``image_size`` after zero padding by ``crop_padding`` (0: none), random horizontal flip
    (if ``flip``), scaling to ``[0, 1]``, repeating one channel to ``channels`` (if given), normalisation
    with ``norm = (mean, std)`` (if given). The same result as the torchvision pipeline
    ``Resize, RandomCrop(padding), RandomHorizontalFlip, ToTensor, Normalize`` at a fraction of its
    per-image overhead; randomness comes from torch's global generator.
    """

    def __init__(
        self,
        image_size: int,
        native_size: int,
        crop_padding: int = 0,
        flip: bool = False,
        channels: int | None = None,
        norm: tuple[list[float], list[float]] | None = None,
    ):
        self.image_size = int(image_size)
        self.native_size = int(native_size)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.channels = None if channels is None else int(channels)
        self.norm = norm
        self._mean = None if norm is None else torch.tensor(norm[0]).view(-1, 1, 1)
        self._std = None if norm is None else torch.tensor(norm[1]).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        x = x.to(torch.float32).div_(255.0)  # (C, H, W) in [0, 1]
        size = self.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(
                x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0]
        if self.crop_padding > 0:
            pad = self.crop_padding
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            x = x[:, top : top + size, left : left + size]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        if self.channels is not None and x.shape[0] != self.channels:
            x = RepeatChannels(self.channels)(x)
        if self._mean is not None and self._std is not None:
            x = (x - self._mean) / self._std
        return x.contiguous()

    def __repr__(self) -> str:
        return (
            f"SmallImageTransform(image_size={self.image_size}, native_size={self.native_size}, "
            f"crop_padding={self.crop_padding}, flip={self.flip}, channels={self.channels}, "
            f"normalize={'none' if self.norm is None else f'mean={self.norm[0]}, std={self.norm[1]}'})"
        )


def _to_tensor() -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def _tail(channels: int | None, norm: tuple[list[float], list[float]] | None) -> list[Callable]:
    tail: list[Callable] = _to_tensor()
    if channels is not None:
        tail.append(RepeatChannels(channels))
    if norm is not None:
        tail.append(v2.Normalize(mean=norm[0], std=norm[1]))
    return tail


def small_image_transforms(
    image_size: int,
    native_size: int,
    augment: bool,
    crop_padding: int,
    flip: bool,
    channels: int | None,
    norm: tuple[list[float], list[float]] | None,
) -> tuple[SmallImageTransform, SmallImageTransform]:
    """``(train, eval)`` transforms for small images (``uint8`` tensor in, ``(C, S, S)`` float out).

    Args:
        image_size: output side ``S``; images are resized from ``native_size`` first when different.
        native_size: the dataset's own side (28 for Fashion-MNIST, 32 for CIFAR).
        augment: if False the train transform equals the eval transform.
        crop_padding: zero padding of the random crop (0 disables the crop).
        flip: random horizontal flip in training.
        channels: repeat a grey image to this many channels (None keeps the native channels).
        norm: ``(mean, std)`` of the final normalisation (None for none).
    """
    evaluation = SmallImageTransform(image_size, native_size, 0, False, channels, norm)
    if not augment:
        return evaluation, evaluation
    return SmallImageTransform(image_size, native_size, crop_padding, flip, channels, norm), evaluation


def natural_image_transforms(
    image_size: int,
    augment: bool,
    min_scale: float,
    flip: bool,
    channels: int | None,
    norm: tuple[list[float], list[float]] | None,
) -> tuple[v2.Compose, v2.Compose]:
    """``(train, eval)`` transforms for natural images (PIL in, ``(C, image_size, image_size)`` float out).

    Train: ``RandomResizedCrop(image_size, scale=(min_scale, 1))`` + horizontal flip (if ``flip``).
    Eval: ``Resize(int(image_size * 256 / 224))`` + ``CenterCrop(image_size)``. Without ``augment`` the
    train transform equals the eval transform.
    """
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    tail = _tail(channels, norm)
    eval_steps: list[Callable] = [
        v2.Resize(int(image_size * 256 / 224), antialias=True),
        v2.CenterCrop(image_size),
    ]
    if not augment:
        return v2.Compose(eval_steps + tail), v2.Compose(eval_steps + tail)
    train: list[Callable] = [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True)]
    if flip:
        train.append(v2.RandomHorizontalFlip())
    return v2.Compose(train + tail), v2.Compose(eval_steps + tail)
