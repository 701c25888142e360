"""Read results records into runs, group runs into cells, and say what is missing.

Sources (all give :class:`Run` objects of the same shape):

- ``results.json`` files (:mod:`hybridpool.records` writes one per run) found recursively under given folders:
  a run folder, a Hydra sweep folder ``<sweep>/<job>/``, a whole ``outputs/`` tree, or committed records.
- Offline W&B runs (``wandb/offline-run-*/run-*.wandb``), read with wandb's own reader
  (``wandb leet inspect --json``), for runs that have no ``results.json`` (a run whose record was lost).
- Online W&B projects through ``wandb.Api()`` (:func:`read_wandb_project`).

A run's *pool* is its canonical pool spec (:mod:`hybridpool.pooling.factory`: ``avg``, ``gem(per_channel=true)``,
``hybrid(mixing=channel)``...), read from the record's ``pool.spec`` field; records written before that field (the
committed ``paper/results``) are named from their ``pool:<conf name>`` tag through :data:`LEGACY_POOL_NAMES`
(:func:`pool_key`), so old and new records of the same pool land in the same cell.

A *cell* is one arm of the study: task (experiment) x dataset x backbone x pool, plus every other config
key that varies between runs of the same task/dataset/backbone/pool (train fraction, post-pool BatchNorm, training
schedule, epochs, ...), found from the configs themselves, so a new arm needs no change here. The replicates of a
cell are its *units* (:class:`Unit`): a (data split, seed) pair, the split being the config's ``data.split_seed``
(``None`` when the config has none: the split, or the generated data, follows the seed). Two cells are compared on
the units both ran. Runs that did not complete, units that ran elsewhere in the block but not in this cell, and
duplicated units are listed as :class:`Problem` objects; statistics only ever use completed runs and always say
how many of how many.

Which epoch a run's test metrics come from (:attr:`Run.selection`): records with a ``val/<metric>_best_epoch``
metric were tested with the weights of the best validation epoch (``best``); older records, with the last
epoch's (``last``). A cell whose runs differ in that is flagged (a ``mixed-selection`` problem), never averaged
silently.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridpool.records import RESULTS_FILE

__all__ = [
    "BASE_FACTORS",
    "SELECTION_NAMES",
    "Cell",
    "Problem",
    "Run",
    "Study",
    "Unit",
    "find_results",
    "flatten_config",
    "group_runs",
    "load_runs",
    "pool_key",
    "read_metrics_csv",
    "read_wandb_offline",
    "read_wandb_project",
    "run_from_record",
]

COMPLETED = "completed"
BASE_FACTORS = ("task", "data", "backbone", "pool")
# config keys that never define an arm: per-run bookkeeping, output locations and seeds
IGNORED_PREFIXES = ("paths.", "logger.", "callbacks.", "hydra.", "job.", "features.root", "features.device")
IGNORED_KEYS = {
    "seed",
    "ckpt_path",
    "tags",
    "trainer.default_root_dir",
    "task_name",
    "optimized_metric",
    "config_hash",
    # how the pool node is built, not which pool it is (the pool identity says that): old records name a class,
    # new ones hybridpool.pooling.pool_factory with a spec
    "pool._target_",
    "pool._partial_",
    "pool.spec",
    # a replicate factor, like the seed: the runs of one cell on three splits are its units, not three arms
    "data.split_seed",
}
#: how a run's test metrics were selected -> words
SELECTION_NAMES = {"best": "best validation epoch", "last": "last epoch"}
MISSING = "-"
#: settings that a config without them ran at their default: switches added with a ``+`` override (``conf/`` does not
#: set them, so a default run's config lacks the key), unlike keys whose absence marks an older rule
ABSENT_MEANS_DEFAULT: dict[str, Any] = {"module.mix_entropy_weight": 0.0}
#: the ``pool:`` tags of records written before the ``pool`` field (conf/pool/ file names) -> canonical pool specs
LEGACY_POOL_NAMES = {
    "hybrid_scalar": "hybrid",
    "hybrid_channel": "hybrid(mixing=channel)",
    "hybrid_gate": "hybrid(mixing=gate)",
    "hybrid_concat": "hybrid(mixing=concat)",
    "gem_channel": "gem(per_channel=true)",
}
#: layer classes of the ``_target_`` of old records' pool nodes -> registry names
LEGACY_POOL_CLASSES = {
    "GlobalAvgPool": "avg",
    "GlobalMaxPool": "max",
    "GeM": "gem",
    "LSEPool": "lse",
    "KMaxPool": "kmax",
    "AttentionPool": "attn",
    "QueryAttentionPool": "qattn",
    "Flatten": "flatten",
    "HybridPool": "hybrid",
}


# ============================================================================================ runs
@dataclass(frozen=True)
class Unit:
    """One replicate of a cell: the data split (``config.data.split_seed``; ``None`` when the config has none, so the
    split follows the seed) and the seed. Two pools are compared on the units both ran."""

    split: int | None
    seed: int

    def sort_key(self) -> tuple[int, int, int]:
        return (self.split is not None, self.split if self.split is not None else 0, self.seed)

    def __lt__(self, other: Unit) -> bool:
        return self.sort_key() < other.sort_key()

    def __str__(self) -> str:
        return f"seed {self.seed}" if self.split is None else f"split {self.split}/seed {self.seed}"


def unit_split(unit: object) -> int | None:
    """The data split of a unit (``None`` for a plain seed or an unrecorded split): the cluster of the bootstrap."""
    return getattr(unit, "split", None)


@dataclass
class Run:
    """One training run, whatever it was read from.

    Attributes:
        source: where it was read from (a ``results.json`` path, a ``.wandb`` file, ``wandb:entity/project/id``).
        run_dir: the run's folder, when there is one.
        status: ``completed`` | ``failed`` | ``interrupted`` | ``running`` (never finished, or still running).
        seed: the run's seed (``None`` if the record has none).
        task, data, backbone, pool, mixing: the names that identify the arm: ``pool`` is the canonical pool spec
            (the record's ``pool.spec``, else :func:`pool_key` of the ``pool:`` tag, else from the config's pool
            node); the others from the W&B-style tags the training writes (``data:cub``...), else the config.
        config: the resolved run config. flat: ``config`` flattened to ``"a.b.c": value`` leaves.
        metrics: final metrics (floats): ``test/acc``, ``val/acc``, ``train/acc``, ``pool/gem/p``... plus the
            derived ``gap/train-test`` (``train_eval/acc - test/acc``, or ``train/acc - test/acc`` where a record
            has no eval-mode training accuracy; compare it with ``--metric gap/train-test``).
        wall_time_s: the run's wall time. timing: its ``timing`` (``fit_s``, ``test_s``, ``setup_s``...).
        error: the error message of a failed run. commit: git commit.
        params: parameter counts if the record has them (``model.params``: ``{"total": ..., "pool": ...}``).
        metrics_csv: the run's ``csv/metrics.csv``. attention: its attention-map file (``.npz``/``.png``).
        fixture: the record is a fake one (``"fixture"`` key), used to check the pipeline, not a result.
        wandb_id: the W&B run id, if any.
        split: ``config.data.split_seed`` (``None`` without one). num_test: the record's ``data.num_samples.test``.
        num_classes: the record's ``data.num_classes``. embed_dim: ``model.embed_dim``, the pool's output width
        (the head's input; covariance pooling's is ``d (d + 1) / 2``, not ``C``).
    """

    source: str
    status: str
    seed: int | None
    task: str
    data: str
    backbone: str
    pool: str
    mixing: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    wall_time_s: float | None = None
    error: str | None = None
    commit: str | None = None
    params: dict[str, int] | None = None
    metrics_csv: Path | None = None
    attention: Path | None = None
    fixture: bool = False
    wandb_id: str | None = None
    finished_at: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    split: int | None = None
    num_test: int | None = None
    num_classes: int | None = None
    embed_dim: int | None = None
    history_loader: Callable[[], dict[str, list[tuple[float, float]]]] | None = field(default=None, repr=False)
    _flat: dict[str, Any] | None = field(default=None, repr=False)
    _curves: dict[str, list[tuple[float, float]]] | None = field(default=None, repr=False)

    @property
    def flat(self) -> dict[str, Any]:
        """``config`` flattened, with :data:`ABSENT_MEANS_DEFAULT` filled in where the config lacks them."""
        if self._flat is None:
            self._flat = {**ABSENT_MEANS_DEFAULT, **flatten_config(self.config)}
        return self._flat

    @property
    def name(self) -> str:
        """A short human name: ``task/data/pool seed=N``."""
        split = "" if self.split is None else f" split={self.split}"
        return f"{self.task}/{self.data}/{self.pool}{split} seed={self.seed}"

    @property
    def unit(self) -> Unit | None:
        return Unit(self.split, self.seed) if self.seed is not None else None

    @property
    def selection(self) -> str:
        """``best`` when the test metrics are those of the best validation epoch (the record has a
        ``val/..._best_epoch`` metric), else ``last`` (records written before that: the last epoch's)."""
        return "best" if any(k.startswith("val/") and k.endswith("_best_epoch") for k in self.metrics) else "last"

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """``{metric: [(step, value), ...]}`` over training (from ``metrics.csv`` or the W&B history)."""
        if self._curves is None:
            if self.metrics_csv is not None and self.metrics_csv.is_file():
                self._curves = read_metrics_csv(self.metrics_csv)
            elif self.history_loader is not None:
                self._curves = self.history_loader()
            else:
                self._curves = {}
        return self._curves

    def as_row(self) -> dict[str, Any]:
        """The run as one flat row of a tidy table (identity, status, metrics)."""
        row: dict[str, Any] = {
            "task": self.task,
            "data": self.data,
            "backbone": self.backbone,
            "pool": self.pool,
            "mixing": self.mixing,
            "split": self.split,
            "seed": self.seed,
            "selection": self.selection,
            "num_test": self.num_test,
            "status": self.status,
            "wall_time_s": self.wall_time_s,
            "source": self.source,
        }
        row.update(self.metrics)
        return row


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON text, hashable)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if v:
                out.update(flatten_config(v, key + "."))
            else:
                out[key] = "{}"
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, sort_keys=True, default=str)
        else:
            out[key] = v
    return out


