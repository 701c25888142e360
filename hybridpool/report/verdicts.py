"""Testing the claims of :mod:`.claims` on a study: findings with verdicts, and the claims' extra tables.

:func:`evaluate_claims` returns one :class:`ClaimResult` per claim: per test and block a :class:`Finding` (verdict
and the numbers in words), one summary line per test and one overall word. :func:`claim_tables` builds the tables
some claims name (hybrid modes with their parameters, train-test gaps with parameters, accuracy drops).
:func:`literature_line` places the covariance pool on CUB next to a cited number. The rules are in :mod:`.claims`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridpool.report.analysis import cell_interval, compare_units, pool_name, selection_text
from hybridpool.report.claims import (
    CLAIMS,
    HYBRID,
    METRIC_NAMES,
    Best,
    Claim,
    Contrast,
    S,
    Trend,
    cell_label,
    seed_values,
)
from hybridpool.report.runs import Cell, Study
from hybridpool.report.stats import ALPHA, PairedComparison, holm_family, mean_ci, significant
from hybridpool.report.tables import DASH, Table, block_title, fmt_ci, fmt_int, fmt_num, fmt_p, fmt_pct

__all__ = [
    "AGREES",
    "CONTRADICTS",
    "INCONCLUSIVE",
    "LITERATURE",
    "NOT_APPLICABLE",
    "NOT_TESTED",
    "TABLES",
    "ClaimResult",
    "Finding",
    "claim_tables",
    "evaluate_claim",
    "evaluate_claims",
    "literature_line",
    "margin_of",
    "verdict_noninferior",
    "verdict_of",
]

AGREES, CONTRADICTS, INCONCLUSIVE, NOT_TESTED = "agrees", "contradicts", "inconclusive", "not tested"
NOT_APPLICABLE = "not applicable"
_UNTESTED = (NOT_TESTED, NOT_APPLICABLE)


@dataclass
class Finding:
    """One test of a claim in one block: ``verdict`` and ``text`` (the numbers in words).

    ``block`` is ``None`` when no block of the claim exists at all. ``comparison``: the paired comparison (the
    endpoint comparison of a trend); ``steps``: a trend's step comparisons. ``kind``: ``superior``,
    ``noninferior`` or ``trend``; ``margin``: the non-inferiority margin (a fraction; ``None`` otherwise).
    """

    test: str
    block: tuple[str, str, str] | None
    verdict: str
    text: str
    comparison: PairedComparison | None = None
    steps: list[PairedComparison] = field(default_factory=list)
    kind: str = "superior"
    margin: float | None = None
    context: dict = field(default_factory=dict, repr=False)


@dataclass
class ClaimResult:
    """A claim's findings, one verdict word (``overall``) and one line per test (``summary``)."""

    claim: Claim
    findings: list[Finding]
    overall: str
    summary: list[str]


def _testable(r: PairedComparison) -> bool:
    """At least two units, differences that are not all equal (the t statistic is defined), a finite interval."""
    return r.n >= 2 and math.isfinite(r.t) and math.isfinite(r.ci.low) and math.isfinite(r.ci.high)


def verdict_of(r: PairedComparison) -> str:
    """The superiority verdict of ``a - b``: ``agrees`` when the decision rule holds (t-test and sign-flip test
    both reject after Holm; unadjusted when ``r`` was never part of a family), the mean is positive and the
    reported interval lies above 0; ``contradicts`` the mirror image; ``inconclusive`` otherwise.

    Identical differences on every unit (``sd == 0``: common with small, quantised test sets) give an interval of
    zero width that measures no uncertainty and an undefined t-test: inconclusive, like ``n < 2``.
    """
    if not _testable(r):
        return INCONCLUSIVE
    sig = r.significant if r.significant is not None else significant(r.p_t, r.p_perm, r.alpha)
    if sig and r.mean_diff > 0 and r.ci.low > 0:
        return AGREES
    if sig and r.mean_diff < 0 and r.ci.high < 0:
        return CONTRADICTS
    return INCONCLUSIVE


