"""The study's named claims, tested from the records: one verdict with its numbers per claim and data set.

A claim (:class:`Claim`) is declared, not coded: where it is tested (task or task/data patterns), and its tests,
each a :class:`Contrast` (cell ``a`` beats cell ``b``, or is not worse than it by more than a margin) or a
:class:`Trend` (the metric rises along an ordered list of cells). Cells are chosen by :class:`Sel`: a pool name plus
arm values from the flattened run config (``model.post_bn``, ``pool.p``, ``module.pool_schedule``...);
:class:`Best` picks, per block, the cell with the highest mean *validation* accuracy among several (never the test
metric it is then compared on). Adding a claim is adding one entry to :data:`CLAIMS`.

Rules (the same for every claim; :mod:`.stats` has the statistics):

- A contrast is a paired comparison of ``a - b`` over the units (split, seed) both cells completed: mean
  difference in percentage points with the reported interval (the t-interval, or the wider two-level bootstrap
  interval where the units come from two or more data splits), the paired t-test, the paired sign-flip
  permutation test, the exact Wilcoxon test (supplementary), Cohen's ``d_z`` and the number of exactly-zero
  differences.
- Each claim's p-values are Holm-adjusted over the claim's superiority tests (contrasts and trend end points, all
  data sets), the t-test and the sign-flip test separately.
- Superiority (``a > b``): ``agrees`` when the t-test and the sign-flip test both reject at 0.05 after Holm, the
  mean difference is positive and the reported interval lies above 0; ``contradicts`` the same with the sign
  reversed; ``inconclusive`` otherwise (so also when the two tests reject but the interval with the split's
  variance includes 0, or when every unit gives the same difference: a zero-width interval measures no
  uncertainty and the t-test is undefined).
- Non-inferiority (``a`` is not worse than ``b`` by more than a margin ``m``; ``kind="noninferior"``):
  ``m = max(margin_pp, margin_images / n_test)``, ``n_test`` the test set's size. ``agrees`` when the reported
  interval of ``a - b`` lies above ``-m``; ``contradicts`` when it lies below ``-m``; ``inconclusive`` when it
  contains ``-m`` (too wide to tell). A claim "on every data set" is an intersection-union test: it agrees when
  every data set agrees, each at the 95% level, with no multiplicity correction needed.
- A trend agrees when its last cell beats its first (the superiority rule) and no step falls (a step falls when
  both tests reject unadjusted, the mean is negative and the interval lies below 0); it contradicts when the last
  is significantly below the first or a step falls. Cells without runs are left out of the trend and named; a
  trend needs three cells with runs (two would be a contrast).
- Claims whose cells have no completed runs say ``not tested`` and name the cells; a test whose condition does
  not hold in a block (``skip_if_best``) says ``not applicable`` there.
- The test metrics of a run are those of its best validation epoch where the record says so (``val/acc_best_epoch``),
  else of its last epoch; every finding names the rule of its two cells.

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

__all__ = [
    "BEST_HYBRID",
    "BEST_SINGLE",
    "CLAIMS",
    "DEFAULT_ARMS",
    "POOL_DEFAULT_ARMS",
    "VALIDATION",
    "Best",
    "Claim",
    "Contrast",
    "S",
    "Sel",
    "Trend",
    "arm_value",
    "canon",
    "cell_label",
    "default_arm",
    "seed_values",
    "validation_rule",
]

# arm values a selector assumes for keys it does not name, when several cells would otherwise match
DEFAULT_ARMS: dict[str, Any] = {
    "model.post_bn": True,
    "data.train_fraction": 1.0,
    "module.pool_schedule": "joint",
    "pool.p": 3.0,
    "pool.learn_p": True,
    "pool.branches": ["avg", "max", "gem", "attn"],
    "pool.init": "uniform",
    "pool.normalization": "matrix_sqrt",  # covariance pooling: iSQRT-COV; the bilinear CNN's arm is signed_sqrt
    "pool.centered": True,
    "pool.branch_norm": False,  # the hybrid's design arm: per-branch normalisation before mixing
    "pool.similarity": "cosine",  # query attention; the diagnosis arm is dot
    "optim.pool_weights": "head",  # the pools' weight matrices train with the head; the diagnosis arm: "pool"
    "module.mix_entropy_weight": 0.0,  # the hybrid's design arm: an entropy penalty on the mixing weights
}
#: arm defaults that differ between pools (the pool's own config default), over :data:`DEFAULT_ARMS`
POOL_DEFAULT_ARMS: dict[str, dict[str, Any]] = {
    "attn": {"pool.temperature": 1.0},
    "qattn": {"pool.temperature": 0.1},
}
#: the validation score a :class:`Best` chooses by: per unit ``val/acc_best`` (the best validation epoch's
#: accuracy, the epoch whose weights were tested) where recorded, else ``val/acc`` (the last epoch's)
VALIDATION = "val/select"
# metrics computed from two recorded ones: name -> (minuend, subtrahend)
DERIVED = {"drop/shift": ("test/acc", "test_shift/acc"), "drop/grid": ("test/acc", "test_grid/acc")}
METRIC_NAMES = {
    "test/acc": "test accuracy",
    "gap/train-test": "train−test gap",
    "drop/shift": "accuracy drop on shifted images",
    "drop/grid": "accuracy drop on tile-shuffled images",
    VALIDATION: "validation accuracy",
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


def default_arm(pool: str, key: str) -> Any:
    """The default of arm ``key`` for ``pool``: :data:`POOL_DEFAULT_ARMS`, else :data:`DEFAULT_ARMS`, else ``-``."""
    return POOL_DEFAULT_ARMS.get(pool, {}).get(key, DEFAULT_ARMS.get(key, MISSING))


def _default_keys(pool: str) -> list[str]:
    return [*DEFAULT_ARMS, *(k for k in POOL_DEFAULT_ARMS.get(pool, {}) if k not in DEFAULT_ARMS)]


def _arm_value(cell: Cell, key: str) -> Any:
    """The cell's value of the config key ``key``: its arm value, else its runs' config, else ``-``."""
    if key in cell.arms:
        return cell.arms[key]
    for r in cell.runs:
        if key in r.flat:
            return r.flat[key]
    return MISSING


canon = _canon
arm_value = _arm_value


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Sel:
    """A cell of a block: ``pool`` (a pool spec) with the arm values ``arms`` (``((config key, value), ...)``).

    Keys not named take any value when one cell matches; when several match, the one at the defaults
    (:func:`default_arm`; a cell without the key counts as at its default) is taken, preferring a cell that records
    the default to one whose records lack the key, and a selector that still matches several cells tests nothing
    (ambiguous).
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

    def _at_default(self, cell: Cell, key: str) -> bool:
        """Whether ``cell`` has the default of ``key`` (a cell without the key counts as at its default)."""
        return _canon(_arm_value(cell, key)) in (_canon(default_arm(self.pool, key)), MISSING, "null")

    def find(self, cells: Sequence[Cell]) -> tuple[Cell | None, str]:
        """``(cell, "")`` or ``(None, why not)``."""
        want = {k: _canon(v) for k, v in self.arms}
        found = [
            c for c in cells if c.pool == self.pool and all(_canon(_arm_value(c, k)) == v for k, v in want.items())
        ]
        if len(found) > 1:
            free = [k for k in _default_keys(self.pool) if k not in want]
            found = [c for c in found if all(self._at_default(c, k) for k in free)]
            # a cell that records the default beats one whose (older) records lack the key: before a setting
            # existed the rule may have been another (optim.pool_weights: the weights at pool_lr_mult)
            for k in free:
                explicit = [c for c in found if _canon(_arm_value(c, k)) == _canon(default_arm(self.pool, k))]
                if explicit and len(explicit) < len(found):
                    found = explicit
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
    """The cell with the highest mean ``metric`` (over its completed units) among ``options``, per block.

    ``metric`` defaults to :data:`VALIDATION`: the choice is made on validation data, then the chosen cell is
    compared on test data. Ties go to the first of ``options`` (their order in :data:`SINGLE`/:data:`HYBRID`).
    """

    options: tuple[Sel, ...]
    name: str
    metric: str = VALIDATION

    @property
    def label(self) -> str:
        return self.name

    def scores(self, cells: Sequence[Cell]) -> list[tuple[float, int, Cell]]:
        """``(mean metric, units, cell)`` of every option with runs, in the options' order."""
        out = []
        for sel in self.options:
            c, _ = sel.find(cells)
            vals = seed_values(c, self.metric) if c is not None else {}
            if vals:
                out.append((sum(vals.values()) / len(vals), len(vals), c))
        return out

    def find(self, cells: Sequence[Cell]) -> tuple[Cell | None, str]:
        scored = self.scores(cells)
        if not scored:
            return None, f"no runs of {', '.join(s.label for s in self.options)}"
        return max(scored, key=lambda t: t[0])[2], ""

    def chosen_text(self, cells: Sequence[Cell]) -> str:
        """``best single pool (on validation): GeM, 85.20% over 30 units (best validation epoch); next GMP
        85.10%`` for the findings' text."""
        from hybridpool.report.tables import fmt_pct

        scored = sorted(self.scores(cells), key=lambda t: -t[0])
        if not scored:
            return ""
        mean, n, c = scored[0]
        where = METRIC_NAMES.get(self.metric, self.metric)
        rule = f" ({validation_rule(c)})" if self.metric == VALIDATION else ""
        text = f"{self.name}, chosen on {where}: {cell_label(c)}, {fmt_pct(mean)}% over {n} units{rule}"
        if len(scored) > 1:
            text += f"; next {cell_label(scored[1][2])} {fmt_pct(scored[1][0])}%"
        return text


