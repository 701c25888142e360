"""Transforms: the fast small-image transform matches torchvision; natural-image pipelines; pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from hybridpool.data import Flowers17DataModule, SyntheticDataModule
from hybridpool.data.transforms import (
    IMAGENET_MEAN,
    SmallImageTransform,
    natural_image_transforms,
    normalization,
    small_image_transforms,
)


def _grey(seed: int = 0, size: int = 28) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def test_small_eval_matches_torchvision() -> None:
    img = _grey()
    ref = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize(32, antialias=True)])
    expected = ref(img[None])  # (1, 32, 32)
    _, evaluation = small_image_transforms(32, 28, True, 2, True, None, None)
    out = evaluation(img)
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5)
    rgb = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert torch.equal(SmallImageTransform(32, 32)(rgb), rgb.permute(2, 0, 1).float() / 255)


def test_small_train_crop_is_a_shift_of_the_padded_image() -> None:
    img = _grey(3)
    train = SmallImageTransform(28, 28, crop_padding=2, flip=False)
    padded = torch.nn.functional.pad(img.float()[None] / 255, (2, 2, 2, 2))
    torch.manual_seed(0)
    outs = [train(img) for _ in range(12)]
    for out in outs:
        assert out.shape == (1, 28, 28)
        assert any(torch.equal(out, padded[:, t : t + 28, s : s + 28]) for t in range(5) for s in range(5))
    assert len({o.sum().item() for o in outs}) > 1  # the crops differ


def test_small_flip_channels_and_normalization() -> None:
    img = _grey(4)
    flip = SmallImageTransform(28, 28, flip=True)
    torch.manual_seed(0)
    views = {tuple(flip(img)[0, 0, :3].tolist()) for _ in range(20)}
    base = img.float() / 255
    assert views == {tuple(base[0, :3].tolist()), tuple(base.flip(-1)[0, :3].tolist())}
    norm = normalization("imagenet", 3, lambda: ([0.0], [1.0]))
    out = SmallImageTransform(28, 28, channels=3, norm=norm)(img)
    assert out.shape == (3, 28, 28)
    assert torch.allclose(out[0] * 0.229 + IMAGENET_MEAN[0], base, atol=1e-5)
    assert torch.allclose(out[2] * 0.225 + IMAGENET_MEAN[2], base, atol=1e-5)
    grey_norm = normalization("imagenet", 1, lambda: ([0.0], [1.0]))
    assert grey_norm == ([round(sum(IMAGENET_MEAN) / 3, 4)], [round((0.229 + 0.224 + 0.225) / 3, 4)])
    with pytest.raises(ValueError, match="normalize"):
        normalization("zscore", 3, lambda: ([0.0], [1.0]))


def test_natural_transforms_on_non_square_images() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    train, evaluation = natural_image_transforms(64, True, 0.35, True, None, ([0.5] * 3, [0.25] * 3))
    assert train(img).shape == (3, 64, 64) and evaluation(img).shape == (3, 64, 64)
    assert torch.equal(evaluation(img), evaluation(img))
    assert "Resize(size=[73]" in repr(evaluation) and "scale=(0.35, 1.0)" in repr(train)
    same, evaluation2 = natural_image_transforms(64, False, 0.35, True, None, None)
    assert repr(same) == repr(evaluation2) and "Random" not in repr(same)


def test_datasets_pickle_for_spawned_workers(data_root: Path) -> None:
    """Worker processes started with ``spawn`` (macOS, Windows) pickle the datasets."""
    for dm in (
        SyntheticDataModule(task="detail", num_train=8, num_val=4, num_test=4, augment=True),
        Flowers17DataModule(root=str(data_root), image_size=32),
    ):
        for split in ("train", "test"):
            ds = dm.dataset(split)
            clone = pickle.loads(pickle.dumps(ds))
            assert len(clone) == len(ds)
            assert clone[0][0].shape == ds[0][0].shape
