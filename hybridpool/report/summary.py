"""The human-readable summaries: ``summary.md`` and a self-contained ``summary.html`` (same content).

Failed, unfinished and missing runs come first, before any mean, so a reader never takes an average of what
happened to finish for the whole study.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from hybridpool.report.analysis import Analysis, pool_name
from hybridpool.report.latex import CLAIMS_INTRO, comparison_sentences
from hybridpool.report.tables import PIPELINE_CHECK, Table, problem_line, to_html, to_markdown
from hybridpool.report.verdicts import ClaimResult

__all__ = ["write_summaries"]

FIGURE_TITLES = {
    "differences": "Paired differences to the baseline per data set (main figure)",
    "learned": "Learned mixing weights and GeM p per data set",
    "accuracy": "Accuracy per pool and dataset (mean and CI over units)",
    "paired": "Paired per-unit differences to the baseline",
    "mixing_weights": "Mixing weights over training",
    "gem_p": "GeM p over training",
    "attention_grid": "Attention maps",
    "cost": "Parameters and time per epoch",
}


def _claim_blocks(claims: list[ClaimResult], tables: dict[str, list[Table]], level: float, alpha: float = 0.05) -> list:
    """The "Claims" section: per claim its verdict, one line per test, one item per data set, its tables."""
    intro = CLAIMS_INTRO.format(level=round(100 * level), alpha=f"{alpha:g}")
    out: list[tuple[str, object]] = [("h2", "Claims"), ("para", intro)]
    for r in claims:
        c = r.claim
        out.append(("h3", f"{c.key}: {c.title}"))
        note = f" {c.note}" if c.note else ""
        lines = " ".join(s + "." for s in r.summary)
        out.append(("para", f"Source: {c.source}. Verdict: {r.overall}. {lines}{note}"))
        out.append(("list", [f.text for f in r.findings]))
        out += [("table", t) for t in tables.get(c.key, [])]
    return out


def _blocks(
    analysis: Analysis,
    tables: dict[str, Table],
    figures: dict[str, list[Path]],
    command: str,
    claims: list[ClaimResult] | None = None,
    claim_tables: dict[str, list[Table]] | None = None,
    claims_summary: Table | None = None,
    literature: str = "",
    arms: list[tuple[str, str, Table]] | None = None,
) -> list:
    """The summary as a list of ``(kind, payload)``: heading, para, list, table, figure."""
    study = analysis.study
    counts = study.counts()
    out: list[tuple[str, object]] = [("h1", "hybridpool report")]
    if study.fixture:
        out.append(("warn", f"{PIPELINE_CHECK}: these records are fake fixtures; no number here is a finding."))
    out.append(
        (
            "para",
            f"{len(study.runs)} runs in {len(study.cells)} cells ({len(study.blocks())} dataset blocks); metric "
            f"{analysis.metric}, baseline {pool_name(analysis.baseline)}, {round(100 * analysis.level)}% intervals "
            "over units (t; the two-level bootstrap over splits where wider); significant = paired t-test and "
            "sign-flip "
            f"test both reject at {analysis.alpha:g} after Holm. "
            f"Completed {counts.get('completed', 0)}, failed {counts.get('failed', 0)}, interrupted "
            f"{counts.get('interrupted', 0)}, unfinished {counts.get('running', 0)}, missing "
            f"{counts.get('missing', 0)}. Made with: {command}",
        )
    )
    out.append(("h2", "Failed, unfinished and missing runs"))
    if study.problems:
        out.append(("list", [problem_line(p) for p in study.problems]))
    else:
        out.append(("para", "None: every expected run completed."))
    if analysis.notes:
        out.append(("list", analysis.notes))
    out.append(("table", tables["status"]))
    out.append(("table", tables["setup"]))
    out.append(("h2", "Main results"))
    out.append(("table", tables["main"]))
    if claims_summary is not None:
        out.append(("table", claims_summary))
    if literature:
        out.append(("para", literature))
    out.append(("h3", "What the numbers rest on"))
    out.append(("table", tables["testsets"]))
    for title, text, table in arms or []:
        out.append(("h2", title))
        if text:
            out.append(("para", text))
        out.append(("table", table))
    out.append(("h2", "Results"))
    out.append(("table", tables["overview"]))
    for name, t in tables.items():
        if name.startswith("results-"):
            out.append(("table", t))
    sentences = comparison_sentences(analysis)
    if sentences:
        out.append(("h3", f"Comparisons with {pool_name(analysis.baseline)}"))
        out.append(("list", sentences))
    if claims is not None:
        out += _claim_blocks(claims, claim_tables or {}, analysis.level, analysis.alpha)
    out.append(("h2", "Figures"))
    for name, paths in figures.items():
        png = [p for p in paths if p.suffix == ".png"]
        if png:
            out.append(("figure", (FIGURE_TITLES.get(name, name), png[0])))
    out.append(("h2", "Pool internals"))
    out.append(("table", tables["internals"]))
    out.append(("h2", "Cost"))
    out.append(("table", tables["cost"]))
    return out


def _markdown(blocks: list, base: Path) -> str:
    lines = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            lines.append("#" * int(kind[1]) + f" {payload}\n")
        elif kind == "warn":
            lines.append(f"> **{payload}**\n")
        elif kind == "para":
            lines.append(f"{payload}\n")
        elif kind == "list":
            lines.append("\n".join(f"- {x}" for x in payload) + "\n")
        elif kind == "table":
            lines.append(to_markdown(payload))
        elif kind == "figure":
            title, path = payload
            lines.append(f"![{title}]({path.relative_to(base).as_posix()})\n")
    return "\n".join(lines)


def _html(blocks: list, title: str) -> str:
    e = html.escape
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(str(payload))}</{kind}>")
        elif kind == "warn":
            body.append(f"<p class='warn'>{e(str(payload))}</p>")
        elif kind == "para":
            body.append(f"<p>{e(str(payload))}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in payload) + "</ul>")
        elif kind == "table":
            body.append(to_html(payload))
        elif kind == "figure":
            t, path = payload
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(
                f"<figure><img alt='{e(t)}' src='data:image/png;base64,{data}'><figcaption>{e(t)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}caption{text-align:left;font-weight:600;"
        "padding:.3em 0}th,td{padding:.2em .6em;border-bottom:1px solid #ddd}thead th{border-bottom:2px solid #444}"
        "img{max-width:100%}.warn{background:#fee;border:2px solid #c00;padding:.6em;font-weight:700}"
        "ul.notes{font-size:85%;color:#444}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )


def write_summaries(
    analysis: Analysis,
    tables: dict[str, Table],
    figures: dict[str, list[Path]],
    out: Path,
    command: str,
    claims: list[ClaimResult] | None = None,
    claim_tables: dict[str, list[Table]] | None = None,
    claims_summary: Table | None = None,
    literature: str = "",
    arms: list[tuple[str, str, Table]] | None = None,
) -> list[Path]:
    """``<out>/summary.md`` (figures linked) and ``<out>/summary.html`` (figures embedded).

    ``claims`` (with ``claim_tables`` by claim key) adds the "Claims" section after the results; ``arms``
    (``(title, text, table)``: the attention diagnosis and the Q1 design arms of :mod:`.arms`) a section each after
    the main results.
    """
    blocks = _blocks(analysis, tables, figures, command, claims, claim_tables, claims_summary, literature, arms)
    md = out / "summary.md"
    md.write_text(_markdown(blocks, out))
    page = out / "summary.html"
    page.write_text(_html(blocks, "hybridpool report"))
    return [md, page]
