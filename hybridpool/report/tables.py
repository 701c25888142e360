"""Tables of the report, built once and rendered as LaTeX (booktabs), Markdown and HTML.

Every table is a :class:`Table` of plain-text cells made by the builders below from an
:class:`~hybridpool.report.analysis.Analysis`; :func:`to_latex` escapes and typesets them, so the paper's tables
and the summaries show the same strings. :func:`write_latex` writes the files that ``paper/main.tex`` inputs.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from hybridpool.report.analysis import (
    Analysis,
    cell_order,
    cost_rows,
    dataset_facts,
    pool_internals,
    pool_name,
    selection_text,
)
from hybridpool.report.runs import MISSING, Cell, Study, short_key
from hybridpool.report.stats import EXACT_MAX_N, PERMUTATION_RESAMPLES, MeanCI, PairedComparison

__all__ = [
    "PIPELINE_CHECK",
    "Table",
    "block_slug",
    "build_tables",
    "fmt_ci",
    "fmt_p",
    "fmt_pct",
    "main_blocks",
    "main_table",
    "testsets_table",
    "tex",
    "to_html",
    "to_latex",
    "to_markdown",
    "write_latex",
]

PIPELINE_CHECK = "PIPELINE CHECK on fake fixture records, not results"
DASH = "–"


@dataclass
class Table:
    """A captioned table of plain-text cells. ``align``: LaTeX column spec (``l``/``r``/``c``); ``notes``:
    lines printed under the table; ``label``: LaTeX label; ``name``: file stem."""

    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    align: str
    label: str = ""
    notes: list[str] = field(default_factory=list)
    midrules: list[int] = field(default_factory=list)  # a rule before these row indices


# ============================================================================================ formatting
def fmt_pct(v: float, digits: int = 2, signed: bool = False) -> str:
    """``0.8412`` -> ``84.12`` (percent, or percentage points for differences); ``nan`` -> ``–``."""
    if v is None or not math.isfinite(v):
        return DASH
    x = round(100.0 * v, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return s.replace("-", "−")


def fmt_ci(ci: MeanCI, digits: int = 2, signed: bool = False) -> str:
    """``[low, high]`` in percent, or the reason there is none (``n=1: no interval``)."""
    if ci.n < 2 or not math.isfinite(ci.low):
        return ci.note or DASH
    return f"[{fmt_pct(ci.low, digits, signed)}, {fmt_pct(ci.high, digits, signed)}]"


def fmt_p(p: float) -> str:
    """Two significant digits; ``< 0.001`` below that; ``–`` when the test could not run."""
    if p is None or not math.isfinite(p):
        return DASH
    if p < 0.001:
        return "< 0.001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def fmt_num(v: float, digits: int = 2) -> str:
    if v is None or not math.isfinite(v):
        return DASH
    return f"{v:.{digits}f}".replace("-", "−")


def fmt_int(v: int | None) -> str:
    return DASH if v is None else f"{int(v):,}"


def block_slug(block: tuple[str, ...]) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(block)).strip("-").lower()


def block_title(block: tuple[str, str, str]) -> str:
    task, data, backbone = block
    return f"{data} ({backbone}, {task})"


DATA_NAMES = {
    "cub": "CUB-200-2011 subset",
    "flowers17": "Flowers-17",
    "dtd": "DTD subset",
    "fashion_mnist": "Fashion-MNIST",
}
BACKBONE_NAMES = {
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "EfficientNetLite0": "EfficientNet-Lite0",
    "SmallCNN": "small CNN",
}


def short_block(block: tuple[str, str, str]) -> str:
    """``Flowers-17 (MobileNetV2)``: a block's name for the paper's main table and figures."""
    _, data, backbone = block
    return f"{DATA_NAMES.get(data, data)} ({BACKBONE_NAMES.get(backbone, backbone)})"


def ci_marker(ci: MeanCI) -> str:
    """``*`` when the reported interval is the two-level bootstrap's (wider than t), else ``""``."""
    return "*" if ci.method != "t" else ""


def cell_name(cell: Cell) -> str:
    """The pool's display name plus the arm values that differ from the study's defaults
    (:data:`hybridpool.report.claims.DEFAULT_ARMS`), e.g. ``GeM [learn_p=False, p=4]``."""
    from hybridpool.report.claims import cell_label

    return cell_label(cell)


