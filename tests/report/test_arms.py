"""The study's arms on CUB (hybridpool/report/arms.py): the attention diagnosis and the hybrid's Q1 design arms.

Numbers are computed here by hand from the fake study's generator (tests/report/fixtures/make_study.py): its test
accuracies per unit, the recorded attention entropies and best epochs; the report's tables, macros and report.json
must show the same. The arms are cells of their own (never merged with the default cell), also next to records
written before the settings that tell them apart existed.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from report_helpers import load_study_generator

from hybridpool.report.analysis import analyse, cell_interval, compare_units
from hybridpool.report.arms import attention_diagnosis, target_verdict
from hybridpool.report.claims import S, cell_label
from hybridpool.report.runs import Unit, group_runs, load_runs
from hybridpool.report.tables import fmt_num, fmt_pct, main_table, tex

GEN = load_study_generator()
WEIGHTS = "optim.pool_weights"
T_975_9 = 2.2621571627409915  # the 0.975 quantile of Student's t with 9 degrees of freedom
T_975_4 = 2.7764451051977987  # ... with 4


def _cub(pool: str) -> dict[Unit, float]:
    """The generator's CUB test accuracies of a pool at the default arms (failed runs left out)."""
    vals = GEN.test_accuracies()[("cub", pool)]
    return {Unit(sp, s): v for (sp, s), v in vals.items() if ("cub", pool, sp, s) not in GEN.FAILED}


def _arm(arm: str) -> dict[Unit, float]:
    return {Unit(sp, s): v for (sp, s), v in GEN.arm_accuracies()[arm].items()}


def _t(x: list[float], t: float = T_975_9) -> tuple[float, float, float]:
    """Mean and t-interval, by hand."""
    a = np.asarray(x, dtype=float)
    m, h = a.mean(), t * a.std(ddof=1) / math.sqrt(a.size)
    return m, m - h, m + h


def _diff(x: dict, y: dict) -> list[float]:
    return [x[u] - y[u] for u in sorted(set(x) & set(y))]


def _ci_tex(lo: float, hi: float, signed: bool = False) -> str:
    return tex(f"[{fmt_pct(lo, signed=signed)}, {fmt_pct(hi, signed=signed)}]")


def _rows(text: str) -> list[list[str]]:
    """The body rows of a generated booktabs table."""
    body = text.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    return [
        [c.strip() for c in line.removesuffix(r"\\").split(" & ")]
        for line in body.splitlines()
        if line.endswith(r"\\") and " & " in line
    ]


def _macro(macros: str, name: str) -> str:
    m = re.search(r"\\newcommand\{\\" + name + r"\}\{(.*)\}\n", macros)
    assert m, name
    return m.group(1)


# the diagnosis' rows: (arm of the generator or a default CUB pool, pool column, rule column, entropy arm, macro stem)
DIAGNOSIS = (
    ("avg", "GAP", "reference", None, "DiagGap"),
    ("attn", "attn", "default", "attn", "DiagAttnNew"),
    ("attn-before", "attn", "before the fix", "attn-before", "DiagAttnOld"),
    ("qattn", "qattn", "default", "qattn", "DiagQattnNew"),
    ("qattn-dot", "qattn", "before the fix", "qattn-dot", "DiagQattnOld"),
    ("qattn-dot-head", "qattn", "dot, head's rate", "qattn-dot-head", "DiagQattnDotHead"),
)


def _values(name: str) -> dict[Unit, float]:
    return _arm(name) if name in GEN.ARMS else _cub(name)


