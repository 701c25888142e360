"""Datamodules for datasets that torchvision knows: Fashion-MNIST, CIFAR-10/100, Flowers-102, FGVC-Aircraft,
Stanford Cars and Oxford-IIIT Pets. ``download=True`` fetches them with torchvision on machines with internet.

Fashion-MNIST is read directly from torchvision's ``FashionMNIST/raw`` idx files (``.gz`` or extracted), so a
read-only copy of the raw files suffices.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

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


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST (10 classes, 60k train + 10k test, 28x28 grey) from ``<root>/FashionMNIST/raw``.

    Validation is a stratified ``val_fraction`` of the official training set. Batches:
    ``(B, C, image_size, image_size)`` with ``C = channels or 1``.
    """

    name = "fashion_mnist"
    family = "small"
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

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 28,
        channels: int | None = None,
        normalize: str = "dataset",
        augment: bool = True,
        crop_padding: int = 2,
        flip: bool = True,
        train_fraction: float = 1.0,
        download: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            split_seed=split_seed,
            image_size=image_size,
            normalize=normalize,
            augment=augment,
            train_fraction=train_fraction,
            channels=channels,
            download=download,
            flip=flip,
        )
        self.crop_padding = int(crop_padding)
        self.in_channels = 1 if channels is None else int(channels)
        self.num_classes = 10
        self.class_names = list(self.CLASSES)
        self.raw_dir = self.root / "FashionMNIST" / "raw"
        self._images: dict[str, np.ndarray] = {}
        if not download:
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

    def _describe_extra(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding}


class CIFAR10DataModule(ClassificationDataModule):
    """CIFAR-10 (``<root>/cifar-10-batches-py``, torchvision layout): 50k train + 10k test, 32x32 RGB.

    Validation is a stratified ``val_fraction`` of the official training set.
    """

    name = "cifar10"
    family = "small"
    native_size = 32
    DATASET_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    NUM_CLASSES: ClassVar[int] = 10
    FOLDER: ClassVar[str] = "cifar-10-batches-py"
    URL: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar.html"
    TV_CLASS: ClassVar[str] = "CIFAR10"

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 32,
        normalize: str = "dataset",
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        train_fraction: float = 1.0,
        download: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            split_seed=split_seed,
            image_size=image_size,
            normalize=normalize,
            augment=augment,
            train_fraction=train_fraction,
            download=download,
            flip=flip,
        )
        self.crop_padding = int(crop_padding)
        self.num_classes = self.NUM_CLASSES
        self._tv: dict[str, Any] = {}
        if not download:
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

    def _describe_extra(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding}


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
    """Natural-image datasets read through a torchvision wrapper (PIL images, official splits)."""

    TV_CLASS: ClassVar[str]
    FOLDER: ClassVar[str]
    TITLE: ClassVar[str]
    URL: ClassVar[str]
    NUM_CLASSES: ClassVar[int]
    #: our source name -> torchvision ``split`` argument
    SPLIT_MAP: ClassVar[dict[str, str]]
    CAN_DOWNLOAD: ClassVar[bool] = True

    def __init__(
        self,
        root: str | None,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        seed: int,
        split_seed: int | None,
        image_size: int,
        normalize: str,
        augment: bool,
        train_fraction: float,
        download: bool,
        min_scale: float,
        flip: bool,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            split_seed=split_seed,
            image_size=image_size,
            normalize=normalize,
            augment=augment,
            train_fraction=train_fraction,
            download=download,
            min_scale=min_scale,
            flip=flip,
        )
        self.num_classes = self.NUM_CLASSES
        self._tv: dict[str, Any] = {}
        if not download:
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

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 224,
        normalize: str = "imagenet",
        augment: bool = True,
        train_fraction: float = 1.0,
        download: bool = False,
        min_scale: float = 0.35,
        flip: bool = True,
    ) -> None:
        super().__init__(
            root,
            batch_size,
            num_workers,
            0.0,
            seed,
            split_seed,
            image_size,
            normalize,
            augment,
            train_fraction,
            download,
            min_scale,
            flip,
        )


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

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 224,
        normalize: str = "imagenet",
        augment: bool = True,
        train_fraction: float = 1.0,
        download: bool = False,
        min_scale: float = 0.35,
        flip: bool = True,
        annotation_level: str = "variant",
    ) -> None:
        if annotation_level not in self.LEVELS:
            raise ValueError(f"annotation_level must be one of {list(self.LEVELS)}, got {annotation_level!r}")
        self.annotation_level = annotation_level
        super().__init__(
            root,
            batch_size,
            num_workers,
            0.0,
            seed,
            split_seed,
            image_size,
            normalize,
            augment,
            train_fraction,
            download,
            min_scale,
            flip,
        )
        self.num_classes = self.LEVELS[annotation_level]

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

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 224,
        normalize: str = "imagenet",
        augment: bool = True,
        train_fraction: float = 1.0,
        min_scale: float = 0.35,
        flip: bool = True,
    ) -> None:
        super().__init__(
            root,
            batch_size,
            num_workers,
            val_fraction,
            seed,
            split_seed,
            image_size,
            normalize,
            augment,
            train_fraction,
            False,
            min_scale,
            flip,
        )


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

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        split_seed: int | None = None,
        image_size: int = 224,
        normalize: str = "imagenet",
        augment: bool = True,
        train_fraction: float = 1.0,
        download: bool = False,
        min_scale: float = 0.35,
        flip: bool = True,
    ) -> None:
        super().__init__(
            root,
            batch_size,
            num_workers,
            val_fraction,
            seed,
            split_seed,
            image_size,
            normalize,
            augment,
            train_fraction,
            download,
            min_scale,
            flip,
        )
