"""The run's record at its start: ``results.json`` with status ``running``, the job, timings and attempts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hybridpool.records import RunRecord, config_hash
from hybridpool.run.resume import Placement

__all__ = ["open_record", "process_start_unix", "torch_threads"]


def process_start_unix() -> float | None:
    """When this process started (Unix time, from /proc; ``None`` elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def torch_threads() -> int | None:
    """torch's intra-op thread count (``None`` when torch cannot say)."""
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:
        return None



def open_record(
    container: dict[str, Any],
    output_dir: Path,
    placement: Placement,
    overrides: list[str],
    start_unix: float,
    startup_s: float,
    write: bool = True,
) -> RunRecord:
    """Write the run's record with status ``running``: job, config hash, timing, devices and earlier attempts.

    Args:
        container: the resolved run config. output_dir: the folder the run writes into.
        placement: the run's placement (its ``previous`` record and ``ckpt`` make this an attempt > 1).
        overrides: the command-line overrides. start_unix, startup_s: when the run started, and the seconds
            from then to here (imports, the sweep's plan).
        write: ``False`` on DDP ranks other than 0: they keep the record in memory only.
    """
    chash = config_hash(container, output_dir)
    record = RunRecord(
        output_dir,
        container,
        seed=container.get("seed"),
        task_name=container.get("task_name"),
        tags=container.get("tags"),
        overrides=overrides,
        enabled=write,
    )
    record.data["config_hash"] = chash
    record.data["job"] = {**placement.job, "config_hash": chash}
    record.data["timing"].update(start_unix=start_unix, process_start_unix=process_start_unix(), startup_s=startup_s)
    record.data["devices"] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    previous = placement.previous or {}
    if previous:
        record.data["attempts"] = int(previous.get("attempts") or 1) + 1
        record.data["previous_attempt"] = {
            k: previous.get(k) for k in ("status", "error", "started_at", "finished_at", "wall_time_s")
        }
    if placement.ckpt is not None:
        record.data["resumed_from"] = placement.ckpt
        record.data.setdefault("attempts", 2)
    record.write()
    return record
