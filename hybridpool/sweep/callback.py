"""The Hydra callback of every multirun: the sweep's manifest (``sweep.json``) at the start, the summary at the end."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from hybridpool.records import read_json, write_json_atomic
from hybridpool.sweep.naming import _STATE, sweep_name
from hybridpool.sweep.summary import MANIFEST_FILE, SUMMARY_FILE, format_summary, summarize

__all__ = ["SweepCallback"]


def _expected_jobs(config: Any) -> list[list[str]] | None:
    """The job override lists of a basic-sweeper multirun, in job-number order (``None`` for other sweepers)."""
    sweeper = config.hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = sweeper.get("params") or {}
        args = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in config.hydra.overrides.task]
        parsed = OverridesParser.create().parse_overrides(args)
        return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:
        return None


def _visible_gpus() -> int:
    import glob

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _check_ray_gpus(config: Any) -> None:
    """Refuse a local Ray sweep asking for GPUs on a machine without any (Ray would wait forever)."""
    launcher = config.hydra.get("launcher") or {}
    if not str(launcher.get("_target_", "")).endswith(("RayLauncher", "RayWorkersLauncher")):
        return
    ray_cfg = launcher.get("ray") or {}
    init = ray_cfg.get("init") or {}
    remote = ray_cfg.get("remote") or {}
    wants = remote.get("num_gpus") or 0
    if not wants or init.get("address") or os.environ.get("RAY_ADDRESS") or init.get("num_gpus"):
        return
    if _visible_gpus() == 0:
        raise ValueError(
            f"hydra/launcher=ray asks for {wants} GPU(s) per job (hydra.launcher.ray.remote.num_gpus) but this "
            "machine has no visible GPU, so Ray would wait forever. On CPU pass "
            "hydra.launcher.ray.remote.num_gpus=0; to attach to a running cluster use hydra/launcher=ray_cluster."
        )


def _register_own_launcher(config: Any) -> None:
    """Make sure Hydra knows this package's launcher plugins (``hydra_plugins.hybridpool_launchers``).

    Hydra finds plugins by walking the ``hydra_plugins`` folders on ``sys.path``. A wheel install and an editable
    install in setuptools' ``compat`` mode (``make setup``) put ours there; setuptools' default editable mode
    maps the package without a folder that ``pkgutil`` can walk, so there the class is registered here.
    """
    target = str((config.hydra.get("launcher") or {}).get("_target_", ""))
    if not target.startswith("hydra_plugins.hybridpool_launchers."):
        return
    from hydra.core.plugins import Plugins
    from hydra.utils import get_class

    known = Plugins.instance().class_name_to_class
    if target not in known:
        known[target] = get_class(target)


class SweepCallback(Callback):
    """Hydra callback (``hydra.callbacks.sweep``): the sweep's manifest at the start, the summary at the end.

    Hydra calls it in the process that launches the jobs (``on_multirun_*``); the per-job hooks are no-ops. When
    the sweep raises instead of ending (a launcher returned a job as failed: a Ray worker or a SLURM job lost),
    Hydra skips ``on_multirun_end``; the summary is then written and printed when the process exits.
    """

    def __init__(self, print_summary: bool = True) -> None:
        self.print_summary = print_summary
        self.sweep_dir: Path | None = None
        self.start_unix: float | None = None
        self._ended = True

    def _end_at_exit(self, config: Any) -> None:
        if not self._ended:
            with contextlib.suppress(Exception):
                self.on_multirun_end(config)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        overrides = [str(o) for o in config.hydra.overrides.task]
        _STATE["sweep_name"] = sweep_name(overrides)
        _STATE.pop("last_summary", None)
        _check_ray_gpus(config)
        _register_own_launcher(config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()  # resolved (and cached) here first
        self.start_unix = time.time()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        manifest = read_json(self.sweep_dir / MANIFEST_FILE) or {}
        invocations = list(manifest.get("invocations") or [])
        invocations.append(
            {
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "start_unix": self.start_unix,
                "end_unix": None,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "launcher": str((config.hydra.get("launcher") or {}).get("_target_", "")),
                "hydra_overrides": [str(o) for o in config.hydra.overrides.hydra],
            }
        )
        manifest.update(
            {
                "name": self.sweep_dir.name,
                "task_name": str(config.get("task_name", "")),
                "sweep_dir": str(self.sweep_dir),
                "overrides": overrides,
                "sweeper": str((config.hydra.get("sweeper") or {}).get("_target_", "")),
                "expected_jobs": _expected_jobs(config),
                "invocations": invocations,
            }
        )
        write_json_atomic(self.sweep_dir / MANIFEST_FILE, manifest)
        self._ended = False
        atexit.register(self._end_at_exit, config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._ended = True
        atexit.unregister(self._end_at_exit)
        if self.sweep_dir is None:
            return
        summary = summarize(self.sweep_dir, since=self.start_unix)
        _STATE["last_summary"] = summary
        manifest = read_json(self.sweep_dir / MANIFEST_FILE) or {}
        if manifest.get("invocations"):
            manifest["invocations"][-1]["end_unix"] = time.time()
            manifest["invocations"][-1]["counts"] = summary.counts
            write_json_atomic(self.sweep_dir / MANIFEST_FILE, manifest)
        write_json_atomic(self.sweep_dir / SUMMARY_FILE, summary.to_dict())
        if self.print_summary:
            print(f"[hybridpool] {format_summary(summary)}", flush=True)


