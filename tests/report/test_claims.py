"""The claims part of the report: cell selection by pool + arms, verdicts with hand-computed numbers, not tested.

The decision rule (paired t-test and sign-flip test both reject after Holm within the claim, and the reported
interval on the same side of 0), the non-inferiority rule of Q1a, selection on validation, units of (split, seed).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from report_helpers import load_study_generator, write_record

from hybridpool.report.claims import CLAIMS, Best, Claim, Contrast, S, Trend, cell_label
from hybridpool.report.cli import main
from hybridpool.report.runs import Unit, group_runs, run_from_record
from hybridpool.report.tables import fmt_ci, fmt_pct
from hybridpool.report.verdicts import (
    AGREES,
    CONTRADICTS,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_TESTED,
    evaluate_claim,
    evaluate_claims,
)

AVG = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89]
UP = [0.02, 0.025, 0.015, 0.02, 0.03, 0.018, 0.022, 0.027, 0.012, 0.031]  # max - avg per seed: the claim holds
T_975_9 = 2.2621571627409915  # the 0.975 quantile of Student's t with 9 degrees of freedom
set_key = load_study_generator().set_key


def record(
    task,
    data,
    pool,
    seed,
    acc,
    arms=None,
    status="completed",
    metrics=None,
    params=None,
    split=None,
    val=None,
    n_test=None,
    best=True,
) -> dict:
    """A results.json record (as :mod:`hybridpool.records` writes it) with the arm values ``arms``."""
    config = {"seed": seed, "task_name": task, "pool": {"_target_": f"hybridpool.pooling.{pool}"}}
    set_key(config, "model.post_bn", True)
    if split is not None:
        set_key(config, "data.split_seed", split)
    for k, v in (arms or {}).items():
        set_key(config, k, v)
    m = {"test/acc": acc, **(metrics or {})}
    if val is not None:
        m["val/acc"] = val - 0.01
        if best:
            m |= {"val/acc_best": val, "val/acc_best_epoch": 3.0}
    rec = {
        "status": status,
        "task_name": task,
        "tags": [f"pool:{pool}", f"data:{data}", "backbone:mobilenet_v2"],
        "seed": seed,
        "metrics": m,
        "config": config,
        "model": {"params": params or {"pool": 0, "head": 100}},
    }
    if n_test:
        rec["data"] = {"name": data, "num_samples": {"test": n_test}}
    return rec


def study_of(records):
    return group_runs([run_from_record(r, f"mem:{i}") for i, r in enumerate(records)])


def cells(task, data, pool, accs, arms=None, **kw) -> list[dict]:
    return [record(task, data, pool, s, a, arms, **kw) for s, a in enumerate(accs) if a is not None]


def claim(key: str) -> Claim:
    return next(c for c in CLAIMS if c.key == key)


def test_max_vs_avg_verdicts_with_hand_computed_numbers():
    recs = cells("study_fg", "flowers17", "avg", AVG)
    recs += cells("study_fg", "flowers17", "max", [a + d for a, d in zip(AVG, UP, strict=True)])
    recs += cells("study_fg", "dtd", "avg", AVG)
    recs += cells("study_fg", "dtd", "max", [a - d for a, d in zip(AVG, UP, strict=True)])
    recs += cells("study_fg", "cub", "avg", AVG[:3])
    recs += cells("study_fg", "cub", "max", [AVG[0] + 0.01, AVG[1] - 0.01, AVG[2] + 0.002])
    # a failed run is never used, however good its number; a seed without an avg run is not paired
    recs.append(record("study_fg", "flowers17", "max", 15, 0.99, status="failed"))
    recs.append(record("study_fg", "flowers17", "max", 16, 0.99))
    result = evaluate_claim(claim("Q4a"), study_of(recs))
    by_data = {f.block[1]: f for f in result.findings}
    assert {k: f.verdict for k, f in by_data.items()} == {"flowers17": AGREES, "dtd": CONTRADICTS, "cub": INCONCLUSIVE}
    # the interval by hand, float64: mean +- t * sd / sqrt(n)
    d = np.array(UP, dtype=np.float64)
    mean = d.sum() / 10
    sd = math.sqrt(((d - mean) ** 2).sum() / 9)
    low, high = mean - T_975_9 * sd / math.sqrt(10), mean + T_975_9 * sd / math.sqrt(10)
    r = by_data["flowers17"].comparison
    assert r.n == 10 and [u.seed for u in r.seeds] == list(range(10))
    assert r.mean_diff == pytest.approx(0.022) and r.ci.low == pytest.approx(low) and r.ci.high == pytest.approx(high)
    assert r.ci.method == "t"  # one split (none recorded): the t-interval
    # sign-flip, exact: ten positive distinct differences -> 2 / 1024; Holm over the claim's three comparisons:
    # sorted p = 2/1024 (flowers), 2/1024 (dtd), 1 (cub: |0.01 - 0.01 + 0.002| is reached by every pattern)
    assert r.perm_method == "exact" and r.p_perm == pytest.approx(2 / 1024)
    assert r.p_perm_holm == pytest.approx(3 * 2 / 1024)
    assert by_data["cub"].comparison.p_perm == pytest.approx(1.0)
    assert r.significant and by_data["dtd"].comparison.significant
    assert f"+2.20 pp, 95% CI {fmt_ci(r.ci, signed=True)} (t), n = 10 units, 0 zero differences" in (
        by_data["flowers17"].text
    )
    assert by_data["dtd"].comparison.mean_diff == pytest.approx(-0.022)
    assert by_data["cub"].text.endswith("inconclusive (n = 3)")
    assert result.overall == "mixed"
    assert result.summary == ["GMP > GAP: agrees on 1 of 3 data sets, contradicts on 1, inconclusive on 1"]


def test_five_seeds_cannot_agree_however_large_the_difference():
    """The old study's five seeds: the sign-flip test cannot go below 2/32 = 0.0625, so nothing is significant."""
    recs = cells("study_fg", "flowers17", "avg", AVG[:5])
    recs += cells("study_fg", "flowers17", "max", [a + d for a, d in zip(AVG[:5], UP[:5], strict=True)])
    f = evaluate_claim(claim("Q4a"), study_of(recs)).findings[0]
    assert f.comparison.p_t < 0.001 and f.comparison.p_perm == pytest.approx(0.0625)
    assert f.verdict == INCONCLUSIVE and f.comparison.ci.low > 0


