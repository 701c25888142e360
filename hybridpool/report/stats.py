"""Statistics of the study: means with confidence intervals, paired comparisons, Holm, the decision rule.

Pure functions of numbers (numpy + scipy's t distribution); nothing here knows about runs or files.

Conventions:

- A *unit* is one replicate of a cell: a (data split, seed) pair for the fine-grained sets (``Unit`` in
  :mod:`.runs`), a seed elsewhere. Functions here take ``{key: value}`` dicts whose keys are any sortable,
  hashable units; ``cluster_of(key)`` (optional) names the data split a unit belongs to.
- *t-interval*: ``mean +/- t_{1-a/2, n-1} * s / sqrt(n)`` over all units, ``s`` with ``ddof=1``. With ``n = 1``
  there is no interval (``low``/``high`` are ``nan`` and ``note`` says so).
- *Bootstrap interval* (:func:`bootstrap_mean_ci`): percentile interval of the mean over ``B = 10,000`` seeded
  resamples (seed 0 unless given). With one data split (or none recorded) the units are resampled with
  replacement; with two or more splits the resampling has two levels: the splits are drawn with replacement, then
  the units (seeds) within each drawn split, so the variation between splits is inside the interval.
- *The reported interval* of a cell mean or a paired difference (:func:`unit_interval`): the t-interval, and where
  the units come from two or more splits, whichever of the t-interval and the two-level bootstrap interval is wider
  (``method`` says which; both are kept in the result).
- *Paired comparison* (:func:`paired_comparison`): the per-unit differences ``d_i = x_i - baseline_i`` over the
  units present in both cells. Tests of ``mean(d) = 0``:

  - the paired t-test (``t = mean / (s / sqrt n)``, ``n - 1`` df);
  - the paired sign-flip permutation test of the mean (:func:`sign_flip_test`): under the null every sign pattern of
    ``d`` is equally likely; two-sided ``p = #{patterns: |sum(s d)| >= |sum(d)|} / #patterns``, over all ``2^n``
    patterns for ``n <= 20`` (exact), else over ``100,000`` seeded random patterns with
    ``p = (count + 1) / (N + 1)``;
  - supplementary, not part of any decision: the exact Wilcoxon signed-rank test (all ``2^n`` sign patterns,
    mid-ranks for ties, zero differences dropped).

- *Decision rule* (:func:`significant`): a comparison is significant at ``alpha`` when the paired t-test and the
  sign-flip test both reject after Holm's correction within the family (a claim, or one dataset's comparisons
  with the baseline). Identical differences on every unit (``sd = 0``) leave the t-test undefined: never
  significant.
- Ties: differences within ``TIE_TOL = 1e-7`` of each other (or of 0) are equal (or zero). The records hold
  float32 metrics, whose rounding of a value in [0, 1] is below 6e-8, while one test image moves an accuracy by
  1/n (1e-4 for 10,000 images): two pools right on the same number of images differ by exactly 0 images, not by a
  rounding residue. A comparison whose differences are all equal in this sense has ``sd = 0``.
- Effect size: Cohen's ``d_z = mean(d) / sd(d)``; Hedges' ``g_z = J * d_z``, ``J = 1 - 3 / (4 (n - 1) - 1)``.
- Holm's step-down method controls the family-wise error rate without assumptions on the dependence of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats as _st

__all__ = [
    "ALPHA",
    "BOOTSTRAP_RESAMPLES",
    "EXACT_MAX_N",
    "PERMUTATION_RESAMPLES",
    "TIE_TOL",
    "BootstrapCI",
    "MeanCI",
    "PairedComparison",
    "SignFlipResult",
    "bootstrap_mean_ci",
    "cohens_dz",
    "hedges_correction",
    "holm",
    "holm_family",
    "mean_ci",
    "min_sign_flip_p",
    "paired_comparison",
    "paired_t_test",
    "sign_flip_test",
    "significant",
    "t_quantile",
    "unit_interval",
    "wilcoxon_signed_rank_exact",
]

ALPHA = 0.05
EXACT_MAX_N = 20  # exact enumeration of all 2^n sign patterns up to this n (2^20 = 1,048,576 sums)
PERMUTATION_RESAMPLES = 100_000  # random sign patterns beyond EXACT_MAX_N
BOOTSTRAP_RESAMPLES = 10_000
SEED = 0
TIE_TOL = 1e-7  # differences closer than this are equal: float32 rounding of metrics in [0, 1] is below 6e-8


def _constant(a: np.ndarray) -> bool:
    """All values equal within :data:`TIE_TOL` (so the sample standard deviation measures only rounding)."""
    return a.size >= 2 and float(np.ptp(a)) <= TIE_TOL


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
    """Mean of a sample with its reported two-sided confidence interval.

    Attributes:
        n: sample size. mean: sample mean (``nan`` for ``n = 0``). sd: sample standard deviation (ddof=1;
        ``nan`` for ``n < 2``). sem: ``sd / sqrt(n)``. low, high: the reported interval (``nan`` for ``n < 2``).
        level: confidence level. t_crit: the t quantile used. note: why there is no interval, or ``""``.
        method: ``"t"`` or ``"two-level bootstrap"`` (which interval ``low``/``high`` are).
        t_low, t_high: the t-interval (equal to ``low``/``high`` when ``method == "t"``).
        boot_low, boot_high: the bootstrap interval when one was computed, else ``nan``.
        n_splits: the number of data splits the units come from (0: not recorded).
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
    method: str = "t"
    t_low: float = math.nan
    t_high: float = math.nan
    boot_low: float = math.nan
    boot_high: float = math.nan
    n_splits: int = 0

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
    lo, hi = mean - t * sem, mean + t * sem
    return MeanCI(n, mean, sd, sem, lo, hi, level, t, "", "t", lo, hi)


