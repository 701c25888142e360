"""The results-record contract: one ``results.json`` per run, its schema, tags and config identity.

The run writes a record (:class:`RunRecord`), the sweep finds earlier ones by their config hash
(:func:`config_hash`, :func:`record_hash`), and the report and the paper read them (:func:`read_results`),
never the training code. Standard library only: writer and reader share this one module. A record holds:

``schema`` (format version), ``status`` (``running`` -> ``completed`` | ``failed`` | ``interrupted``),
``task_name``, ``tags``, ``seed``, ``config`` (the fully resolved run config), ``overrides`` (the command-line
overrides, when launched through Hydra), ``git`` (``commit``, ``dirty``), ``metrics`` (final val/test numbers,
floats), ``paths`` (output dir, checkpoints, CSV, W&B run), ``wandb`` (mode, id, sync command), ``versions``,
``host``, ``pid`` (of the writing process), ``started_at``/``finished_at`` (ISO 8601, UTC), ``wall_time_s``,
``timing`` (Unix start/end times and the seconds spent in set-up, W&B, fit and test), on failure ``error`` and
``traceback``, ``pool`` (the pool's identity: its ``create_pool`` spec), ``config_hash`` (:func:`config_hash`),
``job`` (number, overrides, sweep folder in a sweep) and ``attempts``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "TAG_KEYS",
    "RunRecord",
    "comparable_config",
    "config_hash",
    "git_info",
    "read_json",
    "read_results",
    "record_hash",
    "tag_value",
    "to_jsonable",
    "write_json_atomic",
]

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
#: the tags a run writes as ``key:value`` (record ``tags`` and W&B tags), in this order
TAG_KEYS = ("pool", "mixing", "data", "backbone")


def tag_value(tags: Iterable[str], key: str) -> str | None:
    """The value of the ``key:value`` tag among ``tags`` (``tag_value(["pool:gem"], "pool") == "gem"``), or None."""
    prefix = f"{key}:"
    for t in tags:
        if isinstance(t, str) and t.startswith(prefix):
            return t[len(prefix) :]
    return None


def comparable_config(config: Mapping[str, Any], output_dir: str | os.PathLike[str] | None) -> str:
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
    return hashlib.sha256(comparable_config(config, output_dir).encode()).hexdigest()


def record_hash(record: Mapping[str, Any], run_dir: Path | None = None) -> str | None:
    """The config hash of a results record (stored, or recomputed for records written before it was)."""
    if record.get("config_hash"):
        return str(record["config_hash"])
    config = record.get("config")
    if not isinstance(config, Mapping):
        return None
    out = (record.get("paths") or {}).get("output_dir") or (str(run_dir) if run_dir else None)
    return config_hash(config, out)


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def to_jsonable(obj: Any) -> Any:
    """``obj`` with tensors/numpy scalars turned into floats, paths into strings, NaN/inf into ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    item = getattr(obj, "item", None)
    if item is not None:
        try:
            return to_jsonable(item())
        except (ValueError, RuntimeError):
            pass
    return repr(obj)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file, even when the run is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(obj), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding ``path`` (default: here)."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if status.returncode == 0:
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: module name -> distribution name, for the versions a record notes
_DISTRIBUTIONS = {
    "hybridpool": "hybridpool",
    "torch": "torch",
    "torchvision": "torchvision",
    "pytorch_lightning": "pytorch-lightning",
    "hydra": "hydra-core",
    "wandb": "wandb",
    "timm": "timm",
}


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing timm or wandb only to ask costs seconds)."""
    from importlib import metadata

    out: dict[str, str] = {"python": platform.python_version()}
    for name, dist in _DISTRIBUTIONS.items():
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        out[name] = str(version)
    return out


class RunRecord:
    """The ``results.json`` of one run, rewritten atomically at every status change.

    Args:
        output_dir: the run's output folder (the file is ``output_dir/results.json``).
        config: the resolved run config (a plain dict).
        seed, task_name, tags: copied into the record.
        overrides: command-line overrides of the run.
        enabled: write the file (``False``: keep the record in memory only).
    """

    def __init__(
        self,
        output_dir: str | Path,
        config: dict[str, Any],
        seed: int | None = None,
        task_name: str | None = None,
        tags: list[str] | None = None,
        overrides: list[str] | None = None,
        enabled: bool = True,
    ):
        self.path = Path(output_dir) / RESULTS_FILE
        self.enabled = enabled  # False on the non-zero ranks of a multi-process run: one writer per run
        self._t0 = time.perf_counter()
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "status": "running",
            "task_name": task_name,
            "tags": list(tags or []),
            "seed": seed,
            "started_at": _now(),
            "finished_at": None,
            "wall_time_s": None,
            "timing": {"start_unix": time.time(), "end_unix": None},
            "metrics": {},
            "paths": {"output_dir": str(Path(output_dir).resolve())},
            "wandb": None,
            "git": git_info(),
            "host": platform.node(),
            "pid": os.getpid(),
            "versions": _versions(),
            "overrides": list(overrides or []),
            "config": config,
        }

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the record (dicts are merged one level deep) and rewrite the file."""
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(self.data.get(key), dict):
                self.data[key].update(value)
            else:
                self.data[key] = value
        self.write()

    def write(self) -> Path:
        if self.enabled:
            write_json_atomic(self.path, self.data)
        return self.path

    def _close(self, status: str, **fields: Any) -> None:
        self.data["finished_at"] = _now()
        self.data["wall_time_s"] = round(time.perf_counter() - self._t0, 3)
        self.data["status"] = status
        timing = self.data.setdefault("timing", {})
        timing["end_unix"] = time.time()
        self.update(**fields)

    def complete(self, metrics: dict[str, float], **fields: Any) -> None:
        """Mark the run completed with its final ``metrics``."""
        self._close("completed", metrics=metrics, **fields)

    def fail(self, error: BaseException, metrics: dict[str, float] | None = None, **fields: Any) -> None:
        """Mark the run ``failed`` (``interrupted`` for Ctrl-C or an exit) and keep the error and its traceback."""
        status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._close(
            status,
            error=f"{type(error).__name__}: {error}",
            traceback=tb[-20000:],
            metrics=metrics or self.data["metrics"],
            **fields,
        )


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the one inside a run folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    return json.loads(p.read_text())