def cell_label(cell: Cell) -> str:
    """``pool [arm=value, ...]`` naming only the arms the cell has that differ from the defaults
    (:func:`default_arm`), and the arms that tell it from another cell of the same pool and block whose records
    lack the key (:attr:`.runs.Cell.label_keys`: ``pool_weights=–`` next to ``pool_weights=head``)."""
    shown = getattr(cell, "label_keys", ())
    arms = []
    for k, v in sorted(cell.arms.items()):
        if k in shown:
            arms.append(f"{_short(k)}={'–' if _canon(v) in (MISSING, 'null') else _text(v)}")
        elif _canon(v) not in (MISSING, "null") and _canon(v) != _canon(default_arm(cell.pool, k)):
            arms.append(f"{_short(k)}={_text(v)}")
    name = pool_name(cell.pool)
    return f"{name} [{', '.join(arms)}]" if arms else name


def seed_values(cell: Cell, metric: str) -> dict:
    """``{unit: value}`` of the cell's completed runs; :data:`DERIVED` metrics are differences of two metrics;
    :data:`VALIDATION` is ``val/acc_best`` per unit where recorded, else ``val/acc``."""
    if metric == VALIDATION:
        best, last = cell.completed("val/acc_best"), cell.completed("val/acc")
        return {u: best.get(u, last.get(u)) for u in sorted({*best, *last})}
    if metric in DERIVED:
        a, b = (cell.completed(m) for m in DERIVED[metric])
        return {s: a[s] - b[s] for s in a if s in b}
    return cell.completed(metric)


