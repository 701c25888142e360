"""The report on a study in the new record schema (tests/report/fixtures/make_study.py): 10 seeds x 3 splits,
test metrics at the best validation epoch, test-set sizes, exact ties, a zero-variance difference, covariance
pooling with a wider embedding, the main table, the two main figures, the verdict macros."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from report_helpers import load_study_generator

from hybridpool.report.analysis import cell_interval
from hybridpool.report.claims import BEST_SINGLE
from hybridpool.report.latex import macro_key
from hybridpool.report.runs import Unit, group_runs, load_runs
from hybridpool.report.stats import bootstrap_mean_ci, mean_ci
from hybridpool.report.tables import fmt_num, fmt_pct, tex

GEN = load_study_generator()


@pytest.fixture(scope="module")
def study(study_records):
    return group_runs(load_runs([study_records]))


def _values(data: str, pool: str) -> dict[Unit, float]:
    """The generator's test accuracies of a cell, minus the failed and missing runs, keyed by unit."""
    out = {}
    for (split, seed), v in GEN.test_accuracies()[(data, pool)].items():
        if (data, pool, split, seed) not in GEN.FAILED | GEN.MISSING:
            out[Unit(split, seed)] = v
    return out


def _row(tex_text: str, first: str) -> list[str]:
    for line in tex_text.splitlines():
        if line.startswith(first + " &"):
            return [c.strip() for c in line.removesuffix(r"\\").split("&")]
    raise AssertionError(f"no row {first!r} in:\n{tex_text}")


def test_the_fake_study_has_the_new_schema(study_records, study):
    files = list(study_records.rglob("results.json"))
    assert len(files) == 7 * (10 + 30 + 30) - 1 + len(GEN.ARMS) * 10  # one missing; the CUB arms
    rec = json.loads(files[0].read_text())
    assert {"val/acc_best", "val/acc_best_epoch", "test/acc"} <= set(rec["metrics"])
    assert rec["pool"]["spec"] in GEN.POOLS and rec["data"]["num_samples"]["test"] in (2999, 272, 240)
    cells = {(c.data, c.pool): c for c in study.cells}
    assert len(study.cells) == 21 + len(GEN.ARMS)  # every arm of the diagnosis and of Q1 a cell of its own
    # split_seed is a unit, never an arm; the arms are the diagnosis' and the design arms' keys
    assert study.arm_keys == ["optim.pool_weights", "pool.init", "pool.similarity", "pool.temperature"]
    flowers = cells[("flowers17", "avg")]
    assert len(flowers.expected_units) == 30 and flowers.splits == (0, 1, 2)
    assert flowers.selection() == "best"
    assert cells[("cub", "gem")].splits == (0,)
    # accuracies are whole numbers of test images (float32): 272 * acc is an integer up to float32 rounding
    acc = np.array(list(flowers.completed("test/acc").values()))
    assert np.allclose(acc * 272, np.round(acc * 272), atol=1e-4)
    kinds = sorted((p.kind, p.split, p.seed) for p in study.problems)
    assert kinds == [("failed", 0, 3), ("missing", 2, 9)]


def test_the_main_table(study_report):
    text = (study_report / "tables" / "main.tex").read_text()
    header = next(line for line in text.splitlines() if line.startswith("Pool &"))
    assert header.startswith(r"Pool & CUB-200-2011 subset (MobileNetV2) & DTD subset (MobileNetV2) & Flowers-17")
    assert _row(text, "Test images (one image)")[1:] == ["2,999 (0.03 pp)", "240 (0.42 pp)", "272 (0.37 pp)"]
    assert _row(text, r"Units (splits $\times$ seeds)")[1:] == [
        r"10 (1 $\times$ 10)",
        r"30 (3 $\times$ 10)",
        r"30 (3 $\times$ 10)",
    ]
    assert _row(text, "Test metrics at")[1:] == ["best validation epoch"] * 3
    for pool, name in (("avg", "GAP"), ("hybrid", "Hybrid (scalar)"), ("cov", r"Covariance (iSQRT-COV)")):
        row = _row(text, name)
        for col, data in ((1, "cub"), (2, "dtd"), (3, "flowers17")):
            vals = _values(data, pool)
            ci = cell_interval(vals)
            t = mean_ci(list(vals.values()))
            assert ci.mean == pytest.approx(t.mean)
            cell = row[col]
            assert cell.startswith(f"{fmt_pct(t.mean)} $\\pm$ {fmt_pct(ci.half_width)}"), (name, data, cell)
            if data == "cub":
                assert ci.method == "t" and "*" not in cell  # one split: the t-interval
            else:  # three splits: the two-level bootstrap, when wider, marked *
                boot = bootstrap_mean_ci(list(vals.values()), clusters=[u.split for u in vals])
                wider = boot.high - boot.low > t.high - t.low
                assert ("*" in cell) == wider and (ci.method != "t") == wider
    assert r"(n=9)" in _row(text, r"Covariance (iSQRT-COV)")[1]  # cub cov seed 3 failed
    assert r"\textsuperscript{\dag}" in text and r"\textsuperscript{\ddag}" in text


