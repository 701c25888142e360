"""Find the Hydra configs (``conf/``) and compose ``train.yaml`` outside a Hydra app (tests, notebooks, scripts)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

__all__ = ["CONF_DIR_ENV", "compose_config", "config_dir"]

CONF_DIR_ENV = "HYBRIDPOOL_CONF_DIR"


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups.

    In order: ``$HYBRIDPOOL_CONF_DIR``; ``conf/`` beside the package (a source checkout or an editable
    install); ``hybridpool/conf`` inside an installed wheel (shipped as package data).
    """
    env = os.environ.get(CONF_DIR_ENV)
    candidates = [Path(env)] if env else []
    package = Path(__file__).resolve().parent.parent
    candidates += [package.parent / "conf", package / "conf"]
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"hybridpool's Hydra configs (train.yaml) not found; looked in {looked}. Set {CONF_DIR_ENV} to the "
        "conf/ folder of a hybridpool checkout."
    )


def compose_config(
    overrides: Sequence[str] = (), output_dir: str | os.PathLike[str] | None = None
) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides`` outside a Hydra app (tests, notebooks).

    ``output_dir`` sets ``paths.output_dir`` (otherwise taken from the Hydra run, which does not exist here).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="hybridpool"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg

