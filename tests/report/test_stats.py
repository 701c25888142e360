"""hybridpool.report.stats against values computed by hand (the arithmetic is written next to each check).

Reference quantiles from printed t tables: t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,4} = 2.776.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from hybridpool.report.stats import (
    EXACT_MAX_N,
    PERMUTATION_RESAMPLES,
    bootstrap_mean_ci,
    cohens_dz,
    hedges_correction,
    holm,
    holm_family,
    mean_ci,
    min_sign_flip_p,
    paired_comparison,
    paired_t_test,
    sign_flip_test,
    significant,
    t_quantile,
    unit_interval,
    wilcoxon_signed_rank_exact,
)

ACC = [0.80, 0.82, 0.84, 0.86, 0.88]


def test_t_quantiles_match_printed_tables_and_the_df2_closed_form():
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=5e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.776, abs=5e-4)
    # df = 2 has a closed form: t = (2u - 1) / sqrt(2 u (1 - u)), u = 0.975 -> 0.95 / sqrt(0.04875) = 4.30265
    assert t_quantile(0.95, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)
    with pytest.raises(ValueError, match="level"):
        t_quantile(1.5, 3)


def test_mean_ci_of_five_seeds_by_hand():
    # mean 0.84; deviations +-0.04, +-0.02, 0 -> SS = 2 (0.0016 + 0.0004) = 0.004; s^2 = 0.004 / 4 = 0.001
    # s = 0.0316228, sem = s / sqrt(5) = 0.0141421; half-width = 2.776445 * 0.0141421 = 0.0392641
    ci = mean_ci(ACC)
    assert ci.n == 5
    assert ci.mean == pytest.approx(0.84, abs=1e-12)
    assert ci.sd == pytest.approx(math.sqrt(0.001), rel=1e-9)
    assert ci.sem == pytest.approx(0.0141421, rel=1e-5)
    assert ci.low == pytest.approx(0.84 - 0.0392641, abs=2e-6)
    assert ci.high == pytest.approx(0.84 + 0.0392641, abs=2e-6)
    assert ci.half_width == pytest.approx(0.0392641, abs=2e-6)
    assert ci.note == ""


def test_mean_ci_says_when_there_is_no_interval():
    one = mean_ci([0.9])
    assert one.mean == 0.9 and math.isnan(one.low) and math.isnan(one.high)
    assert one.note == "n=1: no interval"
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean) and none.note == "no runs"
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.8, float("nan")])


def test_paired_t_test_df2_closed_form():
    # d = [1, 2, 3]: mean 2, s = 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 = 3.4641, df = 2
    # for df = 2, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2) = 1 - 3.4641 / sqrt 14 = 0.0741799
    t, df, p = paired_t_test([1.0, 2.0, 3.0])
    assert t == pytest.approx(2 * math.sqrt(3), rel=1e-12)
    assert df == 2
    assert p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-9)
    assert p == pytest.approx(0.0741799, abs=1e-7)


def test_paired_comparison_of_five_seeds_by_hand():
    # x - baseline = [0.01, 0.02, 0.03, 0.04, 0.05]: mean 0.03, s = 0.0158114 (= 0.01 sqrt 2.5)
    # t = 0.03 / (0.0158114 / sqrt 5) = 3 sqrt 2 = 4.2426407, df = 4
    # df = 4: F(t) = 1/2 + 3/8 * t / sqrt(1 + t^2/4) * (1 - t^2 / (12 (1 + t^2/4)));
    #   t^2 = 18, 1 + t^2/4 = 5.5: F - 1/2 = 0.375 * 1.8090681 * (1 - 3.2727273 / 12) = 0.4933822 -> p = 0.0132356
    # CI: 0.03 +- 2.776445 * 0.0070711 = [0.0103676, 0.0496324]
    # d_z = 0.03 / 0.0158114 = 6 / sqrt 10 = 1.8973666; Hedges J = 1 - 3 / (4 * 4 - 1) = 0.8 -> g_z = 1.5178933
    # Wilcoxon: all five positive -> W+ = 1 + 2 + 3 + 4 + 5 = 15; P(W+ >= 15) = 1 / 2^5 -> p = 2 / 32 = 0.0625
    base = {s: v for s, v in enumerate(ACC)}
    x = {s: v + d for s, (v, d) in enumerate(zip(ACC, [0.01, 0.02, 0.03, 0.04, 0.05], strict=True))}
    r = paired_comparison(x, base)
    assert r.seeds == (0, 1, 2, 3, 4) and r.n == 5
    assert r.mean_diff == pytest.approx(0.03, abs=1e-12)
    assert r.t == pytest.approx(3 * math.sqrt(2), rel=1e-9)
    assert r.df == 4
    assert r.p_t == pytest.approx(0.0132356, abs=1e-7)
    assert r.ci.low == pytest.approx(0.0103676, abs=1e-6)
    assert r.ci.high == pytest.approx(0.0496324, abs=1e-6)
    assert r.d_z == pytest.approx(6 / math.sqrt(10), rel=1e-9)
    assert r.g_z == pytest.approx(0.8 * 6 / math.sqrt(10), rel=1e-9)
    assert r.w_plus == 15 and r.n_w == 5
    assert r.p_w == pytest.approx(0.0625, abs=1e-15)
    # sign-flip, exact over 2^5 = 32 patterns: only all-plus and all-minus reach |sum| = 0.15 -> p = 2 / 32
    assert r.perm_method == "exact" and r.perm_patterns == 32 and r.p_perm == pytest.approx(0.0625)
    assert r.n_zero == 0 and r.significant is None  # decided only within a family (holm_family)
    assert r.notes == ()


def test_paired_comparison_uses_shared_seeds_and_says_which_are_not_paired():
    r = paired_comparison({0: 0.9, 1: 0.8, 2: 0.7, 7: 0.5}, {0: 0.8, 1: 0.7, 2: 0.7, 3: 0.1})
    assert r.seeds == (0, 1, 2) and r.n == 3
    assert "units [7] have no baseline run" in r.note
    assert "zero difference" in r.note  # seed 2: 0.7 - 0.7 is dropped by the signed-rank test
    single = paired_comparison({0: 0.9}, {0: 0.8})
    assert single.n == 1 and math.isnan(single.p_t) and math.isnan(single.d_z) and "no test" in single.note


def test_wilcoxon_exact_small_cases_by_hand():
    # one negative difference with the smallest |d|: ranks 1..5, W+ = 2 + 3 + 4 + 5 = 14
    # sums >= 14 of subsets of {1..5}: 15 (all) and 14 (all but 1) -> 2 / 32; two-sided p = 4 / 32 = 0.125
    assert wilcoxon_signed_rank_exact([-1, 2, 3, 4, 5]) == (14.0, 0.125, 5)
    # ties: |d| = 1, 1, 2 -> mid-ranks 1.5, 1.5, 3; W+ = 1.5 + 3 = 4.5
    # the 8 sign patterns give W+ = 0, 1.5, 1.5, 3, 3, 4.5, 4.5, 6 -> P(W+ >= 4.5) = 3/8 -> p = 0.75
    assert wilcoxon_signed_rank_exact([-1, 1, 2]) == (4.5, 0.75, 3)
    # a zero difference is dropped: [1, 2, 3] remain, W+ = 6 = maximum -> p = 2 / 8 = 0.25
    assert wilcoxon_signed_rank_exact([0, 1, 2, 3]) == (6.0, 0.25, 3)
    w, p, n = wilcoxon_signed_rank_exact([0.0, 0.0])
    assert n == 0 and math.isnan(w) and math.isnan(p)


@pytest.mark.parametrize("seed", range(5))
def test_wilcoxon_exact_agrees_with_scipy_without_ties(seed):
    d = np.random.default_rng(seed).normal(0.3, 1.0, size=9)
    w, p, _ = wilcoxon_signed_rank_exact(d)
    ref = st.wilcoxon(d, method="exact", alternative="two-sided")
    ranks = st.rankdata(np.abs(d))
    assert w == pytest.approx(ranks[d > 0].sum())
    assert p == pytest.approx(ref.pvalue, rel=1e-12)


def test_cohens_dz_and_hedges():
    assert cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)  # mean 2 / s 1
    assert math.isnan(cohens_dz([1.0, 1.0]))  # s = 0
    assert hedges_correction(4) == pytest.approx(0.8)  # 1 - 3 / 15
    assert hedges_correction(2) == pytest.approx(1 - 3 / 7)


def test_holm_by_hand():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # nan does not count: m = 2 -> 0.01 * 2 = 0.02, 0.04 * 1 = 0.04
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 0.6 * 2 capped at 1, and monotone
    assert holm([]) == []


# ============================================================================================ sign-flip test
def test_sign_flip_exact_small_cases_by_hand():
    # d = [1, 2, 3]: the 8 signed sums are +-6, +-4, +-2, 0, 0; |sum| >= 6 for all-plus and all-minus -> 2/8
    r = sign_flip_test([1.0, 2.0, 3.0])
    assert (r.p, r.method, r.patterns, r.count) == (0.25, "exact", 8, 2)
    # d = [1, -2, 3]: observed |sum| = 2; the |sums| are 6, 4, 2, 0, 0, 2, 4, 6 -> 6 of 8 reach 2
    assert sign_flip_test([1.0, -2.0, 3.0]).p == pytest.approx(0.75)
    # ties: d = [1, 1, 1, -1], observed 2; k plus signs give 2k - 4 with counts 1, 4, 6, 4, 1 (k = 0..4);
    # |2k - 4| >= 2 for k = 0, 1, 3, 4 -> (1 + 4 + 4 + 1) / 16 = 0.625
    assert sign_flip_test([1.0, 1.0, 1.0, -1.0]).p == pytest.approx(10 / 16)
    # a zero difference changes no sum: [0, 1, 2, 3] -> every pattern of [1, 2, 3] twice -> 4 / 16
    assert sign_flip_test([0.0, 1.0, 2.0, 3.0]).p == pytest.approx(0.25)
    # float32 residues do not break exact ties: 0.1 + 0.2 vs 0.3 in float32
    f = [float(np.float32(0.3)), -float(np.float32(0.1)), -float(np.float32(0.2))]
    assert sign_flip_test(f).p == pytest.approx(1.0)  # observed sum 0: every pattern is as extreme


@pytest.mark.parametrize("n", [4, 7, 10, 12])
def test_sign_flip_exact_agrees_with_scipy_permutation_test(n):
    d = np.random.default_rng(n).normal(0.3, 1.0, size=n)
    ref = st.permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
        vectorized=True,
    )
    assert sign_flip_test(d).p == pytest.approx(ref.pvalue, rel=1e-12)


def test_sign_flip_monte_carlo_beyond_twenty_units():
    d = np.random.default_rng(3).normal(0.25, 1.0, size=22)
    exact = sign_flip_test(d, exact_max_n=22)  # 2^22 patterns: the reference
    mc = sign_flip_test(d)
    assert exact.method == "exact" and mc.method == "monte carlo" and mc.patterns == PERMUTATION_RESAMPLES
    assert mc.p == (mc.count + 1) / (PERMUTATION_RESAMPLES + 1)
    assert abs(mc.p - exact.p) < 4 * math.sqrt(exact.p * (1 - exact.p) / PERMUTATION_RESAMPLES)
    assert sign_flip_test(d).p == mc.p  # seeded: the same draw every time
    assert sign_flip_test(d, seed=1).p != mc.p
    assert EXACT_MAX_N == 20


def test_the_sign_flip_test_can_reject_at_ten_and_thirty_units():
    # ten distinct positive differences: only the identity and its mirror reach the observed sum -> 2 / 2^10
    ten = sign_flip_test(np.linspace(0.001, 0.01, 10))
    assert ten.p == pytest.approx(2 / 1024) == min_sign_flip_p(10)
    assert ten.p < 0.05 / 12  # even after Holm over a dozen comparisons
    # thirty units: Monte Carlo; no random pattern of 30 signs reaches all-plus -> (0 + 1) / (100,000 + 1)
    thirty = sign_flip_test(np.linspace(0.001, 0.01, 30))
    assert thirty.count == 0 and thirty.p == pytest.approx(1 / (PERMUTATION_RESAMPLES + 1)) == min_sign_flip_p(30)
    # for comparison: five units can never go below 2 / 32 = 0.0625
    assert min_sign_flip_p(5) == pytest.approx(0.0625) and min_sign_flip_p(5) > 0.05


def test_zero_differences_and_one_unit():
    zeros = sign_flip_test([0.0] * 10)
    assert zeros.p == 1.0  # sum 0: every pattern is as extreme
    t, df, p = paired_t_test([0.0] * 10)
    assert math.isnan(t) and df == 9 and math.isnan(p)
    r = paired_comparison(dict.fromkeys(range(10), 0.5), dict.fromkeys(range(10), 0.5))
    assert r.n_zero == 10 and r.p_perm == 1.0 and math.isnan(r.p_t) and math.isnan(r.p_w) and r.n_w == 0
    assert "all differences equal" in r.note
    with pytest.raises(ValueError, match="at least 2"):
        sign_flip_test([0.01])
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_mean_ci([0.01])
    single = paired_comparison({0: 0.9}, {0: 0.8})
    assert single.n == 1 and math.isnan(single.p_perm) and "no test" in single.note


def test_a_zero_variance_difference_is_never_significant():
    # every unit one test image (1/272) better, stored as float32: t undefined, sign-flip p = 2 / 2^n
    base = {s: float(np.float32((200 + s) / 272)) for s in range(10)}
    up = {s: float(np.float32((201 + s) / 272)) for s in range(10)}
    r = holm_family([paired_comparison(up, base)])[0]
    assert math.isnan(r.t) and math.isnan(r.d_z) and r.p_perm == pytest.approx(2 / 1024)
    assert r.significant is False and r.ci.high - r.ci.low < 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_paired_t_test_agrees_with_scipy_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.8, 0.02, 10)
    y = x + rng.normal(0.01, 0.01, 10)
    t, df, p = paired_t_test(y - x)
    ref = st.ttest_rel(y, x)
    assert t == pytest.approx(ref.statistic, rel=1e-10) and p == pytest.approx(ref.pvalue, rel=1e-10) and df == 9


# ============================================================================================ intervals
def test_bootstrap_percentile_by_hand_and_seeded():
    # [0, 1]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: quantiles 0.025 -> 0, 0.975 -> 1
    b = bootstrap_mean_ci([0.0, 1.0])
    assert (b.low, b.high, b.levels, b.resamples) == (0.0, 1.0, 1, 10_000)
    x = np.random.default_rng(0).normal(0, 1, 12)
    assert bootstrap_mean_ci(x) == bootstrap_mean_ci(x)  # seeded
    # with many values it is close to the t-interval
    y = np.random.default_rng(1).normal(0, 1, 400)
    t = mean_ci(y)
    bb = bootstrap_mean_ci(y)
    assert bb.low == pytest.approx(t.low, abs=0.02) and bb.high == pytest.approx(t.high, abs=0.02)


def test_the_two_level_bootstrap_puts_the_split_variance_inside_the_interval():
    # split A: ten units at 0.80, split B: ten at 0.84 (plus tiny noise): the splits disagree by 4 pp
    rng = np.random.default_rng(0)
    values = {("A", s): 0.80 + rng.normal(0, 1e-4) for s in range(10)}
    values |= {("B", s): 0.84 + rng.normal(0, 1e-4) for s in range(10)}
    x = list(values.values())
    clusters = [k[0] for k in values]
    one = bootstrap_mean_ci(x)
    two = bootstrap_mean_ci(x, clusters=clusters)
    # two levels: a resample draws (A, A), (A, B), (B, A) or (B, B): its mean is ~0.80, ~0.82 or ~0.84, each
    # (A, A) and (B, B) with probability 1/4 > 2.5%: the interval runs from ~0.80 to ~0.84
    assert two.levels == 2 and two.n_clusters == 2
    assert two.low == pytest.approx(0.80, abs=1e-3) and two.high == pytest.approx(0.84, abs=1e-3)
    assert one.high - one.low < 0.5 * (two.high - two.low)  # units alone hide the split's variance
    ci = unit_interval(values, cluster_of=lambda k: k[0])
    assert ci.method == "two-level bootstrap" and ci.n_splits == 2
    assert (ci.low, ci.high) == (two.low, two.high) and ci.t_high - ci.t_low < ci.high - ci.low
    plain = unit_interval(values)  # no clusters: the t-interval
    assert plain.method == "t" and (plain.low, plain.high) == (plain.t_low, plain.t_high)
    with pytest.raises(ValueError, match="one split per value"):
        bootstrap_mean_ci(x, clusters=clusters[:3])


def test_the_decision_rule_needs_both_tests_after_holm():
    assert significant(0.01, 0.02) and not significant(0.01, 0.06) and not significant(0.06, 0.01)
    assert not significant(float("nan"), 0.001)
    rng = np.random.default_rng(0)
    strong = {s: 0.01 + rng.normal(0, 0.002) for s in range(10)}
    weak = {s: 0.002 + rng.normal(0, 0.004) for s in range(10)}
    zero = dict.fromkeys(range(10), 0.0)
    fam = holm_family([paired_comparison(strong, zero), paired_comparison(weak, zero)])
    assert fam[0].significant and fam[0].p_perm_holm == pytest.approx(2 * fam[0].p_perm)
    assert fam[0].p_t_holm == pytest.approx(max(2 * fam[0].p_t, 0.0))
    assert fam[1].significant is False and fam[1].p_t_holm >= fam[1].p_t
