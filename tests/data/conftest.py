"""Fixtures of the data tests: the offline data root and tiny fake datasets written to ``tmp_path``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def data_root() -> Path:
    """``$HYBRIDPOOL_DATA_ROOT`` (CI sets it to ``../shared/data``); the test is skipped only when it is unset."""
    root = os.environ.get("HYBRIDPOOL_DATA_ROOT")
    if not root:
        pytest.skip("HYBRIDPOOL_DATA_ROOT is not set (CI sets it to ../shared/data)")
    return Path(root)


def _write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    """A small random RGB image file (``size`` = (width, height)); the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def write_image() -> Callable[..., None]:
    """``write_image(path, seed, size=(40, 30))`` writes a small random RGB image."""
    return _write_image


@pytest.fixture
def fake_folder(tmp_path: Path) -> Path:
    """``root/<class>/<image>.jpg``: 3 classes with 10, 10 and 5 images."""
    root = tmp_path / "folder"
    for c, (cls, n) in enumerate([("ants", 10), ("bees", 10), ("wasps", 5)]):
        for i in range(n):
            _write_image(root / cls / f"{i:03d}.jpg", seed=100 * c + i)
    return root
