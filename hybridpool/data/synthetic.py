"""Synthetic diagnostic tasks for global pooling, generated from a seed (no files, vectorised numpy).

Tasks (images ``(N, C, S, S)`` ``float32``, labels ``(N,)`` ``int64`` balanced over ``num_classes``):

``"texture"``
    A patchwork of noisy sine-grating cells (a 4x4 grid of ``S/4`` px cells), each with one of ``K``
    orientations ``pi * j / K`` and a random phase. The class ``k`` is the *majority* orientation: each cell
    shows orientation ``k`` with probability ``1/K + 0.4 (1 - 1/K)`` (0.55 for ``K = 4``) and another one
    otherwise. Nearly every image contains every orientation somewhere, so "is there a cell of orientation
    j" (a max over positions) says little, while the proportion of cells (an average over positions, GAP)
    decides the class.
``"detail"``
    Smooth clutter plus white noise, with one small (5x5) zero-mean motif out of ``K`` stamped at a random
    position; the motif decides the class. All motifs have the same mean (0) and energy, so global image
    statistics carry no class information; max / attention pooling of a motif detector should win over GAP.
``"finegrained"``
    A bird-like object (elliptic body, a head and a tail) at a random position and scale over clutter; body
    and tail colours are random, the class is the colour of the small head (``K`` hues; grey levels if
    ``channels == 1``). The difference lives in a small part located relative to the object.

Same seed -> bitwise identical arrays; train / val / test use distinct derived seeds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from hybridpool.arguments import ArgumentError, check_rules, number, one_of, raise_first
from hybridpool.data.base import ClassificationDataModule
from hybridpool.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DEFAULT_NOISE",
    "MOTIFS",
    "TASKS",
    "SyntheticDataModule",
    "SyntheticDataset",
    "SyntheticTransform",
    "make_synthetic",
]

TASKS = ("texture", "detail", "finegrained")
#: white-noise standard deviation used when ``noise=None``
DEFAULT_NOISE: dict[str, float] = {"texture": 1.0, "detail": 0.6, "finegrained": 0.4}
#: texture task: a cell shows the class orientation with probability 1/K + (1 - 1/K) * TEXTURE_MAJORITY
TEXTURE_MAJORITY = 0.4
_TASK_IDS = {t: i for i, t in enumerate(TASKS)}
_STREAMS = {"train": 0, "val": 1, "test": 2}
#: the range of each argument of SyntheticDataModule's own that has one (make_synthetic checks the task's)
_RULES = {
    "task": functools.partial(one_of, choices=TASKS),
    "num_train": functools.partial(number, low=1),
    "num_val": functools.partial(number, low=1),
    "num_test": functools.partial(number, low=1),
}


def _motif(rows: list[str]) -> np.ndarray:
    m = np.array([[1.0 if ch == "#" else 0.0 for ch in r] for r in rows], dtype=np.float64)
    m -= m.mean()
    return (m / np.sqrt((m**2).mean())).astype(np.float32)


#: 5x5 motifs of the "detail" task, zero mean and unit RMS (so equal mean and energy)
MOTIFS: np.ndarray = np.stack(
    [
        _motif(["..#..", "..#..", "#####", "..#..", "..#.."]),  # plus
        _motif(["#...#", ".#.#.", "..#..", ".#.#.", "#...#"]),  # x
        _motif(["#####", "#...#", "#...#", "#...#", "#####"]),  # square ring
        _motif(["#####", "..#..", "..#..", "..#..", "..#.."]),  # T
        _motif(["#....", "#....", "#....", "#....", "#####"]),  # L
        _motif(["#...#", "#...#", "#####", "#...#", "#...#"]),  # H
        _motif(["..#..", ".#.#.", "#...#", ".#.#.", "..#.."]),  # diamond
        _motif(["#####", "....#", "...#.", "..#..", ".#..."]),  # 7
    ]
)


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    labels = np.arange(n, dtype=np.int64) % k
    return labels[rng.permutation(n)]


def _upsample_matrix(coarse: int, size: int) -> np.ndarray:
    """``(size, coarse)`` bilinear interpolation matrix (align_corners=True)."""
    pos = np.linspace(0.0, coarse - 1.0, size)
    lo = np.clip(np.floor(pos).astype(int), 0, coarse - 2)
    w = pos - lo
    mat = np.zeros((size, coarse), dtype=np.float32)
    mat[np.arange(size), lo] = 1.0 - w
    mat[np.arange(size), lo + 1] = w
    return mat


def _clutter(rng: np.random.Generator, n: int, channels: int, size: int, amplitude: float) -> np.ndarray:
    """Smooth random background ``(n, channels, size, size)``: 4x4 Gaussian noise upsampled bilinearly."""
    coarse = rng.standard_normal((n, channels, 4, 4), dtype=np.float32) * np.float32(amplitude)
    up = _upsample_matrix(4, size)
    return np.matmul(np.matmul(up, coarse), up.T)


def _texture(rng: np.random.Generator, labels: np.ndarray, k: int, channels: int, size: int) -> np.ndarray:
    n = labels.size
    cell = max(4, size // 4)
    cells = -(-size // cell)
    # orientation index of every cell: the class orientation with probability p, any other one otherwise
    p_major = 1.0 / k + (1.0 - 1.0 / k) * TEXTURE_MAJORITY
    other = (labels[:, None, None] + rng.integers(1, k, (n, cells, cells))) % k
    orient = np.where(rng.uniform(0.0, 1.0, (n, cells, cells)) < p_major, labels[:, None, None], other)
    theta = np.pi * orient / k + rng.uniform(-0.15, 0.15, (n, cells, cells)) * np.pi / k
    phase = rng.uniform(0.0, 2.0 * np.pi, (n, cells, cells))
    freq = rng.uniform(0.15, 0.28, (n, 1, 1))
    wx = (2.0 * np.pi * freq * np.cos(theta)).astype(np.float32)
    wy = (2.0 * np.pi * freq * np.sin(theta)).astype(np.float32)

    def per_pixel(a: np.ndarray) -> np.ndarray:  # (n, cells, cells) -> (n, size, size)
        return np.repeat(np.repeat(a, cell, axis=1), cell, axis=2)[:, :size, :size]

    coords = np.arange(size, dtype=np.float32)
    grating = (
        per_pixel(wx) * coords[None, None, :]
        + per_pixel(wy) * coords[None, :, None]
        + per_pixel(phase.astype(np.float32))
    )
    np.sin(grating, out=grating)  # (n, H, W)
    contrast = rng.uniform(0.6, 1.0, (n, 1)).astype(np.float32)
    colour = rng.uniform(0.5, 1.0, (n, channels)).astype(np.float32) * contrast
    return colour[:, :, None, None] * grating[:, None]


def _detail(rng: np.random.Generator, labels: np.ndarray, k: int, channels: int, size: int) -> np.ndarray:
    n = labels.size
    m = MOTIFS.shape[-1]
    if size < m:
        raise ValueError(f"the detail task needs image_size >= {m}, got {size}")
    images = _clutter(rng, n, channels, size, amplitude=0.6)
    ys = rng.integers(0, size - m + 1, n)
    xs = rng.integers(0, size - m + 1, n)
    gain = rng.uniform(1.2, 1.6, (n, channels)).astype(np.float32)
    rows = ys[:, None, None] + np.arange(m)[None, :, None]  # (n, m, 1)
    cols = xs[:, None, None] + np.arange(m)[None, None, :]  # (n, 1, m)
    stamp = MOTIFS[labels]  # (n, m, m)
    for c in range(channels):
        images[np.arange(n)[:, None, None], c, rows, cols] += gain[:, c, None, None] * stamp
    return images


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray) -> np.ndarray:
    """Vectorised HSV (value 1) -> RGB in ``[0, 1]``: ``(n,)``, ``(n,)`` -> ``(n, 3)``."""
    h6 = (np.asarray(hue, dtype=np.float64) % 1.0) * 6.0
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h6[:, None]) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (1.0 - np.asarray(sat, dtype=np.float64)[:, None] * ramp).astype(np.float32)


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """``(n, 3)`` RGB in ``[0, 1]`` -> ``(n, channels)`` in ``[-1, 1]`` (channels beyond 3 repeat RGB)."""
    return np.tile(2.0 * rgb - 1.0, (1, -(-channels // 3)))[:, :channels].astype(np.float32)


def _palette(k: int, channels: int) -> np.ndarray:
    """``(k, channels)`` class colours in ``[-1, 1]``: equally spaced saturated hues, or grey levels."""
    if channels == 1:
        return np.linspace(-1.0, 1.0, k, dtype=np.float32)[:, None]
    return _to_channels(_hsv_to_rgb(np.arange(k) / k, np.ones(k)), channels)


def _random_colours(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """``(n, channels)`` random colours in ``[-1, 1]`` (random hue and saturation, or grey level)."""
    if channels == 1:
        return rng.uniform(-1.0, 1.0, (n, 1)).astype(np.float32)
    return _to_channels(_hsv_to_rgb(rng.uniform(0.0, 1.0, n), rng.uniform(0.3, 1.0, n)), channels)


def _ellipse_mask(cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased ellipse masks ``(n, size, size)`` in ``[0, 1]``."""
    g = np.arange(size, dtype=np.float32) + np.float32(0.5)
    dx = ((g[None, :] - cx[:, None]) / rx[:, None]) ** 2  # (n, W)
    dy = ((g[None, :] - cy[:, None]) / ry[:, None]) ** 2  # (n, H)
    # 1 - dist ~ (1 - dist^2) / 2 near the edge: a ~1 px wide linear ramp without a square root
    scale = (np.float32(0.5) * np.minimum(rx, ry)).astype(np.float32)[:, None, None]
    mask = np.float32(1.0) - (dy[:, :, None] + dx[:, None, :])  # (n, H, W)
    mask *= scale
    mask += np.float32(0.5)
    return np.clip(mask, 0.0, 1.0, out=mask)


