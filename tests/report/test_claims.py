"""The claims part of the report: cell selection by pool + arms, verdicts with hand-computed numbers, not tested."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from report_helpers import write_record

from hybridpool.report.claims import CLAIMS, Claim, Contrast, S, Trend
from hybridpool.report.cli import main
from hybridpool.report.runs import group_runs, run_from_record
from hybridpool.report.tables import fmt_ci, fmt_pct
from hybridpool.report.verdicts import AGREES, CONTRADICTS, INCONCLUSIVE, NOT_TESTED, evaluate_claim, evaluate_claims

AVG = [0.80, 0.82, 0.84, 0.86, 0.88]
UP = [0.02, 0.025, 0.015, 0.02, 0.03]  # max - avg per seed on flowers17: the claim holds
T_975_4 = 2.7764451051977987  # the 0.975 quantile of Student's t with 4 degrees of freedom


def _set(config: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = config
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value


def record(task, data, pool, seed, acc, arms=None, status="completed", metrics=None, params=None) -> dict:
    """A results.json record (as :mod:`hybridpool.records` writes it) with the arm values ``arms``."""
    config = {"seed": seed, "task_name": task, "pool": {"_target_": f"hybridpool.pooling.{pool}"}}
    _set(config, "model.post_bn", True)
    for k, v in (arms or {}).items():
        _set(config, k, v)
    return {
        "status": status,
        "task_name": task,
        "tags": [f"pool:{pool}", f"data:{data}", "backbone:mobilenet_v2"],
        "seed": seed,
        "metrics": {"test/acc": acc, **(metrics or {})},
        "config": config,
        "model": {"params": params or {"pool": 0, "head": 100}},
    }


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
    recs.append(record("study_fg", "flowers17", "max", 5, 0.99, status="failed"))
    recs.append(record("study_fg", "flowers17", "max", 6, 0.99))
    result = evaluate_claim(claim("Q4a"), study_of(recs))
    by_data = {f.block[1]: f for f in result.findings}
    assert {k: f.verdict for k, f in by_data.items()} == {"flowers17": AGREES, "dtd": CONTRADICTS, "cub": INCONCLUSIVE}
    # the interval by hand, float64: mean +- t * sd / sqrt(n)
    d = np.array(UP, dtype=np.float64)
    mean = d.sum() / 5
    sd = math.sqrt(((d - mean) ** 2).sum() / 4)
    low, high = mean - T_975_4 * sd / math.sqrt(5), mean + T_975_4 * sd / math.sqrt(5)
    r = by_data["flowers17"].comparison
    assert r.n == 5 and r.seeds == (0, 1, 2, 3, 4)
    assert r.mean_diff == pytest.approx(0.022) and r.ci.low == pytest.approx(low) and r.ci.high == pytest.approx(high)
    assert (low, high) == pytest.approx((0.0149214, 0.0290786), abs=1e-7)  # sd = sqrt(130e-6 / 4)
    assert f"+2.20 pp, 95% CI {fmt_ci(r.ci, signed=True)}, n = 5" in by_data["flowers17"].text
    assert fmt_ci(r.ci, signed=True) == "[+1.49, +2.91]"
    assert by_data["dtd"].comparison.mean_diff == pytest.approx(-0.022)
    assert by_data["cub"].text.endswith("inconclusive (n = 3)")
    assert result.overall == "mixed"
    assert result.summary == ["GMP > GAP: agrees on 1 of 3 data sets, contradicts on 1, inconclusive on 1"]
    assert 0 < by_data["flowers17"].comparison.p_t <= by_data["flowers17"].comparison.p_t_holm <= 1


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
    assert results["Q4a"].findings[0].verdict == INCONCLUSIVE  # equal accuracies: the CI is [0, 0]


def test_cells_are_chosen_by_arm_values_with_defaults_for_the_rest():
    """GeM at default arms (p=3, learned, post-BN on) among fixed-p and no-BN GeM cells; the p trend."""
    fg = "study_fg", "dtd"
    recs = cells(*fg, "avg", AVG) + cells(*fg, "avg", [a - 0.01 for a in AVG], {"model.post_bn": False})
    learned = {"pool.p": 3.0, "pool.learn_p": True}
    recs += cells(*fg, "gem", [a + 0.05 for a in AVG], learned)
    recs += cells(*fg, "gem", [a + 0.04 - 0.001 * s for s, a in enumerate(AVG)], {**learned, "model.post_bn": False})
    for i, p in enumerate((2.0, 4.0, 8.0)):
        step = [a + 0.01 * (i + 1) + 0.001 * s for s, a in enumerate(AVG)]
        recs += cells(*fg, "gem", step, {"pool.p": p, "pool.learn_p": False})
    recs += cells(*fg, "max", [a + 0.04 + 0.002 * s for s, a in enumerate(AVG)])
    study = study_of(recs)
    gem, why = S("gem", {"model.post_bn": True}).find(study.cells)
    assert why == "" and gem.arms["pool.p"] == 3.0 and gem.arms["pool.learn_p"] is True
    q4d = evaluate_claim(claim("Q4d"), study)
    gem_bn = next(f for f in q4d.findings if f.test.startswith("GeM"))
    assert gem_bn.verdict == AGREES and gem_bn.test == "GeM [post_bn=True] > GeM [post_bn=False]"
    assert gem_bn.comparison.mean_diff == pytest.approx(0.012)
    q4b = evaluate_claim(claim("Q4b"), study)
    trend, learned_vs_avg = q4b.findings
    assert trend.verdict == AGREES and "4 of 4 steps up" in trend.text and len(trend.steps) == 4
    assert trend.comparison.mean_diff == pytest.approx(0.044)  # max - avg
    assert learned_vs_avg.comparison.mean_diff == pytest.approx(0.05)
    # ambiguous: two GeM cells differ in an arm that has no default, so neither is taken
    amb = study_of(cells(*fg, "gem", AVG, {"pool.eps": 1e-6}) + cells(*fg, "gem", AVG, {"pool.eps": 1e-3}))
    cell, why = S("gem").find(amb.cells)
    assert cell is None and "2 cells match" in why


def test_best_pools_derived_metrics_and_custom_claims():
    fg = "study_synth", "synth_detail"
    sh = {"test_shift/acc": 0.0, "test_grid/acc": 0.0}
    recs = []
    for pool, base in (("avg", 0.80), ("max", 0.85), ("hybrid_scalar", 0.86), ("hybrid_gate", 0.90)):
        recs += [
            record(*fg, pool, s, base + 0.01 * s, metrics={"test_shift/acc": base - 0.01, "test_grid/acc": base - 0.02})
            for s in range(3)
        ]
    recs += [record(*fg, "flatten", s, 0.82 + 0.01 * s, metrics={**sh, "test_shift/acc": 0.001 * s, "train/acc": 1.0})
             for s in range(3)]
    study = study_of(recs)
    q1a = evaluate_claim(claim("Q1a"), study)
    f = q1a.findings[0]
    assert "Hybrid (gate) − GMP" in f.text and f.comparison.mean_diff == pytest.approx(0.05)
    q2b = evaluate_claim(claim("Q2b"), study)
    shift = q2b.findings[0]  # flatten drops 0.82 + 0.009 s, avg drops 0.01 + 0.01 s
    assert shift.verdict == AGREES and shift.comparison.mean_diff == pytest.approx(0.809)
    custom = Claim(
        "X1", "Max beats GAP on detail", "test", ("study_synth/synth_detail",), (Contrast(S("max"), S("avg")),)
    )
    assert evaluate_claim(custom, study).findings[0].comparison.mean_diff == pytest.approx(0.05)
    trend = Claim("X2", "t", "test", ("study_synth",), (Trend((S("avg"), S("max"), S("hybrid_gate"))),))
    rising = evaluate_claim(trend, study).findings[0]  # +5 pp then +5 pp on every seed: a zero-width interval
    assert rising.verdict == INCONCLUSIVE and "2 of 2 steps up" in rising.text  # identical diffs: no uncertainty
    assert [r.mean_diff for r in rising.steps] == pytest.approx([0.05, 0.05])


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
    data = json.loads((out / "report.json").read_text())
    keys = [c["key"] for c in data["claims"]]
    assert keys == [c.key for c in CLAIMS]
    q2c = next(c for c in data["claims"] if c["key"] == "Q2c")
    detail = next(f for f in q2c["findings"] if f["block"] and f["block"][1] == "synth_detail" and "GMP" in f["test"])
    assert detail["verdict"] == AGREES and detail["comparison"]["n"] == 5
    assert detail["comparison"]["mean_diff"] == pytest.approx(0.022)
    assert fmt_pct(detail["comparison"]["ci"]["low"], signed=True) == "+1.49"
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
\input{macros}
\begin{document}
\input{claims}
\end{document}
"""


def test_the_fixture_report_has_a_claims_file(tmp_path):
    from report_helpers import RUNS

    out = tmp_path / "o"
    assert main([str(RUNS), "--out", str(out), "--no-figures"]) == 0
    text = (out / "claims.tex").read_text()
    assert text.isascii() and r"\hpPipelineCheckText" in text and "Q4e" in text