def test_the_attention_diagnosis_table_has_the_hand_computed_numbers(study_report):
    text = (study_report / "tables" / "attention-diagnosis.tex").read_text()
    rows = _rows(text)
    assert [(r[0], r[1]) for r in rows] == [(pool, rule) for _, pool, rule, _, _ in DIAGNOSIS]
    macros = (study_report / "macros.tex").read_text()
    data = json.loads((study_report / "report.json").read_text())["attention_diagnosis"]
    assert data["block"] == ["study_fg", "cub", "mobilenet_v2"] and len(data["rows"]) == len(DIAGNOSIS)
    gap = _cub("avg")
    for row, js, (name, _, _, ent_arm, stem) in zip(rows, data["rows"], DIAGNOSIS, strict=True):
        x = _values(name)
        m, lo, hi = _t(list(x.values()))
        assert row[4] == "10" and row[5] == fmt_pct(m) and row[6] == _ci_tex(lo, hi), name
        assert js["test"]["mean"] == pytest.approx(m) and js["test"]["low"] == pytest.approx(lo)
        assert _macro(macros, f"hp{stem}Acc") == fmt_pct(m)
        assert _macro(macros, f"hp{stem}Half") == fmt_pct((hi - lo) / 2)
        if name == "avg":
            assert row[2] == row[3] == row[7] == row[8] == "--" and js["vs_gap"] is None
            continue
        dm, dlo, dhi = _t(_diff(x, gap))
        assert row[7] == tex(f"{fmt_pct(dm, signed=True)} ") + _ci_tex(dlo, dhi, signed=True), name
        assert js["vs_gap"]["mean"] == pytest.approx(dm) and js["vs_gap"]["high"] == pytest.approx(dhi)
        assert _macro(macros, f"hp{stem}Delta") == tex(fmt_pct(dm, signed=True))
        assert _macro(macros, f"hp{stem}DeltaCI") == _ci_tex(dlo, dhi, signed=True)
        ent = np.mean([GEN.entropy(ent_arm, s) for s in GEN.SEEDS])
        assert ent == pytest.approx(GEN.ENTROPY[ent_arm], rel=1e-5)  # the generator's design
        assert js["entropy"] == pytest.approx(ent) and js["entropy_n"] == 10
        assert row[8] == fmt_num(ent, 2 if ent >= 0.1 else 3) == _macro(macros, f"hp{stem}Entropy")
        epoch = np.mean([GEN.best_epoch(ent_arm, s) for s in GEN.SEEDS])
        assert js["best_epoch"] == pytest.approx(epoch) and row[9] == fmt_num(epoch, 1)
    # the rule columns say what each arm is
    assert rows[2][2] == r"pool (10$\times$)" and rows[1][2] == "head"
    assert rows[3][3] == r"cosine, $\tau$ = 0.1" and rows[4][3] == r"dot, $\tau$ = 1"
    # the recipe's numbers the paragraph reads
    assert _macro(macros, "hpDiagChannels") == "1{,}280" and _macro(macros, "hpDiagPoolLrMult") == "10"
    assert _macro(macros, "hpDiagLr") == "0.003" and _macro(macros, "hpDiagPoolLr") == "0.03"
    assert _macro(macros, "hpDiagQattnTemperature") == "0.1" and _macro(macros, "hpDiagCosineBound") == "10"
    assert _macro(macros, "hpDiagData") == "CUB-200-2011 subset (MobileNetV2)"


def _hand_target(x: dict, gap: dict) -> str:
    """The target by hand: half-width <= 1 pp and the interval of x - GAP above -0.5 pp."""
    _, lo, hi = _t(list(x.values()))
    if (hi - lo) / 2 > 0.01:
        return "contradicts"
    _, dlo, dhi = _t(_diff(x, gap))
    return "agrees" if dlo > -0.005 else "contradicts" if dhi < -0.005 else "inconclusive"


def test_the_attention_target_is_computed_not_typed(study_report, study_records):
    macros = (study_report / "macros.tex").read_text()
    gap = _cub("avg")
    attn, qattn = _hand_target(_cub("attn"), gap), _hand_target(_arm("qattn"), gap)
    assert _macro(macros, "hpDiagTargetAttn") == attn and _macro(macros, "hpDiagTargetQattn") == qattn
    overall = (
        "agrees" if attn == qattn == "agrees" else "contradicts" if "contradicts" in (attn, qattn) else "inconclusive"
    )
    assert _macro(macros, "hpDiagTargetVerdict") == overall == "agrees"  # the fixture's defaults meet it
    target = json.loads((study_report / "report.json").read_text())["attention_diagnosis"]["target"]
    assert target["verdict"] == overall and target["attn"]["verdict"] == attn
    # the arms before the fix miss it: attention by its mean, query attention by its collapsed seeds
    study = group_runs(load_runs([study_records]))
    cub = study.blocks()[("study_fg", "cub", "mobilenet_v2")]
    for sel, arm, why in (
        (S("attn", {"optim.pool_weights": "pool"}), "attn-before", "lies below"),
        (S("qattn", {"pool.similarity": "dot", "optim.pool_weights": "pool"}), "qattn-dot", "collapsed or unstable"),
    ):
        cell, _ = sel.find(cub)
        gap_cell, _ = S("avg").find(cub)
        vals = cell.completed("test/acc")
        verdict, text = target_verdict(cell_interval(vals), compare_units(vals, gap_cell.completed("test/acc")))
        assert verdict == "contradicts" == _hand_target(_arm(arm), gap) and why in text, arm
    md = (study_report / "summary.md").read_text()
    assert "## Attention on frozen features: the diagnosis" in md and "Target: at least GAP's accuracy" in md


