"""Where a sweep stands: :func:`summarize` its folder, :func:`format_summary` it, ``hybridpool-sweep-status``."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hybridpool.records import RESULTS_FILE, read_json
from hybridpool.sweep.naming import _STATE
from hybridpool.sweep.plan import iter_records

__all__ = [
    "MANIFEST_FILE",
    "SUMMARY_FILE",
    "JobState",
    "SweepSummary",
    "format_summary",
    "last_summary",
    "status_main",
    "summarize",
]

MANIFEST_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"


@dataclass
class JobState:
    """One job of a sweep as the summary shows it."""

    num: int | None
    state: str  # done | skipped | failed | interrupted | running | pending
    dir: str | None
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str | None = None
    attempts: int = 1
    wandb_id: str | None = None


@dataclass
class SweepSummary:
    """Counts and per-job states of a sweep folder (see :func:`summarize`)."""

    sweep_dir: str
    name: str
    jobs: list[JobState]
    metric: str | None = None

    def count(self, state: str) -> int:
        return sum(1 for j in self.jobs if j.state == state)

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def counts(self) -> dict[str, int]:
        order = ("done", "skipped", "failed", "interrupted", "running", "pending")
        return {s: self.count(s) for s in order}

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep_dir": self.sweep_dir,
            "name": self.name,
            "metric": self.metric,
            "counts": self.counts,
            "jobs": [asdict(j) for j in self.jobs],
        }


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _finished_unix(rec: Mapping[str, Any]) -> float | None:
    t = (rec.get("timing") or {}).get("end_unix")
    if t is not None:
        return float(t)
    fin = rec.get("finished_at")
    if not fin:
        return None
    try:
        return datetime.fromisoformat(str(fin)).timestamp()
    except ValueError:
        return None


def _state_of(rec: Mapping[str, Any], since: float | None) -> str:
    status = rec.get("status")
    if status == "completed":
        fin = _finished_unix(rec)
        return "skipped" if since is not None and fin is not None and fin < since else "done"
    if status == "running":
        same_host = rec.get("host") == socket.gethostname()
        if same_host and rec.get("pid") is not None and not _pid_alive(rec["pid"]):
            return "interrupted"  # killed: the process that wrote "running" is gone
        return "running"
    if status == "interrupted":
        return "interrupted"
    return "failed"


def summarize(sweep_dir: str | os.PathLike[str], since: float | None = None) -> SweepSummary:
    """The state of every job of the sweep in ``sweep_dir``.

    Args:
        sweep_dir: the sweep folder (holding ``sweep.json`` and one folder per job).
        since: start (Unix time) of the invocation to report on; jobs completed before it count as
            ``skipped``. Default: the latest invocation recorded in ``sweep.json``.
    """
    root = Path(sweep_dir).absolute()
    manifest = read_json(root / MANIFEST_FILE) or {}
    if since is None:
        invocations = manifest.get("invocations") or []
        since = invocations[-1].get("start_unix") if invocations else None
    found: list[JobState] = []
    metric = None
    for d, rec in iter_records(root):
        job = rec.get("job") or {}
        num = job.get("num")
        if num is None and d.name.isdigit():
            num = int(d.name)
        metric = metric or (rec.get("config") or {}).get("optimized_metric")
        err = rec.get("error")
        found.append(
            JobState(
                num=num,
                state=_state_of(rec, since),
                dir=str(d),
                overrides=list(job.get("overrides") or rec.get("overrides") or []),
                metrics={k: v for k, v in (rec.get("metrics") or {}).items() if isinstance(v, (int, float))},
                wall_time_s=rec.get("wall_time_s"),
                error=str(err).splitlines()[0][:200] if err else None,
                attempts=int(rec.get("attempts") or 1),
                wandb_id=(rec.get("wandb") or {}).get("id"),
            )
        )
    # The latest invocation's jobs, matched to records by their overrides: a grid that grew between invocations
    # (more seeds) numbers its jobs anew, and a job skipped there lives in the folder of its earlier number. Where
    # the recorded overrides are spelt differently from the sweep's list (interpolations such as ${seed}), by number.
    expected = [list(o) for o in manifest.get("expected_jobs") or []]
    by_overrides: dict[tuple[str, ...], list[JobState]] = {}
    for state in found:
        by_overrides.setdefault(tuple(sorted(state.overrides)), []).append(state)
    slots: list[JobState | None] = []
    for num, overrides in enumerate(expected):
        matches = by_overrides.get(tuple(sorted(overrides)), [])
        matches.sort(key=lambda j: j.num != num)  # its own folder first
        slots.append(matches.pop(0) if matches else None)
    claimed = {id(j) for j in slots if j is not None}
    by_num = {j.num: j for j in reversed(found) if id(j) not in claimed}
    jobs: list[JobState] = []
    for num, (overrides, state) in enumerate(zip(expected, slots, strict=True)):
        state = state or by_num.pop(num, None)
        if state is None:
            state = JobState(num=num, state="pending", dir=None, overrides=overrides)
        claimed.add(id(state))
        state.num = num
        jobs.append(state)
    jobs += [j for j in found if id(j) not in claimed]  # records of jobs outside the latest grid
    ordered = sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.dir or ""))
    return SweepSummary(sweep_dir=str(root), name=manifest.get("name") or root.name, jobs=ordered, metric=metric)


def format_summary(summary: SweepSummary, width: int = 60) -> str:
    """The summary as text: a count line, then one line per job with its state, metrics and folder."""
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items() if n)
    lines = [
        f"sweep {summary.name}: {len(summary.jobs)} jobs: {counts or 'none yet'}",
        f"  folder: {summary.sweep_dir}",
    ]
    metric = summary.metric or "val/acc"
    shown = [metric] + (["test/acc"] if metric != "test/acc" else [])
    head = f"  {'job':>4}  {'state':<11} " + " ".join(f"{m:>10}" for m in shown) + f"  {'wall':>8}  overrides -> folder"
    lines.append(head)
    listed = [set(j.overrides) for j in summary.jobs if j.overrides]
    common = set.intersection(*listed) if len(listed) > 1 else set()  # show what differs between jobs
    for j in summary.jobs:
        vals = " ".join(f"{j.metrics[m]:>10.4f}" if m in j.metrics else f"{'-':>10}" for m in shown)
        wall = f"{j.wall_time_s:7.1f}s" if isinstance(j.wall_time_s, (int, float)) else f"{'-':>8}"
        state = j.state.upper() if j.state == "failed" else j.state
        if j.attempts > 1 and j.state in ("done", "skipped"):
            state += f"({j.attempts})"
        ov = " ".join(o for o in j.overrides if o not in common)
        ov = ov if len(ov) <= width else ov[: width - 3] + "..."
        num = "?" if j.num is None else str(j.num)
        lines.append(f"  {num:>4}  {state:<11} {vals}  {wall}  {ov} -> {j.dir or '(not started)'}")
        if j.error:
            lines.append(f"{'':>8}error: {j.error}")
    if summary.failed or summary.count("interrupted") or summary.count("pending"):
        lines.append("  re-run the same command to retry failed/interrupted jobs (completed ones are skipped)")
    return "\n".join(lines)


def last_summary() -> SweepSummary | None:
    """The summary printed at the end of the latest multirun in this process (``None`` if none)."""
    return _STATE.get("last_summary")



def status_main(argv: Sequence[str] | None = None) -> int:
    """``hybridpool-sweep-status <sweep dir> [--json]``: the sweep's summary, at any time.

    Exit status: 0 when every job is done (or skipped), 1 when some failed, 2 while some are still running,
    pending or interrupted, 3 when the folder holds no sweep.
    """
    parser = argparse.ArgumentParser(
        prog="hybridpool-sweep-status",
        description="Summary of a hybridpool-train multirun: done, skipped, failed, interrupted, running, "
        "pending jobs and where each lives.",
    )
    parser.add_argument("sweep_dir", help="the sweep folder (outputs/<task_name>/multirun/<sweep name>)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    root = Path(args.sweep_dir)
    if not root.is_dir() or not ((root / MANIFEST_FILE).is_file() or any(iter_records(root))):
        print(f"hybridpool-sweep-status: no sweep in {root} (no {MANIFEST_FILE}, no */{RESULTS_FILE})", file=sys.stderr)
        return 3
    summary = summarize(root)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    c = summary.counts
    if c["failed"]:
        return 1
    if c["running"] or c["pending"] or c["interrupted"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(status_main())
