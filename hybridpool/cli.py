"""``hybridpool-train``: the Hydra entry point. Compose -> :func:`hybridpool.run.train` -> exit code.

Run ``hybridpool-train`` (or ``python -m hybridpool.cli``) with no arguments for the main job (train.yaml's
defaults, also named ``experiment=main``: a synthetic task, the small CNN, the scalar hybrid pool; no download),
or choose groups and keys on the command line::

    hybridpool-train pool=gem data=fashion_mnist trainer.max_epochs=5
    hybridpool-train -m pool=avg,gem,hybrid_scalar seed=0,1,2
    hybridpool-train experiment=frozen_mobilenet
    hybridpool-train ckpt_path=last            # resume the interrupted run with the same config
    hybridpool-train -m pool=avg,gem seed=0,1 hydra/launcher=joblib   # ray, slurm: conf/hydra/launcher

A single run raises its error (exit status 1) after recording it; a multirun job is recorded and the sweep goes
on (:mod:`hybridpool.sweep`), and the sweep exits with status 1 when any job failed.
"""

from __future__ import annotations

import sys
import warnings

import hydra
from omegaconf import DictConfig

import hybridpool.sweep  # noqa: F401  (registers ${hybridpool.sweep_name:} in every process that runs jobs)
from hybridpool.run.compose import config_dir

# conf/hydra/launcher/{basic,joblib,ray}.yaml share their names with the plugins' schemas on purpose: Hydra
# validates them against those schemas and warns that this matching is deprecated; the validation is wanted.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema")

__all__ = ["main"]


def _config_path_for_main() -> str | None:
    try:
        return str(config_dir())
    except FileNotFoundError:
        return None


@hydra.main(version_base="1.3", config_path=_config_path_for_main(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hybridpool.run.train import train
    from hybridpool.sweep import current_job
    from hybridpool.sweep.job import run_sweep_job

    job = current_job()
    if job is not None:  # a multirun job: a failure is recorded and the sweep goes on
        return run_sweep_job(cfg, job)
    metrics = train(cfg)  # a single run: a failure is recorded, then raised (exit status 1)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def main() -> None:
    """Console script ``hybridpool-train``; with no arguments it runs the main job (train.yaml's defaults).

    A multirun ends with the sweep's summary and exits with status 1 when any job failed.
    """
    from hybridpool.run.ddp import die_with_parent
    from hybridpool.sweep import last_summary

    if _config_path_for_main() is None:
        config_dir()  # raises the explanatory FileNotFoundError
    die_with_parent()
    _hydra_main()
    summary = last_summary()
    if summary is not None and summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