def test_a_claim_without_its_cells_says_not_tested_and_names_them():
    recs = cells("study_fg", "flowers17", "avg", AVG) + cells("study_fg", "flowers17", "max", AVG)
    results = {r.claim.key: r for r in evaluate_claims(study_of(recs))}
    assert len(results) == len(CLAIMS)  # none dropped
    q4c = results["Q4c"]
    assert q4c.overall == NOT_TESTED and q4c.summary[0].endswith(": not tested")
    text = q4c.findings[0].text
    assert text == (
        "flowers17 (mobilenet_v2, study_fg): not tested: no runs of Hybrid (scalar) [branches=[avg,max], "
        "pool_schedule=freeze_and_train], Hybrid (scalar) [branches=[avg,max], pool_schedule=joint]"
    )
    q2b = results["Q2b"]  # no study_fashion or study_synth block at all
    assert [f.verdict for f in q2b.findings] == [NOT_TESTED, NOT_TESTED] and q2b.findings[0].block is None
    assert q2b.findings[0].text == "not tested: no runs of Flatten + FC, GAP in study_fashion or study_synth"
    q4b = results["Q4b"]  # a trend needs three cells with runs: GAP and GMP alone are Q4a's contrast
    assert q4b.findings[0].verdict == NOT_TESTED and "no runs of GeM [learn_p=False, p=2.0]" in q4b.findings[0].text
    # equal accuracies: every difference is 0, the interval [0, 0] measures nothing, the t-test is undefined
    q4a = results["Q4a"].findings[0]
    assert q4a.verdict == INCONCLUSIVE and q4a.comparison.n_zero == 10 and "all differences equal" in q4a.text


