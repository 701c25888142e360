"""Datamodules for datasets that torchvision knows: Fashion-MNIST, CIFAR-10/100, Flowers-102, FGVC-Aircraft,
Stanford Cars and Oxford-IIIT Pets. ``download=True`` fetches them with torchvision on machines with internet.

Fashion-MNIST is read directly from torchvision's ``FashionMNIST/raw`` idx files (``.gz`` or extracted), so a
read-only copy of the raw files suffices.
"""

from __future__ import annotations

import functools
import gzip
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from hybridpool.arguments import ArgumentError, check_rules, one_of, raise_first
from hybridpool.data.base import ClassificationDataModule, Transform
from hybridpool.data.datasets import ArrayImageDataset, TransformedDataset
from hybridpool.data.errors import DatasetNotFoundError

__all__ = [
    "AircraftDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CarsDataModule",
    "FashionMNISTDataModule",
    "Flowers102DataModule",
    "PetsDataModule",
    "read_idx",
]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (``.gz`` or plain): ``train-images-idx3-ubyte.gz`` -> ``(60000, 28, 28) uint8``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
    return np.array(arr.reshape(shape), dtype=arr.dtype.newbyteorder("="))  # a writable, native copy


class _SmallImageDataModule(ClassificationDataModule):
    """Small images held in memory (Fashion-MNIST, CIFAR), with an official train/test split; validation is a
    stratified ``val_fraction`` of the official training set.

    Args:
        crop_padding: zero padding (pixels) around the image for the random training crop.
        Other arguments as in :class:`~hybridpool.data.base.ClassificationDataModule`.
    """

    family = "small"
    #: the official test split; the crops are not scaled (no ``min_scale``)
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {"test_fraction": 0.0, "min_scale": 0.35}

    def __init__(
        self, *, batch_size: int = 128, normalize: str = "dataset", crop_padding: int = 4, **kwargs: Any
    ) -> None:
        super().__init__(**self._base_args(batch_size=batch_size, normalize=normalize, **kwargs))
        self.crop_padding = int(crop_padding)

    def _describe_extra(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding}


class FashionMNISTDataModule(_SmallImageDataModule):
    """Fashion-MNIST (10 classes, 60k train + 10k test, 28x28 grey) from ``<root>/FashionMNIST/raw``.

    Batches: ``(B, C, image_size, image_size)`` with ``C = channels or 1``. Arguments as in
    :class:`~hybridpool.data.base.ClassificationDataModule`, plus ``crop_padding``.
    """

    name = "fashion_mnist"
    native_size = 28
    DATASET_STATS = ((0.2860,), (0.3530,))
    CLASSES: ClassVar[list[str]] = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, *, image_size: int = 28, crop_padding: int = 2, **kwargs: Any) -> None:
        super().__init__(image_size=image_size, crop_padding=crop_padding, **kwargs)
        self.in_channels = 1 if self.channels is None else self.channels
        self.num_classes = 10
        self.class_names = list(self.CLASSES)
        self.raw_dir = self.root / "FashionMNIST" / "raw"
        self._images: dict[str, np.ndarray] = {}
        if not self.download:
            self._check_data()

    def _file(self, stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (self.raw_dir / name).is_file():
                return self.raw_dir / name
        return None

    def _check_data(self) -> None:
        for images, labels in self.FILES.values():
            for stem in (images, labels):
                if self._file(stem) is None:
                    raise DatasetNotFoundError(
                        "Fashion-MNIST",
                        self.raw_dir / f"{stem}[.gz]",
                        "set download=true (config data.download=true) to fetch it with torchvision, or get "
                        "the "
                        "four idx files from https://github.com/zalandoresearch/fashion-mnist into "
                        "<root>/FashionMNIST/raw/",
                        root=self.root,
                    )

    def _download_data(self) -> None:
        if all(self._file(s) is not None for pair in self.FILES.values() for s in pair):
            return
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(self.root), train=train, download=True)

    def _load_sources(self) -> dict[str, np.ndarray]:
        return {
            src: read_idx(self._file(labels)).astype(np.int64)  # type: ignore[arg-type]
            for src, (_, labels) in self.FILES.items()
        }

    def _source_dataset(self, source: str, transform: Transform) -> Dataset:
        if source not in self._images:
            self._images[source] = read_idx(self._file(self.FILES[source][0]))  # type: ignore[arg-type]
        return ArrayImageDataset(self._images[source], self.sources()[source], transform)


