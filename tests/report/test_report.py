"""hybridpool-report on the fixture: files written, failed/missing runs named, LaTeX numbers = stats output."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from report_helpers import AVG_SYNTH, RUNS, write_record

from hybridpool.report.cli import main
from hybridpool.report.figures import FIGURES
from hybridpool.report.stats import holm_family, mean_ci, paired_comparison
from hybridpool.report.tables import fmt_ci, fmt_num, fmt_p, fmt_pct, tex

GEM_SYNTH = [a + d for a, d in zip(AVG_SYNTH, [0.01, 0.02, 0.03, 0.04, 0.05], strict=True)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main([str(RUNS), "--out", str(out)]) == 0
    return out


def _row(tex_text: str, first: str) -> list[str]:
    for line in tex_text.splitlines():
        if line.startswith(first + " &"):
            return [c.strip() for c in line.removesuffix(r"\\").split("&")]
    raise AssertionError(f"no row {first!r} in:\n{tex_text}")


def test_every_output_is_written(report):
    names = ("summary.md", "summary.html", "macros.tex", "results.tex", "claims.tex", "runs.csv", "report.json")
    for name in names:
        assert (report / name).stat().st_size > 0, name
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (report / "figures" / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    tables = {p.stem for p in (report / "tables").glob("*.tex")}
    expected = {"main", "testsets", "claims-summary", "status", "setup", "overview", "internals", "cost"}
    assert expected | {"results-all"} <= tables
    assert {"results-fixture-synth-detail-smallcnn", "results-fixture-flowers17-mobilenet-v2"} <= tables
    for p in (report / "tables").glob("*.tex"):
        text = p.read_text()
        assert text.count(r"\toprule") == text.count(r"\bottomrule"), p  # booktabs, balanced


def test_failed_and_missing_runs_are_named_in_the_summaries(report):
    md = (report / "summary.md").read_text()
    html = (report / "summary.html").read_text()
    failed = "FAILED: fixture/synth_detail/SmallCNN/hybrid seed 3: FloatingPointError"
    missing = "MISSING: fixture/flowers17/mobilenet_v2/gem [post_bn=True] seed 4"
    for text in (md, html):
        assert failed in text and missing in text
    # stated before any result, and the incomplete cells say n = 4 of 5
    assert md.index(failed) < md.index("## Results")
    assert "| Hybrid (scalar) | 4/5 |" in md
    assert "PIPELINE CHECK" in md and "PIPELINE CHECK" in html
    assert "fit time (training and validation) / epochs" in (report / "tables" / "cost.tex").read_text()
    status = (report / "tables" / "status.tex").read_text()
    assert "FAILED" in status and "MISSING" in status
    data = json.loads((report / "report.json").read_text())
    assert data["pipeline_check"] is True
    assert sorted((p["kind"], p["seed"]) for p in data["problems"]) == [("failed", 3), ("missing", 4)]


def test_latex_numbers_equal_the_statistics(report):
    text = (report / "tables" / "results-fixture-synth-detail-smallcnn.tex").read_text()
    gap = _row(text, "GAP")
    ci = mean_ci(AVG_SYNTH)
    assert gap[1:4] == ["5/5", tex(fmt_pct(ci.mean)), tex(fmt_ci(ci))]
    assert gap[2:4] == ["84.00", "[80.07, 87.93]"]  # 0.84 +- 0.0392641, by hand in test_stats
    # GeM against GAP: Holm over the block's three comparisons (GMP, GeM, hybrid), each paired by seed
    base = dict(enumerate(AVG_SYNTH))
    others = {
        "GMP": dict(enumerate([0.90, 0.89, 0.93, 0.91, 0.92])),
        "GeM": dict(enumerate(GEM_SYNTH)),
        "Hybrid (scalar)": {0: 0.93, 1: 0.94, 2: 0.92, 4: 0.95},  # seed 3 failed
    }
    comps = dict(zip(others, holm_family([paired_comparison(v, base) for v in others.values()]), strict=True))
    for name, c in comps.items():
        row = _row(text, tex(name))
        assert row[1] == f"{c.n}/5"
        assert row[4:] == [
            tex(fmt_pct(c.mean_diff, signed=True)),
            tex(fmt_ci(c.ci, signed=True)),
            f"{c.n_zero}/{c.n}",
            tex(fmt_p(c.p_t_holm)),
            tex(fmt_p(c.p_perm_holm)),
            tex(fmt_p(c.p_w_holm)),
            tex(fmt_num(c.d_z)),
            "no",  # five seeds: the sign-flip test cannot go below 2/32 = 0.0625, so nothing is significant
        ]
    gem = _row(text, "GeM")
    assert gem[4:6] == ["+3.00", "[+1.04, +4.96]"]  # by hand: 0.03 +- 0.0196324
    # the machine-readable report holds the same numbers unrounded
    data = json.loads((report / "report.json").read_text())
    cell = next(c for c in data["cells"] if c["data"] == "synth_detail" and c["pool"] == "avg")
    assert cell["ci"]["low"] == pytest.approx(ci.low) and cell["ci"]["high"] == pytest.approx(ci.high)


def test_macros_and_results_body_for_the_paper(report):
    macros = (report / "macros.tex").read_text()
    assert r"\hppipelinechecktrue" in macros
    assert re.search(r"\\newcommand\{\\hpNumRuns\}\{39\}", macros)
    assert re.search(r"\\newcommand\{\\hpNumFailed\}\{1\}", macros)
    assert re.search(r"\\newcommand\{\\hpNumMissing\}\{1\}", macros)
    body = (report / "results.tex").read_text()
    for fig in ("accuracy", "paired", "mixing_weights", "gem_p", "attention_grid", "cost"):
        assert rf"\hpgenerated/figures/{fig}.pdf" in body
    assert r"\newcommand{\hpMainSelection}{last epoch}" in macros  # the old fixture has no val/acc_best_epoch
    assert r"\input{\hpgenerated/tables/results-fixture-synth-detail-smallcnn}" in body


def test_strict_mode_and_bad_input(tmp_path, capsys):
    assert main([str(RUNS), "--out", str(tmp_path / "r"), "--no-figures", "--strict"]) == 1
    assert main([str(tmp_path / "empty_does_not_exist"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x")]) == 2


def test_a_real_record_without_curves_or_baseline_still_gives_every_file(tmp_path):
    for seed in (0, 1):
        write_record(
            tmp_path / "runs" / f"{seed}", seed=seed, pool="gem", metrics={"test/acc": 0.5 + seed / 10, "epochs": 2.0}
        )
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "no runs of the baseline pool 'avg'" in md
    assert "PIPELINE CHECK" not in md
    assert r"\hppipelinecheckfalse" in (out / "macros.tex").read_text()
    for name in FIGURES:
        assert (out / "figures" / f"{name}.pdf").is_file()
    cost = (out / "tables" / "cost.tex").read_text()
    assert "not recorded" in cost and "wall time / epochs" in cost


def test_a_record_copied_without_its_csv_still_reports(fixture_runs, tmp_path):
    shutil.rmtree(fixture_runs / "sweep_synth" / "0" / "csv")
    assert main([str(fixture_runs), "--out", str(tmp_path / "o"), "--no-figures"]) == 0