# ============================================================================================ builders
def results_table(analysis: Analysis, block: tuple[str, str, str], cells: list[Cell]) -> Table:
    """Per pool: mean and CI of the metric, then the paired difference to the baseline with tests and d_z."""
    base = pool_name(analysis.baseline)
    level = round(100 * analysis.level)
    header = [
        "Pool",
        "n",
        "Mean (%)",
        f"{level}% CI",
        f"Δ vs {base} (pp)",
        f"{level}% CI of Δ",
        "zero Δ",
        "p (t, Holm)",
        "p (flip, Holm)",
        "p (W, Holm)",
        "d_z",
        "sig.",
    ]
    notes = []
    ordered = sorted(cells, key=lambda c: cell_order(c, analysis.baseline))
    for c in ordered:
        s = analysis.summary_of(c)
        comp = analysis.comparison_of(c)
        if comp is not None and comp.result.note:
            notes.append(f"{cell_name(c)}: {comp.result.note}.")
        if s.not_used:
            why = ", ".join(f"{k}: {v}" for k, v in sorted(s.not_used.items()))
            notes.append(f"{cell_name(c)}: not in the mean: {why}.")
        if len(s.selection) > 1:
            notes.append(f"{cell_name(c)}: test metrics selected by {selection_text(s.selection)}.")
    notes += [n.split(": ", 1)[1] for n in analysis.notes if n.startswith("/".join(block) + ":")]
    facts = dataset_facts(analysis.study, analysis.metric).get(block)
    rule = selection_text(facts.selection) if facts else "no runs"
    size = f"{facts.n_test_text} test images, one = {fmt_num(facts.image_pp)} pp" if facts and facts.num_test else ""
    caption = (
        f"{block_title(block)}: {analysis.metric} ({rule}; {size + '; ' if size else ''}units: "
        f"{facts.units_text if facts else DASH}) per pool: mean and {level}% interval over units (n = completed/"
        f"expected; * = two-level bootstrap, wider than t), and the paired per-unit difference to {base}: its "
        f"interval, the number of exactly-zero differences, the paired t-test, the sign-flip permutation test and "
        f"the exact Wilcoxon test (supplementary), each Holm-adjusted within the table; d_z = mean/SD of the "
        f"differences; sig. = significant by the decision rule (t and sign-flip both < {analysis.alpha:g})."
    )
    return Table(
        name=f"results-{block_slug(block)}",
        caption=caption,
        header=header,
        rows=_rows(analysis, ordered) or [[DASH] * len(header)],
        align="lrrrrrrrrrrl",
        label=f"tab:results-{block_slug(block)}",
        notes=notes,
    )


def _rows(analysis: Analysis, ordered: list[Cell]) -> list[list[str]]:
    rows = []
    for c in ordered:
        s = analysis.summary_of(c)
        row = [cell_name(c), s.n_label, fmt_pct(s.ci.mean), fmt_ci(s.ci) + ci_marker(s.ci)]
        comp = analysis.comparison_of(c)
        if comp is None:
            row += [DASH] * 8 if c.pool == analysis.baseline else ["not compared"] + [DASH] * 7
        else:
            r = comp.result
            row += [
                fmt_pct(r.mean_diff, signed=True),
                fmt_ci(r.ci, signed=True) + ci_marker(r.ci),
                f"{r.n_zero}/{r.n}",
                fmt_p(r.p_t_holm),
                fmt_p(r.p_perm_holm),
                fmt_p(r.p_w_holm),
                fmt_num(r.d_z),
                sig_word(r),
            ]
        rows.append(row)
    return rows


def sig_word(r: PairedComparison) -> str:
    """``yes``/``no`` by the decision rule, ``–`` when there is no test."""
    if r.n < 2:
        return DASH
    if r.significant and r.ci.low <= 0 <= r.ci.high:
        return "yes (CI spans 0)"
    return "yes" if r.significant else "no"