def _finegrained(rng: np.random.Generator, labels: np.ndarray, k: int, channels: int, size: int) -> np.ndarray:
    n = labels.size
    if size < 16:
        raise ValueError(f"the finegrained task needs image_size >= 16, got {size}")
    images = _clutter(rng, n, channels, size, amplitude=0.4)
    r = rng.uniform(0.17, 0.26, n).astype(np.float32) * size
    aspect = rng.uniform(0.65, 0.85, n).astype(np.float32)
    rx, ry = r, r * aspect
    flip = rng.integers(0, 2, n).astype(np.float32) * 2.0 - 1.0  # head to the right (+1) or left (-1)
    lo_x, hi_x = 1.05 * rx + 1.0, size - 1.05 * rx - 1.0
    cx = lo_x + (hi_x - lo_x) * rng.uniform(0.0, 1.0, n).astype(np.float32)
    lo_y, hi_y = ry + 0.35 * r + 1.5, size - ry - 1.0
    cy = lo_y + (hi_y - lo_y) * rng.uniform(0.0, 1.0, n).astype(np.float32)
    body_col = _random_colours(rng, n, channels)
    tail_col = _random_colours(rng, n, channels)
    head_col = _palette(k, channels)[labels]
    head_r = np.maximum(0.3 * r, 1.3)
    parts = [
        (_ellipse_mask(cx - flip * 0.95 * rx, cy + 0.2 * ry, 0.45 * rx, 0.22 * ry + 0.6, size), tail_col),
        (_ellipse_mask(cx, cy, rx, ry, size), body_col),
        (_ellipse_mask(cx + flip * 0.8 * rx, cy - 0.75 * ry, head_r, head_r, size), head_col),
    ]
    for mask, colour in parts:  # alpha compositing: images += mask * (colour - images)
        images += mask[:, None] * (colour[:, :, None, None] - images)
    return images