def validation_rule(cell: Cell) -> str:
    """Which validation number :data:`VALIDATION` used for ``cell``: ``best validation epoch``, ``last epoch`` or
    ``mixed``."""
    best, last = cell.completed("val/acc_best"), cell.completed("val/acc")
    units = {*best, *last}
    k = sum(1 for u in units if u in best)
    if k == len(units):
        return "val/acc_best: best validation epoch"
    if k == 0:
        return "val/acc: last epoch"
    return f"mixed: val/acc_best on {k}, last-epoch val/acc on {len(units) - k} units"


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
    """The claim ``a > b`` on ``metric``, paired by unit. ``blocks``: where (overrides the claim's patterns).

    ``kind="noninferior"``: the claim is instead that ``a`` is not worse than ``b`` by more than the margin
    ``max(margin_pp / 100, margin_images / n_test)`` (see the module's rules). ``skip_if_best``: the test does not
    apply in a block where this :class:`Best` picks ``b`` (e.g. "beats GAP where GAP is not the best single pool").
    """

    a: Sel | Best
    b: Sel | Best
    metric: str = "test/acc"
    blocks: tuple[str, ...] = ()
    kind: str = "superior"
    margin_pp: float = 1.0
    margin_images: int = 1
    skip_if_best: Best | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("superior", "noninferior"):
            raise ValueError(f"Contrast kind must be 'superior' or 'noninferior', got {self.kind!r}")

    @property
    def label(self) -> str:
        what = "" if self.metric == "test/acc" else f"{METRIC_NAMES.get(self.metric, self.metric)}: "
        if self.kind == "noninferior":
            return f"{what}{self.a.label} ≥ {self.b.label} − margin"
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
SINGLE = tuple(S(p) for p in ("avg", "max", "gem", "lse", "kmax", "attn", "qattn", "cov"))
HYBRID = tuple(S(p) for p in ("hybrid", "hybrid(mixing=channel)", "hybrid(mixing=gate)", "hybrid(mixing=concat)"))
BEST_SINGLE = Best(SINGLE, "best single pool")
BEST_HYBRID = Best(HYBRID, "best hybrid")
#: the hybrid chosen once, without looking at any data set: hybrid(avg,max,gem,attn), scalar mixing, at the
#: default arms (uniform init, joint training, post-pool BatchNorm)
DEFAULT_HYBRID = S("hybrid")
TWO_BRANCH = {"pool.branches": ["avg", "max"]}
FIXED_P = {"pool.learn_p": False}