def test_the_design_arms_table_against_the_best_single_pool(study_report):
    assert GEN.VAL_BEST["cub"] == "gem"  # the best single pool on validation, chosen by the report too
    best, default = _cub("gem"), _cub("hybrid")
    rows = _rows((study_report / "tables" / "q1-design-arms.tex").read_text())
    assert [r[0] for r in rows] == [
        "GeM (best single)",
        "Hybrid (scalar)",
        "Hybrid (scalar, branch norm)",
        "Hybrid (scalar) [init=gap]",
    ]
    m, lo, hi = _t(list(best.values()))
    assert rows[0][1:4] == ["10", fmt_pct(m), _ci_tex(lo, hi)]
    macros = (study_report / "macros.tex").read_text()
    data = json.loads((study_report / "report.json").read_text())["design_arms"]["blocks"]
    assert len(data) == 1 and data[0]["best_single"] == "gem"
    verdicts = []
    for row, js, (stem, x) in zip(
        rows[1:],
        data[0]["arms"],
        (("Default", default), ("BranchNorm", _arm("hybrid-bn")), ("GapInit", _arm("hybrid-gapinit"))),
        strict=True,
    ):
        m, lo, hi = _t(list(x.values()))
        dm, dlo, dhi = _t(_diff(x, best))
        margin = max(0.01, 1 / 2999)  # Q1a: the larger of 1 pp and one test image
        verdict = "agrees" if dlo > -margin else "contradicts" if dhi < -margin else "inconclusive"
        verdicts.append(verdict)
        assert row[1:6] == [
            "10",
            fmt_pct(m),
            _ci_tex(lo, hi),
            tex(f"{fmt_pct(dm, signed=True)} ") + _ci_tex(dlo, dhi, signed=True),
            verdict,
        ], stem
        assert js["verdict"] == verdict and js["vs_best_single"]["mean"] == pytest.approx(dm)
        assert _macro(macros, f"hpArms{stem}Acc") == fmt_pct(m) and _macro(macros, f"hpArms{stem}Verdict") == verdict
        assert _macro(macros, f"hpArms{stem}Delta") == tex(fmt_pct(dm, signed=True))
        if stem == "Default":
            assert row[6] == "--" and js["vs_default"] is None
        else:
            em, elo, ehi = _t(_diff(x, default))
            assert row[6] == tex(f"{fmt_pct(em, signed=True)} ") + _ci_tex(elo, ehi, signed=True)
    assert verdicts == ["agrees", "agrees", "inconclusive"]  # the fixture's design: GAP init misses the margin
    assert _macro(macros, "hpArmsBest") == "GeM" and _macro(macros, "hpArmsMargin") == fmt_pct(margin) == "1.00"
    assert data[0]["margin"] == pytest.approx(margin)
    assert "## Q1 design arms" in (study_report / "summary.md").read_text()


