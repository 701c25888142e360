"""Statistics of the study: means with confidence intervals, paired comparisons against a baseline, Holm.

Pure functions of numbers (numpy + scipy's t distribution); nothing here knows about runs or files.

Conventions:

- A *sample* is the final metric of one cell (dataset x pool x arm) over its seeds, e.g. five test accuracies.
- Intervals are two-sided Student-t intervals ``mean +/- t_{1-a/2, n-1} * s / sqrt(n)`` with the sample
  standard deviation ``s`` (``ddof=1``). With ``n = 1`` there is no interval: ``low``/``high`` are ``nan`` and
  ``note`` says so; callers print the note, not a fake interval.
- A *paired* comparison uses the per-seed differences ``d_i = x_i - baseline_i`` of seeds present (and finished)
  in both cells; the seeds share data splits and initialisation seeds, so the pairing removes seed-to-seed
  variance. Tests: the paired t-test on ``d`` and the Wilcoxon signed-rank test, computed exactly (the
  distribution of ``W+`` over all ``2^n`` sign patterns, mid-ranks for ties, zero differences dropped as in
  Wilcoxon's original method) so small samples get exact p-values, not a normal approximation.
- Effect size: Cohen's ``d_z = mean(d) / sd(d)`` (the standardised mean difference of paired data) and its
  small-sample correction, Hedges' ``g_z = J * d_z`` with ``J = 1 - 3 / (4 (n - 1) - 1)``.
- Multiple comparisons (every pool against the baseline, per dataset) are corrected with Holm's step-down
  method, which controls the family-wise error rate without assumptions on the dependence of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st

__all__ = [
    "MeanCI",
    "PairedComparison",
    "cohens_dz",
    "hedges_correction",
    "holm",
    "mean_ci",
    "paired_comparison",
    "paired_t_test",
    "t_quantile",
    "wilcoxon_signed_rank_exact",
]


def _as_1d(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got an array of shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must hold finite numbers only (drop failed runs first), got {a.tolist()}")
    return a


def t_quantile(level: float, df: int) -> float:
    """The two-sided critical value ``t_{(1 + level) / 2, df}`` (e.g. 2.776 for ``level=0.95, df=4``)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(_st.t.ppf(0.5 + level / 2.0, df))


@dataclass(frozen=True)
class MeanCI:
    """Mean of a sample with its two-sided t confidence interval.

    Attributes:
        n: sample size. mean: sample mean (``nan`` for ``n = 0``). sd: sample standard deviation (ddof=1;
        ``nan`` for ``n < 2``). sem: ``sd / sqrt(n)``. low, high: interval bounds (``nan`` for ``n < 2``).
        level: confidence level. t_crit: the t quantile used. note: why there is no interval, or ``""``.
    """

    n: int
    mean: float
    sd: float
    sem: float
    low: float
    high: float
    level: float = 0.95
    t_crit: float = math.nan
    note: str = ""

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0 if self.n >= 2 else math.nan


def mean_ci(x: Sequence[float] | np.ndarray, level: float = 0.95) -> MeanCI:
    """Mean and ``level`` t-interval of the values ``x: (n,)``.

    ``n = 1`` gives the value with ``low = high = nan`` and ``note = "n=1: no interval"``; ``n = 0`` gives
    ``mean = nan`` and ``note = "no runs"``.
    """
    a = _as_1d(x, "x")
    n = int(a.size)
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan, math.nan, math.nan, level, math.nan, "no runs")
    mean = float(a.mean())
    if n == 1:
        return MeanCI(1, mean, math.nan, math.nan, math.nan, math.nan, level, math.nan, "n=1: no interval")
    sd = float(a.std(ddof=1))
    sem = sd / math.sqrt(n)
    t = t_quantile(level, n - 1)
    return MeanCI(n, mean, sd, sem, mean - t * sem, mean + t * sem, level, t, "")


def paired_t_test(d: Sequence[float] | np.ndarray) -> tuple[float, int, float]:
    """Paired t-test of the differences ``d: (n,)`` against 0: ``(t, df, two-sided p)``.

    ``t = mean(d) / (sd(d) / sqrt(n))`` with ``df = n - 1``. Undefined (``nan``) for ``n < 2`` or when all
    differences are equal (``sd = 0``).
    """
    a = _as_1d(d, "d")
    n = int(a.size)
    if n < 2:
        return math.nan, max(n - 1, 0), math.nan
    sd = float(a.std(ddof=1))
    if sd == 0.0:
        return math.nan, n - 1, math.nan
    t = float(a.mean()) / (sd / math.sqrt(n))
    p = float(2.0 * _st.t.sf(abs(t), n - 1))
    return t, n - 1, min(p, 1.0)


