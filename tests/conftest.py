"""Shared fixtures of the training tests (tests/pooling and tests/data have their own)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from engines import ray_head, slurm, slurm_cluster  # noqa: F401  (fixtures: real SLURM and Ray engines)
from tiny_run import TINY


def run_dir(root: Path, name: str) -> Path:
    """The folder of the test run ``name`` (under the default task name, where ckpt_path=last looks)."""
    return root / "outputs" / "main" / "runs" / name


@pytest.fixture
def train_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Offline W&B, caches and outputs under ``tmp_path``; no API key, no network."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HYBRIDPOOL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRIDPOOL_LOG_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # a W&B run inside this process (the heads engine logs in-process) exports WANDB_SERVICE, and every later CLI
    # subprocess would join that service, which keeps a killed job's run id "in use": restored after each test
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    yield tmp_path
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The overrides of the tiny test run (see ``TINY``)."""
    return list(TINY)


@pytest.fixture
def run_path(train_env: Path) -> Callable[[str], Path]:
    """``run_path(name)``: the output folder of the test run ``name``."""
    return lambda name: run_dir(train_env, name)


@pytest.fixture
def make_cfg(train_env: Path) -> Callable[..., object]:
    """``make_cfg(overrides, name="run")``: the tiny config plus ``overrides``, in a folder of its own."""
    from hybridpool.run import compose_config

    def make(overrides: Sequence[str] = (), name: str = "run", tiny: bool = True):
        out = run_dir(train_env, name)
        base = list(TINY) if tiny else []
        if any(o.startswith("model=") for o in overrides):  # the widths belong to the small CNN only
            base = [o for o in base if not o.startswith("model.backbone.")]
        if any(o.startswith("data=") for o in overrides):  # the sizes belong to the synthetic tasks only
            base = [o for o in base if not o.startswith("data.")]
        return compose_config([*base, *overrides], output_dir=out)

    return make


@pytest.fixture
def shared_data() -> Path:
    """The offline dataset folder (CI: ``$HYBRIDPOOL_DATA_ROOT``); skips when absent."""
    root = os.environ.get("HYBRIDPOOL_DATA_ROOT")
    candidates = [Path(root)] if root else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    pytest.skip("the offline data folder (../shared/data) is not available")


@pytest.fixture
def torch_home(monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> Path:
    """``TORCH_HOME`` pointing at the offline weights (MobileNetV2); skips when absent."""
    home = Path(os.environ.get("TORCH_HOME") or shared_data / "torch_home")
    if not (home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file():
        pytest.skip(f"MobileNetV2 weights not found under {home}")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home