def verdict_noninferior(r: PairedComparison, margin: float) -> str:
    """Non-inferiority of ``a`` to ``b`` with ``margin`` (a fraction, > 0): ``agrees`` when the reported interval of
    ``a - b`` lies above ``-margin``, ``contradicts`` when it lies below, ``inconclusive`` when it contains it (or
    has zero width)."""
    if not _testable(r):
        return INCONCLUSIVE
    if r.ci.low > -margin:
        return AGREES
    if r.ci.high < -margin:
        return CONTRADICTS
    return INCONCLUSIVE


def margin_of(t: Contrast, a: Cell, b: Cell) -> tuple[float, str]:
    """The non-inferiority margin of ``t`` for cells ``a``/``b`` and its explanation: ``max(margin_pp,
    margin_images / n_test)`` with ``n_test`` the smallest test set recorded by their runs."""
    sizes = [r.num_test for c in (a, b) for r in c.completed_runs() if r.num_test]
    pp = t.margin_pp / 100.0
    if not sizes:
        return pp, f"{fmt_num(t.margin_pp)} pp; the test-set size is not recorded"
    img = t.margin_images / min(sizes)
    images = f"{t.margin_images} test image{'s' if t.margin_images != 1 else ''}"
    return max(pp, img), f"the larger of {fmt_num(t.margin_pp)} pp and {images}, {fmt_pct(img)} pp of {min(sizes):,}"


def _p(p: float) -> str:
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _ci_source(r: PairedComparison) -> str:
    if r.ci.method == "t":
        return "t" if r.n_splits < 2 else f"t, wider than the two-level bootstrap over {r.n_splits} splits"
    return f"two-level bootstrap over {r.n_splits} splits, wider than t"


def _units(r: PairedComparison) -> str:
    text = f"n = {r.n} units"
    if r.n_splits >= 2:
        text += f" from {r.n_splits} splits"
    return text + f", {r.n_zero} zero difference{'s' if r.n_zero != 1 else ''}"


def _numbers(r: PairedComparison, level: float, holm: bool = True) -> str:
    if r.n < 2:
        return f"{fmt_pct(r.mean_diff, signed=True)} pp, n = {r.n} paired unit(s): no interval, no test"
    dz = f"d_z = {fmt_num(r.d_z)}" if math.isfinite(r.t) else "all differences equal: zero-width interval"
    text = (
        f"{fmt_pct(r.mean_diff, signed=True)} pp, {round(100 * level)}% CI {fmt_ci(r.ci, signed=True)} "
        f"({_ci_source(r)}), {_units(r)}; {_p(r.p_t)} (t), {_p(r.p_perm)} (sign-flip, {r.perm_method})"
    )
    if holm and math.isfinite(r.p_t_holm + r.p_perm_holm):
        text += f", Holm {fmt_p(r.p_t_holm)} and {fmt_p(r.p_perm_holm)}"
    return text + f"; {_p(r.p_w)} (Wilcoxon, supplementary); {dz}"


def _verdict_text(v: str, r: PairedComparison) -> str:
    if v != INCONCLUSIVE:
        return v
    if _testable(r) and r.significant and (r.ci.low <= 0 <= r.ci.high):
        return f"inconclusive (n = {r.n}: both tests reject, but the interval with the splits' variance includes 0)"
    return f"inconclusive (n = {r.n})"


def _matches(block: tuple[str, str, str], patterns: Sequence[str]) -> bool:
    task, data, _ = block
    return any(p == task or p == f"{task}/{data}" for p in patterns)


def _selection_note(a: Cell, b: Cell, metric: str) -> str:
    if metric not in ("test/acc", "test/acc_macro", "test/loss") and not metric.startswith(("drop/", "gap/")):
        return ""
    sa, sb = a.selection("test/acc"), b.selection("test/acc")
    if sa == sb:
        return f"; test metrics at the {selection_text(sa)}"
    return (
        f"; test metrics at the {selection_text(sa)} for {cell_label(a)}, the {selection_text(sb)} for {cell_label(b)}"
    )


