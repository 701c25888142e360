"""``ClassificationDataModule``: the base every hybridpool datamodule derives from.

A datamodule owns one or more *sources* (the official parts of a release, e.g. ``"train"`` and ``"test"``,
or a single ``"all"`` when the release has no split) with their labels, and maps the splits
``train`` / ``val`` / ``test`` onto index sets of those sources:

* sources ``train``, ``val``, ``test``: used as they are (``val_fraction`` unused);
* sources ``train``, ``test``: ``val`` is a stratified ``val_fraction`` of the official training set;
* source ``all``: a stratified ``(1 - val_fraction - test_fraction, val_fraction, test_fraction)`` split.

``train_fraction < 1`` then keeps a stratified, seeded subsample of the training split (nested: for a fixed
``split_seed`` the 10% subset lies inside the 20% subset). Splits are seeded with ``split_seed`` (defaults to
``seed``) and computed from labels only, never by decoding images.

Every dataset item is ``(image, label)``: ``image`` a ``(C, H, W)`` ``float32`` tensor, ``label`` an ``int``
in ``0..num_classes-1``; a loader batch is ``(images (B, C, H, W) float32, labels (B,) int64)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hybridpool.arguments import ArgumentError, check_rules, number, one_of, raise_first
from hybridpool.data.errors import resolve_root
from hybridpool.data.splits import class_counts, stratified_split, stratified_subsample
from hybridpool.data.transforms import (
    NORMALIZE_CHOICES,
    Stats,
    natural_image_transforms,
    normalization,
    small_image_transforms,
)

__all__ = ["SPLITS", "ClassificationDataModule", "check_datamodule_args"]

SPLITS = ("train", "val", "test")
Transform = Callable[[Any], torch.Tensor]

_FRACTION = functools.partial(number, low=0, high=1, high_open=True)
#: the range of each argument of ClassificationDataModule that has one
_RULES = {
    "batch_size": functools.partial(number, low=1),
    "num_workers": functools.partial(number, low=0),
    "normalize": functools.partial(one_of, choices=NORMALIZE_CHOICES),
    "train_fraction": functools.partial(number, low=0, high=1, low_open=True),
    "val_fraction": _FRACTION,
    "test_fraction": _FRACTION,
    "image_size": functools.partial(number, low=1),
    "channels": functools.partial(one_of, choices=(None, 1, 3)),
}


def check_datamodule_args(**kwargs: Any) -> list[ArgumentError]:
    """The problems of :class:`ClassificationDataModule` arguments among ``kwargs`` (others are ignored), without
    building anything; ``val_fraction + test_fraction < 1`` is checked when both are given."""
    problems = check_rules(_RULES, kwargs)
    val, test = kwargs.get("val_fraction"), kwargs.get("test_fraction")
    fractions_ok = not any(p.arg in ("val_fraction", "test_fraction") for p in problems)
    if fractions_ok and val is not None and test is not None and float(val) + float(test) >= 1.0:
        problems.append(ArgumentError("val_fraction", val, f"< 1 - test_fraction = {1.0 - float(test):g}"))
    return problems


class ClassificationDataModule(pl.LightningDataModule):
    """Base LightningDataModule for image classification.

    Args:
        root: data root holding the dataset folder; ``None`` -> ``$HYBRIDPOOL_DATA_ROOT``, else ``./data``.
        batch_size: loader batch size.
        num_workers: loader worker processes (``persistent_workers`` is on only when > 0).
        val_fraction: fraction of the (official) training data held out for validation.
        test_fraction: fraction held out for testing (only for releases without a test split).
        seed: run seed; seeds the train loader's shuffle (and the split unless ``split_seed`` is set).
        split_seed: seed of the train/val/test split and of the ``train_fraction`` subsample
            (``None`` -> ``seed``).
        image_size: side of the square images the loaders return.
        normalize: ``"imagenet"`` | ``"dataset"`` | ``"none"``.
        augment: random training augmentation (otherwise train images use the eval transform).
        train_fraction: stratified fraction of the training split that is kept, in ``(0, 1]``.
        channels: repeat grey images to this many channels (``None``: the native channel count).
        download: fetch the dataset with torchvision if it is missing (datasets torchvision can download).
        min_scale: lower bound of the ``RandomResizedCrop`` area scale (natural images).
        flip: random horizontal flip in training.

    Subclasses take their own arguments (and the shared ones whose default differs) by keyword and pass the rest on
    as ``**kwargs`` (``KWARGS_TO_BASE``); the base arguments a dataset does not use it sets itself
    (``FIXED_ARGS``, given to this constructor by :meth:`_base_args`), so they are not accepted.
    :func:`hybridpool.arguments.accepted_arguments` lists what a subclass accepts; :meth:`check_args` checks
    argument values without building anything, as the constructors do (each raises the first problem).

    Attributes (set by ``__init__``, before ``setup``): ``name``, ``num_classes``, ``in_channels``,
    ``image_size``, ``class_names`` (may be ``None`` until ``setup``), ``root`` (a ``Path``).
    """

    #: subclass constructors pass their ``**kwargs`` on to this constructor (the config check follows them)
    KWARGS_TO_BASE: ClassVar[bool] = True
    #: arguments of this constructor that a subclass sets itself (not accepted from its callers)
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {}

    name: str = "classification"
    #: "small" (crop + pad augmentation) or "natural" (RandomResizedCrop); subclasses may override transforms
    family: ClassVar[str] = "natural"
    #: per-channel (mean, std) used for ``normalize="dataset"``; None -> estimated from training images
    DATASET_STATS: ClassVar[Stats | None] = None
    #: side of the images as released (small-image family only)
    native_size: ClassVar[int] = 0
    crop_padding: ClassVar[int] = 4

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 224,
        normalize: str = "imagenet",
        augment: bool = True,
        train_fraction: float = 1.0,
        channels: int | None = None,
        download: bool = False,
        min_scale: float = 0.35,
        flip: bool = True,
    ) -> None:
        super().__init__()
        raise_first(
            check_datamodule_args(
                batch_size=batch_size,
                num_workers=num_workers,
                normalize=normalize,
                train_fraction=train_fraction,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                image_size=image_size,
                channels=channels,
            )
        )
        self.root: Path = resolve_root(root)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.split_seed = int(seed if split_seed is None else split_seed)
        self.image_size: int | tuple[int, int] = int(image_size)
        self.normalize = normalize
        self.augment = bool(augment)
        self.train_fraction = float(train_fraction)
        self.channels = None if channels is None else int(channels)
        self.download = bool(download)
        self.min_scale = float(min_scale)
        self.flip = bool(flip)
        self.num_classes: int = 0
        self.in_channels: int = 3 if channels is None else int(channels)
        self.class_names: list[str] | None = None
        self._sources_cache: dict[str, np.ndarray] | None = None
        self._split_cache: dict[str, tuple[str, np.ndarray]] | None = None
        self._transforms: tuple[Transform, Transform] | None = None
        self._stats: Stats | None = None
        self._datasets: dict[str, Dataset] = {}
        self._generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def check_args(cls, **kwargs: Any) -> list[ArgumentError]:
        """The problems of constructor arguments among ``kwargs`` (a subset is fine: those not given are not
        checked), without building anything; the constructor raises the first of them. Subclasses with arguments
        of their own extend it."""
        return check_datamodule_args(**{**kwargs, **cls.FIXED_ARGS})

    def _base_args(self, **kwargs: Any) -> dict[str, Any]:
        """``kwargs`` for this constructor plus ``FIXED_ARGS``; a caller's fixed argument is refused (TypeError)."""
        for arg, value in self.FIXED_ARGS.items():
            if arg in kwargs:
                raise TypeError(
                    f"{type(self).__name__}() got an unexpected keyword argument {arg!r} (it sets {arg}={value!r})"
                )
        return {**kwargs, **self.FIXED_ARGS}

    # ------------------------------------------------------------------ hooks for subclasses
    def _load_sources(self) -> dict[str, np.ndarray]:
        """Labels ``(N_s,)`` of each source (``train``+``test``, ``train``+``val``+``test`` or ``all``)."""
        raise NotImplementedError

    def _source_dataset(self, source: str, transform: Transform) -> Dataset:
        """The whole source as a dataset of ``(transform(image), label)``."""
        raise NotImplementedError

    def _source_ids(self, source: str, indices: np.ndarray) -> list[str] | None:
        """Stable file ids of ``indices`` in ``source`` (written by ``write_split``); None if only indices."""
        return None

    def _check_data(self) -> None:
        """Raise :class:`~hybridpool.data.errors.DatasetNotFoundError` if the dataset is missing."""

    def _download_data(self) -> None:
        """Fetch the dataset (only called when ``download=True``)."""

    def _describe_extra(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ splits
    def sources(self) -> dict[str, np.ndarray]:
        """Labels of each source of the release, loaded once (labels only, no image decoding)."""
        if self._sources_cache is None:
            if self.download:
                self._download_data()
            self._check_data()
            self._sources_cache = {k: np.asarray(v, dtype=np.int64) for k, v in self._load_sources().items()}
        return self._sources_cache

    def _split(self) -> dict[str, tuple[str, np.ndarray]]:
        if self._split_cache is None:
            self._split_cache = self._compute_split()
        return self._split_cache

    def _compute_split(self) -> dict[str, tuple[str, np.ndarray]]:
        src = self.sources()
        seed = self.split_seed
        if {"train", "val", "test"} <= src.keys():
            split = {s: (s, np.arange(src[s].size, dtype=np.int64)) for s in SPLITS}
        elif {"train", "test"} <= src.keys():
            if not 0.0 < self.val_fraction < 1.0:
                raise ValueError(f"{self.name}: val_fraction must be in (0, 1), got {self.val_fraction}")
            train, val = stratified_split(src["train"], (1.0 - self.val_fraction, self.val_fraction), seed)
            split = {
                "train": ("train", train),
                "val": ("train", val),
                "test": ("test", np.arange(src["test"].size, dtype=np.int64)),
            }
        elif "all" in src:
            vf, tf = self.val_fraction, self.test_fraction
            if vf <= 0.0 or tf <= 0.0:
                raise ValueError(
                    f"{self.name} has no official split: val_fraction and test_fraction must be > 0, got {vf} and {tf}"
                )
            parts = stratified_split(src["all"], (1.0 - vf - tf, vf, tf), seed)
            split = {s: ("all", p) for s, p in zip(SPLITS, parts, strict=True)}
        else:
            raise RuntimeError(f"{self.name}: unexpected sources {sorted(src)}")
        if self.train_fraction < 1.0:
            source, idx = split["train"]
            sub_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
            keep = stratified_subsample(src[source][idx], self.train_fraction, seed=sub_seed)
            split["train"] = (source, idx[keep])
        return split

    def split_indices(self) -> dict[str, list[int]]:
        """``{"train": [...], "val": [...], "test": [...]}``: sorted indices into each split's source.

        The source of each split is reported by :meth:`describe` and :meth:`write_split` (``"train"`` /
        ``"test"`` for official parts, ``"all"`` when the release has no split).
        """
        return {s: [int(i) for i in idx] for s, (_, idx) in self._split().items()}

    def split_labels(self, split: str) -> np.ndarray:
        """``(N_split,)`` labels of ``split`` (no image decoding)."""
        source, idx = self._split()[self._check_split(split)]
        return self.sources()[source][idx]

    def write_split(self, path: str | Path) -> Path:
        """Write the split as JSON to ``path`` (a ``.json`` file, or a directory -> ``<dir>/split.json``).

        The file holds the dataset name, root, seeds, fractions and, per split, its source, its indices and
        (where the release has file ids) the ids. Returns the written path.
        """
        out = Path(path)
        if out.suffix != ".json":
            out = out / "split.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        splits: dict[str, Any] = {}
        for s, (source, idx) in self._split().items():
            entry: dict[str, Any] = {
                "source": source,
                "num_samples": int(idx.size),
                "indices": [int(i) for i in idx],
            }
            ids = self._source_ids(source, idx)
            if ids is not None:
                entry["ids"] = list(ids)
            splits[s] = entry
        record = {
            "dataset": self.name,
            "root": None if self.root is None else str(self.root),
            "seed": self.seed,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "train_fraction": self.train_fraction,
            "splits": splits,
        }
        out.write_text(json.dumps(record, indent=1))
        return out

    # ------------------------------------------------------------------ transforms
    def dataset_stats(self) -> Stats:
        """Per-channel ``(mean, std)`` of the dataset in ``[0, 1]`` pixel units (constants or estimated)."""
        if self._stats is None:
            self._stats = self.DATASET_STATS if self.DATASET_STATS is not None else self._estimate_stats()
        return self._stats

    def _estimate_stats(self, max_images: int = 256) -> Stats:
        """Mean/std of up to ``max_images`` seeded training images (un-normalised eval transform)."""
        _, eval_tf = self._make_transforms(norm=None)
        source, idx = self._split()["train"]
        rng = np.random.default_rng([self.split_seed, 2])
        pick = np.sort(rng.choice(idx, size=min(max_images, idx.size), replace=False))
        ds = self._source_dataset(source, eval_tf)
        x = torch.stack([ds[int(i)][0] for i in pick])
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).tolist()
        return mean, std

    def _make_transforms(self, norm: Any) -> tuple[Transform, Transform]:
        size = self.image_size if isinstance(self.image_size, int) else self.image_size[0]
        if self.family == "small":
            return small_image_transforms(
                size, self.native_size, self.augment, self.crop_padding, self.flip, self.channels, norm
            )
        return natural_image_transforms(size, self.augment, self.min_scale, self.flip, self.channels, norm)

    def transforms(self) -> tuple[Transform, Transform]:
        """``(train_transform, eval_transform)``."""
        if self._transforms is None:
            norm = normalization(self.normalize, self.in_channels, self.dataset_stats)
            self._transforms = self._make_transforms(norm)
        return self._transforms

    @property
    def train_transform(self) -> Transform:
        return self.transforms()[0]

    @property
    def eval_transform(self) -> Transform:
        return self.transforms()[1]

    # ------------------------------------------------------------------ Lightning API
    def prepare_data(self) -> None:
        if self.download:
            self._download_data()

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val/test datasets (lazy: images are decoded by the loaders)."""
        if self._datasets:
            return
        train_tf, _ = self.transforms()
        source, idx = self._split()["train"]
        self._datasets["train"] = Subset(self._source_dataset(source, train_tf), idx.tolist())
        self._datasets["val"] = self.eval_dataset("val")
        self._datasets["test"] = self.eval_dataset("test")

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return split

    def dataset(self, split: str) -> Dataset:
        """The dataset the loader of ``split`` reads (train: augmented; val/test: eval transform)."""
        self.setup()
        return self._datasets[self._check_split(split)]

    def eval_dataset(self, split: str) -> Dataset:
        """``split`` with the deterministic eval transform: items ``((C, H, W) float32, int label)``."""
        source, idx = self._split()[self._check_split(split)]
        return Subset(self._source_dataset(source, self.eval_transform), idx.tolist())

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        n = len(dataset)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # drop only a trailing batch of one sample (BatchNorm cannot train on it)
            drop_last=train and n > self.batch_size and n % self.batch_size == 1,
            generator=self._generator if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (generator seeded with ``seed``) batches ``(images (B, C, H, W), labels (B,))``."""
        return self._loader(self.dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), train=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints by Lightning: the train loader's shuffle generator, for exact resumption."""
        return {"train_generator_state": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the shuffle generator saved by :meth:`state_dict` (when resuming from a checkpoint)."""
        state = state_dict.get("train_generator_state")
        if state is not None:
            self._generator.set_state(state)

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description of the data a run sees (keys a feature cache).

        Changes whenever the split (indices), seeds, fractions, image size or transforms change.
        """
        split = self._split()
        src = self.sources()
        digest = hashlib.sha256()
        for s in SPLITS:
            source, idx = split[s]
            digest.update(f"{s}:{source}:".encode())
            digest.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
        train_tf, eval_tf = self.transforms()
        return {
            "name": self.name,
            "root": None if self.root is None else str(self.root),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size if isinstance(self.image_size, int) else list(self.image_size),
            "num_samples": {s: int(split[s][1].size) for s in SPLITS},
            "sources": {s: split[s][0] for s in SPLITS},
            "class_counts": {s: class_counts(src[split[s][0]][split[s][1]], self.num_classes) for s in SPLITS},
            "seed": self.seed,
            "split_seed": self.split_seed,
            "train_fraction": self.train_fraction,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "normalize": self.normalize,
            "augment": self.augment,
            "train_transform": repr(train_tf),
            "eval_transform": repr(eval_tf),
            "split_digest": digest.hexdigest()[:16],
            **self._describe_extra(),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, "
            f"num_classes={self.num_classes}, image_size={self.image_size}, seed={self.seed})"
        )