def test_cells_are_chosen_by_arm_values_with_defaults_for_the_rest():
    """GeM at default arms (p=3, learned, post-BN on) among fixed-p and no-BN GeM cells; the p trend."""
    fg = "study_fg", "dtd"
    recs = cells(*fg, "avg", AVG) + cells(*fg, "avg", [a - 0.01 for a in AVG], {"model.post_bn": False})
    learned = {"pool.p": 3.0, "pool.learn_p": True}
    recs += cells(*fg, "gem", [a + 0.05 for a in AVG], learned)
    recs += cells(*fg, "gem", [a + 0.04 - 0.001 * s for s, a in enumerate(AVG)], {**learned, "model.post_bn": False})
    for i, p in enumerate((2.0, 4.0, 8.0)):
        step = [a + 0.01 * (i + 1) + 0.001 * (s % 3) for s, a in enumerate(AVG)]
        recs += cells(*fg, "gem", step, {"pool.p": p, "pool.learn_p": False})
    recs += cells(*fg, "max", [a + 0.04 + 0.002 * s for s, a in enumerate(AVG)])
    study = study_of(recs)
    gem, why = S("gem", {"model.post_bn": True}).find(study.cells)
    assert why == "" and gem.arms["pool.p"] == 3.0 and gem.arms["pool.learn_p"] is True
    q4d = evaluate_claim(claim("Q4d"), study)
    gem_bn = next(f for f in q4d.findings if f.test.startswith("GeM"))
    assert gem_bn.verdict == AGREES and gem_bn.test == "GeM [post_bn=True] > GeM [post_bn=False]"
    assert gem_bn.comparison.mean_diff == pytest.approx(0.0145)
    avg_bn = next(f for f in q4d.findings if f.test.startswith("GAP"))
    assert avg_bn.verdict == INCONCLUSIVE and "all differences equal" in avg_bn.text  # +1 pp on every unit
    q4b = evaluate_claim(claim("Q4b"), study)
    trend, learned_vs_avg = q4b.findings
    assert trend.verdict == AGREES and "4 of 4 steps up" in trend.text and len(trend.steps) == 4
    assert trend.comparison.mean_diff == pytest.approx(0.049)  # max - avg
    assert learned_vs_avg.comparison.mean_diff == pytest.approx(0.05)
    # ambiguous: two GeM cells differ in an arm that has no default, so neither is taken
    amb = study_of(cells(*fg, "gem", AVG, {"pool.eps": 1e-6}) + cells(*fg, "gem", AVG, {"pool.eps": 1e-3}))
    cell, why = S("gem").find(amb.cells)
    assert cell is None and "2 cells match" in why


def _q1_study(hybrid_delta: list[float], n_test: int = 272) -> list[dict]:
    """flowers17: GAP, GMP, GeM and the scalar hybrid on 10 seeds. On validation GeM is best (GMP best on test)."""
    fg = "study_fg", "flowers17"
    recs = []
    test = {"avg": AVG, "max": [a + 0.02 for a in AVG], "gem": [a + 0.01 + 0.001 * (s % 2) for s, a in enumerate(AVG)]}
    val = {"avg": 0.85, "max": 0.86, "gem": 0.87}
    for pool, accs in test.items():
        recs += [record(*fg, pool, s, a, val=val[pool] + 0.001 * s, n_test=n_test) for s, a in enumerate(accs)]
    gem = test["gem"]
    recs += [record(*fg, "hybrid_scalar", s, gem[s] + d, val=0.865, n_test=n_test) for s, d in enumerate(hybrid_delta)]
    return recs