def _contrast(t: Contrast, block: tuple[str, str, str], cells: list[Cell], level: float) -> Finding:
    where = block_title(block)
    (a, why_a), (b, why_b) = t.a.find(cells), t.b.find(cells)
    missing = [w for w in (why_a, why_b) if w]
    if len(missing) == 2 and all(w.startswith("no runs of ") for w in missing):
        missing = [f"{missing[0]}, {missing[1][len('no runs of ') :]}"]
    if a is not None and b is not None:
        if t.skip_if_best is not None:
            best, _ = t.skip_if_best.find(cells)
            if best is b:
                text = (
                    f"{where}: not applicable: {cell_label(b)} is the {t.skip_if_best.name} here "
                    f"({t.skip_if_best.chosen_text(cells)})"
                )
                return Finding(t.label, block, NOT_APPLICABLE, text, kind=t.kind)
        xa, xb = seed_values(a, t.metric), seed_values(b, t.metric)
        missing += [f"no completed runs with {t.metric} of {s.label}" for s, x in ((t.a, xa), (t.b, xb)) if not x]
        if not missing:
            r = compare_units(xa, xb, level)
            chosen = [s.chosen_text(cells) for s in (t.a, t.b) if isinstance(s, Best)]
            if t.skip_if_best is not None:
                chosen.append(t.skip_if_best.chosen_text(cells))
            what = "" if t.metric == "test/acc" else f"{METRIC_NAMES.get(t.metric, t.metric)}: "
            ctx = {
                "where": where,
                "diff": f"{what}{cell_label(a)} − {cell_label(b)}",
                "chosen": f" ({'; '.join(chosen)})" if chosen else "",
                "selection": _selection_note(a, b, t.metric),
            }
            margin = None
            if t.kind == "noninferior":
                margin, ctx["margin_text"] = margin_of(t, a, b)
            return Finding(t.label, block, "", "", r, kind=t.kind, margin=margin, context=ctx)
    return Finding(t.label, block, NOT_TESTED, f"{where}: not tested: {'; '.join(missing)}", kind=t.kind)


def _trend(t: Trend, block: tuple[str, str, str], cells: list[Cell], level: float) -> Finding:
    where = block_title(block)
    found = [(s, *s.find(cells)) for s in t.cells]
    have = [(s, c, seed_values(c, t.metric)) for s, c, _ in found if c is not None]
    have = [h for h in have if h[2]]
    absent = [s.label for s in t.cells if s not in {h[0] for h in have}]
    if len(have) < 3:
        return Finding(t.label, block, NOT_TESTED, f"{where}: not tested: no runs of {', '.join(absent)}", kind="trend")
    steps = [compare_units(x1, x0, level) for (_, _, x0), (_, _, x1) in itertools.pairwise(have)]
    ends = compare_units(have[-1][2], have[0][2], level)
    means = " → ".join(f"{s.label} {fmt_pct(sum(x.values()) / len(x))}" for s, _, x in have)
    ctx = {
        "where": where,
        "means": means,
        "absent": absent,
        "selection": _selection_note(have[-1][1], have[0][1], t.metric),
    }
    return Finding(t.label, block, "", "", ends, steps, kind="trend", context=ctx)


