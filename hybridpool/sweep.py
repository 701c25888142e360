"""Sweeps that survive failures and restarts: a stable sweep folder, skip/resume per job, a summary.

A multirun (``hybridpool-train -m pool=avg,gem seed=0,1``) writes into
``<log_dir>/<task_name>/multirun/<sweep name>/<job num>/``. The sweep name comes from the command line (the
task overrides, in order: ``pool-avg+gem_seed-0+1-<hash of all overrides>``), not from the clock, so running the
same command again lands in the same folder, where every job first looks for itself:

- **skip**: a job whose resolved config and seed (:func:`config_hash`, independent of output folders and
  timestamps) already has a ``completed`` record in the sweep folder is not run again (no new W&B run either);
- **resume**: an unfinished one (``failed``, ``interrupted``, or ``running`` but killed) with
  ``checkpoints/last.ckpt`` continues from it, in its folder, under the same W&B run id;
- **run**: anything else runs (again) in its folder.

A job that raises is recorded as ``failed`` (status and traceback in ``results.json`` and in its W&B run) and
the sweep goes on. :class:`SweepCallback` (a Hydra callback, see ``conf/hydra/default.yaml``) writes
``sweep.json`` (the command, overrides, launcher, expected jobs, one entry per invocation) at the start and
prints the summary (done, skipped, failed, ... and where each job lives) at the end, also written to
``summary.json``. ``hybridpool-sweep-status <sweep dir>`` prints the same summary at any time.

This module imports no torch or Lightning: the Hydra callback and the status command stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

__all__ = [
    "MANIFEST_FILE",
    "SUMMARY_FILE",
    "JobPlan",
    "JobState",
    "SweepCallback",
    "SweepJob",
    "SweepSummary",
    "config_hash",
    "current_job",
    "format_summary",
    "last_summary",
    "plan_job",
    "status_main",
    "summarize",
    "sweep_name",
]

MANIFEST_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".job.lock"
RESULTS_FILE = "results.json"
RESOLVER = "hybridpool.sweep_name"

#: per-process state: the sweep name computed by the callback (read by the resolver) and the last summary
_STATE: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------- identity
def _comparable(config: Mapping[str, Any], output_dir: str | os.PathLike[str] | None) -> str:
    """A run config as text, minus what differs between two attempts of the same run (folders, ckpt_path)."""
    c = {k: v for k, v in config.items() if k not in ("ckpt_path", "paths")}
    text = json.dumps(c, sort_keys=True, default=str)
    if output_dir:
        text = text.replace(str(output_dir), "<OUTPUT_DIR>")
    return text


def config_hash(config: Mapping[str, Any], output_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of a resolved run config (seed included), ignoring ``paths``, ``ckpt_path`` and ``output_dir``.

    Two runs with the same hash train the same model on the same data with the same seed: a sweep treats a
    completed record with this hash as the job already done.
    """
    return hashlib.sha256(_comparable(config, output_dir).encode()).hexdigest()


def record_hash(record: Mapping[str, Any], run_dir: Path | None = None) -> str | None:
    """The config hash of a results record (stored, or recomputed for records written before it was)."""
    if record.get("config_hash"):
        return str(record["config_hash"])
    config = record.get("config")
    if not isinstance(config, Mapping):
        return None
    out = (record.get("paths") or {}).get("output_dir") or (str(run_dir) if run_dir else None)
    return config_hash(config, out)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)


def sweep_name(overrides: Sequence[str]) -> str:
    """A stable folder name for a sweep: its swept keys and values, readable, plus a hash of all overrides.

    ``["pool=avg,gem", "seed=0,1", "data.num_train=64"]`` -> ``pool-avg+gem_seed-0+1-<8 hex>``. The order of
    the overrides and of the values counts (it fixes the job numbers), as on the command line.
    """
    overrides = [str(o).strip() for o in overrides]
    readable: list[str] = []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for o in OverridesParser.create().parse_overrides(overrides):
            if not o.is_sweep_override():
                continue
            key = o.get_key_element().lstrip("+~")
            try:
                values = [str(v) for v in o.sweep_string_iterator()]
            except Exception:  # interval or glob sweeps have no finite list of strings
                values = [o.get_value_element_as_str()]
            readable.append(f"{key}-{'+'.join(values)}")
    except Exception:  # a grammar error surfaces in Hydra itself; the name only needs to be stable
        readable = []
    digest = hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:8]
    text = _safe("_".join(readable))[:60].strip("-_.+") or "sweep"
    return f"{text}-{digest}"


def _argv_task_overrides(argv: Sequence[str]) -> list[str]:
    """The task overrides of a Hydra command line (fallback when the callback is not configured)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    hydra_prefixes = ("hydra.", "hydra/", "+hydra", "++hydra", "~hydra")
    return [o for o in (args.overrides or []) if not o.startswith(hydra_prefixes)]


def _resolve_sweep_name() -> str:
    name = _STATE.get("sweep_name")
    if name:
        return str(name)
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return sweep_name(list(HydraConfig.get().overrides.task))
    except Exception:
        pass
    return sweep_name(_argv_task_overrides(sys.argv[1:]))


def register_resolver() -> None:
    """``${hybridpool.sweep_name:}``: resolved once per sweep (cached), then carried to every job's config."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_sweep_name, use_cache=True)


register_resolver()


# --------------------------------------------------------------------------------------------- the job
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def iter_records(sweep_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(job folder, results record)`` of every job folder directly under ``sweep_dir``."""
    if not sweep_dir.is_dir():
        return
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        rec = _read_json(d / RESULTS_FILE)
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
    mine: list[tuple[Path, dict[str, Any]]] = []
    occupied = False
    for d, rec in iter_records(Path(sweep_dir)):
        if record_hash(rec, d) == h:
            mine.append((d.absolute(), rec))
        elif d.absolute() == output_dir:
            occupied = True
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


# --------------------------------------------------------------------------------------------- summary
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
    manifest = _read_json(root / MANIFEST_FILE) or {}
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


# --------------------------------------------------------------------------------------------- callback
def _write_json(path: Path, data: Any) -> None:
    from hybridpool.records import write_json_atomic

    write_json_atomic(path, data)


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

    Hydra calls it in the process that launches the jobs (``on_multirun_*``); the per-job hooks are no-ops.
    """

    def __init__(self, print_summary: bool = True) -> None:
        self.print_summary = print_summary
        self.sweep_dir: Path | None = None
        self.start_unix: float | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        overrides = [str(o) for o in config.hydra.overrides.task]
        _STATE["sweep_name"] = sweep_name(overrides)
        _STATE.pop("last_summary", None)
        _check_ray_gpus(config)
        _register_own_launcher(config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()  # resolved (and cached) here first
        self.start_unix = time.time()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        manifest = _read_json(self.sweep_dir / MANIFEST_FILE) or {}
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
        _write_json(self.sweep_dir / MANIFEST_FILE, manifest)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return
        summary = summarize(self.sweep_dir, since=self.start_unix)
        _STATE["last_summary"] = summary
        manifest = _read_json(self.sweep_dir / MANIFEST_FILE) or {}
        if manifest.get("invocations"):
            manifest["invocations"][-1]["end_unix"] = time.time()
            manifest["invocations"][-1]["counts"] = summary.counts
            _write_json(self.sweep_dir / MANIFEST_FILE, manifest)
        _write_json(self.sweep_dir / SUMMARY_FILE, summary.to_dict())
        if self.print_summary:
            print(f"[hybridpool] {format_summary(summary)}", flush=True)


# --------------------------------------------------------------------------------------------- command
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
