"""Testing the claims of :mod:`.claims` on a study: findings with verdicts, and the claims' extra tables.

:func:`evaluate_claims` returns one :class:`ClaimResult` per claim: per test and block a :class:`Finding` (verdict
and the numbers in words), one summary line per test and one overall word. :func:`claim_tables` builds the tables
some claims name (hybrid modes with their parameters, train-test gaps with parameters, accuracy drops).
The rules are in :mod:`.claims`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hybridpool.report.analysis import pool_name
from hybridpool.report.claims import CLAIMS, HYBRID, METRIC_NAMES, Best, Claim, Contrast, Trend, cell_label, seed_values
from hybridpool.report.runs import Cell, Study
from hybridpool.report.stats import PairedComparison, holm, mean_ci, paired_comparison
from hybridpool.report.tables import DASH, Table, block_title, fmt_ci, fmt_int, fmt_num, fmt_p, fmt_pct

__all__ = [
    "AGREES",
    "CONTRADICTS",
    "INCONCLUSIVE",
    "NOT_TESTED",
    "TABLES",
    "ClaimResult",
    "Finding",
    "claim_tables",
    "evaluate_claim",
    "evaluate_claims",
    "verdict_of",
]

AGREES, CONTRADICTS, INCONCLUSIVE, NOT_TESTED = "agrees", "contradicts", "inconclusive", "not tested"


@dataclass
class Finding:
    """One test of a claim in one block: ``verdict`` and ``text`` (the numbers in words).

    ``block`` is ``None`` when no block of the claim exists at all. ``comparison``: the paired comparison (the
    endpoint comparison of a trend); ``steps``: a trend's step comparisons.
    """

    test: str
    block: tuple[str, str, str] | None
    verdict: str
    text: str
    comparison: PairedComparison | None = None
    steps: list[PairedComparison] = field(default_factory=list)


@dataclass
class ClaimResult:
    """A claim's findings, one verdict word (``overall``) and one line per test (``summary``)."""

    claim: Claim
    findings: list[Finding]
    overall: str
    summary: list[str]


def verdict_of(r: PairedComparison) -> str:
    """``agrees`` (interval above 0), ``contradicts`` (below 0) or ``inconclusive``.

    Identical differences on every seed (``sd == 0``: common with small, quantised test sets) give an interval of
    zero width that measures no uncertainty: inconclusive, like ``n < 2``.
    """
    if r.n >= 2 and r.ci.sd > 0 and math.isfinite(r.ci.low) and math.isfinite(r.ci.high):
        if r.ci.low > 0:
            return AGREES
        if r.ci.high < 0:
            return CONTRADICTS
    return INCONCLUSIVE


def _p(p: float) -> str:
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _numbers(r: PairedComparison, level: float) -> str:
    if r.n < 2:
        return f"{fmt_pct(r.mean_diff, signed=True)} pp, n = {r.n} paired seed(s): no interval"
    dz = f"d_z = {fmt_num(r.d_z)}" if r.ci.sd > 1e-12 else "all differences equal"
    return (
        f"{fmt_pct(r.mean_diff, signed=True)} pp, {round(100 * level)}% CI {fmt_ci(r.ci, signed=True)}, "
        f"n = {r.n}; {_p(r.p_t)} (t), {_p(r.p_w)} (Wilcoxon); {dz}"
    )


def _verdict_text(v: str, r: PairedComparison) -> str:
    return f"{v} (n = {r.n})" if v == INCONCLUSIVE else v


def _matches(block: tuple[str, str, str], patterns: Sequence[str]) -> bool:
    task, data, _ = block
    return any(p == task or p == f"{task}/{data}" for p in patterns)


def _contrast(t: Contrast, block: tuple[str, str, str], cells: list[Cell], level: float) -> Finding:
    where = block_title(block)
    (a, why_a), (b, why_b) = t.a.find(cells), t.b.find(cells)
    missing = [w for w in (why_a, why_b) if w]
    if len(missing) == 2 and all(w.startswith("no runs of ") for w in missing):
        missing = [f"{missing[0]}, {missing[1][len('no runs of ') :]}"]
    if a is not None and b is not None:
        xa, xb = seed_values(a, t.metric), seed_values(b, t.metric)
        missing += [f"no completed runs with {t.metric} of {s.label}" for s, x in ((t.a, xa), (t.b, xb)) if not x]
        if not missing:
            r = paired_comparison(xa, xb, level)
            v = verdict_of(r)
            chosen = "; ".join(f"{s.label}: {cell_label(c)}" for s, c in ((t.a, a), (t.b, b)) if isinstance(s, Best))
            chosen = f" ({chosen})" if chosen else ""
            what = "" if t.metric == "test/acc" else f"{METRIC_NAMES.get(t.metric, t.metric)}: "
            diff = f"{what}{cell_label(a)} − {cell_label(b)}"
            text = f"{where}: {diff} = {_numbers(r, level)}{chosen}: {_verdict_text(v, r)}"
            return Finding(t.label, block, v, text, r)
    return Finding(t.label, block, NOT_TESTED, f"{where}: not tested: {'; '.join(missing)}")