_GENERATORS = {"texture": _texture, "detail": _detail, "finegrained": _finegrained}


def make_synthetic(
    task: str,
    n: int,
    num_classes: int,
    image_size: int = 32,
    channels: int = 3,
    noise: float | None = None,
    seed: int = 0,
    stream: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic split.

    Args:
        task: ``"texture"`` | ``"detail"`` | ``"finegrained"``.
        n: number of images.
        num_classes: ``K`` (texture: any >= 2; detail: 2..8; finegrained: 2..12).
        image_size: side ``S`` of the square images.
        channels: ``C``.
        noise: standard deviation of the white pixel noise (``None``: the task's default, ``DEFAULT_NOISE``).
        seed, stream: the generator is seeded with ``(seed, task id, stream)``; use one stream per split.

    Returns:
        ``images (n, C, S, S) float32``, ``labels (n,) int64`` (class counts differ by at most one).
    """
    if task not in _GENERATORS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {list(TASKS)}")
    max_k = {"texture": 64, "detail": len(MOTIFS), "finegrained": 12}[task]
    if not 2 <= num_classes <= max_k:
        raise ValueError(f"num_classes for the {task} task must be in 2..{max_k}, got {num_classes}")
    if channels < 1 or image_size < 1 or n < 0:
        raise ValueError(f"need channels >= 1, image_size >= 1, n >= 0; got {channels}, {image_size}, {n}")
    sigma = DEFAULT_NOISE[task] if noise is None else float(noise)
    if sigma < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng([int(seed), _TASK_IDS[task], int(stream)])
    labels = _balanced_labels(rng, n, num_classes)
    images = _GENERATORS[task](rng, labels, num_classes, channels, image_size)
    if sigma > 0:
        images += np.float32(sigma) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.ascontiguousarray(images, dtype=np.float32), labels


class SyntheticTransform:
    """Per-channel normalisation (applied once to the whole split) + optional random circular shift.

    Args:
        mean, std: per-channel values, or None for no normalisation.
        max_shift: random ``torch.roll`` of each training image by up to this many pixels (0 = none).
    """

    def __init__(self, mean: list[float] | None, std: list[float] | None, max_shift: int = 0):
        self.mean, self.std, self.max_shift = mean, std, int(max_shift)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a whole split ``(N, C, H, W)``."""
        if self.mean is None or self.std is None:
            return images
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Augment one prepared image ``(C, H, W)``."""
        if self.max_shift <= 0:
            return img
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return torch.roll(img, shifts=(dy, dx), dims=(-2, -1))

    def __repr__(self) -> str:
        norm = "none" if self.mean is None else f"mean={self.mean}, std={self.std}"
        return f"SyntheticTransform(normalize={norm}, max_shift={self.max_shift})"


class SyntheticDataset(Dataset):
    """In-memory split: items ``(image (C, H, W) float32, label int)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: SyntheticTransform):
        self.images = transform.prepare(images)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class SyntheticDataModule(ClassificationDataModule):
    """Seeded synthetic diagnostic task as a LightningDataModule (see the module docstring for the tasks).

    Args:
        task: ``"texture"`` | ``"detail"`` | ``"finegrained"``.
        num_train, num_val, num_test: split sizes (generated from distinct derived seeds).
        image_size: side of the square images (default 32).
        channels: image channels (default 3).
        num_classes: number of classes (balanced).
        noise: white-noise standard deviation (``None``: the task's default).
        seed: run seed (loader shuffle; also the data seed unless ``split_seed`` is given).
        split_seed: seed of the generated data (``None`` -> ``seed``).
        batch_size, num_workers: loader settings (and the other arguments of
            :class:`~hybridpool.data.base.ClassificationDataModule` but those in ``FIXED_ARGS``).
        normalize: ``"none"`` (default; the data is already roughly zero-mean), ``"dataset"`` (train-split
            per-channel mean/std) or ``"imagenet"`` (3 channels only).
        augment: random circular shifts of up to ``image_size // 8`` pixels (class-preserving for all tasks).
        train_fraction: stratified fraction of the training split that is kept.
    """

    TASKS: ClassVar[tuple[str, ...]] = TASKS
    #: generated in memory: no files, no official split, its own channels and augmentation
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {
        "root": None,
        "val_fraction": 0.0,
        "test_fraction": 0.0,
        "channels": None,
        "download": False,
        "min_scale": 0.35,
        "flip": True,
    }

    def __init__(
        self,
        task: str = "texture",
        num_train: int = 5000,
        num_val: int = 1000,
        num_test: int = 1000,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int = 4,
        noise: float | None = None,
        *,
        batch_size: int = 128,
        normalize: str = "none",
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        own = {"task": task, "num_train": num_train, "num_val": num_val, "num_test": num_test, "channels": channels}
        raise_first(self.check_args(**own, normalize=normalize))
        super().__init__(
            **self._base_args(
                image_size=image_size, batch_size=batch_size, normalize=normalize, augment=augment, **kwargs
            )
        )
        self.root = None  # type: ignore[assignment]
        self.task = task
        self.name = f"synth_{task}"
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.channels = int(channels)
        self.in_channels = int(channels)
        self.num_classes = int(num_classes)
        self.noise = DEFAULT_NOISE[task] if noise is None else float(noise)
        self.class_names = [f"{task}_{k}" for k in range(self.num_classes)]
        # validate the task parameters now (cheap), not at setup
        make_synthetic(task, 0, self.num_classes, self.image_size, self.channels, self.noise)  # type: ignore[arg-type]
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def check_args(cls, **kwargs: Any) -> list[ArgumentError]:
        own = check_rules(_RULES, kwargs)
        channels = kwargs.get("channels", 3)
        if kwargs.get("normalize") == "imagenet" and channels != 3:
            own.append(ArgumentError("normalize", "imagenet", f"'none' or 'dataset' with channels={channels}"))
        return [*own, *super().check_args(**kwargs)]

    def _load_sources(self) -> dict[str, np.ndarray]:
        for split, n in self.sizes.items():
            images, labels = make_synthetic(
                self.task,
                n,
                self.num_classes,
                self.image_size,  # type: ignore[arg-type]
                self.channels,
                self.noise,
                self.split_seed,
                _STREAMS[split],
            )
            self._data[split] = (torch.from_numpy(images), torch.from_numpy(labels))
        return {split: labels.numpy() for split, (_, labels) in self._data.items()}

    def arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (un-normalised, full) split: ``images (N, C, S, S) float32``, ``labels (N,) int64``."""
        self.sources()
        return self._data[self._check_split(split)]

    def dataset_stats(self) -> tuple[list[float], list[float]]:
        if self._stats is None:
            images = self.arrays("train")[0]
            self._stats = (images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).tolist())
        return self._stats  # type: ignore[return-value]

    def transforms(self) -> tuple[SyntheticTransform, SyntheticTransform]:  # type: ignore[override]
        if self._transforms is None:
            mean: list[float] | None = None
            std: list[float] | None = None
            if self.normalize == "imagenet":
                mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
            elif self.normalize == "dataset":
                m, s = self.dataset_stats()
                mean, std = [round(v, 4) for v in m], [round(max(v, 1e-3), 4) for v in s]
            shift = max(1, int(self.image_size) // 8) if self.augment else 0  # type: ignore[arg-type]
            self._transforms = (SyntheticTransform(mean, std, shift), SyntheticTransform(mean, std, 0))
        return self._transforms  # type: ignore[return-value]

    def _source_dataset(self, source: str, transform: Any) -> Dataset:
        images, labels = self.arrays(source)
        return SyntheticDataset(images, labels, transform)

    def _describe_extra(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "noise": self.noise,
            "sizes": dict(self.sizes),
            "channels": self.channels,
            "generator_version": 1,
        }
