"""Synthetic diagnostic tasks: shapes, balance, determinism, and evidence that each task tests what it claims.

Learnability evidence uses fixed hand-crafted features (no training):
* detail: the max over positions of a matched filter finds the motif; its average over positions and global
  image statistics are at chance.
* texture: the average over positions of oriented-filter energy finds the majority orientation and beats
  the max over positions of the same energy; global image statistics are at chance.
* finegrained: the max over positions of a match to the class colours finds the head; the average and the
  global mean colour are near chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybridpool.data import SyntheticDataModule, build_datamodule, class_counts, make_synthetic
from hybridpool.data.synthetic import MOTIFS, TASKS, _palette

K = 4


def _accuracy(scores: torch.Tensor, labels: np.ndarray) -> float:
    return float((scores.argmax(1).numpy() == labels).mean())


def _nearest_centroid(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit class means on the first half, accuracy on the second half."""
    half = labels.size // 2
    centroids = np.stack([features[:half][labels[:half] == k].mean(0) for k in range(K)])
    dist = ((features[half:, None] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == labels[half:]).mean())


def _global_stats(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.mean((2, 3)), x.std((2, 3))], axis=1)


@pytest.mark.parametrize("task", TASKS)
def test_shapes_balance_and_determinism(task: str) -> None:
    x, y = make_synthetic(task, 202, K, image_size=24, channels=3, seed=7)
    assert x.shape == (202, 3, 24, 24) and x.dtype == np.float32
    assert y.shape == (202,) and y.dtype == np.int64
    counts = class_counts(y, K)
    assert max(counts) - min(counts) <= 1 and sum(counts) == 202
    assert np.isfinite(x).all()
    x2, y2 = make_synthetic(task, 202, K, image_size=24, channels=3, seed=7)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)  # bitwise identical
    x3, _ = make_synthetic(task, 202, K, image_size=24, channels=3, seed=8)
    assert not np.allclose(x, x3)
    x4, _ = make_synthetic(task, 202, K, image_size=24, channels=3, seed=7, stream=1)
    assert not np.allclose(x, x4)


@pytest.mark.parametrize("task", TASKS)
def test_grey_and_non_square_sizes(task: str) -> None:
    x, y = make_synthetic(task, 16, 3, image_size=20, channels=1, seed=0)
    assert x.shape == (16, 1, 20, 20)
    assert set(y.tolist()) == {0, 1, 2}


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="known"):
        make_synthetic("stripes", 10, 2)
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic("detail", 10, len(MOTIFS) + 1)
    with pytest.raises(ValueError, match="task must be one of 'texture', 'detail', 'finegrained', got 'stripes'"):
        SyntheticDataModule(task="stripes")


def test_detail_needs_a_local_max() -> None:
    x, y = make_synthetic("detail", 800, K, seed=0)
    grey = torch.from_numpy(x.mean(1, keepdims=True))
    resp = F.conv2d(grey, torch.from_numpy(MOTIFS[:K, None]))  # (N, K, 28, 28) matched filters
    assert _accuracy(resp.amax((2, 3)), y) > 0.9
    assert _accuracy(resp.mean((2, 3)), y) < 0.4
    assert _nearest_centroid(_global_stats(x), y) < 0.4