def _trend(t: Trend, block: tuple[str, str, str], cells: list[Cell], level: float) -> Finding:
    where = block_title(block)
    found = [(s, *s.find(cells)) for s in t.cells]
    have = [(s, c, seed_values(c, t.metric)) for s, c, _ in found if c is not None]
    have = [h for h in have if h[2]]
    absent = [s.label for s in t.cells if s not in {h[0] for h in have}]
    if len(have) < 3:
        return Finding(t.label, block, NOT_TESTED, f"{where}: not tested: no runs of {', '.join(absent)}")
    steps = [paired_comparison(x1, x0, level) for (_, _, x0), (_, _, x1) in itertools.pairwise(have)]
    ends = paired_comparison(have[-1][2], have[0][2], level)
    means = " → ".join(f"{s.label} {fmt_pct(sum(x.values()) / len(x))}" for s, _, x in have)
    up = sum(1 for r in steps if r.mean_diff > 0)
    step_text = ", ".join(f"{fmt_pct(r.mean_diff, signed=True)} {fmt_ci(r.ci, signed=True)}" for r in steps)
    falls = any(verdict_of(r) == CONTRADICTS for r in steps)
    end_v = verdict_of(ends)
    v = CONTRADICTS if end_v == CONTRADICTS or falls else AGREES if end_v == AGREES else INCONCLUSIVE
    text = (
        f"{where}: means (%) {means}; {up} of {len(steps)} steps up (Δ pp, CI: {step_text}); last − first = "
        f"{_numbers(ends, level)}: {_verdict_text(v, ends)}"
    )
    if absent:
        text += f" (no runs of {', '.join(absent)})"
    return Finding(t.label, block, v, text, ends, steps)


def _overall(verdicts: Sequence[str]) -> str:
    tested = [v for v in verdicts if v != NOT_TESTED]
    k, j = tested.count(AGREES), tested.count(CONTRADICTS)
    if not tested:
        return NOT_TESTED
    if k == len(tested):
        return AGREES
    if j == len(tested):
        return CONTRADICTS
    if k and j:
        return "mixed"
    return "partly agrees" if k else "partly contradicts" if j else INCONCLUSIVE


def _count_line(label: str, findings: Sequence[Finding]) -> str:
    verdicts = [f.verdict for f in findings]
    tested = [v for v in verdicts if v != NOT_TESTED]
    if not tested:
        return f"{label}: not tested"
    parts = [f"agrees on {tested.count(AGREES)} of {len(tested)} data sets"]
    parts += [f"{w} on {tested.count(w)}" for w in (CONTRADICTS, INCONCLUSIVE) if tested.count(w)]
    if len(tested) < len(verdicts):
        parts.append(f"not tested on {len(verdicts) - len(tested)}")
    return f"{label}: {', '.join(parts)}"


def evaluate_claim(claim: Claim, study: Study, level: float = 0.95) -> ClaimResult:
    """Every test of ``claim`` in every matching block of ``study``."""
    blocks = study.blocks()
    findings: list[Finding] = []
    summary: list[str] = []
    for t in claim.tests:
        patterns = t.blocks or claim.blocks
        mine = [b for b in blocks if _matches(b, patterns)]
        if not mine:
            cells = t.cells if isinstance(t, Trend) else (t.a, t.b)
            names = ", ".join(c.label for c in cells)
            text = f"not tested: no runs of {names} in {' or '.join(patterns)}"
            got = [Finding(t.label, None, NOT_TESTED, text)]
        elif isinstance(t, Trend):
            got = [_trend(t, b, blocks[b], level) for b in mine]
        else:
            got = [_contrast(t, b, blocks[b], level) for b in mine]
        findings += got
        summary.append(_count_line(t.label, got))
    with_p = [f for f in findings if f.comparison is not None]
    pt = holm([f.comparison.p_t for f in with_p])
    pw = holm([f.comparison.p_w for f in with_p])
    for f, a, w in zip(with_p, pt, pw, strict=True):
        f.comparison = replace(f.comparison, p_t_holm=a, p_w_holm=w)
    return ClaimResult(claim, findings, _overall([f.verdict for f in findings]), summary)


def evaluate_claims(study: Study, level: float = 0.95, claims: Sequence[Claim] = CLAIMS) -> list[ClaimResult]:
    """Every claim of ``claims`` tested on ``study`` (claims without runs say ``not tested``; none is dropped)."""
    return [evaluate_claim(c, study, level) for c in claims]


# ============================================================================================ extra tables
def _blocks_of(study: Study, claim: Claim) -> dict[tuple[str, str, str], list[Cell]]:
    return {b: cells for b, cells in study.blocks().items() if _matches(b, claim.blocks)}


def _mean_ci_text(values: dict[int, float], level: float) -> tuple[str, str]:
    ci = mean_ci(list(values.values()), level)
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
                r = paired_comparison(vals, base, level)
                diff = f"{fmt_pct(r.mean_diff, signed=True)} {fmt_ci(r.ci, signed=True)}"
                verdict = verdict_of(r)
            rows.append([block_title(block), pool_name(c.pool), str(len(vals)), mean, ci])
            rows[-1] += [fmt_int(_params(c).get("pool")), diff, verdict]
    if not rows:
        return None
    pc = round(100 * level)
    return Table(
        name=f"claim-{claim.key.lower()}-modes",
        caption=f"{claim.key}: hybrid mixing modes: test accuracy (%, mean and {pc}% CI over seeds), the pool's "
        f"own parameters, and the paired difference to scalar mixing (pp, {pc}% CI) with its verdict.",
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
        f"and the train−test gap (pp, mean and {pc}% CI over seeds).",
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
        "over seeds) per pool: a small drop means the pool does not depend on where features are.",
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
