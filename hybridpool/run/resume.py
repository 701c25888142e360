"""Where a run continues: one way to find an earlier attempt, for single runs (``ckpt_path``) and sweeps.

A sweep decides for its job (:mod:`hybridpool.sweep.plan`) and hands the run a :class:`Placement`; a single run
gets its placement from the ``ckpt_path`` key (:func:`placement_from_config`, :func:`resolve_ckpt_path`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridpool.records import RESULTS_FILE, config_hash, read_json, record_hash

__all__ = ["Placement", "placement_from_config", "resolve_ckpt_path"]


@dataclass
class Placement:
    """Where and as what one run runs: plain data, given by whoever launches it (a sweep), never by the run.

    Attributes:
        run_dir: the folder the run writes into (``None``: ``paths.output_dir`` of its config).
        ckpt: the checkpoint to resume from (weights, optimizer, loop state), or ``None``.
        previous: the record of an earlier attempt of the same run (its W&B id, attempt count), or ``None``.
        job: the launcher's identity of the run, stored as the record's ``job`` and in the W&B config
            (sweeps: ``num``, ``id``, ``overrides``, ``sweep``, ``sweep_dir``).
        wandb_group, wandb_name: the W&B group and run name (``None``: the logger config's).
        start_unix: when the launcher started the run (Unix time), for the record's start-up timing.
    """

    run_dir: Path | None = None
    ckpt: str | None = None
    previous: dict[str, Any] | None = None
    job: dict[str, Any] = field(default_factory=dict)
    wandb_group: str | None = None
    wandb_name: str | None = None
    start_unix: float | None = None


def resolve_ckpt_path(
    ckpt_path: str | None, output_dir: str | Path, log_dir: str | Path, task_name: str, config: dict[str, Any]
) -> tuple[str | None, Path | None]:
    """``(checkpoint file, run folder to continue in)`` for the ``ckpt_path`` config key.

    - ``null``: start fresh.
    - ``last``: ``<output_dir>/checkpoints/last.ckpt`` if present; otherwise the newest ``last.ckpt`` of an
      earlier run of the same ``task_name`` under ``log_dir`` whose recorded config equals this one (so the
      interrupted run, not just any run, is resumed). The run then continues in that run's folder.
    - a file path: load it (weights, optimizer, loop state) and write into the new output folder.
    """
    if ckpt_path is None:
        return None, None
    output_dir = Path(output_dir)
    if ckpt_path != "last":
        p = Path(ckpt_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file ({p.absolute()})")
        return str(p), None
    here = output_dir / "checkpoints" / "last.ckpt"
    if here.is_file():
        return str(here), output_dir
    root = Path(log_dir) / task_name
    checkpoints = {c.parent.parent: c for c in root.glob("**/checkpoints/last.ckpt")} if root.is_dir() else {}
    mine, others = attempts_of(config_hash(config, output_dir), checkpoints)
    matches = [(checkpoints[d].stat().st_mtime, d) for d, _ in mine]
    if not matches:
        extra = f" ({len(others)} last.ckpt from runs with a different config were ignored)" if others else ""
        raise FileNotFoundError(
            f"ckpt_path=last: no checkpoint to resume: {here} does not exist and no earlier run of task "
            f"'{task_name}' under {root} with the same config has checkpoints/last.ckpt{extra}. Pass "
            "ckpt_path=/path/to/file.ckpt to load a specific checkpoint."
        )
    run_dir = max(matches)[1]
    return str(run_dir / "checkpoints" / "last.ckpt"), run_dir


def attempts_of(
    chash: str, run_dirs: Iterable[Path]
) -> tuple[list[tuple[Path, dict[str, Any]]], list[Path]]:
    """``(attempts, others)``: the run folders whose record has the config hash ``chash`` (with the record), and
    the rest (another config, or no readable record).

    The one test of "is this an earlier attempt of the same run", for ``ckpt_path=last`` and for sweeps
    (:func:`hybridpool.sweep.plan.plan_job`): :func:`~hybridpool.records.config_hash` ignores folders and
    ``ckpt_path``, so two attempts of one config and seed match wherever they ran.
    """
    attempts: list[tuple[Path, dict[str, Any]]] = []
    others: list[Path] = []
    for run_dir in run_dirs:
        record = read_json(Path(run_dir) / RESULTS_FILE)
        if record is not None and record_hash(record, Path(run_dir)) == chash:
            attempts.append((Path(run_dir).absolute(), record))
        else:
            others.append(Path(run_dir).absolute())
    return attempts, others


def placement_from_config(container: dict[str, Any], overrides: list[str]) -> Placement:
    """The placement of a single run: its own folder, or the earlier run that ``ckpt_path`` resumes."""
    output_dir = Path(container["paths"]["output_dir"]).absolute()
    ckpt, run_dir = resolve_ckpt_path(
        container.get("ckpt_path"), output_dir, container["paths"]["log_dir"], container["task_name"], container
    )
    previous = read_json(Path(run_dir) / RESULTS_FILE) if run_dir is not None else None
    return Placement(run_dir=run_dir, ckpt=ckpt, previous=previous, job={"num": None, "overrides": list(overrides)})
