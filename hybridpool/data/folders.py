"""Datamodules for image-file datasets read from their official layouts: CUB-200-2011, Oxford Flowers-17,
DTD, and a generic class-per-folder ``ImageFolderDataModule``.

Labels and splits come from the release's text files or directory listing (never from decoding images), so
``num_classes`` and ``class_names`` are known right after ``__init__``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from hybridpool.arguments import ArgumentError, check_rules, number, raise_first
from hybridpool.data.base import ClassificationDataModule, Transform
from hybridpool.data.datasets import ImageFileDataset
from hybridpool.data.errors import DatasetNotFoundError

__all__ = [
    "IMG_EXTENSIONS",
    "CUBDataModule",
    "DTDDataModule",
    "Flowers17DataModule",
    "ImageFolderDataModule",
    "scan_class_folders",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def scan_class_folders(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """List ``folder/<class>/<image>``: ``(sorted classes, image paths, (N,) labels)``, sorted per class."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        files = sorted(
            p
            for p in (folder / cls).iterdir()
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
        )
        paths.extend(files)
        labels.extend([label] * len(files))
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _read_table(path: Path) -> list[list[str]]:
    """Whitespace-separated rows of a CUB metadata file (first field = 1-based id)."""
    with open(path) as f:
        return [line.split(maxsplit=1) for line in f if line.strip()]


class _FileDataModule(ClassificationDataModule):
    """Base for datasets given as image files: subclasses fill ``_files``, ``_labels`` (and ``_ids``).

    Arguments as in :class:`~hybridpool.data.base.ClassificationDataModule` but ``channels`` and ``download``
    (and those a dataset's ``FIXED_ARGS`` names).
    """

    #: RGB images; nothing to download (unless a dataset says otherwise)
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {"channels": None, "download": False}

    def __init__(self, *, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**self._base_args(batch_size=batch_size, **kwargs))
        self._files: dict[str, list[Path]] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._ids: dict[str, list[str]] = {}

    def _load_sources(self) -> dict[str, np.ndarray]:
        return dict(self._labels)

    def _source_dataset(self, source: str, transform: Transform) -> Dataset:
        return ImageFileDataset(self._files[source], self._labels[source], transform)

    def _source_ids(self, source: str, indices: np.ndarray) -> list[str] | None:
        ids = self._ids.get(source)
        return None if ids is None else [ids[i] for i in indices]


class CUBDataModule(_FileDataModule):
    """Caltech-UCSD Birds-200-2011 from ``<root>/CUB_200_2011`` (official files: ``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt`` with 1 = train, ``classes.txt``, ``images/``).

    A subset of the species is fine: the classes are those listed in ``classes.txt`` that have images,
    relabelled ``0..K-1`` in increasing class-id order (``num_classes = K``). Validation is a stratified
    ``val_fraction`` of the official training images. ``write_split`` records CUB image ids.
    """

    name = "cub"
    URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    #: an official test split
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {**_FileDataModule.FIXED_ARGS, "test_fraction": 0.0}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = self.root / "CUB_200_2011"
        self._check_data()
        self._read_metadata()

    def _check_data(self) -> None:
        missing = [f for f in (*self.FILES, "images") if not (self.data_dir / f).exists()]
        if missing:
            raise DatasetNotFoundError(
                "CUB-200-2011",
                self.data_dir,
                f"missing {', '.join(missing)}; download CUB_200_2011.tgz from {self.URL} and extract it to "
                "<root>/CUB_200_2011",
                root=self.root,
            )

    def _read_metadata(self) -> None:
        d = self.data_dir
        images = {int(i): p.strip() for i, p in _read_table(d / "images.txt")}
        labels = {int(i): int(c) for i, c in _read_table(d / "image_class_labels.txt")}
        is_train = {int(i): int(t) == 1 for i, t in _read_table(d / "train_test_split.txt")}
        listed = {int(i): name.strip() for i, name in _read_table(d / "classes.txt")}
        class_ids = sorted(set(listed) & set(labels.values()))
        if not class_ids:
            raise ValueError(f"CUB-200-2011 at {d}: no image has a class listed in classes.txt")
        remap = {cid: k for k, cid in enumerate(class_ids)}
        self.class_ids = class_ids
        self.num_classes = len(class_ids)
        self.class_names = [re.sub(r"^\d+\.", "", listed[c]) for c in class_ids]
        for source, want_train in (("train", True), ("test", False)):
            ids = [i for i in sorted(images) if labels.get(i) in remap and is_train.get(i) == want_train]
            self._files[source] = [d / "images" / images[i] for i in ids]
            self._labels[source] = np.asarray([remap[labels[i]] for i in ids], dtype=np.int64)
            self._ids[source] = [str(i) for i in ids]