def test_the_arms_are_cells_of_their_own_and_the_main_table_takes_the_defaults(study_records, study_report):
    study = group_runs(load_runs([study_records]))
    cub = [c for c in study.cells if c.data == "cub"]
    by_pool: dict[str, list] = {}
    for c in cub:
        by_pool.setdefault(c.pool, []).append(c)
    assert {p: len(v) for p, v in by_pool.items() if p in ("attn", "qattn", "hybrid", "hybrid(branch_norm=true)")} == {
        "attn": 2,
        "qattn": 3,
        "hybrid": 2,
        "hybrid(branch_norm=true)": 1,
    }
    # each cell holds exactly its own ten units, with the generator's values (nothing pooled across arms)
    expected = {
        ("attn", "head"): _cub("attn"),
        ("attn", "pool"): _arm("attn-before"),
        ("hybrid", "uniform"): _cub("hybrid"),
        ("hybrid", "gap"): _arm("hybrid-gapinit"),
    }
    for c in cub:
        key = (c.pool, c.arms["optim.pool_weights"] if c.pool == "attn" else c.arms["pool.init"])
        if key in expected:
            assert c.completed("test/acc") == pytest.approx(expected[key]), key
    labels = [cell_label(c) for c in cub]
    assert len(labels) == len(set(labels))  # no two cells of a block share a name
    res = _rows((study_report / "tables" / "results-study-fg-cub-mobilenet-v2.tex").read_text())
    assert len([r[0] for r in res]) == len({r[0] for r in res}) == len(cub)
    main = {r[0]: r[1:] for r in _rows((study_report / "tables" / "main.tex").read_text())}
    for name, vals in (
        ("Attention", _cub("attn")),
        ("Query attention", _arm("qattn")),
        ("Hybrid (scalar)", _cub("hybrid")),
        ("Hybrid (scalar, branch norm)", _arm("hybrid-bn")),
    ):
        assert main[name][0].startswith(fmt_pct(np.mean(list(vals.values()))) + " "), name  # CUB: the default cell
    assert main["Query attention"][1:] == ["--", "--"]  # no query attention on DTD and Flowers-17


def test_records_that_predate_the_settings_stay_their_own_arm(tmp_path):
    root = tmp_path / "records"
    GEN.write_study(root)
    GEN.write_legacy_attention(root)
    study = group_runs(load_runs([root]))
    cub = study.blocks()[("study_fg", "cub", "mobilenet_v2")]
    attn = sorted((c for c in cub if c.pool == "attn"), key=lambda c: str(c.arms["optim.pool_weights"]))
    assert [c.arms["optim.pool_weights"] for c in attn] == ["-", "head", "pool"]
    assert [cell_label(c) for c in attn] == [
        "Attention [pool_weights=–]",
        "Attention [pool_weights=head]",
        "Attention [pool_weights=pool]",
    ]
    # the defaults are the cells that record them, not the older records that lack the key
    for pool in ("attn", "qattn"):
        cell, why = S(pool).find(cub)
        assert why == "" and cell.arms["optim.pool_weights"] == "head" and len(cell.completed("test/acc")) == 10
    # before the new default ran, the older records stand in for it in the main table, marked, never unnamed
    runs = [
        r for r in load_runs([root]) if not (r.data == "cub" and r.pool == "attn" and r.flat.get(WEIGHTS) == "head")
    ]
    interim = group_runs(runs)
    cell, why = S("attn").find(interim.blocks()[("study_fg", "cub", "mobilenet_v2")])
    assert why == "" and cell.arms[WEIGHTS] == "-"
    table = main_table(analyse(interim))
    legacy_mean = np.mean(list(GEN.legacy_accuracies()["attn"].values()))
    row = next(r for r in table.rows if r[0] == "Attention")
    assert row[1].startswith(fmt_pct(legacy_mean)) and row[1].endswith("(n=5) [pool_weights=–]")
    assert "predate a setting" in table.caption
    diag = attention_diagnosis(study)
    legacy = [r for r in diag.data["rows"] if r["role"] == "not recorded"]
    assert [(r["pool"], r["test"]["n"], r["best_epoch"]) for r in legacy] == [
        ("attn", 5, pytest.approx(math.nan, nan_ok=True)),
        ("qattn", 5, pytest.approx(math.nan, nan_ok=True)),
    ]
    assert all(r["selection"] == "last" for r in legacy)
    for r, pool in zip(legacy, ("attn", "qattn"), strict=True):
        m, _, _ = _t(list(GEN.legacy_accuracies()[pool].values()), T_975_4)
        assert r["test"]["mean"] == pytest.approx(m)
    rows = [row for row in diag.table.rows if row[1] == "not recorded"]
    assert [(row[0], row[2], row[9]) for row in rows] == [("attn", "–", "–"), ("qattn", "–", "–")]
    assert rows[1][3] == "–, τ = 1"  # no similarity recorded: the old dot product, its temperature
    assert diag.data["target"]["attn"]["verdict"] == "agrees"  # the target reads the default cells only
    main = {r[0]: r[1:] for r in main_table(analyse(study)).rows}
    assert main["Attention"][0].startswith(fmt_pct(np.mean(list(_cub("attn").values()))) + " ")
