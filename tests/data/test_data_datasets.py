"""Datamodules on the offline copies in ``$HYBRIDPOOL_DATA_ROOT`` (Fashion-MNIST, CUB, Flowers-17, DTD).

Only a handful of images are decoded per test; splits are checked from labels and file ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridpool.data import (
    CUBDataModule,
    DTDDataModule,
    FashionMNISTDataModule,
    Flowers17DataModule,
    build_datamodule,
    class_counts,
)


def _check_partition(dm, sources: dict[str, int]) -> None:
    """Splits are disjoint within a source and together cover each source exactly."""
    idx = dm.split_indices()
    src = dm.describe()["sources"]
    for source, n in sources.items():
        taken = [i for s in ("train", "val", "test") if src[s] == source for i in idx[s]]
        assert sorted(taken) == list(range(n)), source


def _first_batch(dm, split: str = "train"):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


# ----------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist(data_root: Path) -> None:
    dm = FashionMNISTDataModule(root=str(data_root), batch_size=6, seed=0)
    assert (dm.num_classes, dm.in_channels, dm.image_size, dm.name) == (10, 1, 28, "fashion_mnist")
    assert dm.class_names[0] == "T-shirt/top"
    d = dm.describe()
    assert d["num_samples"] == {"train": 54000, "val": 6000, "test": 10000}
    assert d["class_counts"]["val"] == [600] * 10 and d["class_counts"]["test"] == [1000] * 10
    _check_partition(dm, {"train": 60000, "test": 10000})
    x, y = _first_batch(dm)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (6,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < 10


def test_fashion_mnist_channels_fraction_and_eval(data_root: Path) -> None:
    dm = FashionMNISTDataModule(root=str(data_root), batch_size=4, channels=3, train_fraction=0.1, normalize="imagenet")
    assert dm.in_channels == 3
    x, _ = _first_batch(dm, "val")
    assert x.shape == (4, 3, 28, 28)
    # the grey image is repeated to 3 channels, then normalised per channel with ImageNet statistics
    assert torch.allclose(x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456, atol=1e-5)
    full = FashionMNISTDataModule(root=str(data_root))
    train10 = dm.split_indices()["train"]
    assert len(train10) == 5400
    assert class_counts(dm.split_labels("train"), 10) == [540] * 10
    assert set(train10) <= set(full.split_indices()["train"])  # a subsample of the same train split
    assert dm.split_indices()["val"] == full.split_indices()["val"]  # val does not depend on the fraction
    # eval transform is deterministic, the training transform is random (crop + flip)
    ev = dm.eval_dataset("train")
    assert torch.equal(ev[3][0], ev[3][0])
    torch.manual_seed(0)
    tr = dm.dataset("train")
    assert any(not torch.equal(tr[3][0], tr[3][0]) for _ in range(10))


def test_split_and_loader_are_seeded(data_root: Path) -> None:
    a = FashionMNISTDataModule(root=str(data_root), seed=1)
    b = FashionMNISTDataModule(root=str(data_root), seed=1)
    c = FashionMNISTDataModule(root=str(data_root), seed=2)
    d = FashionMNISTDataModule(root=str(data_root), seed=2, split_seed=1)
    assert a.split_indices() == b.split_indices()
    assert a.split_indices()["val"] != c.split_indices()["val"]
    assert d.split_indices() == a.split_indices()
    ya, yb, yc = (_first_batch(m)[1] for m in (a, b, c))
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)


def test_describe_tracks_everything_that_changes_the_data(data_root: Path) -> None:
    base = FashionMNISTDataModule(root=str(data_root)).describe()
    json.dumps(base)
    assert base == FashionMNISTDataModule(root=str(data_root), batch_size=7, num_workers=1).describe()
    for change in (
        {"seed": 1},
        {"split_seed": 5},
        {"train_fraction": 0.5},
        {"val_fraction": 0.2},
        {"image_size": 32},
        {"normalize": "none"},
        {"augment": False},
        {"channels": 3},
        {"crop_padding": 4},
    ):
        assert FashionMNISTDataModule(root=str(data_root), **change).describe() != base, change


def test_loader_settings(data_root: Path) -> None:
    dm = FashionMNISTDataModule(root=str(data_root), batch_size=32)
    loader = dm.train_dataloader()
    assert loader.persistent_workers is False and loader.pin_memory is torch.cuda.is_available()
    assert loader.generator is not None
    assert dm.val_dataloader().generator is None
    workers = FashionMNISTDataModule(root=str(data_root), num_workers=1)
    assert workers.train_dataloader().persistent_workers is True


# ----------------------------------------------------------------------------------------- CUB
def test_cub(data_root: Path, tmp_path: Path) -> None:
    dm = CUBDataModule(root=str(data_root), batch_size=3, image_size=64)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (100, 3, 64)
    assert dm.class_names[0] == "Black_footed_Albatross"
    d = dm.describe()
    assert d["num_samples"]["train"] + d["num_samples"]["val"] == 2903
    assert d["num_samples"]["test"] == 2999
    assert all(c >= 1 for c in d["class_counts"]["val"])
    _check_partition(dm, {"train": 2903, "test": 2999})
    # the split file records CUB image ids; train+val are exactly the official training images
    record = json.loads(dm.write_split(tmp_path / "split.json").read_text())
    official = {}
    for line in (data_root / "CUB_200_2011" / "train_test_split.txt").read_text().split("\n"):
        if line.strip():
            i, t = line.split()
            official[i] = t == "1"
    ids = record["splits"]
    assert all(official[i] for s in ("train", "val") for i in ids[s]["ids"])
    assert not any(official[i] for i in ids["test"]["ids"])
    assert len(ids["val"]["ids"]) == len(ids["val"]["indices"])
    x, y = _first_batch(dm)
    assert x.shape == (3, 3, 64, 64) and y.dtype == torch.int64
    img, label = dm.eval_dataset("test")[0]
    assert img.shape == (3, 64, 64) and 0 <= label < 100


def test_cub_subset_is_relabelled(tmp_path: Path, write_image) -> None:
    """Classes 3, 7, 12 of a CUB-style folder become labels 0, 1, 2 (sorted class-id order)."""
    d = tmp_path / "CUB_200_2011"
    rows, labels, split = [], [], []
    for i, cid in enumerate([12, 3, 7, 3, 12, 7, 3, 7, 12, 3, 7, 12], start=1):
        rows.append(f"{i} c{cid}/{i}.jpg")
        labels.append(f"{i} {cid}")
        split.append(f"{i} {int(i <= 9)}")
        write_image(d / "images" / f"c{cid}" / f"{i}.jpg", seed=i)
    (d / "images.txt").write_text("\n".join(rows) + "\n")
    (d / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (d / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (d / "classes.txt").write_text("3 003.Parakeet_Auklet\n7 007.Parakeet\n12 012.Yellow_headed\n")
    dm = CUBDataModule(root=str(tmp_path), val_fraction=0.34, image_size=16, batch_size=2)
    assert dm.num_classes == 3
    assert dm.class_names == ["Parakeet_Auklet", "Parakeet", "Yellow_headed"]
    assert dm.sources()["train"].tolist() == [2, 0, 1, 0, 2, 1, 0, 1, 2]
    assert dm.sources()["test"].tolist() == [0, 1, 2]
    assert dm.describe()["class_counts"]["val"] == [1, 1, 1]
    x, _ = _first_batch(dm)
    assert x.shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------------------- Flowers-17
def test_flowers17(data_root: Path, tmp_path: Path) -> None:
    dm = Flowers17DataModule(root=str(data_root), batch_size=2, image_size=48, seed=3)
    assert (dm.num_classes, dm.in_channels, len(dm.class_names)) == (17, 3, 17)
    d = dm.describe()
    assert d["num_samples"] == {"train": 816, "val": 272, "test": 272}
    assert d["class_counts"]["train"] == [48] * 17
    assert d["class_counts"]["val"] == d["class_counts"]["test"] == [16] * 17
    _check_partition(dm, {"all": 1360})
    record = json.loads(dm.write_split(tmp_path).read_text())
    for s in ("train", "val", "test"):
        files = record["splits"][s]["ids"]
        labels = dm.split_labels(s)
        assert [(int(f[6:10]) - 1) // 80 for f in files] == labels.tolist()  # image_KKKK.jpg
    x, y = _first_batch(dm)
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_flowers17_fraction_and_other_fractions(data_root: Path) -> None:
    dm = Flowers17DataModule(root=str(data_root), train_fraction=0.25, val_fraction=0.1, test_fraction=0.3)
    d = dm.describe()
    assert d["class_counts"]["train"] == [12] * 17
    assert d["class_counts"]["val"] == [8] * 17 and d["class_counts"]["test"] == [24] * 17
    assert dm.describe() != Flowers17DataModule(root=str(data_root)).describe()


# ----------------------------------------------------------------------------------------- DTD
def test_dtd(data_root: Path) -> None:
    dm = DTDDataModule(root=str(data_root), batch_size=2, image_size=40)
    assert (dm.num_classes, dm.class_names[0]) == (10, "banded")
    d = dm.describe()
    assert d["class_counts"]["train"] == [72] * 10
    assert d["class_counts"]["val"] == d["class_counts"]["test"] == [24] * 10
    _check_partition(dm, {"all": 1200})
    assert "CenterCrop(size=(40, 40))" in d["eval_transform"] and "0.485" in d["eval_transform"]
    x, y = _first_batch(dm, "test")
    assert x.shape == (2, 3, 40, 40) and y.shape == (2,)
    assert bool(torch.isfinite(x).all())


def test_dtd_official_partition(tmp_path: Path, write_image) -> None:
    d = tmp_path / "dtd"
    for cls in ("banded", "dotted"):
        for i in range(4):
            write_image(d / "images" / cls / f"{cls}_{i}.jpg", seed=i)
    (d / "labels").mkdir()
    (d / "labels" / "train2.txt").write_text("banded/banded_0.jpg\ndotted/dotted_0.jpg\ndotted/dotted_1.jpg\n")
    (d / "labels" / "val2.txt").write_text("banded/banded_1.jpg\ndotted/dotted_2.jpg\n")
    (d / "labels" / "test2.txt").write_text("banded/banded_2.jpg\nbanded/banded_3.jpg\ndotted/dotted_3.jpg\n")
    dm = DTDDataModule(root=str(tmp_path), partition=2, image_size=16, batch_size=3)
    assert dm.num_classes == 2
    assert dm.describe()["num_samples"] == {"train": 3, "val": 2, "test": 3}
    assert dm.split_labels("test").tolist() == [0, 0, 1]
    x, _ = _first_batch(dm, "test")
    assert x.shape == (3, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"train3\.txt"):
        DTDDataModule(root=str(tmp_path), partition=3)


# ----------------------------------------------------------------------------------------- image folder
def test_image_folder_single_pool(fake_folder: Path, tmp_path: Path) -> None:
    dm = build_datamodule("imagefolder", root=str(fake_folder), name="bugs", batch_size=4, image_size=24)
    assert (dm.name, dm.num_classes, dm.class_names) == ("bugs", 3, ["ants", "bees", "wasps"])
    d = dm.describe()
    assert d["class_counts"]["val"] == [2, 2, 1] and d["class_counts"]["test"] == [2, 2, 1]
    _check_partition(dm, {"all": 25})
    x, y = _first_batch(dm)
    assert x.shape == (4, 3, 24, 24) and set(y.tolist()) <= {0, 1, 2}
    record = json.loads(dm.write_split(tmp_path / "out").read_text())
    assert record["splits"]["test"]["ids"][0].split("/")[0] in {"ants", "bees", "wasps"}


def test_image_folder_official_splits(tmp_path: Path, write_image) -> None:
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                write_image(tmp_path / "ds" / split / cls / f"{i}.png", seed=i)
    dm = build_datamodule("imagefolder", root=str(tmp_path / "ds"), val_fraction=0.5, image_size=8)
    assert dm.describe()["num_samples"] == {"train": 6, "val": 6, "test": 4}
    assert dm.describe()["sources"] == {"train": "train", "val": "train", "test": "test"}


def test_dataset_stats_are_estimated_for_image_files(fake_folder: Path) -> None:
    kw = {"root": str(fake_folder), "augment": False, "image_size": 16}
    dm = build_datamodule("imagefolder", normalize="dataset", **kw)
    raw = build_datamodule("imagefolder", normalize="none", **kw).dataset("train")
    x = torch.stack([raw[i][0] for i in range(len(raw))])  # 15 training images: all are used
    mean, std = dm.dataset_stats()
    assert np.allclose(mean, x.mean((0, 2, 3)).numpy(), atol=1e-4)
    assert np.allclose(std, x.std((0, 2, 3)).numpy(), atol=1e-4)
    normed = torch.stack([dm.dataset("train")[i][0] for i in range(len(raw))])
    assert np.allclose(normed.mean((0, 2, 3)).numpy(), 0.0, atol=1e-2)
    assert np.allclose(normed.std((0, 2, 3)).numpy(), 1.0, atol=1e-2)