def overview_table(analysis: Analysis) -> Table:
    """Pools (rows) x blocks (columns): mean ± CI half-width in percent."""
    blocks = list(analysis.study.blocks())
    names: list[str] = []
    for c in sorted(analysis.study.cells, key=lambda c: cell_order(c, analysis.baseline)[1:]):
        if cell_name(c) not in names:
            names.append(cell_name(c))
    rows = []
    for name in names:
        row = [name]
        for b in blocks:
            match = [s for s in analysis.summaries if s.cell.block == b and cell_name(s.cell) == name]
            if not match:
                row.append(DASH)
                continue
            s = match[0]
            if s.ci.n >= 2:
                row.append(f"{fmt_pct(s.ci.mean)} ± {fmt_pct(s.ci.half_width)}{ci_marker(s.ci)}")
            elif s.ci.n == 1:
                row.append(f"{fmt_pct(s.ci.mean)} (n=1)")
            else:
                row.append("no runs")
        rows.append(row)
    level = round(100 * analysis.level)
    return Table(
        name="overview",
        caption=f"{analysis.metric} (%) per pool and dataset: mean ± half-width of the {level}% interval over units "
        "(t; * = the two-level bootstrap over splits, wider than t).",
        header=["Pool", *[block_title(b) for b in blocks]],
        rows=rows or [[DASH]],
        align="l" + "r" * len(blocks),
        label="tab:overview",
    )


def status_table(study: Study) -> Table:
    """Runs per block: completed, failed/interrupted, running, missing; the problems listed as notes."""
    rows = []
    for block, cells in study.blocks().items():
        runs = [r for c in cells for r in c.runs]
        where = block_title(block)
        count = {k: sum(1 for r in runs if r.status == k) for k in ("completed", "failed", "interrupted", "running")}
        missing = sum(1 for p in study.problems if p.kind == "missing" and p.cell.startswith("/".join(block) + "/"))
        expected = sum(len(c.expected_units) for c in cells)
        rows.append(
            [
                where,
                str(len(cells)),
                str(expected),
                str(count["completed"]),
                str(count["failed"] + count["interrupted"]),
                str(count["running"]),
                str(missing),
            ]
        )
    notes = [problem_line(p) for p in study.problems]
    return Table(
        name="status",
        caption="Runs per dataset: cells, expected runs (cells x units), completed, failed or interrupted, "
        "never finished, and missing (a unit, split and seed, that other cells of the block ran). Problems are "
        "listed below.",
        header=["Dataset", "Cells", "Expected", "Completed", "Failed", "Unfinished", "Missing"],
        rows=rows or [[DASH] * 7],
        align="lrrrrrr",
        label="tab:status",
        notes=notes or ["No failed, unfinished, missing or duplicated runs."],
    )


def problem_line(p) -> str:
    seed = "" if p.seed is None else f" seed {p.seed}"
    if getattr(p, "split", None) is not None:
        seed = f" split {p.split}{seed}"
    src = f" ({p.source})" if p.source and p.kind != "duplicate" else ""
    return f"{p.kind.upper()}: {p.cell}{seed}: {p.detail}{src}"


def internals_table(study: Study) -> Table:
    """Final pool internals (mixing weights, GeM p, ...) per cell: mean ± SD over seeds (stability)."""
    rows = []
    for r in pool_internals(study):
        if r["quantity"].startswith("attention_maps"):
            continue
        sd = f" ± {fmt_num(r['sd'], 3)}" if math.isfinite(r["sd"]) else ""
        rows.append(
            [
                block_title(r["cell"].block),
                cell_name(r["cell"]),
                r["quantity"],
                f"{fmt_num(r['mean'], 3)}{sd}",
                str(r["n"]),
            ]
        )
    return Table(
        name="internals",
        caption="Pool internals at the end of training: mean ± SD over runs (a small SD means runs agree).",
        header=["Dataset", "Pool", "Quantity", "Final value", "n"],
        rows=rows or [["no pool internals recorded", "", "", "", ""]],
        align="lllrr",
        label="tab:internals",
    )


def cost_table(study: Study) -> Table:
    """Parameter counts (total, trainable, pool, head) and seconds per epoch per cell."""
    rows = []
    sources = set()
    for r in cost_rows(study):
        p = r["params"]
        t = r["epoch_time"]
        sources.add(r["time_source"])
        time = DASH if t is None else f"{fmt_num(t.mean, 2)}" + (f" ± {fmt_num(t.half_width, 2)}" if t.n > 1 else "")
        widths = sorted({run.embed_dim for run in r["cell"].completed_runs() if run.embed_dim})
        rows.append(
            [
                block_title(r["cell"].block),
                cell_name(r["cell"]),
                " / ".join(f"{w:,}" for w in widths) or DASH,
                fmt_int(p.get("total")) if p else "not recorded",
                fmt_int(p.get("trainable")) if p else DASH,
                fmt_int(p.get("pool")) if p else DASH,
                fmt_int(p.get("head")) if p else DASH,
                time,
            ]
        )
    notes = []
    if "wall time / epochs" in sources:
        notes.append(
            "Time per epoch = run wall time / epochs (includes set-up and testing): an upper bound; runs that "
            "record timing.fit_s or time/epoch_s are timed more closely."
        )
    if "fit time / epochs" in sources:
        notes.append("Time per epoch = fit time (training and validation) / epochs, from the records' timing.fit_s.")
    return Table(
        name="cost",
        caption="Pool output width (the head's input: C for first-order pools, d(d+1)/2 for covariance pooling), "
        "parameters and time per epoch (seconds, mean ± CI half-width over runs) per pool.",
        header=["Dataset", "Pool", "Width", "Params", "Trainable", "Pool params", "Head params", "s / epoch"],
        rows=rows or [[DASH] * 8],
        align="llrrrrrr",
        label="tab:cost",
        notes=notes,
    )