def test_the_best_single_pool_is_the_validation_choice(study):
    for data, pool in GEN.VAL_BEST.items():
        cells = [c for c in study.cells if c.data == data]
        best, _ = BEST_SINGLE.find(cells)
        assert best.pool == pool, data


def test_test_set_sizes_and_exact_ties(study_report):
    text = (study_report / "tables" / "testsets.tex").read_text()
    dtd = _row(text, r"dtd (mobilenet\_v2, study\_fg)")
    assert dtd[1:5] == ["10", "240", fmt_num(100 / 240), r"30 (3 $\times$ 10)"]
    data = json.loads((study_report / "report.json").read_text())
    gem = next(c for c in data["cells"] if c["data"] == "dtd" and c["pool"] == "gem")["vs_baseline"]
    avg, g = _values("dtd", "avg"), _values("dtd", "gem")
    assert gem["n_zero"] == sum(1 for u in avg if g[u] == avg[u]) == 15  # tied on half of the units by design
    flowers = next(d for d in data["datasets"] if d["block"][1] == "flowers17")
    assert flowers["num_test"] == [272] and flowers["image_pp"] == pytest.approx(100 / 272)
    assert flowers["splits"] == [0, 1, 2] and flowers["units"] == 30 and flowers["selection"] == {"best": 210}


def test_a_zero_variance_difference_is_reported_not_called_significant(study_report):
    data = json.loads((study_report / "report.json").read_text())
    mx = next(c for c in data["cells"] if c["data"] == "flowers17" and c["pool"] == "max")["vs_baseline"]
    assert mx["mean_diff"] == pytest.approx(1 / 272, abs=1e-6) and mx["t"] is None and mx["significant"] is False
    assert "all differences equal" in " ".join(mx["notes"])
    md = (study_report / "summary.md").read_text()
    assert re.search(
        r"flowers17 \(mobilenet_v2, study_fg\): GMP − GAP = \+0\.37 pp.*all differences equal.*"
        r"inconclusive",
        md,
    )


def test_covariance_pooling_has_its_own_width_and_a_literature_line(study_report):
    cost = (study_report / "tables" / "cost.tex").read_text()
    assert r"Covariance (iSQRT-COV) & 2,080" in cost and r"GAP & 1,280" in cost
    macros = (study_report / "macros.tex").read_text()
    line = re.search(r"\\newcommand\{\\hpCovLine\}\{(.*)\}\n", macros).group(1)
    vals = _values("cub", "cov")
    assert f"reaches {fmt_pct(np.mean(list(vals.values())))}\\%" in line and "100 classes" in line
    assert r"76.8\%" in line and "a cited number, not one of our runs" in line
    assert r"\citep{haomood2018bcnn,lin2015bilinear}" in line
    assert "cited number" in json.loads((study_report / "report.json").read_text())["literature"]


def test_verdict_macros_and_the_claims_table(study_report):
    macros = (study_report / "macros.tex").read_text()
    data = json.loads((study_report / "report.json").read_text())
    for c in data["claims"]:
        k = macro_key(c["key"])
        assert rf"\newcommand{{\hpVerdict{k}}}{{{tex(c['overall'])}}}" in macros
        assert rf"\newcommand{{\hpTitle{k}}}" in macros and rf"\newcommand{{\hpSummary{k}}}" in macros
    assert r"\newcommand{\hpMainSelection}{best validation epoch}" in macros
    assert r"\newcommand{\hpMainSplits}{1--3}" in macros and r"\newcommand{\hpMainSeeds}{10}" in macros
    q1b = next(c for c in data["claims"] if c["key"] == "Q1b")
    assert [f["verdict"] for f in q1b["findings"]].count("not applicable") == 1  # GAP is best on Flowers-17
    summary = (study_report / "tables" / "claims-summary.tex").read_text()
    assert summary.count(r"\\") >= len(data["claims"]) + 1 and "Q1a" in summary


def test_the_main_figures_are_drawn(study_report):
    for name in ("differences", "learned"):
        png = study_report / "figures" / f"{name}.png"
        assert png.stat().st_size > 30_000, name  # a placeholder is a few KB
        assert (study_report / "figures" / f"{name}.pdf").is_file()
