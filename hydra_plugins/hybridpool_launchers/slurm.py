"""``SlurmSweepLauncher``: Hydra's submitit SLURM launcher, submitting only the jobs left to run.

The work is in ``hybridpool.sweep.slurm``.

Hydra imports this module on every start (plugin scan): it imports neither submitit nor hybridpool's sweep code, and
defines nothing when hydra-submitit-launcher (the ``[slurm]`` extra) is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pip install 'hybridpool[slurm]'
    SlurmLauncher = None

if SlurmLauncher is not None:

    class SlurmSweepLauncher(SlurmLauncher):
        """Hydra's ``SlurmLauncher`` (its keys, its job function) that plans first and submits the unfinished jobs."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from hybridpool.sweep.slurm import launch

            return launch(self, job_overrides, initial_job_idx)