# ============================================================================================ bootstrap
@dataclass(frozen=True)
class BootstrapCI:
    """A percentile bootstrap interval of a mean: ``low``, ``high``, ``resamples``, ``seed``, ``levels`` (1: units
    resampled; 2: splits, then units within them) and ``n_clusters`` (splits)."""

    low: float
    high: float
    level: float
    resamples: int
    seed: int
    levels: int
    n_clusters: int


def bootstrap_mean_ci(
    x: Sequence[float] | np.ndarray,
    level: float = 0.95,
    clusters: Sequence[Hashable] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``mean(x)``, ``x: (n,)``, over ``resamples`` seeded resamples.

    ``clusters: (n,)`` names each value's data split. With two or more distinct clusters the resampling has two
    levels: draw as many splits as there are, with replacement; within each drawn split, draw as many of its units
    as it has, with replacement; the resample's mean is the mean over all drawn units. Otherwise the units are
    resampled with replacement (one level). The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled means (numpy's linear interpolation).

    Raises ``ValueError`` for ``n < 2`` (a bootstrap of one value says nothing) or clusters of the wrong length.
    """
    a = _as_1d(x, "x")
    n = int(a.size)
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    labels = list(clusters) if clusters is not None else [None] * n
    if len(labels) != n:
        raise ValueError(f"clusters must name one split per value: {len(labels)} labels for {n} values")
    groups: dict[Hashable, list[float]] = {}
    for v, g in zip(a.tolist(), labels, strict=True):
        groups.setdefault(g, []).append(v)
    if len(groups) >= 2:
        vals = [np.asarray(v) for v in groups.values()]
        g_count = len(vals)
        pick = rng.integers(0, g_count, size=(resamples, g_count))
        sums = np.zeros(resamples)
        counts = np.zeros(resamples)
        for j in range(g_count):  # position j of the drawn splits
            for g, v in enumerate(vals):
                within = v[rng.integers(0, v.size, size=(resamples, v.size))].sum(axis=1)
                chosen = pick[:, j] == g
                sums[chosen] += within[chosen]
                counts[chosen] += v.size
        means = sums / counts
        levels = 2
    else:
        means = a[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        levels = 1
    lo, hi = np.quantile(means, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return BootstrapCI(float(lo), float(hi), level, resamples, seed, levels, len(groups))


def unit_interval(
    values: Mapping[Hashable, float],
    level: float = 0.95,
    cluster_of: Callable[[Hashable], Hashable | None] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> MeanCI:
    """The reported interval of the mean of ``values: {unit: value}``.

    The t-interval over all units; where ``cluster_of`` puts the units in two or more data splits, also the
    two-level bootstrap interval (:func:`bootstrap_mean_ci`), and the wider of the two is reported (``method``).
    Units whose split is ``None`` (not recorded, or the split follows the seed) count as one split.
    """
    keys = sorted(values, key=_sort_key)
    x = [values[k] for k in keys]
    ci = mean_ci(x, level)
    splits = [cluster_of(k) if cluster_of is not None else None for k in keys]
    distinct = {s for s in splits if s is not None}
    n_splits = len(distinct)
    ci = replace(ci, n_splits=n_splits)
    if ci.n < 2 or n_splits < 2:
        return ci
    boot = bootstrap_mean_ci(x, level, clusters=splits, resamples=resamples, seed=seed)
    out = replace(ci, boot_low=boot.low, boot_high=boot.high)
    if boot.high - boot.low > ci.t_high - ci.t_low + TIE_TOL:
        out = replace(out, low=boot.low, high=boot.high, method="two-level bootstrap")
    return out


# ============================================================================================ tests
def paired_t_test(d: Sequence[float] | np.ndarray) -> tuple[float, int, float]:
    """Paired t-test of the differences ``d: (n,)`` against 0: ``(t, df, two-sided p)``.

    ``t = mean(d) / (sd(d) / sqrt(n))`` with ``df = n - 1``. Undefined (``nan``) for ``n < 2`` or when all
    differences are equal (within :data:`TIE_TOL`; ``sd = 0``).
    """
    a = _as_1d(d, "d")
    n = int(a.size)
    if n < 2:
        return math.nan, max(n - 1, 0), math.nan
    sd = float(a.std(ddof=1))
    if sd == 0.0 or _constant(a):
        return math.nan, n - 1, math.nan
    t = float(a.mean()) / (sd / math.sqrt(n))
    p = float(2.0 * _st.t.sf(abs(t), n - 1))
    return t, n - 1, min(p, 1.0)


@dataclass(frozen=True)
class SignFlipResult:
    """A sign-flip permutation test: two-sided ``p``, ``method`` (``exact`` | ``monte carlo``), ``patterns`` (sign
    patterns counted: ``2^n`` or the random draws), ``count`` (patterns at least as extreme), ``statistic``
    (``mean(d)``)."""

    p: float
    method: str
    patterns: int
    count: int
    statistic: float


def sign_flip_test(
    d: Sequence[float] | np.ndarray,
    resamples: int = PERMUTATION_RESAMPLES,
    seed: int = SEED,
    exact_max_n: int = EXACT_MAX_N,
) -> SignFlipResult:
    """Two-sided paired sign-flip permutation test of ``mean(d) = 0``, ``d: (n,)`` paired differences.

    Under the null hypothesis each difference is symmetric about 0, so each of the ``2^n`` sign patterns ``s`` is
    equally likely. A pattern is at least as extreme as the data when ``|sum(s * d)| >= |sum(d)|`` up to a tolerance
    of ``n * TIE_TOL + 1e-9 * sum|d|`` (the rounding of float32 metrics), so exact ties in real arithmetic count.

    - ``n <= exact_max_n``: every pattern is enumerated; ``p = count / 2^n`` (the identity and its mirror always
      count, so the smallest attainable ``p`` is ``2 / 2^n``: 0.00195 at ``n = 10``).
    - otherwise ``resamples`` patterns are drawn at random (``numpy.random.default_rng(seed)``) and
      ``p = (count + 1) / (resamples + 1)`` (the observed pattern counted once; smallest ``p`` ``1 / (N + 1)``).

    Zero differences contribute nothing to any sum; all-zero differences give ``p = 1``.
    Raises ``ValueError`` for ``n < 2``.
    """
    a = _as_1d(d, "d")
    n = int(a.size)
    if n < 2:
        raise ValueError(f"a sign-flip test needs at least 2 paired differences, got {n}")
    a = np.where(np.abs(a) <= TIE_TOL, 0.0, a)
    observed = abs(float(a.sum()))
    tol = n * TIE_TOL + 1e-9 * float(np.abs(a).sum())
    threshold = observed - tol
    if n <= exact_max_n:
        sums = np.zeros(1)
        for v in a:  # all 2^n signed sums by doubling
            sums = np.concatenate([sums + v, sums - v])
        count = int(np.count_nonzero(np.abs(sums) >= threshold))
        total = 1 << n
        return SignFlipResult(count / total, "exact", total, count, float(a.mean()))
    rng = np.random.default_rng(seed)
    count = 0
    left = resamples
    while left > 0:
        m = min(left, 20_000)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8).astype(float) * 2.0 - 1.0
        count += int(np.count_nonzero(np.abs(signs @ a) >= threshold))
        left -= m
    return SignFlipResult((count + 1) / (resamples + 1), "monte carlo", resamples, count, float(a.mean()))


def min_sign_flip_p(n: int, resamples: int = PERMUTATION_RESAMPLES, exact_max_n: int = EXACT_MAX_N) -> float:
    """The smallest p-value :func:`sign_flip_test` can give with ``n`` non-zero differences: ``2 / 2^n`` when exact,
    ``1 / (resamples + 1)`` by Monte Carlo."""
    if n < 2:
        return math.nan
    return 2.0 / 2.0**n if n <= exact_max_n else 1.0 / (resamples + 1)


def _midranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v`` with ties (values within :data:`TIE_TOL`) given the mean of the ranks they occupy."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=float)
    sv = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] - sv[i] <= TIE_TOL:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def wilcoxon_signed_rank_exact(d: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Exact two-sided Wilcoxon signed-rank test of the differences ``d: (n,)``: ``(W+, p, n_used)``.

    Zero differences (within :data:`TIE_TOL`) are dropped (Wilcoxon's method); the remaining ``|d|`` are
    ranked (mid-ranks for ties) and ``W+`` is the sum of the ranks of the positive differences. Under the null
    every sign pattern is equally likely, so the null distribution of ``W+`` is that of a random subset sum of the
    ranks; it is counted exactly by dynamic programming over doubled (integer) ranks, which handles ties without
    approximation.
    ``p = min(1, 2 * min(P(W+ <= w), P(W+ >= w)))``. ``nan`` when no non-zero difference is left.

    Example: five positive differences give ``W+ = 15`` and ``p = 2 / 2^5 = 0.0625``: with five seeds the
    signed-rank test can never reach ``p < 0.05``.
    """
    a = _as_1d(d, "d")
    a = a[np.abs(a) > TIE_TOL]
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
    if a.size < 2 or _constant(a):
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


def significant(p_t_holm: float, p_perm_holm: float, alpha: float = ALPHA) -> bool:
    """The decision rule: the paired t-test and the sign-flip test both reject at ``alpha`` after Holm."""
    return bool(math.isfinite(p_t_holm) and math.isfinite(p_perm_holm) and p_t_holm < alpha and p_perm_holm < alpha)


# ============================================================================================ paired comparison
@dataclass(frozen=True)
class PairedComparison:
    """A cell against another (the baseline), paired by unit.

    Attributes:
        seeds: the units present in both (sorted; seeds, or (split, seed) units). diffs: ``x - baseline`` per unit.
        n: number of units. n_zero: differences exactly 0. n_splits: data splits the units come from.
        mean_diff: mean of ``diffs``; ``ci``: its reported interval (:func:`unit_interval`).
        t, df, p_t: paired t-test. p_perm, perm_method, perm_patterns: sign-flip test.
        w_plus, p_w, n_w: exact Wilcoxon signed-rank (supplementary; ``n_w`` non-zero diffs).
        d_z: Cohen's d_z; g_z: Hedges-corrected d_z.
        p_t_holm, p_perm_holm, p_w_holm: Holm-adjusted within a family (``nan`` until :func:`holm_family`).
        significant: the decision rule after Holm (``None`` until :func:`holm_family`). alpha: its level.
        notes: caveats in words.
    """

    seeds: tuple
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
    p_perm: float = math.nan
    perm_method: str = ""
    perm_patterns: int = 0
    n_zero: int = 0
    n_splits: int = 0
    p_t_holm: float = math.nan
    p_w_holm: float = math.nan
    p_perm_holm: float = math.nan
    significant: bool | None = None
    alpha: float = ALPHA
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)

    @property
    def units(self) -> tuple:
        return self.seeds


def _sort_key(k: Hashable) -> tuple:
    sk = getattr(k, "sort_key", None)
    if callable(sk):
        return (1, sk())
    if isinstance(k, tuple):
        return (2, tuple((v is None, v if v is not None else 0) for v in k))
    return (0, k)


def _unit_text(k: Hashable) -> str:
    return str(k)


def paired_comparison(
    x: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    level: float = 0.95,
    cluster_of: Callable[[Hashable], Hashable | None] | None = None,
) -> PairedComparison:
    """Compare ``x`` with ``baseline``, both ``{unit: value}`` of finished runs, on the units they share.

    Units present in only one of the two are not used; the returned ``notes`` name them, so a missing unit
    is visible rather than silently dropped. ``cluster_of(unit)``: the unit's data split (for the interval).
    The Holm-adjusted p-values and the decision are filled in by :func:`holm_family`.
    """
    keys = sorted(set(x) & set(baseline), key=_sort_key)
    notes: list[str] = []
    only_x = sorted(set(x) - set(baseline), key=_sort_key)
    if only_x:
        names = ", ".join(_unit_text(k) for k in only_x)
        notes.append(f"units [{names}] have no baseline run and are not paired")
    d = np.array([x[k] - baseline[k] for k in keys], dtype=float)
    diffs = dict(zip(keys, d.tolist(), strict=True))
    ci = unit_interval(diffs, level, cluster_of)
    t, df, p_t = paired_t_test(d)
    w, p_w, n_w = wilcoxon_signed_rank_exact(d)
    dz = cohens_dz(d)
    g = dz * hedges_correction(d.size - 1) if d.size >= 2 else math.nan
    p_perm, method, patterns = math.nan, "", 0
    if d.size < 2:
        notes.append(f"n={d.size} paired unit(s): no test")
    else:
        flip = sign_flip_test(d)
        p_perm, method, patterns = flip.p, flip.method, flip.patterns
        if _constant(d):
            notes.append("all differences equal: t and d_z undefined, never significant")
    n_zero = int(np.count_nonzero(np.abs(d) <= TIE_TOL))
    if 0 < n_w < d.size:
        notes.append(f"{d.size - n_w} zero difference(s) dropped by the signed-rank test")
    return PairedComparison(
        seeds=tuple(keys),
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
        p_perm=p_perm,
        perm_method=method,
        perm_patterns=patterns,
        n_zero=n_zero,
        n_splits=ci.n_splits,
        notes=tuple(notes),
    )


def holm_family(comparisons: Sequence[PairedComparison], alpha: float = ALPHA) -> list[PairedComparison]:
    """``comparisons`` with Holm-adjusted p-values (t, sign-flip, Wilcoxon; each corrected over the family) and
    the decision of :func:`significant` filled in, in the order given."""
    pt = holm([c.p_t for c in comparisons])
    pp = holm([c.p_perm for c in comparisons])
    pw = holm([c.p_w for c in comparisons])
    return [
        replace(c, p_t_holm=a, p_perm_holm=b, p_w_holm=w, significant=significant(a, b, alpha), alpha=alpha)
        for c, a, b, w in zip(comparisons, pt, pp, pw, strict=True)
    ]