SETUP_KEYS = (
    ("Epochs", "trainer.max_epochs"),
    ("Optimizer", "optim.optimizer._target_"),
    ("LR", "optim.optimizer.lr"),
    ("Weight decay", "optim.optimizer.weight_decay"),
    ("Schedule", "optim.scheduler"),
    ("Pool LR x", "optim.pool_lr_mult"),
    ("Batch", "data.batch_size"),
    ("Image", "data.image_size"),
    ("Train fraction", "data.train_fraction"),
    ("Frozen backbone", "model.freeze_backbone"),
)


def _setup_value(values: list) -> str:
    distinct = sorted({str(v).rsplit(".", 1)[-1] if isinstance(v, str) else str(v) for v in values if v is not None})
    if not distinct:
        return DASH
    return distinct[0] if len(distinct) == 1 else " / ".join(distinct)


def setup_table(study: Study) -> Table:
    """The training recipe (rows) per dataset block (columns), read from the runs' configs (``a / b``: arms)."""
    blocks = study.blocks()
    runs_of = {b: [r for c in cells for r in c.runs] for b, cells in blocks.items()}
    facts = dataset_facts(study)
    rows = [
        ["Seeds", *[str(len(facts[b].seeds)) for b in blocks]],
        ["Data splits", *[str(len(facts[b].splits)) if facts[b].splits else "follows seed" for b in blocks]],
        ["Test images", *[facts[b].n_test_text for b in blocks]],
        ["Test metrics at", *[selection_text(facts[b].selection) for b in blocks]],
    ]
    for name, key in SETUP_KEYS:
        rows.append([name, *[_setup_value([r.flat.get(key) for r in runs]) for runs in runs_of.values()]])
    return Table(
        name="setup",
        caption="Training recipe per dataset, read from the recorded run configs (a / b: the arms differ).",
        header=["Setting", *[block_title(b) for b in blocks]],
        rows=rows,
        align="l" + "r" * len(blocks),
        label="tab:setup",
    )


def main_blocks(study: Study) -> list[tuple[str, str, str]]:
    """The blocks of the paper's main table and figures: the fine-grained study (task ``study_fg``), else all."""
    blocks = list(study.blocks())
    fg = [b for b in blocks if b[0] == "study_fg"]
    return fg or blocks


