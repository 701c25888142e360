"""Shared set-up of the pooling tests: the float64 references in ``pool_refs`` are importable from every test file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Every test starts from the same global RNG state (layers with kaiming init draw from it) and runs on one
    intra-op thread: the tensors here are tiny, and on a busy 2-core machine OpenMP's thread barriers can make a
    small model's forward pass 50x slower. The previous thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
