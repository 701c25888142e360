"""Datamodules for image-file datasets read from their official layouts: CUB-200-2011, Oxford Flowers-17,
DTD, and a generic class-per-folder ``ImageFolderDataModule``.

Labels and splits come from the release's text files or directory listing (never from decoding images), so
``num_classes`` and ``class_names`` are known right after ``__init__``.
"""

from __future__ import annotations

import functools
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from hybridpool.arguments import ArgumentError, check_rules, number, raise_first
from hybridpool.data.base import ClassificationDataModule, Transform
from hybridpool.data.datasets import ImageFileDataset
from hybridpool.data.errors import DatasetNotFoundError
from hybridpool.data.progress import say

__all__ = [
    "IMG_EXTENSIONS",
    "CUBDataModule",
    "DTDDataModule",
    "Flowers17DataModule",
    "ImageFolderDataModule",
    "ImageSizes",
    "infer_image_size",
    "read_image_sizes",
    "scan_class_folders",
    "spread_sample",
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


def spread_sample(groups: Sequence[Sequence[Path]], n: int) -> list[Path]:
    """Up to ``n`` paths spread over ``groups`` (one list of files per class): the quota goes round the classes
    (at most a class's size each), and each class gives files evenly spaced over its sorted list. With more
    classes than ``n``, ``n`` classes evenly spaced over them give one file each. Deterministic (no RNG)."""
    groups = [list(g) for g in groups if len(g)]
    if n <= 0 or not groups:
        return []
    if len(groups) > n:
        groups = [groups[int(i)] for i in np.linspace(0, len(groups) - 1, n).round().astype(int)]
    quota = [0] * len(groups)
    left = n
    while left > 0 and any(q < len(g) for q, g in zip(quota, groups, strict=True)):
        for i, g in enumerate(groups):
            if left > 0 and quota[i] < len(g):
                quota[i] += 1
                left -= 1
    picked: list[Path] = []
    for g, q in zip(groups, quota, strict=True):
        if q:
            picked.extend(g[int(j)] for j in np.linspace(0, len(g) - 1, q).round().astype(int))
    return picked


def read_image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """``(width, height)`` of each readable image among ``paths``, from its header (PIL opens lazily: no pixel is
    decoded); files PIL cannot open are left out."""
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append((int(im.size[0]), int(im.size[1])))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sizes


@dataclass(frozen=True)
class ImageSizes:
    """What :func:`infer_image_size` read: ``sizes`` ``(width, height)`` of ``sampled`` files over ``classes``
    classes, their median short side ``median_side`` (the lower median: the short side of one of the images) and the
    ``image_size`` picked from it (the median clipped to ``AUTO_SIZE_RANGE``; ``None`` when no file was readable)."""

    sizes: tuple[tuple[int, int], ...]
    sampled: int
    classes: int
    median_side: int | None
    image_size: int | None

    def summary(self) -> str:
        """``"64 sampled images over 10 classes, all 28x28 px"`` / ``"..., 20x20 to 40x30 px"``."""
        what = f"{len(self.sizes)} sampled images over {self.classes} classes"
        if not self.sizes:
            return what
        distinct = sorted(set(self.sizes), key=lambda wh: (min(wh), wh))
        if len(distinct) == 1:
            return f"{what}, all {distinct[0][0]}x{distinct[0][1]} px"
        lo, hi = distinct[0], distinct[-1]
        return f"{what}, {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]} px"


#: the range an inferred image size is clipped to: 224 px (the size ImageNet backbones are trained at, and the
#: default before the size was inferred) for photographs, no less than 8 px for tiny images
AUTO_SIZE_RANGE = (8, 224)
#: how many image headers the inference reads (spread over the classes)
SIZE_SAMPLE = 64
#: a given image_size at least this many times the images' median short side gets a warning (the cost and the fix)
UPSAMPLE_WARN_RATIO = 4.0


def infer_image_size(groups: Sequence[Sequence[Path]], sample: int = SIZE_SAMPLE) -> ImageSizes:
    """The square side to train at for the images in ``groups`` (one list of files per class).

    Reads the headers of up to ``sample`` files spread over the classes (:func:`spread_sample`), takes the lower
    median of their short sides (a 28x28 folder gives 28; a folder of photos 500x375 gives 375) and clips it to
    ``AUTO_SIZE_RANGE`` (375 -> 224, the input size of ImageNet backbones).
    """
    picked = spread_sample(groups, sample)
    sizes = read_image_sizes(picked)
    classes = sum(1 for g in groups if len(g))
    if not sizes:
        return ImageSizes((), len(picked), classes, None, None)
    median = int(statistics.median_low(min(w, h) for w, h in sizes))
    lo, hi = AUTO_SIZE_RANGE
    return ImageSizes(tuple(sizes), len(picked), classes, median, min(hi, max(lo, median)))


def _image_size_rule(arg: str, value: Any) -> ArgumentError | None:
    """``image_size`` of an image folder: a number >= 1, or null / ``"auto"`` (inferred from the images)."""
    if value is None or value == "auto":
        return None
    if number(arg, value, low=1) is None:
        return None
    return ArgumentError(arg, value, "a number >= 1, or null / 'auto' (inferred from the images)")


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
        image_size: side of the square images the loaders return; ``None`` or ``"auto"`` (the default): inferred
            from the data, the median short side of up to 64 training images (headers only) spread over the
            classes, clipped to 8..224 px (:func:`infer_image_size`); one console line says what was picked and
            how to override it. A given size at least 4x the images' median short side gets a warning with its
            cost and the fix. ``describe()["image_size"]`` (the run's record) holds the side used.
        Other arguments as in :class:`~hybridpool.data.base.ClassificationDataModule` but ``channels`` and
        ``download``.

    Attributes (beyond the base's): ``image_sizes`` (:class:`ImageSizes`, what was read), ``image_size_inferred``
    (whether ``image_size`` came from the data).
    """

    #: the side used when the size is to be inferred but no sampled image could be read
    FALLBACK_SIZE: ClassVar[int] = 224

    def __init__(
        self,
        root: str,
        name: str = "imagefolder",
        *,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        image_size: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        raise_first(self.check_args(root=root, image_size=image_size))
        infer = image_size is None or image_size == "auto"
        super().__init__(
            root=root,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            image_size=self.FALLBACK_SIZE if infer else image_size,
            **kwargs,
        )
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
        self.image_size_inferred = infer
        self.image_sizes = self._read_sizes()
        if infer:
            self._infer_size()
        else:
            self._check_upsampling()

    @classmethod
    def check_args(cls, **kwargs: Any) -> list[ArgumentError]:
        root = kwargs.get("root", "")
        missing = "root" in kwargs and (root is None or str(root) == "")
        own = [ArgumentError("root", root, "the path of the dataset folder (config key data.root)")] if missing else []
        if "image_size" in kwargs:
            size = kwargs.pop("image_size")
            own += [p for p in [_image_size_rule("image_size", size)] if p is not None]
        return [*own, *super().check_args(**kwargs)]

    def _read_sizes(self) -> ImageSizes:
        """The sizes of a sample of the training images (source ``train``, else ``all``), spread over the classes."""
        source = "train" if "train" in self._files else "all"
        files, labels = self._files[source], self._labels[source]
        groups: list[list[Path]] = [[] for _ in range(self.num_classes)]
        for f, y in zip(files, labels.tolist(), strict=True):
            groups[y].append(f)
        return infer_image_size(groups)

    def _infer_size(self) -> None:
        found = self.image_sizes
        if found.image_size is None:
            say(
                f"data.image_size: none of {found.sampled} sampled images of {self.root} could be read, "
                f"using {self.FALLBACK_SIZE}; set data.image_size=<side> to choose it"
            )
            return
        self.image_size = found.image_size
        lo, hi = AUTO_SIZE_RANGE
        clipped = " " if found.image_size == found.median_side else f", clipped to {lo}..{hi}, "
        hint = "; a pretrained ImageNet backbone may want data.image_size=224" if found.image_size < 64 else ""
        say(
            f"data.image_size={found.image_size} inferred from the data (median short side {found.median_side} px"
            f"{clipped}of {found.summary()}); override with data.image_size=<side>{hint}"
        )

    def _check_upsampling(self) -> None:
        """Warn (once, here) when the given size upsamples the images by ``UPSAMPLE_WARN_RATIO`` or more."""
        median = self.image_sizes.median_side
        size = int(self.image_size)  # type: ignore[arg-type]
        if not median or size < UPSAMPLE_WARN_RATIO * median:
            return
        ratio = size / median
        say(
            f"warning: data.image_size={size} is {ratio:.3g}x the images' own size (median short side {median} px of "
            f"{self.image_sizes.summary()}): each image is upsampled and costs about {ratio**2:.3g}x the compute of "
            f"data.image_size={median}. Set data.image_size={median} (or data.image_size=null to infer it), unless "
            "the model needs the larger input (e.g. a pretrained ImageNet backbone)"
        )

    def _check_data(self) -> None:
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {self.name!r}",
                self.root,
                "point root at a folder laid out as root/<class>/<image>.jpg "
                "(or root/train/<class>/..., root/test/<class>/...)",
            )