def main_table(analysis: Analysis) -> Table:
    """The paper's main table: pools (rows, at the default arms) x data sets (columns): test accuracy, mean ± half-width
    of the reported interval, with n units, test-set size and the selection rule of each column; † marks the best
    single pool and ‡ the best hybrid, both chosen on validation."""
    from hybridpool.report.claims import BEST_HYBRID, BEST_SINGLE, S

    study = analysis.study
    blocks = main_blocks(study)
    facts = dataset_facts(study, analysis.metric)
    cells_of = study.blocks()
    pools: list[str] = []
    for c in sorted(study.cells, key=lambda c: cell_order(c, analysis.baseline)[1:]):
        if c.block in blocks and c.pool not in pools:
            pools.append(c.pool)
    rows = [
        [
            "Test images (one image)",
            *[
                f"{facts[b].n_test_text} ({fmt_num(facts[b].image_pp)} pp)" if facts[b].num_test else "not recorded"
                for b in blocks
            ],
        ],
        ["Units (splits × seeds)", *[facts[b].units_text for b in blocks]],
        ["Test metrics at", *[selection_text(facts[b].selection) for b in blocks]],
    ]
    chosen = {b: (BEST_SINGLE.find(cells_of[b])[0], BEST_HYBRID.find(cells_of[b])[0]) for b in blocks}
    older, caption_tail = False, ""
    for pool in pools:
        row = [pool_name(pool)]
        for b in blocks:
            c, _ = S(pool).find(cells_of[b])
            s = analysis.summary_of(c) if c is not None else None
            if s is None or s.ci.n == 0:
                row.append(DASH)
                continue
            mark = "†" if c is chosen[b][0] else "‡" if c is chosen[b][1] else ""
            text = f"{fmt_pct(s.ci.mean)}"
            if s.ci.n >= 2:
                text += f" ± {fmt_pct(s.ci.half_width)}{ci_marker(s.ci)}"
            if s.ci.n != facts[b].units:
                text += f" (n={s.ci.n})"
            if len(s.selection) > 1:
                text += " (mixed selection)"
            unrecorded = [short_key(k) for k in c.label_keys if c.arms.get(k) == MISSING]
            if unrecorded:  # older records stand in for the default: say so
                text += " [" + ", ".join(f"{k}={DASH}" for k in unrecorded) + "]"
                older = True
            row.append(text + mark)
        rows.append(row)
    level = round(100 * analysis.level)
    if older:
        caption_tail = (
            f" [key={DASH}]: the cell's records predate a setting that other cells of the pool record (its rule may "
            "differ from the default's; no cell records the default)."
        )
    return Table(
        name="main",
        caption=f"Test accuracy (%) per pool and data set: mean ± half-width of the {level}% interval over units "
        "(a unit is one data split and seed; the t-interval, or * the two-level bootstrap over splits where it is "
        "wider, which can be asymmetric: its bounds are in the per-dataset tables). Each pool at the study's "
        "default arms. † best single pool, ‡ best hybrid, each chosen on "
        "validation accuracy, not on these numbers. (n=k): fewer units than the column's." + caption_tail,
        header=["Pool", *[short_block(b) for b in blocks]],
        rows=rows if pools else [*rows, [DASH] * (len(blocks) + 1)],
        align="l" + "r" * len(blocks),
        label="tab:main",
        midrules=[3],
    )


def testsets_table(analysis: Analysis) -> Table:
    """Per data set: test images and what one image is worth, units, selection rule, and the exactly-zero paired
    differences of its comparisons with the baseline."""
    facts = dataset_facts(analysis.study, analysis.metric)
    rows = []
    for b, f in facts.items():
        comps = [c.result for c in analysis.comparisons if c.cell.block == b]
        zeros = DASH
        if comps:
            z = [r.n_zero for r in comps]
            n = [r.n for r in comps]
            zeros = (
                f"{sum(z)} of {sum(n)} ({min(z)}–{max(z)} per comparison)"
                if min(z) != max(z)
                else (f"{sum(z)} of {sum(n)} ({z[0]} per comparison)")
            )
        n_min = min((r.n for r in comps if r.n >= 2), default=0)
        p_min = DASH
        if n_min >= 2:
            from hybridpool.report.stats import min_sign_flip_p

            p_min = fmt_p(min_sign_flip_p(n_min))
        rows.append(
            [
                block_title(b),
                " / ".join(str(k) for k in f.num_classes) or DASH,
                f.n_test_text,
                fmt_num(f.image_pp, 2) if f.num_test else DASH,
                f.units_text,
                selection_text(f.selection),
                zeros,
                p_min,
            ]
        )
    base = pool_name(analysis.baseline)
    return Table(
        name="testsets",
        caption="What the numbers rest on, per data set: classes and test images (from the records' data.num_classes "
        "and data.num_samples.test) and "
        "what one image is worth in percentage points, units (splits × seeds), the epoch the test metrics come "
        f"from, the paired differences to {base} that are exactly zero (over all comparisons with {base}: a "
        "difference of zero images), and the smallest p the sign-flip test can reach with that many units "
        f"(exact up to {EXACT_MAX_N} units: 2/2^n; beyond, {PERMUTATION_RESAMPLES:,} random sign patterns: 1/(N+1)).",
        header=[
            "Dataset",
            "Classes",
            "Test images",
            "1 image (pp)",
            "Units",
            "Test metrics at",
            f"Zero Δ vs {base}",
            "min p",
        ],
        rows=rows or [[DASH] * 8],
        align="lrrrrlrr",
        label="tab:testsets",
    )


