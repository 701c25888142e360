"""From cells to numbers: per-cell means with CIs, paired comparisons against the baseline pool, Holm.

:func:`analyse` turns a :class:`~hybridpool.report.runs.Study` into an :class:`Analysis` that the tables,
figures and summaries render; every number they print comes from here (and so from :mod:`.stats`).
Units are (split, seed) pairs (:class:`~hybridpool.report.runs.Unit`); intervals are :func:`.stats.unit_interval`
(the t-interval, or the wider two-level bootstrap interval where the units come from two or more splits), and a
comparison with the baseline is significant by :func:`.stats.significant` after Holm within its dataset.
:func:`dataset_facts` says per dataset how many test images there are and what one is worth.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hybridpool.report.runs import COMPLETED, SELECTION_NAMES, Cell, Study, Unit, pool_key, unit_split
from hybridpool.report.stats import (
    ALPHA,
    MeanCI,
    PairedComparison,
    holm_family,
    mean_ci,
    paired_comparison,
    unit_interval,
)

__all__ = [
    "Analysis",
    "CellSummary",
    "Comparison",
    "DatasetFacts",
    "analyse",
    "cell_interval",
    "cell_order",
    "compare_units",
    "cost_rows",
    "dataset_facts",
    "pool_internals",
    "pool_name",
    "selection_text",
]

#: display names, keyed by the canonical pool spec (:mod:`hybridpool.pooling.factory`), in the tables' order
POOL_NAMES = {
    "avg": "GAP",
    "max": "GMP",
    "gem": "GeM",
    "gem(per_channel=true)": "GeM (per-channel $p$)",
    "lse": "LSE",
    "lse(per_channel=true)": "LSE (per-channel $r$)",
    "kmax": "$k$-max",
    "attn": "Attention",
    "qattn": "Query attention",
    "hybrid": "Hybrid (scalar)",
    "hybrid(branch_norm=true)": "Hybrid (scalar, branch norm)",
    "hybrid(mixing=channel)": "Hybrid (channel)",
    "hybrid(mixing=gate)": "Hybrid (gate)",
    "hybrid(mixing=concat)": "Hybrid (concat)",
    "cov": "Covariance (iSQRT-COV)",
    "flatten": "Flatten + FC",
}


POOL_ORDER = list(POOL_NAMES)


def cell_order(cell: Cell, baseline: str) -> tuple:
    """Sort key: the baseline first, then the pools in :data:`POOL_ORDER`, unknown pools by name, then arms."""
    rank = POOL_ORDER.index(cell.pool) if cell.pool in POOL_ORDER else len(POOL_ORDER)
    return (cell.block, cell.pool != baseline, rank, cell.pool, cell.arm_label)


def pool_name(pool: str, latex: bool = False) -> str:
    """Display name of a pool spec (``avg`` -> ``GAP``, ``hybrid(mixing=gate)`` -> ``Hybrid (gate)``; an old conf
    name such as ``hybrid_gate`` too); an unknown spec is shown as it is. LaTeX math only when ``latex``."""
    name = POOL_NAMES.get(pool_key(pool), pool)
    if not latex:
        name = name.replace("$k$", "k").replace("$p$", "p").replace("$r$", "r")
    return name


def cell_interval(values: dict, level: float = 0.95) -> MeanCI:
    """The reported interval of a cell mean over its units (:func:`.stats.unit_interval`, splits as clusters)."""
    return unit_interval(values, level, unit_split)


def compare_units(x: dict, baseline: dict, level: float = 0.95) -> PairedComparison:
    """:func:`.stats.paired_comparison` of two ``{unit: value}`` dicts, splits as the bootstrap's clusters."""
    return paired_comparison(x, baseline, level, cluster_of=unit_split)


def selection_text(sel: dict[str, int] | str) -> str:
    """Words for a cell's (or dataset's) selection rule: ``best validation epoch``, ``last epoch`` or
    ``mixed (k best validation epoch, m last epoch)``."""
    if isinstance(sel, str):
        return SELECTION_NAMES.get(sel, sel)
    if not sel:
        return "no runs"
    if len(sel) == 1:
        return SELECTION_NAMES[next(iter(sel))]
    return "mixed (" + ", ".join(f"{n} {SELECTION_NAMES[k]}" for k, n in sorted(sel.items())) + ")"