def _gabor_energy(x: np.ndarray) -> torch.Tensor:
    """``(N, K, H', W')`` quadrature Gabor energy at the K class orientations."""
    r = torch.arange(-4, 5, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    envelope = torch.exp(-(xx**2 + yy**2) / (2 * 2.5**2))
    kernels = []
    for k in range(K):
        u = xx * float(np.cos(np.pi * k / K)) + yy * float(np.sin(np.pi * k / K))
        kernels += [envelope * torch.cos(2 * np.pi * 0.2 * u), envelope * torch.sin(2 * np.pi * 0.2 * u)]
    w = torch.stack(kernels)[:, None]
    w = w - w.mean((2, 3), keepdim=True)
    out = F.conv2d(torch.from_numpy(x.mean(1, keepdims=True)), w)
    return out.view(x.shape[0], K, 2, *out.shape[-2:]).pow(2).sum(2)


def test_texture_needs_an_average() -> None:
    x, y = make_synthetic("texture", 800, K, seed=0)
    energy = _gabor_energy(x)
    acc_avg = _accuracy(energy.mean((2, 3)), y)
    acc_max = _accuracy(energy.amax((2, 3)), y)
    assert acc_avg > 0.75
    assert acc_avg > acc_max + 0.1
    assert _nearest_centroid(_global_stats(x), y) < 0.4


def test_finegrained_lives_in_a_small_part() -> None:
    x, y = make_synthetic("finegrained", 800, K, seed=0)
    smooth = F.avg_pool2d(torch.from_numpy(x), 3, stride=1, padding=1)
    palette = torch.from_numpy(_palette(K, 3))
    match = -((smooth[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)  # (N, K, H, W)
    assert _accuracy(match.amax((2, 3)), y) > 0.8
    assert _accuracy(match.mean((2, 3)), y) < 0.45
    assert _nearest_centroid(x.mean((2, 3)), y) < 0.45


def test_datamodule_batches_and_attributes() -> None:
    dm = build_datamodule("synth_detail", num_train=100, num_val=40, num_test=40, batch_size=16, seed=1)
    assert (dm.name, dm.num_classes, dm.in_channels, dm.image_size) == ("synth_detail", 4, 3, 32)
    assert dm.task == "detail" and len(dm.class_names) == 4
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [100, 40, 40]
    # val/test come from other derived seeds than train
    assert not torch.equal(dm.arrays("train")[0][:40], dm.arrays("val")[0])


def test_datamodule_determinism_and_seed() -> None:
    a = SyntheticDataModule(task="texture", num_train=64, num_val=8, num_test=8, seed=3)
    b = SyntheticDataModule(task="texture", num_train=64, num_val=8, num_test=8, seed=3)
    c = SyntheticDataModule(task="texture", num_train=64, num_val=8, num_test=8, seed=4)
    d = SyntheticDataModule(task="texture", num_train=64, num_val=8, num_test=8, seed=4, split_seed=3)
    assert torch.equal(a.arrays("train")[0], b.arrays("train")[0])
    assert not torch.equal(a.arrays("train")[0], c.arrays("train")[0])
    assert torch.equal(a.arrays("train")[0], d.arrays("train")[0])  # split_seed fixes the data
    # the train loader's shuffle is seeded by `seed`
    first = [next(iter(m.train_dataloader()))[1] for m in (a, b, c)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_train_fraction_and_normalize() -> None:
    dm = SyntheticDataModule(task="detail", num_train=200, num_val=20, num_test=20, train_fraction=0.25)
    idx = dm.split_indices()
    assert len(idx["train"]) == 50 and len(idx["val"]) == 20
    assert class_counts(dm.split_labels("train"), 4) == [12, 12, 13, 13] or set(
        class_counts(dm.split_labels("train"), 4)
    ) <= {12, 13}
    norm = SyntheticDataModule(task="detail", num_train=200, num_val=20, num_test=20, normalize="dataset")
    x = torch.stack([norm.dataset("train")[i][0] for i in range(200)])
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-2)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-2)


def test_augment_shifts_only_training_images() -> None:
    dm = SyntheticDataModule(task="detail", num_train=8, num_val=8, num_test=8, augment=True)
    torch.manual_seed(0)
    train = dm.dataset("train")
    views = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    ev = dm.eval_dataset("train")
    assert torch.equal(ev[0][0], ev[0][0]) and torch.equal(ev[0][0], dm.arrays("train")[0][0])


def test_describe_and_write_split(tmp_path: Path) -> None:
    kw = {"task": "texture", "num_train": 40, "num_val": 8, "num_test": 8}
    base = SyntheticDataModule(**kw).describe()
    json.dumps(base)
    assert base == SyntheticDataModule(**kw).describe()
    for change in (
        {"seed": 1},
        {"noise": 0.5},
        {"train_fraction": 0.5},
        {"normalize": "dataset"},
        {"augment": True},
        {"num_train": 48},
        {"task": "detail"},
    ):
        assert SyntheticDataModule(**{**kw, **change}).describe() != base, change
    path = SyntheticDataModule(**kw).write_split(tmp_path / "run")
    record = json.loads(path.read_text())
    assert path.name == "split.json" and record["dataset"] == "synth_texture"
    assert record["splits"]["train"]["indices"] == list(range(40))


def test_loader_shuffle_state_survives_a_checkpoint() -> None:
    """``state_dict`` / ``load_state_dict`` carry the shuffle generator, so a resumed run sees the same order."""
    kw = {"task": "detail", "num_train": 48, "num_val": 8, "num_test": 8, "batch_size": 16, "seed": 0}
    first = SyntheticDataModule(**kw)
    for _ in first.train_dataloader():  # epoch 1
        pass
    state = first.state_dict()
    expected = [y for _, y in first.train_dataloader()]  # epoch 2
    resumed = SyntheticDataModule(**kw)
    fresh = [y for _, y in SyntheticDataModule(**kw).train_dataloader()]
    resumed.load_state_dict(state)
    got = [y for _, y in resumed.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(fresh, expected, strict=True))
