"""DDP inside Hydra runs and sweeps: the other ranks join this run's folder, die with it, and leave no state behind.

Lightning's ``ddp`` strategy starts ranks 1..N-1 as subprocesses; :func:`route_children` makes them single runs of
this job in this job's folder, :func:`die_with_parent` ties them to rank 0, and after the run :func:`reap_children`
and :func:`restore_env` let the next job of a sweep in the same process start clean.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from hybridpool.run.console import say

__all__ = ["DDP_ENV", "die_with_parent", "env_snapshot", "reap_children", "restore_env", "route_children"]

#: environment variables Lightning's DDP launcher sets in the launching process (restored after each run, so
#: the next job of a sweep running in the same process does not think it is a DDP child)
DDP_PARENT_ENV = "HYBRIDPOOL_DDP_PARENT_PID"
DDP_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    DDP_PARENT_ENV,
)



def _hydra_quote(value: Any) -> str:
    """``value`` as a single-quoted Hydra override value."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def route_children(trainer: Any, output_dir: Path, ckpt: str | None) -> None:
    """Make Lightning's DDP child processes join this run instead of starting Hydra runs of their own.

    Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running the script with the parent's ``sys.argv``
    plus ``hydra.run.dir`` (Lightning's ``_hydra_subprocess_cmd``). Inside a multirun that re-runs the whole
    sweep (``-m`` and the sweep lists are in ``sys.argv``) into the wrong folder, and under a launcher worker
    (joblib, Ray) ``sys.argv`` is not ours at all. The children are started instead as single runs of this
    job's own overrides, in this run's folder, without writing ``.hydra/`` (and from the same checkpoint when
    resuming). Only the global rank 0 writes the record and the W&B run.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd
        from pytorch_lightning.strategies.launchers import subprocess_script
    except ImportError:
        return
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if not isinstance(launcher, subprocess_script._SubprocessScriptLauncher) or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    task_overrides = [str(o) for o in hc.overrides.task if not str(o).startswith(("ckpt_path=", "+ckpt_path="))]
    if ckpt is not None:
        task_overrides.append(f"ckpt_path={_hydra_quote(ckpt)}")
    config_args: list[str] = []
    for src in hc.runtime.get("config_sources") or []:
        if src.get("provider") == "command-line" and src.get("schema") == "file":
            config_args += ["--config-dir", str(src.path)]
    try:
        cwd = get_original_cwd()
    except ValueError:
        cwd = os.getcwd()

    def command(local_rank: int) -> tuple[list[str], str]:
        return (
            [
                sys.executable,
                "-m",
                "hybridpool.cli",
                *config_args,
                *task_overrides,
                f"hydra.run.dir={_hydra_quote(output_dir)}",
                f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null",
            ],
            cwd,
        )

    subprocess_script._hydra_subprocess_cmd = command
    os.environ[DDP_PARENT_ENV] = str(os.getpid())  # the children die with this process (die_with_parent)


def die_with_parent() -> None:
    """In a DDP child (rank > 0) started by :func:`route_children`: get SIGKILLed when the launching
    process dies (killed sweep), instead of waiting forever in a collective as an orphan."""
    parent = os.environ.get(DDP_PARENT_ENV)
    if not parent or os.environ.get("LOCAL_RANK", "0") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # already gone before the signal was armed
        os._exit(1)


def reap_children(trainer: Any, ok: bool) -> None:
    """After a DDP run on rank 0: wait for the other ranks to exit (kill them on failure) and disarm Lightning's
    child-process observer, which would otherwise SIGKILL this process, and with it the rest of a sweep, when
    a finished run's child exits non-zero later."""
    import threading

    procs = list(getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None) or [])
    if not procs:
        return
    for t in threading.enumerate():
        if t.name == "child-process-observer":
            t._run = lambda: True  # type: ignore[attr-defined]
    deadline = time.monotonic() + (120.0 if ok else 5.0)
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            p.kill()
            p.wait()
    bad = [p.returncode for p in procs if p.returncode not in (0, None)]
    if bad:
        say(f"warning: DDP child process(es) exited with {bad}")


def restore_env(before: dict[str, str | None]) -> None:
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0 or before.get("LOCAL_RANK") is not None:
        return  # a DDP child (or a process started by an outer launcher) keeps its environment
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:
        say(f"warning: could not close the process group: {err}")



def env_snapshot() -> dict[str, str | None]:
    """The DDP variables of this process now, for :func:`restore_env` after the run."""
    return {k: os.environ.get(k) for k in DDP_ENV}