def test_q1_the_best_single_pool_is_chosen_on_validation_then_compared_on_test():
    rng = np.random.default_rng(0)
    close = list(0.002 + rng.normal(0, 0.003, 10))  # hybrid - GeM on test: close to 0
    study = study_of(_q1_study(close))
    q1a = evaluate_claim(claim("Q1a"), study)
    f = q1a.findings[0]
    assert "Hybrid (scalar) − GeM" in f.text  # GeM, the best on validation, not GMP, the best on test
    assert "best single pool, chosen on validation accuracy: GeM" in f.text and "next GMP" in f.text
    assert "val/acc_best: best validation epoch" in f.text
    # non-inferiority: margin = max(1 pp, 1 image of 272 = 0.37 pp) = 1 pp; the interval lies above -1 pp
    assert f.kind == "noninferior" and f.margin == pytest.approx(0.01)
    assert f.verdict == AGREES and f.comparison.ci.low > -0.01
    assert "margin −1.00 pp (the larger of 1.00 pp and 1 test image, 0.37 pp of 272)" in f.text
    assert math.isnan(f.comparison.p_t_holm)  # an intersection-union test: no Holm
    # Q1b: GeM, not GAP, is the best single pool on validation -> the hybrid must beat GAP (it does, +1 pp+)
    q1b = evaluate_claim(claim("Q1b"), study).findings[0]
    assert q1b.verdict == AGREES and "Hybrid (scalar) − GAP" in q1b.text
    # the margin is one test image when that is larger: 80 images -> 1.25 pp
    small = evaluate_claim(claim("Q1a"), study_of(_q1_study(close, n_test=80))).findings[0]
    assert small.margin == pytest.approx(1 / 80)


def test_q1a_contradicts_and_is_inconclusive():
    worse = [-0.03 + 0.001 * (s % 3) for s in range(10)]  # hybrid 3 pp below GeM on every unit, give or take
    f = evaluate_claim(claim("Q1a"), study_of(_q1_study(worse))).findings[0]
    assert f.verdict == CONTRADICTS and f.comparison.ci.high < -0.01 and "lies below −1.00 pp" in f.text
    noisy = list(np.random.default_rng(1).normal(-0.01, 0.02, 10))  # the interval straddles -1 pp
    g = evaluate_claim(claim("Q1a"), study_of(_q1_study(noisy))).findings[0]
    assert g.verdict == INCONCLUSIVE and g.comparison.ci.low < -0.01 < g.comparison.ci.high
    assert "contains −1.00 pp" in g.text


def test_q1b_does_not_apply_where_gap_is_best_on_validation():
    fg = "study_fg", "dtd"
    recs = []
    for pool, val in (("avg", 0.90), ("max", 0.85), ("hybrid_scalar", 0.88)):
        recs += [record(*fg, pool, s, 0.8 + 0.01 * s, val=val) for s in range(10)]
    result = evaluate_claim(claim("Q1b"), study_of(recs))
    f = result.findings[0]
    assert f.verdict == NOT_APPLICABLE and "GAP is the best single pool here" in f.text
    assert result.overall == NOT_APPLICABLE


def test_validation_falls_back_to_the_last_epoch_and_says_so():
    fg = "study_fg", "dtd"
    recs = []
    for pool, val in (("avg", 0.90), ("max", 0.85)):
        recs += [record(*fg, pool, s, 0.8 + 0.01 * s, val=val, best=False) for s in range(10)]
    recs += [record(*fg, "hybrid_scalar", s, 0.8 + 0.01 * s, val=0.9, best=False) for s in range(10)]
    f = evaluate_claim(claim("Q1a"), study_of(recs)).findings[0]
    assert "val/acc: last epoch" in f.text and "test metrics at the last epoch" in f.text