class CIFAR10DataModule(_SmallImageDataModule):
    """CIFAR-10 (``<root>/cifar-10-batches-py``, torchvision layout): 50k train + 10k test, 32x32 RGB.

    Arguments as in :class:`~hybridpool.data.base.ClassificationDataModule` (but ``channels``), plus
    ``crop_padding``.
    """

    name = "cifar10"
    native_size = 32
    DATASET_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    NUM_CLASSES: ClassVar[int] = 10
    FOLDER: ClassVar[str] = "cifar-10-batches-py"
    URL: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar.html"
    TV_CLASS: ClassVar[str] = "CIFAR10"
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {**_SmallImageDataModule.FIXED_ARGS, "channels": None}

    def __init__(self, *, image_size: int = 32, **kwargs: Any) -> None:
        super().__init__(image_size=image_size, **kwargs)
        self.num_classes = self.NUM_CLASSES
        self._tv: dict[str, Any] = {}
        if not self.download:
            self._check_data()

    def _check_data(self) -> None:
        if not (self.root / self.FOLDER).is_dir():
            raise DatasetNotFoundError(
                self.TV_CLASS.replace("CIFAR", "CIFAR-"),
                self.root / self.FOLDER,
                f"set download=true (config data.download=true) to fetch it with torchvision, or extract the "
                f"python version from {self.URL} into <root>/",
                root=self.root,
            )

    def _tv_dataset(self, train: bool, download: bool = False) -> Any:
        import torchvision.datasets as tvd

        return getattr(tvd, self.TV_CLASS)(str(self.root), train=train, download=download)

    def _download_data(self) -> None:
        for train in (True, False):
            self._tv_dataset(train, download=True)

    def _load_sources(self) -> dict[str, np.ndarray]:
        for src in ("train", "test"):
            try:
                self._tv[src] = self._tv_dataset(src == "train")
            except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
                raise DatasetNotFoundError(
                    self.TV_CLASS,
                    self.root / self.FOLDER,
                    f"it is incomplete or corrupted ({err}); re-extract it from {self.URL} or set download=true",
                    root=self.root,
                ) from None
        self.class_names = list(self._tv["train"].classes)
        return {src: np.asarray(ds.targets, dtype=np.int64) for src, ds in self._tv.items()}

    def _source_dataset(self, source: str, transform: Transform) -> Dataset:
        self.sources()
        return ArrayImageDataset(self._tv[source].data, self._tv[source].targets, transform)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (``<root>/cifar-100-python``, torchvision layout), 100 fine classes."""

    name = "cifar100"
    DATASET_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    NUM_CLASSES = 100
    FOLDER = "cifar-100-python"
    TV_CLASS = "CIFAR100"


def _targets(ds: Any) -> np.ndarray:
    """Labels of a torchvision dataset without decoding images."""
    for attr in ("targets", "_labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if hasattr(ds, "_samples"):
        return np.asarray([label for _, label in ds._samples], dtype=np.int64)
    raise AttributeError(f"cannot read labels of {type(ds).__name__}")


class _TorchvisionNaturalDataModule(ClassificationDataModule):
    """Natural-image datasets read through a torchvision wrapper (PIL images, official splits).

    Arguments as in :class:`~hybridpool.data.base.ClassificationDataModule` but ``test_fraction`` and ``channels``
    (and those a dataset's ``FIXED_ARGS`` names).
    """

    TV_CLASS: ClassVar[str]
    FOLDER: ClassVar[str]
    TITLE: ClassVar[str]
    URL: ClassVar[str]
    NUM_CLASSES: ClassVar[int]
    #: our source name -> torchvision ``split`` argument
    SPLIT_MAP: ClassVar[dict[str, str]]
    CAN_DOWNLOAD: ClassVar[bool] = True
    #: an official test split; RGB images
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {"test_fraction": 0.0, "channels": None}

    def __init__(self, *, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**self._base_args(batch_size=batch_size, **kwargs))
        self.num_classes = self.NUM_CLASSES
        self._tv: dict[str, Any] = {}
        if not self.download:
            self._check_data()

    def _hint(self) -> str:
        if self.CAN_DOWNLOAD:
            return (
                f"set download=true (config data.download=true) to fetch it with torchvision, or get it from "
                f"{self.URL} and extract it to <root>/{self.FOLDER}"
            )
        return f"get it from {self.URL} and extract it to <root>/{self.FOLDER} (torchvision layout)"

    def _check_data(self) -> None:
        if not (self.root / self.FOLDER).is_dir():
            raise DatasetNotFoundError(self.TITLE, self.root / self.FOLDER, self._hint(), root=self.root)

    def _tv_kwargs(self) -> dict[str, Any]:
        return {}

    def _tv_dataset(self, source: str, download: bool = False) -> Any:
        import torchvision.datasets as tvd

        return getattr(tvd, self.TV_CLASS)(
            str(self.root), split=self.SPLIT_MAP[source], download=download, **self._tv_kwargs()
        )

    def _download_data(self) -> None:
        for src in self.SPLIT_MAP:
            self._tv_dataset(src, download=True)

    def _load_sources(self) -> dict[str, np.ndarray]:
        for src in self.SPLIT_MAP:
            try:
                self._tv[src] = self._tv_dataset(src)
            except RuntimeError as err:
                if "scipy" in str(err).lower():
                    raise
                raise DatasetNotFoundError(
                    self.TITLE,
                    self.root / self.FOLDER,
                    f"it is incomplete ({err}); {self._hint()}",
                    root=self.root,
                ) from None
        classes = getattr(self._tv[next(iter(self.SPLIT_MAP))], "classes", None)
        if classes is not None:
            self.class_names = [str(c) for c in classes]
        return {src: _targets(ds) for src, ds in self._tv.items()}

    def _source_dataset(self, source: str, transform: Transform) -> Dataset:
        self.sources()
        return TransformedDataset(self._tv[source], transform)


class Flowers102DataModule(_TorchvisionNaturalDataModule):
    """Oxford Flowers-102 (``<root>/flowers-102``): official train/val/test (1020/1020/6149); needs scipy."""

    name = "flowers102"
    TV_CLASS = "Flowers102"
    FOLDER = "flowers-102"
    TITLE = "Oxford Flowers-102"
    URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
    NUM_CLASSES = 102
    SPLIT_MAP: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    #: an official validation split too
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {**_TorchvisionNaturalDataModule.FIXED_ARGS, "val_fraction": 0.0}


class AircraftDataModule(_TorchvisionNaturalDataModule):
    """FGVC-Aircraft (``<root>/fgvc-aircraft-2013b``): official train/val/test; 100 variants (or 70 families,
    30 manufacturers with ``annotation_level``)."""

    name = "aircraft"
    TV_CLASS = "FGVCAircraft"
    FOLDER = "fgvc-aircraft-2013b"
    TITLE = "FGVC-Aircraft"
    URL = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"
    NUM_CLASSES = 100
    SPLIT_MAP: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    LEVELS: ClassVar[dict[str, int]] = {"variant": 100, "family": 70, "manufacturer": 30}
    #: an official validation split too
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {**_TorchvisionNaturalDataModule.FIXED_ARGS, "val_fraction": 0.0}

    def __init__(self, *, annotation_level: str = "variant", **kwargs: Any) -> None:
        raise_first(self.check_args(annotation_level=annotation_level))
        self.annotation_level = annotation_level
        super().__init__(**kwargs)
        self.num_classes = self.LEVELS[annotation_level]

    @classmethod
    def check_args(cls, **kwargs: Any) -> list[ArgumentError]:
        own = check_rules({"annotation_level": functools.partial(one_of, choices=tuple(cls.LEVELS))}, kwargs)
        return [*own, *super().check_args(**kwargs)]

    def _tv_kwargs(self) -> dict[str, Any]:
        return {"annotation_level": self.annotation_level}

    def _describe_extra(self) -> dict[str, Any]:
        return {"annotation_level": self.annotation_level}


class CarsDataModule(_TorchvisionNaturalDataModule):
    """Stanford Cars (``<root>/stanford_cars``, torchvision layout): 196 classes, official train/test; val is
    carved out of train. torchvision can no longer download it; needs scipy."""

    name = "cars"
    TV_CLASS = "StanfordCars"
    FOLDER = "stanford_cars"
    TITLE = "Stanford Cars"
    URL = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (or a mirror named in torchvision's docs)"
    NUM_CLASSES = 196
    SPLIT_MAP: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}
    CAN_DOWNLOAD = False
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {**_TorchvisionNaturalDataModule.FIXED_ARGS, "download": False}


class PetsDataModule(_TorchvisionNaturalDataModule):
    """Oxford-IIIT Pets (``<root>/oxford-iiit-pet``): 37 breeds, official trainval/test; val is carved out
    of trainval."""

    name = "pets"
    TV_CLASS = "OxfordIIITPet"
    FOLDER = "oxford-iiit-pet"
    TITLE = "Oxford-IIIT Pets"
    URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
    NUM_CLASSES = 37
    SPLIT_MAP: ClassVar[dict[str, str]] = {"train": "trainval", "test": "test"}