def _tag(tags: Iterable[str], key: str) -> str | None:
    for t in tags:
        if isinstance(t, str) and t.startswith(key + ":"):
            return t.split(":", 1)[1]
    return None


def _short_target(node: Any) -> str | None:
    if isinstance(node, Mapping) and isinstance(node.get("_target_"), str):
        return node["_target_"].rsplit(".", 1)[-1]
    return None


def pool_key(name: str) -> str:
    """A pool's canonical spec from a name a record or a user may give: a spec (kept) or an old conf/pool/ file name.

    ``pool_key("hybrid_channel") == "hybrid(mixing=channel)"``, ``pool_key("gem") == "gem"``.
    """
    name = str(name).strip()
    return LEGACY_POOL_NAMES.get(name, name)


def _config_pool(node: Any) -> str | None:
    """The canonical spec of a config's pool node: ``spec`` (new) or the ``_target_`` class (old records), with
    its identity arguments (``mixing``, ``per_channel``); ``None`` without a node."""
    if not isinstance(node, Mapping):
        return None
    spec = node.get("spec")
    if not isinstance(spec, str):
        target = _short_target(node)
        spec = LEGACY_POOL_CLASSES.get(target or "")
        if spec is None:
            return target
    try:  # the identity rule lives with the layers; the report needs torch only for configs without a record
        from hybridpool.pooling.factory import IDENTITY_ARGS, canonical_spec, parse_spec

        name, _ = parse_spec(spec)
        return canonical_spec(spec, **{k: node[k] for k in IDENTITY_ARGS.get(name, ()) if k in node})
    except (ImportError, TypeError, ValueError):
        return spec