def _finish(f: Finding, level: float) -> None:
    """Verdict and text of a finding whose comparisons are final (Holm-adjusted where they belong to the family)."""
    if f.verdict or f.comparison is None:
        return
    r, ctx = f.comparison, f.context
    if f.kind == "trend":
        up = sum(1 for s in f.steps if s.mean_diff > 0)
        step_text = ", ".join(f"{fmt_pct(s.mean_diff, signed=True)} {fmt_ci(s.ci, signed=True)}" for s in f.steps)
        falls = any(verdict_of(s) == CONTRADICTS for s in f.steps)
        end_v = verdict_of(r)
        f.verdict = CONTRADICTS if end_v == CONTRADICTS or falls else AGREES if end_v == AGREES else INCONCLUSIVE
        f.text = (
            f"{ctx['where']}: means (%) {ctx['means']}; {up} of {len(f.steps)} steps up (Δ pp, CI: {step_text}); "
            f"last − first = {_numbers(r, level)}{ctx['selection']}: {_verdict_text(f.verdict, r)}"
        )
        if ctx["absent"]:
            f.text += f" (no runs of {', '.join(ctx['absent'])})"
        return
    if f.kind == "noninferior":
        m = f.margin or 0.0
        f.verdict = verdict_noninferior(r, m)
        why = {
            AGREES: f"the interval lies above −{fmt_pct(m)} pp"
            + ("; it also lies below 0: worse, but within the margin" if r.ci.high < 0 else ""),
            CONTRADICTS: f"the interval lies below −{fmt_pct(m)} pp",
            INCONCLUSIVE: f"the interval contains −{fmt_pct(m)} pp" if _testable(r) else f"n = {r.n}, no interval",
        }[f.verdict]
        f.text = (
            f"{ctx['where']}: {ctx['diff']} = {_numbers(r, level, holm=False)}; margin −{fmt_pct(m)} pp "
            f"({ctx['margin_text']}){ctx['chosen']}{ctx['selection']}: {f.verdict} ({why})"
        )
        return
    f.verdict = verdict_of(r)
    f.text = (
        f"{ctx['where']}: {ctx['diff']} = {_numbers(r, level)}{ctx['chosen']}{ctx['selection']}: "
        f"{_verdict_text(f.verdict, r)}"
    )


def _overall(verdicts: Sequence[str]) -> str:
    tested = [v for v in verdicts if v not in _UNTESTED]
    k, j = tested.count(AGREES), tested.count(CONTRADICTS)
    if not tested:
        return NOT_APPLICABLE if verdicts and all(v == NOT_APPLICABLE for v in verdicts) else NOT_TESTED
    if k == len(tested):
        return AGREES
    if j == len(tested):
        return CONTRADICTS
    if k and j:
        return "mixed"
    return "partly agrees" if k else "partly contradicts" if j else INCONCLUSIVE


def _count_line(label: str, findings: Sequence[Finding]) -> str:
    verdicts = [f.verdict for f in findings]
    tested = [v for v in verdicts if v not in _UNTESTED]
    if not tested:
        return f"{label}: {_overall(verdicts)}"
    parts = [f"agrees on {tested.count(AGREES)} of {len(tested)} data sets"]
    parts += [f"{w} on {tested.count(w)}" for w in (CONTRADICTS, INCONCLUSIVE) if tested.count(w)]
    for w in _UNTESTED:
        if verdicts.count(w):
            parts.append(f"{w} on {verdicts.count(w)}")
    return f"{label}: {', '.join(parts)}"


def evaluate_claim(claim: Claim, study: Study, level: float = 0.95, alpha: float = ALPHA) -> ClaimResult:
    """Every test of ``claim`` in every matching block of ``study``; Holm over the claim's superiority tests."""
    blocks = study.blocks()
    findings: list[Finding] = []
    per_test: list[tuple[str, list[Finding]]] = []
    for t in claim.tests:
        patterns = t.blocks or claim.blocks
        mine = [b for b in blocks if _matches(b, patterns)]
        if not mine:
            cells = t.cells if isinstance(t, Trend) else (t.a, t.b)
            names = ", ".join(c.label for c in cells)
            text = f"not tested: no runs of {names} in {' or '.join(patterns)}"
            kind = "trend" if isinstance(t, Trend) else t.kind
            got = [Finding(t.label, None, NOT_TESTED, text, kind=kind)]
        elif isinstance(t, Trend):
            got = [_trend(t, b, blocks[b], level) for b in mine]
        else:
            got = [_contrast(t, b, blocks[b], level) for b in mine]
        findings += got
        per_test.append((t.label, got))
    family = [f for f in findings if f.comparison is not None and f.kind in ("superior", "trend")]
    for f, adjusted in zip(family, holm_family([f.comparison for f in family], alpha), strict=True):
        f.comparison = adjusted
    for f in findings:
        _finish(f, level)
    summary = [_count_line(label, got) for label, got in per_test]
    return ClaimResult(claim, findings, _overall([f.verdict for f in findings]), summary)


