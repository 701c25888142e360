"""The study's named claims, tested from the records: one verdict with its numbers per claim and data set.

A claim (:class:`Claim`) is declared, not coded: where it is tested (task or task/data patterns), and its tests,
each a :class:`Contrast` (cell ``a`` beats cell ``b`` on a metric) or a :class:`Trend` (the metric rises along an
ordered list of cells). Cells are chosen by :class:`Sel`: a pool name plus arm values from the flattened run config
(``model.post_bn``, ``pool.p``, ``module.pool_schedule``...); :class:`Best` picks, per block, the cell with the
highest mean among several. Adding a claim is adding one entry to :data:`CLAIMS`.

Rules (the same for every claim):

- A contrast is a paired comparison of ``a - b`` over the seeds both cells completed (:func:`.stats.paired_comparison`):
  mean difference in percentage points, 95% t-interval, paired t-test, exact Wilcoxon, Cohen's ``d_z``.
- Verdict: ``agrees`` when the interval lies above 0, ``contradicts`` when it lies below 0, ``inconclusive``
  otherwise (with its ``n``). Claims whose cells have no completed runs say ``not tested`` and name the cells.
- A trend agrees when its last cell beats its first (interval above 0) and no step falls significantly;
  it contradicts when the last is significantly below the first or a step falls significantly. Cells without
  runs are left out of the trend and named; a trend needs three cells with runs (two would be a contrast).
- Each claim's p-values are also Holm-adjusted over the claim's tests (``p_t_holm`` in ``report.json``);
  the verdicts use the unadjusted intervals, as the paper's text says.

:mod:`.verdicts` tests them (:func:`~.verdicts.evaluate_claims`, a pure function of a :class:`~.runs.Study`)
and builds the claims' extra tables; nothing here or there reads files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybridpool.report.analysis import pool_name
from hybridpool.report.runs import MISSING, Cell, pool_key

__all__ = ["CLAIMS", "DEFAULT_ARMS", "Best", "Claim", "Contrast", "S", "Sel", "Trend", "cell_label", "seed_values"]

# arm values a selector assumes for keys it does not name, when several cells would otherwise match
DEFAULT_ARMS: dict[str, Any] = {
    "model.post_bn": True,
    "data.train_fraction": 1.0,
    "module.pool_schedule": "joint",
    "pool.p": 3.0,
    "pool.learn_p": True,
    "pool.branches": ["avg", "max", "gem", "attn"],
    "pool.init": "uniform",
}
# metrics computed from two recorded ones: name -> (minuend, subtrahend)
DERIVED = {"drop/shift": ("test/acc", "test_shift/acc"), "drop/grid": ("test/acc", "test_grid/acc")}
METRIC_NAMES = {
    "test/acc": "test accuracy",
    "gap/train-test": "train−test gap",
    "drop/shift": "accuracy drop on shifted images",
    "drop/grid": "accuracy drop on tile-shuffled images",
}


# ============================================================================================ selecting cells
def _canon(v: Any) -> str:
    """A comparable text of an arm value: ``True``/``"true"``, ``1``/``1.0``, ``["a"]``/``'["a"]'`` match."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(float(v))
    if isinstance(v, (list, tuple)):
        return json.dumps([str(x) for x in v])
    if v is None:
        return "null"
    text = str(v)
    if text.lower() in ("true", "false", "null", "none"):
        return "null" if text.lower() == "none" else text.lower()
    if text.startswith("["):
        try:
            return _canon(json.loads(text))
        except ValueError:
            return text
    try:
        return repr(float(text))
    except ValueError:
        return text