def test_both_tests_reject_but_the_split_aware_interval_includes_zero():
    """Three splits: +3 pp, +3 pp, -1 pp (10 seeds each). Over 30 units the t-test and the sign-flip test reject,
    but a two-level resample draws split 2 three times with probability 1/27 > 2.5%: the interval reaches -1 pp."""
    rng = np.random.default_rng(0)
    recs = []
    for split, delta in ((0, 0.03), (1, 0.03), (2, -0.01)):
        for s in range(10):
            base = 0.8 + 0.01 * s
            recs.append(record("study_fg", "dtd", "avg", s, base, split=split))
            recs.append(record("study_fg", "dtd", "max", s, base + delta + rng.normal(0, 0.002), split=split))
    study = study_of(recs)
    assert "data.split_seed" not in study.arm_keys and len(study.cells) == 2  # splits are units, not arms
    f = evaluate_claim(claim("Q4a"), study).findings[0]
    r = f.comparison
    assert r.n == 30 and r.n_splits == 3 and r.seeds[0] == Unit(0, 0)
    assert r.significant and r.p_perm < 1e-3 and r.ci.t_low > 0
    assert r.ci.method == "two-level bootstrap" and r.ci.low < 0 < r.ci.high
    assert f.verdict == INCONCLUSIVE and "includes 0" in f.text


def test_units_pair_by_split_and_seed():
    recs = [record("study_fg", "dtd", "avg", s, 0.8, split=sp) for sp in (0, 1) for s in range(10)]
    recs += [record("study_fg", "dtd", "max", s, 0.81 + 0.001 * s, split=0) for s in range(10)]
    study = study_of(recs)
    f = evaluate_claim(claim("Q4a"), study).findings[0]
    assert f.comparison.n == 10 and {u.split for u in f.comparison.seeds} == {0}
    missing = sorted((p.split, p.seed) for p in study.problems if p.kind == "missing")
    assert missing == [(1, s) for s in range(10)]  # max never ran split 1


def test_a_cell_mixing_selection_rules_is_flagged():
    recs = [record("study_fg", "dtd", "avg", s, 0.8, val=0.8, best=s < 5) for s in range(10)]
    recs += [record("study_fg", "dtd", "max", s, 0.81 + 0.001 * s, val=0.8) for s in range(10)]
    study = study_of(recs)
    mixed = [p for p in study.problems if p.kind == "mixed-selection"]
    assert len(mixed) == 1 and "5 best validation epoch, 5 last epoch" in mixed[0].detail
    f = evaluate_claim(claim("Q4a"), study).findings[0]
    assert "the best validation epoch for GMP, the mixed" in f.text


def test_best_pools_derived_metrics_and_custom_claims():
    fg = "study_synth", "synth_detail"
    sh = {"test_shift/acc": 0.0, "test_grid/acc": 0.0}
    recs = []
    for pool, base in (("avg", 0.80), ("max", 0.85), ("hybrid_scalar", 0.86), ("hybrid_gate", 0.90)):
        recs += [
            record(
                *fg,
                pool,
                s,
                base + 0.01 * s + 0.001 * (s % 3 if pool != "avg" else 0),
                val=base,
                metrics={"test_shift/acc": base - 0.01, "test_grid/acc": base - 0.02},
            )
            for s in range(10)
        ]
    recs += [
        record(*fg, "flatten", s, 0.82 + 0.01 * s, metrics={**sh, "test_shift/acc": 0.001 * s, "train/acc": 1.0})
        for s in range(10)
    ]
    study = study_of(recs)
    q1c = evaluate_claim(claim("Q1c"), study)
    f = q1c.findings[0]
    assert "Hybrid (gate) − GMP" in f.text and f.comparison.mean_diff == pytest.approx(0.05)
    q2b = evaluate_claim(claim("Q2b"), study)
    shift = q2b.findings[0]  # flatten drops 0.82 + 0.009 s, avg drops 0.01 + 0.01 s
    assert shift.verdict == AGREES and shift.comparison.mean_diff == pytest.approx(0.8055)
    custom = Claim(
        "X1", "Max beats GAP on detail", "test", ("study_synth/synth_detail",), (Contrast(S("max"), S("avg")),)
    )
    assert evaluate_claim(custom, study).findings[0].comparison.mean_diff == pytest.approx(0.0509)
    trend = Claim("X2", "t", "test", ("study_synth",), (Trend((S("avg"), S("max"), S("hybrid_gate"))),))
    rising = evaluate_claim(trend, study).findings[0]
    assert rising.verdict == AGREES and "2 of 2 steps up" in rising.text
    with pytest.raises(ValueError, match="kind"):
        Contrast(S("max"), S("avg"), kind="equal")