def evaluate_claims(
    study: Study, level: float = 0.95, claims: Sequence[Claim] = CLAIMS, alpha: float = ALPHA
) -> list[ClaimResult]:
    """Every claim of ``claims`` tested on ``study`` (claims without runs say ``not tested``; none is dropped)."""
    return [evaluate_claim(c, study, level, alpha) for c in claims]


# ============================================================================================ literature
#: numbers from the literature the paper places ours next to: citations, never our runs
LITERATURE = {
    "bcnn_cub": {
        "value": 0.768,
        "what": "a bilinear CNN on a frozen ImageNet VGG-16 (only the classifier trained, 448 px images), on the full "
        "200-class CUB-200-2011",
        "source": "HaoMood/bilinear-cnn, a reimplementation of Lin et al. (ICCV 2015)",
        "cite": "haomood2018bcnn,lin2015bilinear",
    },
}


def literature_line(study: Study, level: float = 0.95) -> tuple[str, str]:
    """Where covariance pooling lands on our CUB subset next to the literature's frozen-VGG bilinear CNN.

    Returns ``(plain text, LaTeX)``; the literature's number is marked as a citation, not a result of ours.
    """
    from hybridpool.report.tables import short_block, tex

    lit = LITERATURE["bcnn_cub"]
    cited = (
        f"For reference (a cited number, not one of our runs): {lit['what']} reaches {fmt_pct(lit['value'], 1)}% "
        f"({lit['source']})"
    )
    ours = []
    for block, cells in study.blocks().items():
        if block[1] != "cub":
            continue
        c, _ = S("cov").find(cells)
        vals = seed_values(c, "test/acc") if c is not None else {}
        if not vals:
            continue
        ci = cell_interval(vals, level)
        n_classes = {r.num_classes for r in c.completed_runs()} - {None}
        classes = f"{sorted(n_classes)[0]} classes" if len(n_classes) == 1 else "a class subset"
        ours.append(
            f"{cell_label(c)} on our {short_block(block)} ({classes}) reaches {fmt_pct(ci.mean)}% "
            f"(test, {round(100 * level)}% CI {fmt_ci(ci)}, n = {ci.n} units, {selection_text(c.selection())})"
        )
    head = "; ".join(ours) + "." if ours else "No covariance-pooling (cov) runs on CUB in these records."
    tail = (
        ". Backbone, image size, number of classes and training set all differ, so this places our number; it does "
        "not rank the two."
    )
    plain = f"{head} {cited}{tail}"
    latex = f"{tex(head)} {tex(cited)}~\\citep{{{lit['cite']}}}{tex(tail)}"
    return plain, latex


# ============================================================================================ extra tables
def _blocks_of(study: Study, claim: Claim) -> dict[tuple[str, str, str], list[Cell]]:
    return {b: cells for b, cells in study.blocks().items() if _matches(b, claim.blocks)}


def _mean_ci_text(values: dict, level: float) -> tuple[str, str]:
    ci = cell_interval(values, level)
    return fmt_pct(ci.mean), fmt_ci(ci)


def _params(cell: Cell) -> dict[str, int]:
    for r in cell.completed_runs():
        if r.params:
            return {k: int(v) for k, v in r.params.items() if isinstance(v, (int, float))}
    return {}