def _identity(
    tags: Sequence[str], config: Mapping[str, Any], data_desc: Any, model_desc: Any, pool_desc: Any = None
) -> tuple[str, str, str, str | None]:
    """``(data, backbone, pool, mixing)`` names: the record's ``pool`` field and the tags the training writes, else
    the config."""
    data = _tag(tags, "data")
    if data is None and isinstance(data_desc, Mapping):
        data = data_desc.get("name")
    if data is None:
        node = config.get("data") or {}
        data = _short_target(node) or "unknown-data"
        if isinstance(node, Mapping) and node.get("task"):
            data = f"{data}:{node['task']}"
    backbone = _tag(tags, "backbone")
    if backbone is None and isinstance(model_desc, Mapping):
        backbone = (model_desc.get("backbone") or {}).get("class")
    if backbone is None:
        backbone = _short_target((config.get("model") or {}).get("backbone")) or "unknown-backbone"
    pool_node = config.get("pool") or {}
    mixing = _tag(tags, "mixing") or (pool_node.get("mixing") if isinstance(pool_node, Mapping) else None)
    pool = pool_desc.get("spec") if isinstance(pool_desc, Mapping) else None
    if not pool:
        tag = _tag(tags, "pool")
        pool = pool_key(tag) if tag else _config_pool(pool_node) or "unknown-pool"
    return str(data), str(backbone), str(pool), (str(mixing) if mixing else None)