@dataclass
class CellSummary:
    """The metric of one cell over its completed units.

    ``values``: ``{unit: value}``; ``ci``: their mean and reported interval; ``expected``: units the block ran;
    ``not_used``: ``{unit: why}`` for expected units without a usable value (failed, missing, ...);
    ``selection``: ``{"best" | "last": runs}``, how the used runs' test metrics were selected.
    """

    cell: Cell
    values: dict[Unit, float]
    ci: MeanCI
    expected: tuple[Unit, ...]
    not_used: dict[Unit, str]
    selection: dict[str, int] = field(default_factory=dict)

    @property
    def n_label(self) -> str:
        return f"{len(self.values)}/{len(self.expected)}"


@dataclass
class Comparison:
    """A cell against its baseline cell (paired by seed), with Holm-adjusted p-values."""

    cell: Cell
    baseline: Cell
    result: PairedComparison


@dataclass
class Analysis:
    """Everything the report prints. ``metric``: the compared metric; ``baseline``: the baseline pool."""

    study: Study
    metric: str
    baseline: str
    level: float
    summaries: list[CellSummary]
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    alpha: float = ALPHA

    def summary_of(self, cell: Cell) -> CellSummary:
        for s in self.summaries:
            if s.cell is cell:
                return s
        raise KeyError(cell.key)

    def comparison_of(self, cell: Cell) -> Comparison | None:
        for c in self.comparisons:
            if c.cell is cell:
                return c
        return None


def _why_not_used(cell: Cell, unit: Unit, metric: str) -> str:
    runs = [r for r in cell.runs if r.unit == unit]
    if not runs:
        return "missing"
    statuses = sorted({r.status for r in runs})
    if COMPLETED in statuses:
        return f"no {metric}"
    return "/".join(statuses)


def _baseline_for(cell: Cell, baselines: list[Cell]) -> tuple[Cell | None, str]:
    """The baseline cell of the same block whose arm values match ``cell`` on the keys baselines differ in."""
    if not baselines:
        return None, "no baseline runs in this block"
    varying = [
        k
        for k in {k for b in baselines for k in b.arms}
        if len({json.dumps(b.arms.get(k), default=str) for b in baselines}) > 1
    ]
    matches = [b for b in baselines if all(b.arms.get(k) == cell.arms.get(k) for k in varying)]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, "no baseline cell with the same " + ", ".join(varying)
    return None, f"{len(matches)} baseline cells match; cannot pair"


def analyse(
    study: Study, metric: str = "test/acc", baseline: str = "avg", level: float = 0.95, alpha: float = ALPHA
) -> Analysis:
    """Per-cell means and intervals of ``metric``; each non-baseline cell against the ``baseline`` pool, paired by
    unit.

    Holm's correction runs over the comparisons of one block (task x dataset x backbone), separately for the
    t-test, the sign-flip test and the (supplementary) signed-rank test; a comparison is significant when the
    t-test and the sign-flip test both reject at ``alpha`` after it. ``baseline``: a pool spec (or an old conf
    name, see :func:`.runs.pool_key`).
    """
    baseline = pool_key(baseline)
    summaries = []
    for c in study.cells:
        values = c.completed(metric)
        not_used = {u: _why_not_used(c, u, metric) for u in c.expected_units if u not in values}
        summaries.append(
            CellSummary(c, values, cell_interval(values, level), c.expected_units, not_used, c.selections(metric))
        )
    comparisons: list[Comparison] = []
    notes: list[str] = []
    for block, cells in study.blocks().items():
        base_cells = [c for c in cells if c.pool == baseline]
        family: list[Comparison] = []
        for c in cells:
            if c.pool == baseline:
                continue
            b, why = _baseline_for(c, base_cells)
            if b is None:
                notes.append(f"{'/'.join(block)}: {c.label}: not compared ({why})")
                continue
            r = compare_units(c.completed(metric), b.completed(metric), level)
            sa, sb = c.selection(metric), b.selection(metric)
            if sa != sb:
                r = replace(
                    r,
                    notes=(
                        *r.notes,
                        f"test metrics selected by {selection_text(sa)} here, by {selection_text(sb)} for the baseline",
                    ),
                )
            family.append(Comparison(c, b, r))
        for f, adjusted in zip(family, holm_family([f.result for f in family], alpha), strict=True):
            f.result = adjusted
        comparisons.extend(family)
    if not any(c.pool == baseline for c in study.cells) and study.cells:
        notes.append(f"no runs of the baseline pool {baseline!r}: no paired comparisons")
    return Analysis(study, metric, baseline, level, summaries, comparisons, notes, alpha)