def build_tables(analysis: Analysis) -> dict[str, Table]:
    """All tables by name: ``main``, ``testsets``, ``status``, ``setup``, ``overview``, ``results-<block>``,
    ``internals``, ``cost``."""
    out: dict[str, Table] = {}
    out["main"] = main_table(analysis)
    out["testsets"] = testsets_table(analysis)
    out["status"] = status_table(analysis.study)
    out["setup"] = setup_table(analysis.study)
    out["overview"] = overview_table(analysis)
    for block, cells in analysis.study.blocks().items():
        t = results_table(analysis, block, cells)
        out[t.name] = t
    out["internals"] = internals_table(analysis.study)
    out["cost"] = cost_table(analysis.study)
    if analysis.study.fixture:
        for t in out.values():
            t.caption = f"{PIPELINE_CHECK}. {t.caption}"
    return out


# ============================================================================================ rendering
_TEX_MAP = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": r"--",
    "—": r"---",
    "≤": r"$\le$",
    "<": r"$<$",
    ">": r"$>$",
    "×": r"$\times$",
    "†": r"\textsuperscript{\dag}",
    "‡": r"\textsuperscript{\ddag}",
    "≥": r"$\ge$",
    "→": r"$\rightarrow$",
    "τ": r"$\tau$",
}


def tex(text: str) -> str:
    """Plain text -> LaTeX (escapes specials, typesets ±, Δ, −, <, d_z)."""
    text = str(text)
    out = "".join(_TEX_MAP.get(ch, ch) for ch in text)
    return out.replace(r"d\_z", r"$d_z$")


def to_latex(t: Table, size: str = r"\small", placement: str = "H") -> str:
    """A booktabs ``table`` environment (caption on top, notes in a footnote-size paragraph under it).

    Needs ``booktabs``, ``graphicx`` and, for the default placement ``H`` (here, not floating), ``float``.
    """
    lines = [
        "% generated by hybridpool-report; do not edit (regenerate with `make paper`)",
        rf"\begin{{table}}[{placement}]",
        r"\centering",
        size,
        rf"\caption{{{tex(t.caption)}}}",
    ]
    if t.label:
        lines.append(rf"\label{{{t.label}}}")
    lines += [
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{t.align}}}",
        r"\toprule",
        " & ".join(tex(h) for h in t.header) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(t.rows):
        if i in t.midrules and i:
            lines.append(r"\midrule")
        lines.append(" & ".join(tex(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if t.notes:
        lines.append(r"\par\smallskip\begin{minipage}{\linewidth}\footnotesize\raggedright")
        lines += [tex(n) + r"\par" for n in t.notes]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def column_aligns(spec: str) -> list[str]:
    """``"lp{5cm}r"`` -> ``["l", "l", "r"]``: one of ``l``/``r``/``c`` per column of a LaTeX column spec
    (``p{...}`` columns are left-aligned)."""
    out, i = [], 0
    while i < len(spec):
        ch = spec[i]
        if ch in "lrc":
            out.append(ch)
        elif ch in "pmb" and i + 1 < len(spec) and spec[i + 1] == "{":
            out.append("l")
            i = spec.index("}", i)
        i += 1
    return out


def to_markdown(t: Table) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = [f"**{t.caption}**", "", "| " + " | ".join(esc(h) for h in t.header) + " |"]
    lines.append("|" + "|".join("---" if a == "l" else "---:" for a in column_aligns(t.align)) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    if t.notes:
        lines.append("")
        lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    e = html.escape
    align = ["left" if a == "l" else "right" for a in column_aligns(t.align)]
    head = "".join(f'<th style="text-align:{a}">{e(h)}</th>' for h, a in zip(t.header, align, strict=False))
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:{a}">{e(c)}</td>' for c, a in zip(row, align, strict=False)) + "</tr>"
        for row in t.rows
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in t.notes)
    return f"<table><caption>{e(t.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" + (
        f"<ul class='notes'>{notes}</ul>" if notes else ""
    )


def write_latex(tables: dict[str, Table], folder: Path) -> list[Path]:
    """``<folder>/<name>.tex`` per table, plus ``results-all.tex`` that inputs every per-block table."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, t in tables.items():
        p = folder / f"{name}.tex"
        p.write_text(to_latex(t))
        written.append(p)
    blocks = [n for n in tables if n.startswith("results-")]
    allp = folder / "results-all.tex"
    allp.write_text(
        "% generated by hybridpool-report: every per-dataset results table\n"
        + "".join(rf"\input{{\hpgenerated/tables/{n}}}" + "\n" for n in blocks)
    )
    written.append(allp)
    return written
