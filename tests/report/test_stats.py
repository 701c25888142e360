"""hybridpool.report.stats against values computed by hand (the arithmetic is written next to each check).

Reference quantiles from printed t tables: t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,4} = 2.776.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from hybridpool.report.stats import (
    cohens_dz,
    hedges_correction,
    holm,
    mean_ci,
    paired_comparison,
    paired_t_test,
    t_quantile,
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
    assert r.notes == ()


def test_paired_comparison_uses_shared_seeds_and_says_which_are_not_paired():
    r = paired_comparison({0: 0.9, 1: 0.8, 2: 0.7, 7: 0.5}, {0: 0.8, 1: 0.7, 2: 0.7, 3: 0.1})
    assert r.seeds == (0, 1, 2) and r.n == 3
    assert "seeds [7] have no baseline run" in r.note
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
