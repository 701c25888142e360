"""``RayWorkersLauncher``: Hydra's Ray launcher with long-lived workers (``hybridpool.sweep.ray_workers``).

Hydra imports this module on every start (plugin scan), so it imports neither Ray nor the Ray launcher.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RayWorkersLauncher(Launcher):
    """Takes the Ray launcher's config (``ray.init``, ``ray.remote``); runs jobs on one Ray actor per slot."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hybridpool.sweep.ray_workers import launch

        return launch(self, job_overrides, initial_job_idx)
