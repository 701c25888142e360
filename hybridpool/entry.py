"""The console scripts. Each checks that its extra is installed and says which one is missing, not a traceback.

``pip install hybridpool`` gives the pooling layers only; the commands need ``pip install 'hybridpool[train]'``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

__all__ = ["missing_modules", "report", "sweep_status", "train"]

#: what the training, sweep and report commands import, and the distributions that provide it
TRAIN_MODULES = {
    "pytorch_lightning": "pytorch-lightning",
    "hydra": "hydra-core",
    "omegaconf": "hydra-core",
    "wandb": "wandb",
    "torchmetrics": "torchmetrics",
    "torchvision": "torchvision",
}
REPORT_MODULES = {"numpy": "numpy", "scipy": "scipy", "matplotlib": "matplotlib"}
SWEEP_MODULES = {"hydra": "hydra-core", "omegaconf": "hydra-core"}


def missing_modules(modules: dict[str, str]) -> list[str]:
    """The distributions of ``{module: distribution}`` whose module cannot be found (importing nothing)."""
    return sorted({dist for mod, dist in modules.items() if importlib.util.find_spec(mod) is None})


def _run(command: str, modules: dict[str, str], target: Callable[[], object]) -> None:
    missing = missing_modules(modules)
    if missing:
        print(
            f"{command}: needs the training extra, missing {', '.join(missing)}. Install it with:\n"
            "    pip install 'hybridpool[train]'",
            file=sys.stderr,
        )
        sys.exit(2)
    result = target()
    if isinstance(result, int):
        sys.exit(result)


def train() -> None:
    """``hybridpool-train`` (:func:`hybridpool.cli.main`)."""

    def run() -> None:
        from hybridpool.cli import main

        main()

    _run("hybridpool-train", {**TRAIN_MODULES, **REPORT_MODULES}, run)


def report() -> None:
    """``hybridpool-report`` (:func:`hybridpool.report.cli.main`)."""

    def run() -> object:
        from hybridpool.report.cli import main

        return main()

    _run("hybridpool-report", REPORT_MODULES, run)


def sweep_status() -> None:
    """``hybridpool-sweep-status`` (:func:`hybridpool.sweep.status_main`)."""

    def run() -> int:
        from hybridpool.sweep import status_main

        return status_main()

    _run("hybridpool-sweep-status", SWEEP_MODULES, run)
