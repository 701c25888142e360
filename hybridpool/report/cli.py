"""``hybridpool-report``: results records -> summaries, LaTeX tables and figures.

    hybridpool-report outputs/synth_probe/multirun/2026-... --out report/
    hybridpool-report paper/results --out paper/generated --baseline avg --metric test/acc
    hybridpool-report --wandb ENTITY/PROJECT --out report/         # online W&B runs

Writes into ``--out``: ``summary.md``, ``summary.html``, ``tables/*.tex`` (booktabs; the paper inputs them),
``figures/*.{png,pdf}``, ``macros.tex`` and ``results.tex`` (the paper's generated results section), ``claims.tex``
(each named claim of the study tested from the records: where the results agree with it and where not),
``runs.csv`` (one row per run), ``report.json`` (every number, machine-readable); of the study's arms on CUB
(:mod:`hybridpool.report.arms`), ``tables/attention-diagnosis.tex`` and ``tables/q1-design-arms.tex``. Failed,
unfinished and missing runs are listed in the summary and in ``report.json``; ``--strict`` makes them an error
(exit code 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "write_report"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _comparison_json(r: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(r)
    out["seeds"] = [str(u) for u in r.seeds]
    out["units"] = [{"split": getattr(u, "split", None), "seed": getattr(u, "seed", u)} for u in r.seeds]
    return out


def _claims_json(claims: Any) -> list[dict[str, Any]]:

    out = []
    for r in claims:
        findings = []
        for f in r.findings:
            findings.append(
                {
                    "test": f.test,
                    "block": list(f.block) if f.block else None,
                    "verdict": f.verdict,
                    "text": f.text,
                    "kind": f.kind,
                    "margin": f.margin,
                    "comparison": _comparison_json(f.comparison) if f.comparison is not None else None,
                    "steps": [_comparison_json(s) for s in f.steps],
                }
            )
        c = r.claim
        out.append(
            {
                "key": c.key,
                "title": c.title,
                "source": c.source,
                "overall": r.overall,
                "summary": r.summary,
                "findings": findings,
            }
        )
    return out


def _report_json(
    analysis: Any, claims: Any = (), literature: str = "", arms: dict[str, Any] | None = None
) -> dict[str, Any]:
    from dataclasses import asdict

    from hybridpool.report.analysis import dataset_facts
    from hybridpool.report.stats import BOOTSTRAP_RESAMPLES, EXACT_MAX_N, PERMUTATION_RESAMPLES

    study = analysis.study
    cells = []
    for s in analysis.summaries:
        c = s.cell
        comp = analysis.comparison_of(c)
        cells.append(
            {
                "task": c.task,
                "data": c.data,
                "backbone": c.backbone,
                "pool": c.pool,
                "arms": {k: v for k, v in c.arms.items()},
                "values": {str(k): v for k, v in s.values.items()},
                "expected_units": [str(u) for u in s.expected],
                "not_used": {str(k): v for k, v in s.not_used.items()},
                "selection": s.selection,
                "ci": asdict(s.ci),
                "vs_baseline": None
                if comp is None
                else {**_comparison_json(comp.result), "baseline_arms": dict(comp.baseline.arms)},
            }
        )
    return _clean(
        {
            "metric": analysis.metric,
            "baseline": analysis.baseline,
            "level": analysis.level,
            "statistics": {
                "alpha": analysis.alpha,
                "decision": "significant when the paired t-test and the paired sign-flip test both reject at alpha "
                "after Holm within the family (a claim, or one dataset's comparisons with the baseline)",
                "sign_flip": f"exact over 2^n patterns for n <= {EXACT_MAX_N}, else {PERMUTATION_RESAMPLES} seeded "
                "random patterns, p = (count + 1) / (N + 1)",
                "interval": "t over all units; with >= 2 splits also the two-level percentile bootstrap (splits, then "
                f"seeds within), {BOOTSTRAP_RESAMPLES} seeded resamples; the wider is reported",
                "supplementary": "exact Wilcoxon signed-rank test",
            },
            "datasets": [
                {
                    "block": list(b),
                    "num_test": list(f.num_test),
                    "image_pp": f.image_pp,
                    "splits": list(f.splits),
                    "seeds": list(f.seeds),
                    "units": f.units,
                    "selection": f.selection,
                }
                for b, f in dataset_facts(study, analysis.metric).items()
            ],
            "literature": literature,
            "pipeline_check": study.fixture,
            "arm_keys": study.arm_keys,
            "counts": study.counts(),
            "problems": [asdict(p) for p in study.problems],
            "notes": analysis.notes,
            "cells": cells,
            "claims": _claims_json(claims),
            **(arms or {}),
        }
    )


def _runs_csv(study: Any, path: Path) -> Path:
    rows = [r.as_row() for r in study.runs]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    baseline: str = "avg",
    metric: str = "test/acc",
    level: float = 0.95,
    wandb_project: str | None = None,
    wandb_offline: str = "auto",
    figures: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Read the runs under ``paths`` (and ``wandb_project``), analyse them and write the report into ``out``.

    Returns ``{"analysis": Analysis, "tables": {...}, "claims": [ClaimResult, ...], "files": [Path, ...]}``.
    Raises ``ValueError`` when no run is found.
    """
    from hybridpool.report.analysis import analyse
    from hybridpool.report.arms import attention_diagnosis, design_arms
    from hybridpool.report.latex import claims_summary_table, write_claims, write_macros, write_results_body
    from hybridpool.report.runs import group_runs, load_runs
    from hybridpool.report.summary import write_summaries
    from hybridpool.report.tables import PIPELINE_CHECK, build_tables, to_latex, write_latex
    from hybridpool.report.verdicts import claim_tables, evaluate_claims, literature_line

    runs = load_runs(paths, wandb_offline=wandb_offline, wandb_project=wandb_project)
    if not runs:
        where = ", ".join(map(str, paths)) or "(no folders given)"
        raise ValueError(
            f"no runs found in {where}{' or W&B ' + wandb_project if wandb_project else ''}: looked for results.json"
            " files (and wandb/offline-run-*/run-*.wandb) recursively"
        )
    study = group_runs(runs, metric=metric)
    analysis = analyse(study, metric=metric, baseline=baseline, level=level)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = command or "hybridpool-report " + " ".join(shlex.quote(str(p)) for p in paths)
    tables = build_tables(analysis)
    diagnosis, q1_arms = attention_diagnosis(study, level), design_arms(study, level)
    for t in (diagnosis.table, q1_arms.table):
        if study.fixture:
            t.caption = f"{PIPELINE_CHECK}. {t.caption}"
        tables[t.name] = t
    files = write_latex(tables, out / "tables")
    figs: dict[str, list[Path]] = {}
    if figures:
        from hybridpool.report.figures import write_figures

        figs = write_figures(analysis, out / "figures")
        files += [p for v in figs.values() for p in v]
    claims = evaluate_claims(study, level, alpha=analysis.alpha)
    lit_plain, lit_tex = literature_line(study, level)
    extra = {**diagnosis.macros, **q1_arms.macros}
    files.append(write_macros(analysis, out / "macros.tex", command, claims, lit_tex, extra))
    files.append(write_results_body(analysis, tables, out / "results.tex"))
    claim_tabs = {r.claim.key: claim_tables(r, study, level) for r in claims}
    summary_table = claims_summary_table(claims)
    if study.fixture:
        for t in (*(t for ts in claim_tabs.values() for t in ts), summary_table):
            t.caption = f"{PIPELINE_CHECK}. {t.caption}"
    (out / "tables" / "claims-summary.tex").write_text(to_latex(summary_table))
    files.append(out / "tables" / "claims-summary.tex")
    files.append(write_claims(claims, claim_tabs, out / "claims.tex", level, analysis.alpha))
    arm_sections = [
        ("Attention on frozen features: the diagnosis", f"Target: {diagnosis.text}", diagnosis.table),
        ("Q1 design arms", "", q1_arms.table),  # the best single pools and margins: the table's notes
    ]
    files += write_summaries(
        analysis, tables, figs, out, command, claims, claim_tabs, summary_table, lit_plain, arm_sections
    )
    files.append(_runs_csv(study, out / "runs.csv"))
    rj = out / "report.json"
    arms_json = {"attention_diagnosis": diagnosis.data, "design_arms": q1_arms.data}
    rj.write_text(json.dumps(_report_json(analysis, claims, lit_plain, arms_json), indent=1, default=str) + "\n")
    files.append(rj)
    return {"analysis": analysis, "tables": tables, "claims": claims, "files": files}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridpool-report",
        description="Summaries, LaTeX tables and figures from hybridpool results records (results.json), "
        "offline W&B run files, or a W&B project.",
        epilog="Example: hybridpool-report outputs/synth_probe/multirun --out report/ --baseline avg",
    )
    p.add_argument("paths", nargs="*", help="run folders, sweep folders or results.json files (searched recursively)")
    p.add_argument("--out", required=True, help="folder to write the report into (created)")
    p.add_argument(
        "--baseline",
        default="avg",
        help="pool spec the others are compared with (default: avg = GAP; old conf names such as hybrid_scalar work)",
    )
    p.add_argument("--metric", default="test/acc", help="final metric to compare (default: test/acc)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this W&B project (online)")
    p.add_argument(
        "--wandb-offline",
        choices=("auto", "never", "only"),
        default="auto",
        help="offline W&B files (wandb/offline-run-*): auto = for runs without results.json (default)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the figures (tables and summaries only)")
    p.add_argument("--strict", action="store_true", help="exit with 1 when runs failed, are unfinished or missing")
    p.add_argument("--command", help=argparse.SUPPRESS)  # the command line recorded in the outputs
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.paths and not args.wandb:
        print("hybridpool-report: give run folders or --wandb ENTITY/PROJECT", file=sys.stderr)
        return 2
    if not 0 < args.level < 1:
        print(f"hybridpool-report: --level must be in (0, 1), got {args.level}", file=sys.stderr)
        return 2
    command = args.command or "hybridpool-report " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    try:
        result = write_report(
            args.paths,
            args.out,
            baseline=args.baseline,
            metric=args.metric,
            level=args.level,
            wandb_project=args.wandb,
            wandb_offline=args.wandb_offline,
            figures=not args.no_figures,
            command=command,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"hybridpool-report: {err}", file=sys.stderr)
        return 2
    analysis = result["analysis"]
    study = analysis.study
    c = study.counts()
    print(
        f"[hybridpool-report] {len(study.runs)} runs, {len(study.cells)} cells: completed {c.get('completed', 0)}, "
        f"failed {c.get('failed', 0) + c.get('interrupted', 0)}, unfinished {c.get('running', 0)}, "
        f"missing {c.get('missing', 0)}"
    )
    if study.fixture:
        print("[hybridpool-report] PIPELINE CHECK: fixture records (fake numbers), labelled as such in every output")
    from hybridpool.report.tables import problem_line

    for p in study.problems:
        print(f"[hybridpool-report]   {problem_line(p)}")
    for n in analysis.notes:
        print(f"[hybridpool-report]   not compared: {n}")
    for r in result["claims"]:
        print(f"[hybridpool-report] claim {r.claim.key} ({r.claim.title}): {r.overall}")
    print(
        f"[hybridpool-report] wrote {len(result['files'])} files to {args.out} "
        f"(summary: {Path(args.out) / 'summary.md'})"
    )
    if args.strict and study.problems:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