def _midranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v`` with ties given the mean of the ranks they occupy."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=float)
    sv = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def wilcoxon_signed_rank_exact(d: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Exact two-sided Wilcoxon signed-rank test of the differences ``d: (n,)``: ``(W+, p, n_used)``.

    Zero differences are dropped (Wilcoxon's method); the remaining ``|d|`` are ranked (mid-ranks for ties)
    and ``W+`` is the sum of the ranks of the positive differences. Under the null every sign pattern is equally
    likely, so the null distribution of ``W+`` is that of a random subset sum of the ranks; it is counted exactly
    by dynamic programming over doubled (integer) ranks, which handles ties without approximation.
    ``p = min(1, 2 * min(P(W+ <= w), P(W+ >= w)))``. ``nan`` when no non-zero difference is left.

    Example: five positive differences give ``W+ = 15`` and ``p = 2 / 2^5 = 0.0625``: with five seeds the
    signed-rank test can never reach ``p < 0.05``.
    """
    a = _as_1d(d, "d")
    a = a[a != 0.0]
    n = int(a.size)
    if n == 0:
        return math.nan, math.nan, 0
    ranks2 = np.rint(2.0 * _midranks(np.abs(a))).astype(np.int64)  # mid-ranks are multiples of 1/2
    w2 = int(ranks2[a > 0].sum())
    total = int(ranks2.sum())
    counts = np.zeros(total + 1, dtype=object)  # exact integer counts, no float overflow for large n
    counts[0] = 1
    for r in ranks2:
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[: total + 1 - r]
        counts = counts + shifted
    n_patterns = 2**n
    lower = int(counts[: w2 + 1].sum())
    upper = int(counts[w2:].sum())
    p = min(1.0, 2.0 * min(lower, upper) / n_patterns)
    return w2 / 2.0, float(p), n


def cohens_dz(d: Sequence[float] | np.ndarray) -> float:
    """Cohen's ``d_z = mean(d) / sd(d)`` (ddof=1) of paired differences; ``nan`` for ``n < 2`` or ``sd = 0``."""
    a = _as_1d(d, "d")
    if a.size < 2:
        return math.nan
    sd = float(a.std(ddof=1))
    return float(a.mean()) / sd if sd > 0 else math.nan


def hedges_correction(df: int) -> float:
    """Hedges' small-sample factor ``J = 1 - 3 / (4 df - 1)`` (``df = n - 1`` for paired data)."""
    if df < 1:
        return math.nan
    return 1.0 - 3.0 / (4.0 * df - 1.0)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Sort the ``m`` finite p-values ascending, multiply the ``i``-th (0-based) by ``m - i``, take the running
    maximum and cap at 1. ``nan`` entries (tests that could not be run) stay ``nan`` and do not count in ``m``.
    """
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="mergesort")]
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out.tolist()


@dataclass(frozen=True)
class PairedComparison:
    """A cell against the baseline cell, paired by seed.

    Attributes:
        seeds: the seeds present in both (sorted). diffs: ``x - baseline`` per seed. n: ``len(seeds)``.
        mean_diff: mean of ``diffs`` with ``ci`` (a :class:`MeanCI` of the differences).
        t, df, p_t: paired t-test. w_plus, p_w, n_w: exact Wilcoxon signed-rank (``n_w`` non-zero diffs).
        d_z: Cohen's d_z; g_z: Hedges-corrected d_z. p_t_holm, p_w_holm: Holm-adjusted p-values (filled in
        by :func:`holm` over a family of comparisons; ``nan`` until then). note: caveats in words.
    """

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    n: int
    mean_diff: float
    ci: MeanCI
    t: float
    df: int
    p_t: float
    w_plus: float
    p_w: float
    n_w: int
    d_z: float
    g_z: float
    p_t_holm: float = math.nan
    p_w_holm: float = math.nan
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)


def paired_comparison(x: dict[int, float], baseline: dict[int, float], level: float = 0.95) -> PairedComparison:
    """Compare ``x`` with ``baseline``, both ``{seed: value}`` of finished runs, on the seeds they share.

    Seeds present in only one of the two are not used; the returned ``notes`` name them, so a missing seed
    is visible rather than silently dropped.
    """
    seeds = sorted(set(x) & set(baseline))
    notes: list[str] = []
    only_x = sorted(set(x) - set(baseline))
    if only_x:
        notes.append(f"seeds {only_x} have no baseline run and are not paired")
    d = np.array([x[s] - baseline[s] for s in seeds], dtype=float)
    ci = mean_ci(d, level)
    t, df, p_t = paired_t_test(d)
    w, p_w, n_w = wilcoxon_signed_rank_exact(d)
    dz = cohens_dz(d)
    g = dz * hedges_correction(d.size - 1) if d.size >= 2 else math.nan
    if d.size < 2:
        notes.append(f"n={d.size} paired seed(s): no test")
    elif float(d.std(ddof=1)) == 0.0:
        notes.append("all differences equal: t and d_z undefined")
    if 0 < n_w < d.size:
        notes.append(f"{d.size - n_w} zero difference(s) dropped by the signed-rank test")
    return PairedComparison(
        seeds=tuple(int(s) for s in seeds),
        diffs=tuple(float(v) for v in d),
        n=int(d.size),
        mean_diff=ci.mean,
        ci=ci,
        t=t,
        df=df,
        p_t=p_t,
        w_plus=w,
        p_w=p_w,
        n_w=n_w,
        d_z=dz,
        g_z=g,
        notes=tuple(notes),
    )