def modes_table(study: Study, claim: Claim, level: float) -> Table | None:
    """Per block and hybrid mixing mode: test accuracy, the pool's parameters, and the difference to scalar."""
    rows = []
    for block, cells in _blocks_of(study, claim).items():
        scalar, _ = HYBRID[0].find(cells)
        base = seed_values(scalar, "test/acc") if scalar is not None else {}
        for sel in HYBRID:
            c, _ = sel.find(cells)
            vals = seed_values(c, "test/acc") if c is not None else {}
            if not vals:
                continue
            mean, ci = _mean_ci_text(vals, level)
            diff, verdict = DASH, DASH
            if c is not scalar and base:
                r = compare_units(vals, base, level)
                diff = f"{fmt_pct(r.mean_diff, signed=True)} {fmt_ci(r.ci, signed=True)}"
                verdict = verdict_of(r)
            rows.append([block_title(block), pool_name(c.pool), str(len(vals)), mean, ci])
            rows[-1] += [fmt_int(_params(c).get("pool")), diff, verdict]
    if not rows:
        return None
    pc = round(100 * level)
    return Table(
        name=f"claim-{claim.key.lower()}-modes",
        caption=f"{claim.key}: hybrid mixing modes: test accuracy (%, mean and {pc}% CI over units), the pool's "
        f"own parameters, and the paired difference to scalar mixing (pp, {pc}% CI) with its verdict (decision "
        "rule without Holm: one comparison per row).",
        header=["Dataset", "Mode", "n", "Mean (%)", f"{pc}% CI", "Pool params", "Δ vs scalar (pp)", "Verdict"],
        rows=rows,
        align="llrrrrrl",
        label=f"tab:claim-{claim.key.lower()}-modes",
    )


def params_table(study: Study, claim: Claim, level: float) -> Table | None:
    """GAP and flatten + FC cells: pool + head parameters, train and test accuracy, and the train-test gap."""
    rows = []
    for block, cells in _blocks_of(study, claim).items():
        for c in sorted((c for c in cells if c.pool in ("avg", "flatten")), key=lambda c: (c.arm_label, c.pool)):
            gap = seed_values(c, "gap/train-test")
            if not gap:
                continue
            p = _params(c)
            own = p.get("pool", 0) + p["head"] if "head" in p else None
            train = mean_ci(list(c.completed("train/acc").values()), level)
            test = mean_ci(list(c.completed("test/acc").values()), level)
            mean, ci = _mean_ci_text(gap, level)
            rows.append([block_title(block), cell_label(c), fmt_int(own), fmt_pct(train.mean), fmt_pct(test.mean)])
            rows[-1] += [f"{mean} {ci}", str(len(gap))]
    if not rows:
        return None
    pc = round(100 * level)
    return Table(
        name=f"claim-{claim.key.lower()}-params",
        caption=f"{claim.key}: GAP against flatten + FC: parameters of pool and head, train and test accuracy (%), "
        f"and the train−test gap (pp, mean and {pc}% CI over units).",
        header=["Dataset", "Pool", "Pool + head params", "Train (%)", "Test (%)", "Gap (pp)", "n"],
        rows=rows,
        align="llrrrrr",
        label=f"tab:claim-{claim.key.lower()}-params",
    )


def drops_table(study: Study, claim: Claim, level: float) -> Table | None:
    """Every cell: test accuracy and its drop on shifted and on tile-shuffled test images."""
    rows = []
    for block, cells in _blocks_of(study, claim).items():
        for c in cells:
            shift, grid = seed_values(c, "drop/shift"), seed_values(c, "drop/grid")
            if not shift and not grid:
                continue
            test = mean_ci(list(c.completed("test/acc").values()), level)
            cols = [" ".join(_mean_ci_text(d, level)) if d else DASH for d in (shift, grid)]
            rows.append([block_title(block), cell_label(c), fmt_pct(test.mean), *cols, str(max(len(shift), len(grid)))])
    if not rows:
        return None
    pc = round(100 * level)
    return Table(
        name=f"claim-{claim.key.lower()}-drops",
        caption=f"{claim.key}: accuracy drop (test − shifted test, test − tile-shuffled test; pp, mean and {pc}% CI "
        "over units) per pool: a small drop means the pool does not depend on where features are.",
        header=["Dataset", "Pool", "Test (%)", "Drop, shifted (pp)", "Drop, shuffled (pp)", "n"],
        rows=rows,
        align="llrrrr",
        label=f"tab:claim-{claim.key.lower()}-drops",
    )


TABLES = {"modes": modes_table, "params": params_table, "drops": drops_table}


def claim_tables(result: ClaimResult, study: Study, level: float = 0.95) -> list[Table]:
    """The extra tables the claim names (:data:`TABLES`), those with rows."""
    tables = [TABLES[name](study, result.claim, level) for name in result.claim.tables]
    return [t for t in tables if t is not None]