def test_the_report_writes_claims_tex_summary_and_json(tmp_path):
    runs = tmp_path / "runs"
    i = 0
    for data in ("synth_detail", "synth_texture"):
        for pool, accs in (("avg", AVG), ("max", [a + d for a, d in zip(AVG, UP, strict=True)])):
            for s, a in enumerate(accs):
                rec = record("study_synth", data, pool, s, a, metrics={"train/acc": 1.0, "test_shift/acc": a - 0.1})
                write_record(runs / str(i), **rec)
                i += 1
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--no-figures"]) == 0
    tex_text = (out / "claims.tex").read_text()
    assert tex_text.isascii(), sorted({ch for ch in tex_text if not ch.isascii()})
    assert tex_text.count(r"\begin{itemize}") == tex_text.count(r"\end{itemize}") == len(CLAIMS)
    assert r"synth\_detail" in tex_text and "synth_detail" not in tex_text.replace(r"synth\_detail", "")
    assert r"\paragraph{Q4a: Max pooling beats average pooling consistently}" in tex_text
    assert "not tested: no runs of" in tex_text
    assert tex_text.count(r"\toprule") == tex_text.count(r"\bottomrule") >= 1  # the Q2b drops table
    for name in ("summary.md", "summary.html"):
        text = (out / name).read_text()
        assert "Claims" in text and "Q2c: GAP loses fine detail" in text
    md = (out / "summary.md").read_text()
    assert re.search(r"synth_detail \(mobilenet_v2, study_synth\): GMP − GAP = \+2\.20 pp", md)
    macros = (out / "macros.tex").read_text()
    assert r"\newcommand{\hpVerdictQTwoC}{agrees}" in macros  # GMP > GAP on synth_detail; the rest not tested
    assert r"\newcommand{\hpVerdictQOneA}{not tested}" in macros
    data = json.loads((out / "report.json").read_text())
    keys = [c["key"] for c in data["claims"]]
    assert keys == [c.key for c in CLAIMS]
    q2c = next(c for c in data["claims"] if c["key"] == "Q2c")
    detail = next(f for f in q2c["findings"] if f["block"] and f["block"][1] == "synth_detail" and "GMP" in f["test"])
    assert detail["verdict"] == AGREES and detail["comparison"]["n"] == 10
    assert detail["comparison"]["mean_diff"] == pytest.approx(0.022)
    assert detail["comparison"]["units"][0] == {"split": None, "seed": 0}
    # by hand: squared deviations of UP from 0.022 sum to 352e-6 -> sd = sqrt(352e-6 / 9) = 0.0062539,
    # 0.022 - 2.2621572 * 0.0062539 / sqrt(10) = 0.017526
    assert fmt_pct(detail["comparison"]["ci"]["low"], signed=True) == "+1.75"
    if shutil.which("pdflatex"):  # claims.tex with verdicts and a table compiles (the paper test has none)
        (out / "doc.tex").write_text(DOC)
        res = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 0, res.stdout[-3000:]