def _arm_value(cell: Cell, key: str) -> Any:
    """The cell's value of the config key ``key``: its arm value, else its runs' config, else ``-``."""
    if key in cell.arms:
        return cell.arms[key]
    for r in cell.runs:
        if key in r.flat:
            return r.flat[key]
    return MISSING


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Sel:
    """A cell of a block: ``pool`` (a pool spec) with the arm values ``arms`` (``((config key, value), ...)``).

    Keys not named take any value when one cell matches; when several match, the one at :data:`DEFAULT_ARMS`
    (or without the key) is taken, and a selector that still matches several cells tests nothing (ambiguous).
    """

    pool: str
    arms: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        name = pool_name(self.pool)
        if not self.arms:
            return name
        arms = ", ".join(f"{_short(k)}={_text(v)}" for k, v in self.arms)
        return f"{name} [{arms}]"

    def find(self, cells: Sequence[Cell]) -> tuple[Cell | None, str]:
        """``(cell, "")`` or ``(None, why not)``."""
        want = {k: _canon(v) for k, v in self.arms}
        found = [
            c for c in cells if c.pool == self.pool and all(_canon(_arm_value(c, k)) == v for k, v in want.items())
        ]
        if len(found) > 1:
            free = [k for k in DEFAULT_ARMS if k not in want]
            found = [
                c
                for c in found
                if all(_canon(_arm_value(c, k)) in (_canon(DEFAULT_ARMS[k]), MISSING, "null") for k in free)
            ]
            if len(found) != 1:
                return None, f"{len(found)} cells match {self.label} at the default arms"
        if not found:
            return None, f"no runs of {self.label}"
        return found[0], ""


def S(pool: str, arms: Mapping[str, Any] | None = None) -> Sel:
    """``S("gem", {"pool.p": 2.0, "pool.learn_p": False})``: a :class:`Sel` from a pool spec (or an old conf name)
    and a dict."""
    return Sel(pool_key(pool), tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in (arms or {}).items()))


@dataclass(frozen=True)
class Best:
    """The cell with the highest mean ``metric`` (over completed seeds) among ``options``, per block."""

    options: tuple[Sel, ...]
    name: str
    metric: str = "test/acc"

    @property
    def label(self) -> str:
        return self.name

    def find(self, cells: Sequence[Cell]) -> tuple[Cell | None, str]:
        scored = []
        for sel in self.options:
            c, _ = sel.find(cells)
            vals = seed_values(c, self.metric) if c is not None else {}
            if vals:
                scored.append((sum(vals.values()) / len(vals), c))
        if not scored:
            return None, f"no runs of {', '.join(s.label for s in self.options)}"
        return max(scored, key=lambda t: t[0])[1], ""


def cell_label(cell: Cell) -> str:
    """``pool [arm=value, ...]`` naming only the arms the cell has that differ from :data:`DEFAULT_ARMS`."""
    arms = [
        f"{_short(k)}={_text(v)}"
        for k, v in sorted(cell.arms.items())
        if _canon(v) not in (MISSING, "null") and (k not in DEFAULT_ARMS or _canon(v) != _canon(DEFAULT_ARMS[k]))
    ]
    name = pool_name(cell.pool)
    return f"{name} [{', '.join(arms)}]" if arms else name


def seed_values(cell: Cell, metric: str) -> dict[int, float]:
    """``{seed: value}`` of the cell's completed runs; :data:`DERIVED` metrics are differences of two metrics."""
    if metric in DERIVED:
        a, b = (cell.completed(m) for m in DERIVED[metric])
        return {s: a[s] - b[s] for s in a if s in b}
    return cell.completed(metric)


def _text(v: Any) -> str:
    if isinstance(v, str) and v.startswith("["):
        try:
            v = json.loads(v)
        except ValueError:
            return v
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


# ============================================================================================ claims
@dataclass(frozen=True)
class Contrast:
    """The claim ``a > b`` on ``metric``, paired by seed. ``blocks``: where (overrides the claim's patterns)."""

    a: Sel | Best
    b: Sel | Best
    metric: str = "test/acc"
    blocks: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        what = "" if self.metric == "test/acc" else f"{METRIC_NAMES.get(self.metric, self.metric)}: "
        return f"{what}{self.a.label} > {self.b.label}"


@dataclass(frozen=True)
class Trend:
    """The claim that ``metric`` rises along ``cells`` (in order)."""

    cells: tuple[Sel, ...]
    metric: str = "test/acc"
    blocks: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return " < ".join(s.label for s in self.cells)


@dataclass(frozen=True)
class Claim:
    """A named claim: ``key`` (``Q4a``), ``title`` (the claim in words), ``source`` (who claimed it), ``blocks``
    (``"task"`` or ``"task/data"`` patterns), ``tests``, extra ``tables`` (names in :data:`.verdicts.TABLES`) and a
    ``note`` printed with it."""

    key: str
    title: str
    source: str
    blocks: tuple[str, ...]
    tests: tuple[Contrast | Trend, ...]
    tables: tuple[str, ...] = ()
    note: str = ""