@dataclass
class DatasetFacts:
    """What a block's numbers rest on: test images (``num_test``: the distinct sizes recorded), data splits and
    seeds of its units, and how the test metrics were selected (``selection``: ``{"best" | "last": runs}``)."""

    block: tuple[str, str, str]
    num_test: tuple[int, ...]
    splits: tuple[int, ...]
    seeds: tuple[int, ...]
    units: int
    selection: dict[str, int]
    num_classes: tuple[int, ...] = ()

    @property
    def image_pp(self) -> float:
        """What one test image is worth in percentage points (``100 / n``; the smallest n when sizes differ)."""
        return 100.0 / min(self.num_test) if self.num_test else math.nan

    @property
    def n_test_text(self) -> str:
        if not self.num_test:
            return "not recorded"
        lo, hi = min(self.num_test), max(self.num_test)
        return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"

    @property
    def units_text(self) -> str:
        if len(self.splits) >= 1:
            return f"{self.units} ({len(self.splits)} × {len(self.seeds)})"
        return f"{self.units} (seeds)"


def dataset_facts(study: Study, metric: str = "test/acc") -> dict[tuple[str, str, str], DatasetFacts]:
    """Per block: test-set sizes from the records' ``data.num_samples.test``, splits, seeds, units, selection."""
    out = {}
    for block, cells in study.blocks().items():
        runs = [r for c in cells for r in c.latest(metric).values()]
        units = {u for c in cells for u in c.expected_units}
        sel: dict[str, int] = defaultdict(int)
        for r in runs:
            sel[r.selection] += 1
        out[block] = DatasetFacts(
            block,
            tuple(sorted({r.num_test for r in runs if r.num_test})),
            tuple(sorted({u.split for u in units if u.split is not None})),
            tuple(sorted({u.seed for u in units})),
            len(units),
            dict(sel),
            tuple(sorted({r.num_classes for r in runs if r.num_classes})),
        )
    return out


def pool_internals(study: Study) -> list[dict[str, Any]]:
    """Final pool internals per cell (mixing weights, GeM p, LSE r, attention entropy): mean and SD over seeds.

    One row per (cell, quantity): ``{"cell", "quantity", "n", "mean", "sd"}``; the SD across seeds says how
    stable the learned value is.
    """
    rows = []
    for c in study.cells:
        by_key: dict[str, list[float]] = defaultdict(list)
        for r in c.completed_runs():
            for k, v in r.metrics.items():
                if k.startswith("pool/") and not k.endswith(("_std", "_sample_std")):
                    by_key[k].append(v)
        for k in sorted(by_key):
            vals = np.asarray(by_key[k], dtype=float)
            rows.append(
                {
                    "cell": c,
                    "quantity": k[len("pool/") :],
                    "n": int(vals.size),
                    "mean": float(vals.mean()),
                    "sd": float(vals.std(ddof=1)) if vals.size > 1 else math.nan,
                }
            )
    return rows


def cost_rows(study: Study) -> list[dict[str, Any]]:
    """Parameter counts and time per epoch per cell (completed runs).

    Parameters come from the record's ``model.params`` (``total``, ``trainable``, ``pool``, ``head``...);
    time per epoch from a recorded ``time/epoch_s`` metric, else ``timing.fit_s / epochs`` (fit time, with
    validation), else ``wall_time_s / epochs`` (with set-up and testing: an upper bound); ``time_source`` says
    which.
    """
    rows = []
    for c in study.cells:
        done = c.completed_runs()
        if not done:
            continue
        params: dict[str, int] = {}
        for r in done:
            if r.params:
                params = {k: int(v) for k, v in r.params.items() if isinstance(v, (int, float))}
                break
        epoch_times = [
            r.metrics.get("time/epoch_s_mean", r.metrics["time/epoch_s"]) for r in done if "time/epoch_s" in r.metrics
        ]
        source = "time/epoch_s"
        if not epoch_times:
            source = "fit time / epochs"
            epoch_times = [
                r.timing["fit_s"] / r.metrics["epochs"]
                for r in done
                if r.timing.get("fit_s") and r.metrics.get("epochs", 0) > 0
            ]
        if not epoch_times:
            source = "wall time / epochs"
            epoch_times = [
                r.wall_time_s / r.metrics["epochs"] for r in done if r.wall_time_s and r.metrics.get("epochs", 0) > 0
            ]
        rows.append(
            {
                "cell": c,
                "params": params,
                "epoch_time": mean_ci(epoch_times) if epoch_times else None,
                "time_source": source if epoch_times else "not recorded",
                "wall_time": mean_ci([r.wall_time_s for r in done if r.wall_time_s is not None]),
            }
        )
    return rows
