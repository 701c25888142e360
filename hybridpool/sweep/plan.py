"""One job of a sweep: who it is (:class:`SweepJob`), what it does (:func:`plan_job`: run, resume or skip), its lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridpool.records import RESULTS_FILE, read_json
from hybridpool.run.resume import attempts_of

__all__ = ["JobPlan", "SweepJob", "current_job", "iter_records", "job_lock", "plan_job"]

LOCK_FILE = ".job.lock"


@dataclass
class SweepJob:
    """Where one multirun job stands: its number, overrides, folder, and its sweep's folder and name."""

    num: int | None
    overrides: list[str]
    output_dir: Path
    sweep_dir: Path
    sweep_name: str
    job_id: str | None = None
    task_name: str | None = None
    start_unix: float | None = None

    @property
    def wandb_group(self) -> str:
        """The W&B group of the sweep's runs: ``<task_name>:<sweep name>`` (at most 128 characters)."""
        base = f"{self.task_name}:{self.sweep_name}" if self.task_name else self.sweep_name
        return base[:128]

    @property
    def wandb_name(self) -> str:
        """The W&B run name of the job: ``#<num> <overrides>``."""
        name = " ".join(self.overrides)
        return f"#{self.num} {name}" if self.num is not None else name

    def describe(self) -> dict[str, Any]:
        """The job's identity as plain data (stored in the record and the W&B config as ``job``)."""
        return {
            "num": self.num,
            "id": self.job_id,
            "overrides": list(self.overrides),
            "sweep": self.sweep_name,
            "sweep_dir": str(self.sweep_dir),
        }


def current_job() -> SweepJob | None:
    """The :class:`SweepJob` of the running Hydra multirun job, or ``None`` outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hc.sweep.dir)).absolute()
    num = hc.job.get("num")
    return SweepJob(
        num=int(num) if num is not None else None,
        overrides=[str(o) for o in hc.overrides.task],
        output_dir=Path(str(hc.runtime.output_dir)).absolute(),
        sweep_dir=sweep_dir,
        sweep_name=sweep_dir.name,
        job_id=str(hc.job.get("id")) if hc.job.get("id") is not None else None,
        task_name=None,
    )


def iter_records(sweep_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(job folder, results record)`` of every job folder directly under ``sweep_dir``."""
    if not sweep_dir.is_dir():
        return
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        rec = read_json(d / RESULTS_FILE)
        if rec is not None:
            yield d, rec


@dataclass
class JobPlan:
    """What a sweep job does: ``run`` (fresh), ``resume`` (from ``ckpt``), ``skip`` (done) or ``busy``.

    ``run_dir`` is the folder it runs in (its own, or the one where an earlier attempt of the same config
    lives); ``previous`` is that attempt's record (W&B id, attempts), if any.
    """

    action: str
    run_dir: Path
    ckpt: str | None = None
    previous: dict[str, Any] | None = None
    reason: str = ""


def plan_job(h: str, output_dir: Path, sweep_dir: Path) -> JobPlan:
    """Decide what the job with config hash ``h``, given the folder ``output_dir``, does in ``sweep_dir``."""
    output_dir = Path(output_dir).absolute()
    folders = [d for d, _ in iter_records(Path(sweep_dir))]
    mine, others = attempts_of(h, folders)
    occupied = output_dir in others
    done = [(d, r) for d, r in mine if r.get("status") == "completed"]
    if done:
        d, r = done[0]
        return JobPlan("skip", d, None, r, f"completed earlier in {d}")
    # the job's own folder first, then the most recent attempt
    mine.sort(key=lambda x: (x[0] != output_dir, -(x[0] / RESULTS_FILE).stat().st_mtime))
    for d, r in mine:
        ckpt = d / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            return JobPlan("resume", d, str(ckpt), r, f"{r.get('status')} earlier; resuming from {ckpt}")
    if mine:
        d, r = mine[0]
        return JobPlan("run", d, None, r, f"{r.get('status')} earlier without a checkpoint; running again")
    if occupied:  # the folder holds another config's record (a reused hydra.sweep.dir): never mix the two
        alt = output_dir.with_name(f"{output_dir.name}-{h[:8]}")
        return JobPlan("run", alt, None, None, f"{output_dir} holds another config; running in {alt}")
    return JobPlan("run", output_dir, None, None, "new")


@contextlib.contextmanager
def job_lock(run_dir: Path, wait_s: float = 10.0) -> Iterator[bool]:
    """Hold ``<run_dir>/.job.lock`` (an OS lock, released even on SIGKILL); yields whether it was acquired.

    Two invocations of the same sweep running at once never train the same job together: the second sees
    the lock and leaves the job to the first.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as f:
        deadline = time.monotonic() + wait_s
        acquired = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
                break
            except OSError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
        try:
            if acquired:
                f.seek(0)
                f.truncate()
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
                f.flush()
            yield acquired
        finally:
            if acquired:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