FG = ("study_fg",)
SINGLE = tuple(S(p) for p in ("avg", "max", "gem", "lse", "kmax", "attn", "qattn"))
HYBRID = tuple(S(p) for p in ("hybrid", "hybrid(mixing=channel)", "hybrid(mixing=gate)", "hybrid(mixing=concat)"))
TWO_BRANCH = {"pool.branches": ["avg", "max"]}
FIXED_P = {"pool.learn_p": False}

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "Q1a",
        "A hybrid pool beats the best single pool",
        "this study",
        ("study_fg", "study_synth", "study_fashion"),
        (Contrast(Best(HYBRID, "best hybrid"), Best(SINGLE, "best single pool")),),
        note="Both the best single pool and the best hybrid are chosen by their mean on the same test data.",
    ),
    Claim(
        "Q1b",
        "A richer mixing mode earns its parameters (beats scalar mixing)",
        "this study",
        ("study_fg", "study_synth", "study_fashion"),
        (Contrast(Best(HYBRID[1:], "best non-scalar hybrid"), S("hybrid")),),
        tables=("modes",),
    ),
    Claim(
        "Q2a",
        "GAP overfits less than flatten + FC (smaller train−test gap, far fewer parameters)",
        "Lin et al. (Network in Network)",
        ("study_fashion", "study_synth", "study_fg"),
        (
            Contrast(S("flatten"), S("avg"), "gap/train-test"),
            Contrast(
                S("flatten", {"data.train_fraction": 0.1}),
                S("avg", {"data.train_fraction": 0.1}),
                "gap/train-test",
                ("study_fashion",),
            ),
        ),
        tables=("params",),
        note="The train accuracy is the running accuracy of the last training epoch (dropout and augmentation "
        "on, the model still changing), not an evaluation of the final model on the training set; with short "
        "training it measures how fast a head learns as much as how much it overfits.",
    ),
    Claim(
        "Q2b",
        "GAP is robust to the spatial arrangement (drops less than flatten + FC on shifted or shuffled images)",
        "Lin et al. (Network in Network)",
        ("study_fashion", "study_synth"),
        (Contrast(S("flatten"), S("avg"), "drop/shift"), Contrast(S("flatten"), S("avg"), "drop/grid")),
        tables=("drops",),
    ),
    Claim(
        "Q2c",
        "GAP loses fine detail (max, attention and hybrid pooling beat it on detail tasks)",
        "this study",
        ("study_synth/synth_detail", "study_synth/synth_finegrained", "study_fg"),
        tuple(Contrast(S(p), S("avg")) for p in ("max", "attn", "hybrid")),
    ),
    Claim(
        "Q4a",
        "Max pooling beats average pooling consistently",
        "ICLR 2020 submission H1lkCTVFwB",
        FG,
        (Contrast(S("max"), S("avg")),),
    ),
    Claim(
        "Q4b",
        "Generalized pooling improves almost monotonically from average towards max",
        "ICLR 2020 submission H1lkCTVFwB",
        FG,
        (
            Trend((S("avg"), *(S("gem", {**FIXED_P, "pool.p": p}) for p in (2.0, 4.0, 8.0)), S("max"))),
            Contrast(S("gem"), S("avg")),
        ),
    ),
    Claim(
        "Q4c",
        "Freeze-and-train beats joint training of a two-pool (avg, max) combination",
        "ICLR 2020 submission H1lkCTVFwB",
        FG,
        (
            Contrast(
                S("hybrid", {**TWO_BRANCH, "module.pool_schedule": "freeze_and_train"}),
                S("hybrid", {**TWO_BRANCH, "module.pool_schedule": "joint"}),
            ),
        ),
    ),
    Claim(
        "Q4d",
        "BatchNorm after the global pool helps",
        "ICLR 2020 submission H1lkCTVFwB",
        FG,
        tuple(
            Contrast(S(p, {"model.post_bn": True}), S(p, {"model.post_bn": False}))
            for p in ("avg", "max", "gem", "hybrid")
        ),
    ),
    Claim(
        "Q4e",
        "Global k-max pooling helps fine-grained recognition",
        "arXiv 1911.07344",
        FG,
        (Contrast(S("kmax"), S("avg")), Contrast(S("kmax"), S("max"))),
    ),
)
