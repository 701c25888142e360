"""One training run: :func:`hybridpool.run.train.train` (``train(cfg, placement=None)``) validates, builds, fits,
tests and records.

Rooms: :mod:`.train` (the recipe), :mod:`.build` (instantiate everything, tags), :mod:`.module` (the Lightning
module), :mod:`.callbacks` (attention maps), :mod:`.resume` (:class:`Placement`, finding an earlier attempt),
:mod:`.record` (the record at the start), :mod:`.outputs` (what the run wrote), :mod:`.ddp`, :mod:`.wandb`
(the logger and the run's W&B session), :mod:`.console`, :mod:`.config` (the start-of-run check),
:mod:`.compose` (finding and composing ``conf/``). Nothing here imports :mod:`hybridpool.sweep`.
Importing this package is light (no torch); ``train`` imports Lightning when called.
"""

from __future__ import annotations

from hybridpool.run.compose import compose_config, config_dir
from hybridpool.run.resume import Placement, resolve_ckpt_path

__all__ = ["Placement", "compose_config", "config_dir", "resolve_ckpt_path"]