class Flowers17DataModule(_FileDataModule):
    """Oxford 17 Category Flowers from ``<root>/flowers17/jpg/image_0001.jpg ... image_1360.jpg``.

    The class of image ``k`` (1-based) is ``(k - 1) // 80``. The release's split file is not used: the
    split is a stratified, seeded ``(1 - val_fraction - test_fraction, val_fraction, test_fraction)``
    split of all images (written down by ``write_split`` as file names).
    """

    name = "flowers17"
    URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
    #: class names in label order, from the dataset's web page
    CLASSES: ClassVar[list[str]] = [
        "Daffodil",
        "Snowdrop",
        "LilyValley",
        "Bluebell",
        "Crocus",
        "Iris",
        "Tigerlily",
        "Tulip",
        "Fritillary",
        "Sunflower",
        "Daisy",
        "ColtsFoot",
        "Dandelion",
        "Cowslip",
        "Buttercup",
        "Windflower",
        "Pansy",
    ]
    IMAGES_PER_CLASS = 80

    def __init__(self, *, val_fraction: float = 0.2, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)
        self.data_dir = self.root / "flowers17" / "jpg"
        self._check_data()
        self.num_classes = len(self.CLASSES)
        self.class_names = list(self.CLASSES)
        files = sorted(self.data_dir.glob("image_*.jpg"))
        numbers = [int(f.stem.split("_")[1]) for f in files]
        labels = np.asarray([(k - 1) // self.IMAGES_PER_CLASS for k in numbers], dtype=np.int64)
        if labels.size and labels.max() >= self.num_classes:
            raise ValueError(
                f"Flowers-17 at {self.data_dir}: image number {max(numbers)} exceeds "
                f"{self.num_classes * self.IMAGES_PER_CLASS}"
            )
        self._files["all"] = files
        self._labels["all"] = labels
        self._ids["all"] = [f.name for f in files]

    def _check_data(self) -> None:
        if not self.data_dir.is_dir() or not any(self.data_dir.glob("image_*.jpg")):
            raise DatasetNotFoundError(
                "Oxford Flowers-17",
                self.data_dir,
                f"download 17flowers.tgz from {self.URL} and extract it so that "
                "<root>/flowers17/jpg/image_0001.jpg exists",
                root=self.root,
            )


class DTDDataModule(_FileDataModule):
    """Describable Textures Dataset from ``<root>/dtd/images/<class>/*.jpg`` (official layout; torchvision's
    ``<root>/dtd/dtd/images`` is accepted too). Classes are the sorted sub-folders (47 in the full release).

    With ``partition=None`` (default) the split is a stratified, seeded
    ``(1 - val_fraction - test_fraction, val_fraction, test_fraction)`` split; with ``partition=k`` (1..10)
    the official ``labels/{train,val,test}k.txt`` files are used. ``download=true`` fetches the full
    release with torchvision at construction when it is missing.
    """

    name = "dtd"
    URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"
    #: RGB images (torchvision can download the release)
    FIXED_ARGS: ClassVar[Mapping[str, Any]] = {"channels": None}

    def __init__(
        self, *, val_fraction: float = 0.2, test_fraction: float = 0.2, partition: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)
        raise_first(self.check_args(partition=partition))
        self.partition = None if partition is None else int(partition)
        if self.download and self._find_dir() is None:
            self._download_data()
        self._check_data()
        self.data_dir: Path = self._find_dir()  # type: ignore[assignment]
        classes, paths, labels = scan_class_folders(self.data_dir / "images")
        self.num_classes = len(classes)
        self.class_names = classes
        if self.partition is None:
            self._files["all"] = paths
            self._labels["all"] = labels
            self._ids["all"] = [f"{p.parent.name}/{p.name}" for p in paths]
        else:
            index = {cls: k for k, cls in enumerate(classes)}
            for source in ("train", "val", "test"):
                listing = self.data_dir / "labels" / f"{source}{self.partition}.txt"
                if not listing.is_file():
                    raise DatasetNotFoundError(
                        "DTD split file",
                        listing,
                        f"partition={self.partition} needs the official labels/ folder; "
                        f"get the full release from {self.URL} or use partition=null",
                        root=self.root,
                    )
                rel = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
                self._files[source] = [self.data_dir / "images" / r for r in rel]
                self._labels[source] = np.asarray([index[r.split("/")[0]] for r in rel], dtype=np.int64)
                self._ids[source] = rel

    @classmethod
    def check_args(cls, **kwargs: Any) -> list[ArgumentError]:
        own = check_rules({"partition": functools.partial(number, low=1, high=10, optional=True)}, kwargs)
        return [*own, *super().check_args(**kwargs)]

    def _find_dir(self) -> Path | None:
        for cand in (self.root / "dtd", self.root / "dtd" / "dtd"):
            if (cand / "images").is_dir():
                return cand
        return None

    def _check_data(self) -> None:
        if self._find_dir() is None:
            raise DatasetNotFoundError(
                "DTD (Describable Textures Dataset)",
                self.root / "dtd" / "images",
                f"set download=true (config data.download=true) to fetch it with torchvision, or download "
                f"dtd-r1.0.1.tar.gz from {self.URL} and extract it to <root>/ (giving <root>/dtd/images)",
                root=self.root,
            )

    def _download_data(self) -> None:
        if self._find_dir() is not None:
            return
        from torchvision.datasets import DTD

        DTD(str(self.root), download=True)

    def _describe_extra(self) -> dict[str, Any]:
        return {"partition": self.partition}


class ImageFolderDataModule(_FileDataModule):
    """Any class-per-folder dataset: ``root/<class>/<image>`` (seeded stratified train/val/test split), or
    ``root/train/<class>/...`` + ``root/test/<class>/...`` (+ optional ``root/val/<class>/...``) as
    official splits.

    Args:
        root: the dataset folder itself (required; not a data root).
        name: name used in ``describe()`` and results.
        Other arguments as in :class:`~hybridpool.data.base.ClassificationDataModule` but ``channels`` and
        ``download``.
    """

    def __init__(
        self,
        root: str,
        name: str = "imagefolder",
        *,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        raise_first(self.check_args(root=root))
        super().__init__(root=root, val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)
        self.name = name
        self._check_data()
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            sources = [s for s in ("train", "val", "test") if (self.root / s).is_dir()]
            classes, _, _ = scan_class_folders(self.root / "train")
            index = {c: k for k, c in enumerate(classes)}
            for source in sources:
                cls_s, paths, labels = scan_class_folders(self.root / source)
                unknown = sorted(set(cls_s) - set(classes))
                if unknown:
                    raise ValueError(f"{self.root / source} has classes not in train/: {unknown}")
                self._files[source] = paths
                self._labels[source] = np.asarray([index[cls_s[i]] for i in labels], dtype=np.int64)
                self._ids[source] = [f"{source}/{p.parent.name}/{p.name}" for p in paths]
        else:
            classes, paths, labels = scan_class_folders(self.root)
            self._files["all"] = paths
            self._labels["all"] = labels
            self._ids["all"] = [f"{p.parent.name}/{p.name}" for p in paths]
        if not classes or not any(len(f) for f in self._files.values()):
            raise DatasetNotFoundError(
                f"image folder {name!r}",
                self.root,
                "no <class>/<image> files found; expected root/<class>/<image>.jpg or "
                "root/{train,test}/<class>/<image>.jpg",
                root=self.root,
            )
        self.num_classes = len(classes)
        self.class_names = classes

    @classmethod
    def check_args(cls, **kwargs: Any) -> list[ArgumentError]:
        root = kwargs.get("root", "")
        missing = "root" in kwargs and (root is None or str(root) == "")
        own = [ArgumentError("root", root, "the path of the dataset folder (config key data.root)")] if missing else []
        return [*own, *super().check_args(**kwargs)]

    def _check_data(self) -> None:
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {self.name!r}",
                self.root,
                "point root at a folder laid out as root/<class>/<image>.jpg "
                "(or root/train/<class>/..., root/test/<class>/...)",
            )
