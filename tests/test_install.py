"""The light install: the pooling layers import no training package, and the commands name a missing extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hybridpool import entry

TRAINING_PACKAGES = (
    "pytorch_lightning",
    "lightning",
    "hydra",
    "omegaconf",
    "wandb",
    "torchmetrics",
    "torchvision",
    "matplotlib",
    "scipy",
)


def test_importing_the_pooling_layers_imports_no_training_package():
    """In a fresh interpreter: ``import hybridpool.pooling`` and building + running a hybrid pool load torch only."""
    code = (
        "import sys, torch\n"
        "from hybridpool.pooling import create_pool\n"
        "pool = create_pool('hybrid(avg,max,gem,attn)', channels=8)\n"
        "assert pool(torch.randn(2, 8, 5, 3)).shape == (2, 8)\n"
        f"print(' '.join(m for m in {TRAINING_PACKAGES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == ""


def test_the_training_packages_are_known_to_the_entry_points():
    """Every package the commands need maps to the distribution a user would install."""
    assert entry.missing_modules(entry.TRAIN_MODULES) == []
    assert entry.missing_modules({"hybridpool_no_such_module": "no-such-dist"}) == ["no-such-dist"]


def test_a_command_without_its_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(entry.TRAIN_MODULES, "hybridpool_no_such_module", "pytorch-lightning")
    with pytest.raises(SystemExit) as exit_info:
        entry.train()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "hybridpool-train: needs the training extra, missing pytorch-lightning" in err
    assert "pip install 'hybridpool[train]'" in err


def test_the_run_wing_never_imports_the_sweep_and_its_package_is_light():
    """``run/`` is called by ``sweep/`` and never the other way; ``import hybridpool.run`` loads no torch."""
    code = (
        "import sys\n"
        "import hybridpool.run\n"
        "print('torch' in sys.modules)\n"
        "import hybridpool.run.train, hybridpool.run.build, hybridpool.run.module, hybridpool.run.ddp\n"
        "print(sorted(m for m in sys.modules if m.startswith('hybridpool.sweep')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split("\n")[:2] == ["False", "[]"]
