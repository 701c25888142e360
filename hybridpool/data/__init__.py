"""LightningDataModules for hybridpool: one per dataset family, reading official layouts, plus synthetic
diagnostic tasks.

Every datamodule knows ``name``, ``num_classes``, ``in_channels`` and ``image_size`` right after
``__init__``; loaders yield ``(images (B, C, H, W) float32, labels (B,) int64)``. The data root defaults to
``$HYBRIDPOOL_DATA_ROOT`` (else ``./data``).

    >>> from hybridpool.data import build_datamodule
    >>> dm = build_datamodule("synth_texture", num_train=512)
    >>> dm.num_classes, dm.in_channels, dm.image_size
    (4, 3, 32)
"""

from __future__ import annotations

from typing import Any

from hybridpool.data.base import SPLITS, ClassificationDataModule
from hybridpool.data.errors import DATA_ROOT_ENV, DatasetNotFoundError, resolve_root
from hybridpool.data.folders import CUBDataModule, DTDDataModule, Flowers17DataModule, ImageFolderDataModule
from hybridpool.data.splits import class_counts, stratified_split, stratified_subsample
from hybridpool.data.synthetic import TASKS as SYNTHETIC_TASKS
from hybridpool.data.synthetic import SyntheticDataModule, make_synthetic
from hybridpool.data.torchvision_sets import (
    AircraftDataModule,
    CarsDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    Flowers102DataModule,
    PetsDataModule,
)

__all__ = [
    "DATAMODULES",
    "DATA_ROOT_ENV",
    "PRESETS",
    "SPLITS",
    "SYNTHETIC_TASKS",
    "AircraftDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CUBDataModule",
    "CarsDataModule",
    "ClassificationDataModule",
    "DTDDataModule",
    "DatasetNotFoundError",
    "FashionMNISTDataModule",
    "Flowers17DataModule",
    "Flowers102DataModule",
    "ImageFolderDataModule",
    "PetsDataModule",
    "SyntheticDataModule",
    "build_datamodule",
    "class_counts",
    "make_synthetic",
    "resolve_root",
    "stratified_split",
    "stratified_subsample",
]

#: datamodule classes by name (the names of the ``conf/data/*.yaml`` files)
DATAMODULES: dict[str, type[ClassificationDataModule]] = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "cub": CUBDataModule,
    "flowers17": Flowers17DataModule,
    "flowers102": Flowers102DataModule,
    "dtd": DTDDataModule,
    "aircraft": AircraftDataModule,
    "cars": CarsDataModule,
    "pets": PetsDataModule,
    "imagefolder": ImageFolderDataModule,
    "synthetic": SyntheticDataModule,
    "synth_texture": SyntheticDataModule,
    "synth_detail": SyntheticDataModule,
    "synth_finegrained": SyntheticDataModule,
}

#: default constructor arguments implied by a name (overridable by keyword)
PRESETS: dict[str, dict[str, Any]] = {f"synth_{t}": {"task": t} for t in SYNTHETIC_TASKS}


def build_datamodule(name: str, /, **kwargs: Any) -> ClassificationDataModule:
    """Build the datamodule registered as ``name`` with constructor keyword arguments ``kwargs``.

    Raises:
        ValueError: for an unknown name (the message lists the known names).
    """
    if name not in DATAMODULES:
        raise ValueError(f"unknown datamodule {name!r}; known: {', '.join(sorted(DATAMODULES))}")
    return DATAMODULES[name](**{**PRESETS.get(name, {}), **kwargs})
