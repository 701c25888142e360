"""``HeadsLauncher``: many heads per pass (``hybridpool.sweep.grouped``); this module imports no torch."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class HeadsLauncher(Launcher):
    """Trains the sweep's frozen-backbone jobs together, at most ``max_group`` runs per group, on ``n_jobs``
    processes."""

    def __init__(self, max_group: int = 256, n_jobs: int = 1) -> None:
        if int(max_group) < 1:
            raise ValueError(f"hydra.launcher.max_group must be >= 1, got {max_group}")
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be >= 1, got {n_jobs}")
        self.max_group = int(max_group)
        self.n_jobs = int(n_jobs)
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hybridpool.sweep.grouped import launch

        return launch(self, job_overrides, initial_job_idx)