DOC = r"""\documentclass{article}
\usepackage[utf8]{inputenc}
\usepackage{amsmath,graphicx,booktabs,float,xcolor}
\newcommand{\hpgenerated}{.}
\newcommand{\citep}[1]{[#1]}
\input{macros}
\begin{document}
\hpVerdictQTwoC; \hpSummaryQTwoC; \hpCovLine
\input{claims}
\input{tables/claims-summary}
\end{document}
"""


def test_the_fixture_report_has_a_claims_file(tmp_path):
    from report_helpers import RUNS

    out = tmp_path / "o"
    assert main([str(RUNS), "--out", str(out), "--no-figures"]) == 0
    text = (out / "claims.tex").read_text()
    assert text.isascii() and r"\hpPipelineCheckText" in text and "Q4e" in text


def test_covariance_pooling_is_a_single_pool_with_its_own_arms_and_width():
    """cov (iSQRT-COV) and its bilinear-CNN arm (signed sqrt, not centred): the default arm is the cov of the
    claims; its head is wider (2,080 inputs) and nothing in the claims depends on that."""
    fg = "study_fg", "cub"
    recs = cells(*fg, "avg", AVG, params={"pool": 0, "head": 1280 * 100 + 100})
    iscov = {"pool.normalization": "matrix_sqrt", "pool.centered": True}
    bcnn = {"pool.normalization": "signed_sqrt", "pool.centered": False}
    recs += cells(
        *fg,
        "cov",
        [a + 0.01 + 0.001 * (s % 4) for s, a in enumerate(AVG)],
        iscov,
        params={"pool": 81_984, "head": 2080 * 100 + 100},
    )
    recs += cells(*fg, "cov", [a - 0.01 for a in AVG], bcnn, params={"pool": 81_984, "head": 2080 * 100 + 100})
    study = study_of(recs)
    cov, why = S("cov").find(study.cells)
    assert why == "" and cov.arms["pool.normalization"] == "matrix_sqrt"
    labels = sorted(cell_label(c) for c in study.cells if c.pool == "cov")
    assert labels == ["Covariance (iSQRT-COV)", "Covariance (iSQRT-COV) [centered=False, normalization=signed_sqrt]"]
    single = Best(tuple(S(p) for p in ("avg", "cov")), "best", metric="test/acc")
    assert single.find(study.cells)[0] is cov


def test_the_design_and_diagnosis_arms_do_not_hide_the_default_cells():
    """run_study.sh's CUB arms: hybrid with branch_norm / init=gap, attention with the pools' weights at the pool
    rate, query attention with dot-product logits: each pool's default cell is still the one the claims use."""
    fg = "study_fg", "cub"
    recs = cells(*fg, "avg", AVG)
    recs += cells(*fg, "hybrid_scalar", AVG, {"pool.init": "uniform"})
    recs += cells(*fg, "hybrid_scalar", AVG, {"pool.init": "uniform", "pool.branch_norm": True})
    recs += cells(*fg, "hybrid_scalar", AVG, {"pool.init": "gap"})
    recs += cells(*fg, "attn", AVG, {"pool.temperature": 1.0, "optim.pool_weights": "head"})
    recs += cells(*fg, "attn", AVG, {"pool.temperature": 1.0, "optim.pool_weights": "pool"})
    recs += cells(*fg, "qattn", AVG, {"pool.similarity": "cosine", "pool.temperature": 0.1})
    for weights in ("pool", "head"):
        qdot = {"pool.similarity": "dot", "pool.temperature": 1.0, "optim.pool_weights": weights}
        recs += cells(*fg, "qattn", AVG, qdot)
    study = study_of(recs)
    hyb, why = S("hybrid").find(study.cells)
    assert why == "" and hyb.arms.get("pool.init") == "uniform" and hyb.arms.get("pool.branch_norm") in (None, "-")
    attn, why = S("attn").find(study.cells)
    assert why == "" and attn.arms["optim.pool_weights"] == "head"
    qattn, why = S("qattn").find(study.cells)
    assert why == "" and qattn.arms["pool.similarity"] == "cosine"