def _split_of(config: Mapping[str, Any]) -> int | None:
    node = config.get("data")
    value = node.get("split_seed") if isinstance(node, Mapping) else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _num_test(data_desc: Any) -> int | None:
    if not isinstance(data_desc, Mapping):
        return None
    n = (data_desc.get("num_samples") or {}).get("test") if isinstance(data_desc.get("num_samples"), Mapping) else None
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None


def _floats(d: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


def _with_derived(metrics: dict[str, float]) -> dict[str, float]:
    """Add metrics computed from recorded ones: ``gap/train-test`` (overfitting), the tested model's accuracy on its
    training images in eval mode (``train_eval/acc``, where recorded; else the running ``train/acc`` of the last
    training epoch) minus ``test/acc``."""
    train = metrics.get("train_eval/acc", metrics.get("train/acc"))
    if train is not None and "test/acc" in metrics:
        metrics["gap/train-test"] = train - metrics["test/acc"]
    return metrics


def _relocate(recorded: str | None, recorded_root: str | None, run_dir: Path) -> Path | None:
    """A path recorded on another machine, re-rooted at ``run_dir`` (records are copied between machines)."""
    if not recorded:
        return None
    p = Path(recorded)
    if recorded_root:
        try:
            rel = p.relative_to(recorded_root)
        except ValueError:
            rel = None
        if rel is not None and (run_dir / rel).exists():
            return run_dir / rel
    if p.exists():
        return p
    return None


def run_from_record(record: Mapping[str, Any], source: str, run_dir: Path | None = None) -> Run:
    """A :class:`Run` from the content of one ``results.json`` (see :mod:`hybridpool.records` for the schema)."""
    config = record.get("config") or {}
    tags = list(record.get("tags") or [])
    data, backbone, pool, mixing = _identity(tags, config, record.get("data"), record.get("model"), record.get("pool"))
    paths = record.get("paths") or {}
    root = paths.get("output_dir")
    metrics_csv = attention = None
    if run_dir is not None:
        metrics_csv = _relocate(paths.get("metrics_csv"), root, run_dir)
        if metrics_csv is None and (run_dir / "csv" / "metrics.csv").is_file():
            metrics_csv = run_dir / "csv" / "metrics.csv"
        for name in ("attention_maps.npz", "attention_maps.png"):
            if (run_dir / "attention_maps" / name).is_file():
                attention = run_dir / "attention_maps" / name
                break
        else:
            attention = _relocate(paths.get("attention_maps"), root, run_dir)
    model = record.get("model") or {}
    params = model.get("params") if isinstance(model, Mapping) else None
    seed = record.get("seed", config.get("seed"))
    return Run(
        source=source,
        status=str(record.get("status") or "unknown"),
        seed=int(seed) if seed is not None else None,
        task=str(record.get("task_name") or config.get("task_name") or "run"),
        data=data,
        backbone=backbone,
        pool=pool,
        mixing=mixing,
        config=dict(config),
        metrics=_with_derived(_floats(record.get("metrics"))),
        run_dir=run_dir,
        wall_time_s=record.get("wall_time_s"),
        error=record.get("error") or record.get("traceback"),
        commit=(record.get("git") or {}).get("commit"),
        params=dict(params) if isinstance(params, Mapping) else None,
        metrics_csv=metrics_csv,
        attention=attention,
        fixture=bool(record.get("fixture")),
        wandb_id=(record.get("wandb") or {}).get("id"),
        finished_at=record.get("finished_at"),
        timing=_floats(record.get("timing")),
        split=_split_of(config),
        num_test=_num_test(record.get("data")),
        num_classes=_int_or_none((record.get("data") or {}).get("num_classes")),
        embed_dim=_int_or_none(model.get("embed_dim") if isinstance(model, Mapping) else None),
    )


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working folder when it lies under it (shorter, and no home folders in papers)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def find_results(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (files or folders, searched recursively), sorted, no duplicates.

    Raises ``FileNotFoundError`` for a path that does not exist.
    """
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        if p.is_file():
            found.add(p.resolve())
            continue
        for f in p.rglob(RESULTS_FILE):
            if "checkpoints" not in f.parts and "wandb" not in f.parts:
                found.add(f.resolve())
    return sorted(found)


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, list[tuple[float, float]]]:
    """Lightning's ``metrics.csv`` as ``{column: [(step, value), ...]}`` (empty cells skipped).

    Rows logged per epoch carry an ``epoch`` value; per-step rows carry ``step``. The x value is ``step``
    (Lightning writes it on every row); an ``epoch`` series is returned as ``"epoch"`` for conversions.
    """
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                step = math.nan
            for key, text in row.items():
                if key is None or key == "step" or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                out[key].append((step, value))
    return dict(out)


# ============================================================================================ W&B
def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).parent / "wandb"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("wandb")
    if found:
        return [found]
    return [sys.executable, "-m", "wandb"]


def _leet(args: list[str], timeout: float = 120) -> str:
    cmd = [*_wandb_cli(), "leet", "inspect", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"could not run {' '.join(cmd)}: {err}") from err
    if res.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()[-500:]}. Reading offline W&B "
            "files needs a wandb with `wandb leet inspect` (wandb 0.31 has it); otherwise upload them with "
            "`wandb sync` and use --wandb ENTITY/PROJECT, or read the runs' results.json instead."
        )
    return res.stdout


_WANDB_STATES = {"finished": COMPLETED, "failed": "failed", "crashed": "failed", "killed": "interrupted"}


def _status_from_wandb(state: str | None, exit_code: Any) -> str:
    status = _WANDB_STATES.get(str(state or "").lower(), "running")
    if status == COMPLETED and exit_code not in (None, 0):
        return "failed"
    return status


def _metrics_from_summary(summary: Mapping[str, Any]) -> dict[str, float]:
    """The final metrics of a W&B summary: ``final/*`` keys (as the training writes them), else all numbers."""
    final = {k[len("final/") :]: v for k, v in summary.items() if k.startswith("final/")}
    rest = {k: v for k, v in summary.items() if not k.startswith(("_", "final/"))}
    return {**_floats(rest), **_floats(final)}


def _history_to_curves(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        step = row.get("trainer/global_step", row.get("_step"))
        if not isinstance(step, (int, float)):
            continue
        for k, v in row.items():
            if k.startswith("_") or k == "trainer/global_step" or isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                out[k].append((float(step), float(v)))
    return dict(out)


def _run_from_wandb(
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    tags: Sequence[str],
    state: str | None,
    exit_code: Any,
    source: str,
    run_id: str | None,
    run_dir: Path | None,
    history_loader: Callable[[], dict[str, list[tuple[float, float]]]] | None,
) -> Run:
    config = {k: v for k, v in config.items() if not str(k).startswith("_wandb")}
    data, backbone, pool, mixing = _identity(tags, config, None, None)
    seed = config.get("seed")
    runtime = summary.get("_runtime") or summary.get("_wandb", {}).get("runtime") if summary else None
    return Run(
        source=source,
        status=_status_from_wandb(state, exit_code),
        seed=int(seed) if isinstance(seed, (int, float)) else None,
        task=str(config.get("task_name") or "run"),
        data=data,
        backbone=backbone,
        pool=pool,
        mixing=mixing,
        config=dict(config),
        metrics=_with_derived(_metrics_from_summary(summary)),
        run_dir=run_dir,
        wall_time_s=float(runtime) if isinstance(runtime, (int, float)) else None,
        wandb_id=run_id,
        history_loader=history_loader,
        split=_split_of(config),
    )


def _offline_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".wandb":
            found.add(p.resolve())
        elif p.is_dir():
            found.update(f.resolve() for f in p.rglob("run-*.wandb"))
    return sorted(found)


def _offline_history(path: Path) -> dict[str, list[tuple[float, float]]]:
    rows = []
    for line in _leet(["--json", str(path)]).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "history":
            rows.append((rec.get("history") or {}).get("item") or {})
    return _history_to_curves(rows)


def read_wandb_offline(paths: Iterable[str | os.PathLike[str]], skip_ids: Iterable[str] = ()) -> list[Run]:
    """Runs from offline W&B files (``run-*.wandb``) under ``paths``, skipping W&B ids in ``skip_ids``.

    Uses ``wandb leet inspect --summary --json`` (config, summary, state, tags); the history (curves) is read
    on demand with ``wandb leet inspect --json``. The training writes final metrics to the summary as
    ``final/<metric>``; those become the run's metrics.
    """
    skip = set(skip_ids)
    runs = []
    for f in _offline_files(paths):
        run_id = f.stem[len("run-") :] if f.stem.startswith("run-") else None
        if run_id in skip:
            continue
        info = json.loads(_leet(["--summary", "--json", str(f)]))
        run_dir = f.parent.parent.parent if f.parent.parent.name == "wandb" else None
        runs.append(
            _run_from_wandb(
                info.get("config") or {},
                info.get("summary") or {},
                info.get("tags") or [],
                info.get("state"),
                info.get("exit_code"),
                source=display_path(f),
                run_id=info.get("run_id") or run_id,
                run_dir=run_dir,
                history_loader=lambda f=f: _offline_history(f),
            )
        )
    return runs


def read_wandb_project(path: str, api: Any = None, timeout: int = 30) -> list[Run]:
    """Runs of the W&B project ``path`` (``ENTITY/PROJECT``) through ``wandb.Api()``; needs a login and network.

    ``api`` may be given (tests pass a stand-in with ``runs(path)``). Fails with a ``RuntimeError`` that says
    what to do when W&B cannot be reached.
    """
    if path.count("/") != 1 or not all(path.split("/")):
        raise ValueError(f"--wandb wants ENTITY/PROJECT, got {path!r}")
    if api is None:
        try:
            import wandb

            api = wandb.Api(timeout=timeout)
            runs = list(api.runs(path))
        except Exception as err:
            raise RuntimeError(
                f"could not read the W&B project {path}: {type(err).__name__}: {err}. W&B needs a login "
                "(`wandb login` or WANDB_API_KEY) and network access; offline, point hybridpool-report at the "
                "run folders instead (their results.json, or their wandb/offline-run-* files)."
            ) from err
    else:
        runs = list(api.runs(path))
    out = []
    for r in runs:
        summary = dict(getattr(r.summary, "_json_dict", None) or dict(r.summary))

        def history(r: Any = r) -> dict[str, list[tuple[float, float]]]:
            return _history_to_curves(r.scan_history())

        out.append(
            _run_from_wandb(
                dict(r.config),
                summary,
                list(r.tags or []),
                r.state,
                None,
                source=f"wandb:{path}/{r.id}",
                run_id=r.id,
                run_dir=None,
                history_loader=history,
            )
        )
    return out


# ============================================================================================ loading
def load_runs(
    paths: Iterable[str | os.PathLike[str]], wandb_offline: str = "auto", wandb_project: str | None = None
) -> list[Run]:
    """Every run under ``paths`` (and in the W&B project ``wandb_project``, if given).

    ``wandb_offline``: ``"auto"`` reads offline W&B files only for runs that have no ``results.json`` (matched
    by W&B id), ``"never"`` ignores them, ``"only"`` reads nothing else. An unreadable ``results.json`` raises.
    """
    paths = list(paths)
    runs: list[Run] = []
    if wandb_offline != "only":
        for f in find_results(paths):
            try:
                record = json.loads(f.read_text())
            except ValueError as err:
                raise ValueError(f"{f}: not valid JSON ({err})") from err
            runs.append(run_from_record(record, display_path(f), f.parent))
    if wandb_offline in ("auto", "only"):
        known = {r.wandb_id for r in runs if r.wandb_id}
        dirs = [p for p in paths if Path(p).is_dir() or str(p).endswith(".wandb")]
        if _offline_files(dirs):
            runs.extend(read_wandb_offline(dirs, skip_ids=known))
    if wandb_project:
        runs.extend(read_wandb_project(wandb_project))
    return runs


# ============================================================================================ cells
@dataclass
class Cell:
    """One arm of the study and its runs.

    Attributes:
        key: ``(task, data, backbone, pool, (arm, value), ...)``, hashable and sortable.
        task, data, backbone, pool, mixing: identity. arms: ``{config key: value}`` of the extra arm keys.
        runs: every run of the cell (any status). expected_units: the units (:class:`Unit`) its block ran.
        label_keys: arm keys a label must show even at their default or when missing (``-``): those where another
            cell of the same block and pool lacks the key and this one has it, or the other way round (older records
            written before a setting existed are a cell of their own, never named like the default one).
    """

    task: str
    data: str
    backbone: str
    pool: str
    arms: dict[str, Any]
    runs: list[Run]
    mixing: str | None = None
    expected_units: tuple[Unit, ...] = ()
    label_keys: tuple[str, ...] = ()

    @property
    def block(self) -> tuple[str, str, str]:
        return (self.task, self.data, self.backbone)

    @property
    def key(self) -> tuple:
        return (*self.block, self.pool, *sorted((k, str(v)) for k, v in self.arms.items()))

    @property
    def arm_label(self) -> str:
        """The arm values this cell has, e.g. ``post_bn=False, p=4``; keys its config lacks (``-``) are left out."""
        return ", ".join(f"{short_key(k)}={v}" for k, v in sorted(self.arms.items()) if v != MISSING)

    @property
    def label(self) -> str:
        """``pool`` plus its arm values, e.g. ``hybrid [post_bn=False]``."""
        return f"{self.pool} [{self.arm_label}]" if self.arm_label else self.pool

    def completed(self, metric: str) -> dict[Unit, float]:
        """``{unit: metric}`` of the completed runs that recorded ``metric`` (latest run per unit)."""
        return {u: r.metrics[metric] for u, r in self.latest(metric).items()}

    def latest(self, metric: str) -> dict[Unit, Run]:
        """``{unit: run}``: the latest finished completed run per unit among those that recorded ``metric``."""
        out: dict[Unit, tuple[str, Run]] = {}
        for r in self.runs:
            u = r.unit
            if r.status == COMPLETED and metric in r.metrics and u is not None:
                stamp = r.finished_at or ""
                if u not in out or stamp >= out[u][0]:
                    out[u] = (stamp, r)
        return {u: r for u, (_, r) in sorted(out.items())}

    def completed_runs(self) -> list[Run]:
        return [r for r in self.runs if r.status == COMPLETED]

    def selections(self, metric: str = "test/acc") -> dict[str, int]:
        """``{"best": k, "last": m}``: how the used runs' test metrics were selected (see :attr:`Run.selection`)."""
        out: dict[str, int] = {}
        for r in self.latest(metric).values():
            out[r.selection] = out.get(r.selection, 0) + 1
        return out

    def selection(self, metric: str = "test/acc") -> str:
        """``best`` | ``last`` | ``mixed`` | ``none`` (no used run)."""
        sel = self.selections(metric)
        return "none" if not sel else next(iter(sel)) if len(sel) == 1 else "mixed"

    @property
    def splits(self) -> tuple[int, ...]:
        """The data splits of the cell's units (empty when none is recorded)."""
        return tuple(sorted({u.split for u in self.expected_units if u.split is not None}))


def short_key(key: str) -> str:
    """``data.train_fraction`` -> ``train_fraction``; ``optim.optimizer.lr`` -> ``optimizer.lr``."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 else parts[-1]


@dataclass
class Problem:
    """A run that is not a usable result, or a seed with no run: listed in every summary.

    ``kind``: ``failed`` | ``interrupted`` | ``running`` | ``missing`` | ``duplicate`` | ``no-metric`` |
    ``mixed-selection``. ``seed`` and ``split``: the unit (``None`` when the problem is the whole cell's).
    """

    kind: str
    cell: str
    seed: int | None
    detail: str
    source: str | None = None
    split: int | None = None


def _arm_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs of the same task/data/backbone/pool."""
    keys: set[str] = set()
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.task, r.data, r.backbone, r.pool)].append(r)
    for members in groups.values():
        if len(members) < 2:
            continue
        all_keys = set().union(*(m.flat.keys() for m in members))
        for k in all_keys:
            if k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES) or k.rsplit(".", 1)[-1] == "seed":
                continue
            values = set()
            for m in members:
                v = m.flat.get(k, MISSING)
                out_dir = str(m.run_dir) if m.run_dir else None
                if isinstance(v, str) and out_dir and out_dir in v:
                    v = "<run dir>"
                values.add(json.dumps(v, default=str))
            if len(values) > 1:
                keys.add(k)
    return sorted(keys)


@dataclass
class Study:
    """All cells of a set of runs, with the problems found. Built by :func:`group_runs`."""

    runs: list[Run]
    cells: list[Cell]
    arm_keys: list[str]
    problems: list[Problem]

    @property
    def fixture(self) -> bool:
        """True when any record is a fake fixture record (a pipeline check, not results)."""
        return any(r.fixture for r in self.runs)

    def blocks(self) -> dict[tuple[str, str, str], list[Cell]]:
        out: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
        for c in self.cells:
            out[c.block].append(c)
        return dict(out)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.runs:
            out[r.status] += 1
        out["missing"] = sum(1 for p in self.problems if p.kind == "missing")
        return dict(out)


def group_runs(runs: Sequence[Run], metric: str = "test/acc") -> Study:
    """Group ``runs`` into cells and list every problem: runs not completed, missing and duplicated seeds."""
    arm_keys = _arm_keys(runs)
    cells: dict[tuple, Cell] = {}
    for r in runs:
        arms = {k: r.flat.get(k, MISSING) for k in arm_keys}
        cell = Cell(r.task, r.data, r.backbone, r.pool, arms, [], r.mixing)
        cells.setdefault(cell.key, cell).runs.append(r)
    ordered = sorted(cells.values(), key=lambda c: c.key)
    # drop arm keys that are constant within a whole block (they do not distinguish cells there)
    kept: dict[tuple, set[str]] = defaultdict(set)
    for c in ordered:
        for k in arm_keys:
            values = {json.dumps(o.arms.get(k), default=str) for o in ordered if o.block == c.block}
            if len(values) > 1:
                kept[c.block].add(k)
    for c in ordered:
        c.arms = {k: v for k, v in c.arms.items() if k in kept[c.block]}
    siblings: dict[tuple, list[Cell]] = defaultdict(list)
    for c in ordered:
        siblings[(*c.block, c.pool)].append(c)
    for group in siblings.values():
        if len(group) < 2:
            continue
        keys = tuple(
            k
            for k in sorted({k for c in group for k in c.arms})
            if any(c.arms.get(k, MISSING) == MISSING for c in group)
            and any(c.arms.get(k, MISSING) != MISSING for c in group)
        )
        for c in group:
            c.label_keys = keys
    problems: list[Problem] = []
    units_by_block: dict[tuple, set[Unit]] = defaultdict(set)
    for c in ordered:
        units_by_block[c.block].update(r.unit for r in c.runs if r.unit is not None)
    for c in ordered:
        c.expected_units = tuple(sorted(units_by_block[c.block]))
        where = f"{c.task}/{c.data}/{c.backbone}/{c.label}"
        seen: dict[Unit, list[Run]] = defaultdict(list)
        for r in c.runs:
            if r.unit is not None:
                seen[r.unit].append(r)
            if r.status != COMPLETED:
                detail = r.error or (
                    "no final status: still running, or killed before it could record one"
                    if r.status == "running"
                    else f"status {r.status}"
                )
                problems.append(Problem(r.status, where, r.seed, detail, r.source, r.split))
            elif metric not in r.metrics:
                problems.append(Problem("no-metric", where, r.seed, f"completed but no {metric!r}", r.source, r.split))
        for u in c.expected_units:
            if u not in seen:
                what = "seed" if u.split is None else "split and seed"
                problems.append(
                    Problem(
                        "missing",
                        where,
                        u.seed,
                        f"no run for this {what} (other cells of the block have one)",
                        split=u.split,
                    )
                )
            else:
                done = [r for r in seen[u] if r.status == COMPLETED]
                if len(done) > 1:
                    problems.append(
                        Problem(
                            "duplicate",
                            where,
                            u.seed,
                            f"{len(done)} completed runs; the latest finished is used",
                            ", ".join(r.source for r in done),
                            u.split,
                        )
                    )
        sel = c.selections(metric)
        if len(sel) > 1:
            words = ", ".join(f"{n} {SELECTION_NAMES[k]}" for k, n in sorted(sel.items()))
            problems.append(
                Problem("mixed-selection", where, None, f"test metrics selected differently across units ({words})")
            )
    return Study(list(runs), ordered, arm_keys, problems)