Q1_BLOCKS = ("study_fg", "study_synth", "study_fashion")

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "Q1a",
        "A hybrid chosen once, without looking at the data set, is as good as the best single pool chosen on "
        "validation (within a margin), on every data set",
        "this study",
        Q1_BLOCKS,
        (Contrast(DEFAULT_HYBRID, BEST_SINGLE, kind="noninferior", margin_pp=1.0, margin_images=1),),
        note="The hybrid is hybrid(avg,max,gem,attn) with scalar mixing at the default arms, the same on every data "
        "set. The best single pool is chosen per data set by its mean validation accuracy over units, then "
        "compared on test data. Margin: 1 pp or one test image, whichever is larger.",
    ),
    Claim(
        "Q1b",
        "The same hybrid beats GAP where GAP is not the best single pool (on validation)",
        "this study",
        Q1_BLOCKS,
        (Contrast(DEFAULT_HYBRID, S("avg"), skip_if_best=BEST_SINGLE),),
        note="Not applicable on a data set where GAP is the single pool with the best mean validation accuracy.",
    ),
    Claim(
        "Q1c",
        "The best hybrid beats the best single pool (both chosen on validation)",
        "this study",
        Q1_BLOCKS,
        (Contrast(BEST_HYBRID, BEST_SINGLE),),
        note="Both are chosen per data set by their mean validation accuracy, then compared on test data.",
    ),
    Claim(
        "Q1d",
        "A richer mixing mode earns its parameters (beats scalar mixing)",
        "this study",
        Q1_BLOCKS,
        (Contrast(Best(HYBRID[1:], "best non-scalar hybrid"), S("hybrid")),),
        tables=("modes",),
        note="The non-scalar mode is chosen per data set on validation.",
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
        note="The train accuracy is the tested model's accuracy on its training images in eval mode without "
        "augmentation (train_eval/acc) where the runs recorded it (the 10% Fashion-MNIST cells, 15 epochs); "
        "elsewhere it is the running accuracy of the last training epoch (dropout and augmentation on, the model "
        "still changing), which after short training measures how fast a head learns as much as how much it "
        "overfits.",
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
