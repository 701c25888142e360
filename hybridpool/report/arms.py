"""Two tables of the study's arms on CUB: the attention diagnosis and the hybrid's Q1 design arms.

- :func:`attention_diagnosis`: GAP, and every cell of ``attn`` and ``qattn`` in the block, each its own row: the
  rule the pools' weight matrices trained by (``optim.pool_weights``: ``head``, the head's rate, or ``pool``, the
  rule before the fix, at ``optim.pool_lr_mult`` times the learning rate), query attention's logits
  (``pool.similarity``, ``pool.temperature``). A key a record lacks (records written before it existed) is shown as
  ``–`` and that cell is a row of its own, never read as the default. Per row: units, test accuracy with the reported
  interval, the paired difference to GAP with its interval, the mean attention entropy over validation images at the
  end of training (``pool/val/attn_entropy``: a fraction of its maximum ``log(H W)``; 1 uniform, 0 one position) and
  the mean best validation epoch (``val/acc_best_epoch``, 0-based). The issue's target, "attn and qattn at least GAP's
  accuracy minus 0.5 pp, no collapsed seed (95% half-width <= 1 pp)", is tested at the default arms
  (:func:`target_verdict`).
- :func:`design_arms`: the scalar hybrid of Q1a at its defaults, with per-branch normalisation before mixing
  (``hybrid(branch_norm=true)``, a pool spec of its own), with ``pool.init=gap``, with an entropy penalty on the
  mixing weights (``module.mix_entropy_weight``) and trained freeze-and-train, each against the best single
  pool chosen on validation (as in Q1a), with the Q1a non-inferiority verdict at Q1a's margin.

Both return an object with a :class:`~.tables.Table` (a placeholder row where the records have no such runs, so the
paper's ``\\input`` always resolves), the LaTeX macros the paper's prose reads (:attr:`Diagnosis.macros`) and plain
data for ``report.json`` (:attr:`Diagnosis.data`). Nothing here reads files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hybridpool.report.analysis import cell_interval, compare_units, pool_name, selection_text
from hybridpool.report.claims import (
    BEST_SINGLE,
    CLAIMS,
    Contrast,
    S,
    Sel,
    arm_value,
    canon,
    cell_label,
    default_arm,
)
from hybridpool.report.runs import MISSING, Cell, Study
from hybridpool.report.stats import MeanCI, PairedComparison
from hybridpool.report.tables import DASH, Table, block_title, fmt_ci, fmt_num, fmt_pct, short_block, tex
from hybridpool.report.verdicts import (
    AGREES,
    CONTRADICTS,
    INCONCLUSIVE,
    NOT_TESTED,
    margin_of,
    verdict_noninferior,
)

__all__ = [
    "DESIGN_ARMS",
    "ENTROPY",
    "TARGET_HALF_WIDTH_PP",
    "TARGET_MARGIN_PP",
    "Diagnosis",
    "attention_diagnosis",
    "design_arms",
    "diagnosis_block",
    "target_verdict",
]

ENTROPY = "pool/val/attn_entropy"
BEST_EPOCH = "val/acc_best_epoch"
METRIC = "test/acc"
#: the attention target of issue 14 on CUB: at least GAP's accuracy minus this margin (pp) ...
TARGET_MARGIN_PP = 0.5
#: ... and no collapsed seed: the 95% half-width of the cell's test accuracy at most this (pp)
TARGET_HALF_WIDTH_PP = 1.0
WEIGHTS, SIMILARITY, TEMPERATURE = "optim.pool_weights", "pool.similarity", "pool.temperature"
ATTENTION_POOLS = ("attn", "qattn")
#: the keys that decide each attention pool's rule (a key the pool has, so a record lacking it is an older record)
RULE_KEYS = {"attn": (WEIGHTS,), "qattn": (WEIGHTS, SIMILARITY)}
#: the hybrid's design arms of Q1 (issue 14, part 4): (macro stem, words, selector)
DESIGN_ARMS: tuple[tuple[str, str, Sel], ...] = (
    ("Default", "defaults (the hybrid of Q1a)", S("hybrid")),
    ("BranchNorm", "per-branch normalisation before mixing", S("hybrid(branch_norm=true)")),
    ("GapInit", "mixing weights initialised at GAP", S("hybrid", {"pool.init": "gap"})),
    ("EntropyLow", "an entropy penalty of 0.1 on the mixing weights", S("hybrid", {"module.mix_entropy_weight": 0.1})),
    ("EntropyHigh", "an entropy penalty of 1 on the mixing weights", S("hybrid", {"module.mix_entropy_weight": 1.0})),
    (
        "FreezeTrain",
        "initialised at GAP and trained freeze-and-train (GAP and the head first, then the mixing weights too)",
        S("hybrid", {"pool.init": "gap", "module.pool_schedule": "freeze_and_train"}),
    ),
)
NOT_RECORDED, DOT_HEAD = "not recorded", "dot, head's rate"
MACRO_ROLES = {  # (pool, role) -> macro stem
    ("attn", "default"): "AttnNew",
    ("attn", "before the fix"): "AttnOld",
    ("qattn", "default"): "QattnNew",
    ("qattn", "before the fix"): "QattnOld",
    ("qattn", DOT_HEAD): "QattnDotHead",
}


@dataclass
class Diagnosis:
    """One of this module's tables with what the paper and ``report.json`` read from it.

    ``block``: the block the macros describe (``None`` without runs); ``table``; ``macros``: ``{name: LaTeX}``;
    ``data``: plain numbers (fractions) for ``report.json``; ``text``: a plain sentence for the summary (the
    attention target's verdict and reasons; the design arms' best single pools and margins); ``verdict``: the
    attention target's overall verdict, or the Q1a verdict of the hybrid at its defaults next to its design arms.
    """

    block: tuple[str, str, str] | None
    table: Table
    macros: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    verdict: str = NOT_TESTED


# ============================================================================================ helpers
def diagnosis_block(study: Study, data: str = "cub", task: str = "study_fg") -> tuple[str, str, str] | None:
    """The block of ``task`` on ``data`` (the frozen MobileNetV2 one when there are several backbones)."""
    blocks = sorted(b for b in study.blocks() if b[0] == task and b[1] == data)
    if not blocks:
        return None
    return next((b for b in blocks if b[2] == "mobilenet_v2"), blocks[0])


def _frac(v: float) -> str:
    """An entropy fraction: two decimals, three below 0.1 (a saturated softmax is 0.00x)."""
    if v is None or not math.isfinite(v):
        return DASH
    return fmt_num(v, 2 if abs(v) >= 0.1 else 3)


def _pp(v: float) -> str:
    return f"{v:g}"


def _mean_metric(cell: Cell, key: str) -> tuple[float, int]:
    """Mean of ``key`` over the runs the cell's test accuracy uses (latest completed run per unit)."""
    vals = [r.metrics[key] for r in cell.latest(METRIC).values() if key in r.metrics]
    return (sum(vals) / len(vals), len(vals)) if vals else (math.nan, 0)


def _config_value(cell: Cell, key: str) -> Any:
    """The value of config ``key`` that the cell's runs share (``None`` when none has it or they differ)."""
    values = {repr(r.flat[key]): r.flat[key] for r in cell.completed_runs() if key in r.flat}
    return next(iter(values.values())) if len(values) == 1 else None


def _epochs(cells: Sequence[Cell]) -> str:
    """The cells' ``trainer.max_epochs`` (``8``, or ``8 / 12`` where they differ)."""
    found = [r.flat.get("trainer.max_epochs") for c in cells for r in c.completed_runs()]
    values = sorted({int(v) for v in found if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return " / ".join(str(v) for v in values) or DASH


def _is_missing(v: Any) -> bool:
    return v is None or v == MISSING


def _text(v: Any) -> str:
    return DASH if _is_missing(v) else f"{v:g}" if isinstance(v, float) else str(v)


def _canon_eq(a: Any, b: Any) -> bool:
    return canon(a) == canon(b)


def rule_role(cell: Cell) -> str:
    """``default``, ``before the fix``, ``dot, head's rate`` (query attention's dot-product logits with the weights
    at the head's rate), ``not recorded`` (an older record that lacks a key of :data:`RULE_KEYS`) or ``variant``."""
    keys = RULE_KEYS.get(cell.pool, ())
    values = {k: arm_value(cell, k) for k in (*keys, TEMPERATURE)}
    if any(_is_missing(values[k]) for k in keys):
        return NOT_RECORDED
    if all(_canon_eq(v, default_arm(cell.pool, k)) for k, v in values.items() if not _is_missing(v)):
        return "default"
    before = values[WEIGHTS] == "pool" and (cell.pool == "attn" or values.get(SIMILARITY) == "dot")
    if before:
        return "before the fix"
    if cell.pool == "qattn" and values[WEIGHTS] == "head" and values.get(SIMILARITY) == "dot":
        return DOT_HEAD
    return "variant"


def _pool_label(cell: Cell) -> str:
    """:func:`.claims.cell_label` without the keys the diagnosis shows in columns of their own; attention pools by
    their spec (``attn``, ``qattn``), as the paper's prose names them."""
    keys = (WEIGHTS, SIMILARITY, TEMPERATURE)
    arms = {k: v for k, v in cell.arms.items() if k not in keys}
    label = cell_label(replace(cell, arms=arms, label_keys=tuple(k for k in cell.label_keys if k not in keys)))
    name = pool_name(cell.pool)
    return cell.pool + label[len(name) :] if cell.pool in ATTENTION_POOLS and label.startswith(name) else label


ROLE_ORDER = ("default", "before the fix", DOT_HEAD, "variant", NOT_RECORDED)


def _weights_text(cell: Cell) -> str:
    v = arm_value(cell, WEIGHTS)
    if _is_missing(v):
        return DASH
    if v == "pool":
        mult = _config_value(cell, "optim.pool_lr_mult")
        return f"pool ({mult:g}×)" if isinstance(mult, (int, float)) else "pool"
    return str(v)


def _logits_text(cell: Cell) -> str:
    tau = arm_value(cell, TEMPERATURE)
    tau_text = f", τ = {_text(tau)}" if not _is_missing(tau) else ""
    if cell.pool == "attn":
        return f"linear{tau_text}"
    if cell.pool == "qattn":
        sim = arm_value(cell, SIMILARITY)
        return f"{_text(sim)}{tau_text}"
    return DASH


def target_verdict(ci: MeanCI, delta: PairedComparison | None, level: float = 0.95) -> tuple[str, str]:
    """The attention target for one pool: ``(verdict, why)``.

    ``agrees`` when the cell's reported half-width is at most :data:`TARGET_HALF_WIDTH_PP` and the interval of the
    paired difference to GAP lies above ``-``:data:`TARGET_MARGIN_PP`; ``contradicts`` when the half-width is larger
    (a collapsed seed widens it) or the interval lies below ``-margin``; ``inconclusive`` when the interval contains
    ``-margin`` (or there is no interval: fewer than two paired units, or every difference equal).
    """
    if delta is None or ci.n == 0:
        return NOT_TESTED, "no runs"
    margin, width = TARGET_MARGIN_PP / 100.0, TARGET_HALF_WIDTH_PP / 100.0
    hw = ci.half_width
    wide = math.isfinite(hw) and hw > width
    v = verdict_noninferior(delta, margin)
    pc = round(100 * level)
    hw_text = f"{pc}% half-width {fmt_pct(hw)} pp {'>' if wide else '≤'} {_pp(TARGET_HALF_WIDTH_PP)} pp"
    below = "; it also lies below 0: worse than GAP, within the margin" if delta.ci.high < 0 else ""
    side = {
        AGREES: f"the interval of Δ lies above −{_pp(TARGET_MARGIN_PP)} pp{below}",
        CONTRADICTS: f"the interval of Δ lies below −{_pp(TARGET_MARGIN_PP)} pp",
        INCONCLUSIVE: f"the interval of Δ contains −{_pp(TARGET_MARGIN_PP)} pp"
        if math.isfinite(delta.ci.low) and delta.ci.high > delta.ci.low
        else f"no interval of Δ (n = {delta.n})",
    }[v]
    if not math.isfinite(hw):
        return INCONCLUSIVE, f"{side}; no {pc}% interval of the cell (n = {ci.n})"
    if wide:
        return CONTRADICTS, f"{hw_text} (collapsed or unstable seeds); {side}"
    return v, f"{side}; {hw_text}"


def _overall(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == AGREES for v in verdicts):
        return AGREES
    if CONTRADICTS in verdicts:
        return CONTRADICTS
    if NOT_TESTED in verdicts:
        return NOT_TESTED
    return INCONCLUSIVE


def _delta_text(r: PairedComparison | None) -> tuple[str, str]:
    if r is None:
        return DASH, DASH
    return fmt_pct(r.mean_diff, signed=True), fmt_ci(r.ci, signed=True)


def _stem_macros(stem: str, out: dict[str, str], row: dict[str, Any] | None) -> None:
    """``\\hp<stem>Acc``, ``Half``, ``N``, ``Delta``, ``DeltaCI``, ``Entropy``, ``Epoch`` (``--`` without runs)."""
    dash = tex(DASH)
    if row is None:
        for k in ("Acc", "Half", "N", "Delta", "DeltaCI", "Entropy", "Epoch"):
            out[f"hp{stem}{k}"] = dash
        return
    ci: MeanCI = row["ci"]
    r: PairedComparison | None = row.get("delta")
    out[f"hp{stem}Acc"] = tex(fmt_pct(ci.mean))
    out[f"hp{stem}Half"] = tex(fmt_pct(ci.half_width))
    out[f"hp{stem}N"] = str(ci.n)
    d, dci = _delta_text(r)
    out[f"hp{stem}Delta"] = tex(d)
    out[f"hp{stem}DeltaCI"] = tex(dci)
    out[f"hp{stem}Entropy"] = tex(_frac(row.get("entropy", math.nan)))
    epoch = row.get("best_epoch", math.nan)
    out[f"hp{stem}Epoch"] = tex(fmt_num(epoch, 1)) if math.isfinite(epoch) else dash


def _ci_json(ci: MeanCI) -> dict[str, Any]:
    return {"n": ci.n, "mean": ci.mean, "low": ci.low, "high": ci.high, "half_width": ci.half_width} | {
        "method": ci.method
    }


def _delta_json(r: PairedComparison | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"n": r.n, "mean": r.mean_diff, "low": r.ci.low, "high": r.ci.high, "n_zero": r.n_zero}


# ============================================================================================ the diagnosis
def attention_diagnosis(study: Study, level: float = 0.95, data: str = "cub") -> Diagnosis:
    """The attention diagnosis on ``data`` (task ``study_fg``): see the module docstring."""
    pc = round(100 * level)
    header = [
        "Pool",
        "Rule",
        "Weights",
        "Logits",
        "n",
        "Test (%)",
        f"{pc}% CI",
        "Δ vs GAP (pp)",
        "Entropy",
        "Best ep.",
    ]
    block = diagnosis_block(study, data)
    cells = study.blocks().get(block, []) if block else []
    gap, _ = S("avg").find(cells)
    gap_vals = gap.completed(METRIC) if gap is not None else {}
    att = [c for c in cells if c.pool in ATTENTION_POOLS and c.completed(METRIC)]
    att.sort(key=lambda c: (ATTENTION_POOLS.index(c.pool), ROLE_ORDER.index(rule_role(c)), cell_label(c)))
    rows, data_rows, table_rows = [], [], []
    for c in ([gap] if gap is not None and gap_vals else []) + att:
        vals = c.completed(METRIC)
        ci = cell_interval(vals, level)
        delta = compare_units(vals, gap_vals, level) if c is not gap and gap_vals else None
        ent, n_ent = _mean_metric(c, ENTROPY)
        epoch, _ = _mean_metric(c, BEST_EPOCH)
        role = "reference" if c is gap else rule_role(c)
        row = {"cell": c, "role": role, "ci": ci, "delta": delta, "entropy": ent, "entropy_n": n_ent}
        row["best_epoch"] = epoch
        rows.append(row)
        d, dci = _delta_text(delta)
        ent_text = _frac(ent) + (f" (n={n_ent})" if 0 < n_ent < ci.n else "")
        table_rows.append(
            [
                _pool_label(c),
                role,
                DASH if c is gap else _weights_text(c),
                DASH if c is gap else _logits_text(c),
                str(ci.n),
                fmt_pct(ci.mean),
                fmt_ci(ci),
                DASH if delta is None else f"{d} {dci}",
                ent_text,
                fmt_num(epoch, 1) if math.isfinite(epoch) else DASH,
            ]
        )
        data_rows.append(
            {
                "pool": c.pool,
                "label": cell_label(c),
                "arms": {k: arm_value(c, k) for k in (WEIGHTS, SIMILARITY, TEMPERATURE)},
                "role": role,
                "test": _ci_json(ci),
                "vs_gap": _delta_json(delta),
                "entropy": ent,
                "entropy_n": n_ent,
                "best_epoch": epoch,
                "selection": c.selection(METRIC),
            }
        )
    where = block_title(block) if block else f"{data} (study_fg)"
    epochs = _epochs([r["cell"] for r in rows])
    caption = (
        f"Attention on frozen features, the diagnosis ({where}): GAP and every recorded arm of attention (attn) and "
        "query attention (qattn), each its own row. Weights: the rate the pools' weight matrices train at (head: the "
        "head's learning rate, the rule after the fix; pool: optim.pool_lr_mult times it, the rule before; "
        f"{DASH}: not recorded, the record predates the setting). Logits: attention's linear score or query "
        "attention's similarity, and the softmax temperature τ. Test accuracy (%, mean and "
        f"{pc}% interval over units), the paired difference to GAP (pp: mean [{pc}% interval]), the attention "
        "entropy over validation images at the end of training as a fraction of its maximum log(HW) (1: uniform, "
        f"0: one position; mean over runs) and the best validation epoch (0-based, mean over runs; of {epochs} epochs)."
    )
    target = _target(rows, level)
    caption += f" Target (attn and qattn at their defaults): {target['text']}"
    table = Table(
        name="attention-diagnosis",
        caption=caption,
        header=header,
        rows=table_rows or [[f"no runs of attn or qattn on {data} (study_fg) in these records"] + [""] * 9],
        align="llllrrrrrr",
        label="tab:attention-diagnosis",
    )
    macros = _diagnosis_macros(block, rows, target)
    verdict = target["verdict"]
    return Diagnosis(
        block,
        table,
        macros,
        {"block": list(block) if block else None, "rows": data_rows, "target": {k: v for k, v in target.items()}},
        target["text"],
        verdict,
    )


def _target(rows: list[dict[str, Any]], level: float) -> dict[str, Any]:
    per: dict[str, tuple[str, str]] = {}
    for pool in ATTENTION_POOLS:
        row = next((r for r in rows if r["cell"].pool == pool and r["role"] == "default"), None)
        per[pool] = target_verdict(row["ci"], row["delta"], level) if row is not None else (NOT_TESTED, "no runs")
    overall = _overall([v for v, _ in per.values()])
    rule = (
        f"at least GAP's accuracy minus {_pp(TARGET_MARGIN_PP)} pp (the {round(100 * level)}% interval of Δ above "
        f"−{_pp(TARGET_MARGIN_PP)} pp) and {round(100 * level)}% half-width ≤ {_pp(TARGET_HALF_WIDTH_PP)} pp"
    )
    parts = [f"{pool_name(p)}: {v} ({why})" for p, (v, why) in per.items()]
    text = f"{rule}: {overall}. " + "; ".join(parts) + "."
    return {"verdict": overall, "text": text, **{p: {"verdict": v, "why": why} for p, (v, why) in per.items()}}


def _diagnosis_macros(
    block: tuple[str, str, str] | None, rows: list[dict[str, Any]], target: dict[str, Any]
) -> dict[str, str]:
    """``\\hpDiag...``: the block, the recipe's numbers, per arm (GAP, AttnNew, AttnOld, QattnNew, QattnOld,
    QattnDotHead) Acc, Half, N, Delta, DeltaCI, Entropy, Epoch, and the target's verdicts (``TargetVerdict``,
    ``TargetAttn``, ``TargetQattn``), reasons (``TargetWhyAttn``, ``TargetWhyQattn``) and sentence (``TargetText``)."""
    out: dict[str, str] = {}
    dash = tex(DASH)
    out["hpDiagData"] = tex(short_block(block)) if block else dash
    gap = next((r for r in rows if r["role"] == "reference"), None)
    _stem_macros("DiagGap", out, gap)
    for (pool, role), stem in MACRO_ROLES.items():
        row = next((r for r in rows if r["cell"].pool == pool and r["role"] == role), None)
        _stem_macros(f"Diag{stem}", out, row)
    cells = [r["cell"] for r in rows]
    runs = [run for c in cells for run in c.completed_runs()]
    lr = {run.flat.get("optim.optimizer.lr") for run in runs} - {None}
    mult = {run.flat.get("optim.pool_lr_mult") for run in runs} - {None}
    widths = {run.embed_dim for c in cells if c.pool in ATTENTION_POOLS for run in c.completed_runs()} - {None}
    qtau = next(
        (arm_value(r["cell"], TEMPERATURE) for r in rows if r["cell"].pool == "qattn" and r["role"] == "default"),
        MISSING,
    )
    one = len(lr) == 1 and len(mult) == 1
    out["hpDiagLr"] = f"{next(iter(lr)):g}" if len(lr) == 1 else dash
    out["hpDiagPoolLrMult"] = f"{next(iter(mult)):g}" if len(mult) == 1 else dash
    out["hpDiagPoolLr"] = f"{next(iter(lr)) * next(iter(mult)):g}" if one else dash
    out["hpDiagChannels"] = f"{next(iter(widths)):,}".replace(",", "{,}") if len(widths) == 1 else dash
    tau_ok = not _is_missing(qtau) and isinstance(qtau, (int, float)) and qtau > 0
    out["hpDiagQattnTemperature"] = f"{qtau:g}" if tau_ok else dash
    out["hpDiagCosineBound"] = f"{1.0 / qtau:g}" if tau_ok else dash
    out["hpDiagEpochs"] = tex(_epochs(cells))
    out["hpDiagMarginPp"] = _pp(TARGET_MARGIN_PP)
    out["hpDiagHalfWidthPp"] = _pp(TARGET_HALF_WIDTH_PP)
    out["hpDiagTargetVerdict"] = tex(target["verdict"])
    out["hpDiagTargetAttn"] = tex(target["attn"]["verdict"])
    out["hpDiagTargetQattn"] = tex(target["qattn"]["verdict"])
    out["hpDiagTargetText"] = tex(target["text"])
    out["hpDiagTargetWhyAttn"] = tex(target["attn"]["why"])
    out["hpDiagTargetWhyQattn"] = tex(target["qattn"]["why"])
    return out


# ============================================================================================ the design arms
def _q1a() -> tuple[tuple[str, ...], Contrast]:
    """Q1a's blocks (patterns) and its non-inferiority test (the margin)."""
    claim = next(c for c in CLAIMS if c.key == "Q1a")
    test = claim.tests[0]
    if not isinstance(test, Contrast):
        raise TypeError(f"Q1a's test is a {type(test).__name__}, not a Contrast")
    return test.blocks or claim.blocks, test


def _matches(block: tuple[str, str, str], patterns: Sequence[str]) -> bool:
    task, data, _ = block
    return any(p in (task, f"{task}/{data}") for p in patterns)


def design_arms(study: Study, level: float = 0.95) -> Diagnosis:
    """The Q1 design arms of the scalar hybrid against the best single pool chosen on validation (see the module
    docstring); one group of rows per block of the Q1 claims that has a design arm besides the default (a Dataset
    column where there are several)."""
    pc = round(100 * level)
    patterns, q1a = _q1a()
    header = [
        "Arm",
        "n",
        "Test (%)",
        f"{pc}% CI",
        "Δ vs best single (pp)",
        "Verdict",
        "Δ vs defaults (pp)",
    ]
    groups: list[tuple[tuple[str, str, str], list[list[str]]]] = []
    data_blocks: list[dict[str, Any]] = []
    macros: dict[str, str] = {}
    first: tuple[str, str, str] | None = None
    notes: list[str] = []
    blocks = study.blocks()
    for block in sorted(blocks, key=lambda b: (b[1] != "cub", b)):
        cells = blocks[block]
        if not _matches(block, patterns):
            continue
        found = [(stem, words, sel.find(cells)[0]) for stem, words, sel in DESIGN_ARMS]
        found = [(stem, words, c) for stem, words, c in found if c is not None and c.completed(METRIC)]
        if not any(stem != "Default" for stem, _, _ in found):
            continue
        best, _ = BEST_SINGLE.find(cells)
        best_vals = best.completed(METRIC) if best is not None else {}
        default = next((c for stem, _, c in found if stem == "Default"), None)
        default_vals = default.completed(METRIC) if default is not None else {}
        rows: list[list[str]] = []
        margin = math.nan
        if best is not None:
            margin, margin_text = margin_of(q1a, found[0][2], best)
            notes.append(
                f"{block_title(block)}: {BEST_SINGLE.chosen_text(cells)}; margin {fmt_pct(margin)} pp ({margin_text})"
            )
        block_data: dict[str, Any] = {"block": list(block), "best_single": best.pool if best else None, "arms": []}
        block_data["margin"] = margin
        if best is not None and best_vals:
            ci = cell_interval(best_vals, level)
            rows.append(
                [f"{cell_label(best)} (best single)", str(ci.n), fmt_pct(ci.mean), fmt_ci(ci), DASH, DASH, DASH]
            )
            block_data["best_single_test"] = _ci_json(ci)
        for stem, words, c in found:
            vals = c.completed(METRIC)
            ci = cell_interval(vals, level)
            r = compare_units(vals, best_vals, level) if best_vals else None
            verdict = verdict_noninferior(r, margin) if r is not None and math.isfinite(margin) else NOT_TESTED
            vs_default = compare_units(vals, default_vals, level) if c is not default and default_vals else None
            d, dci = _delta_text(r)
            dd, ddci = _delta_text(vs_default)
            rows.append(
                [
                    cell_label(c),
                    str(ci.n),
                    fmt_pct(ci.mean),
                    fmt_ci(ci),
                    DASH if r is None else f"{d} {dci}",
                    verdict,
                    DASH if vs_default is None else f"{dd} {ddci}",
                ]
            )
            block_data["arms"].append(
                {
                    "arm": stem,
                    "what": words,
                    "pool": c.pool,
                    "label": cell_label(c),
                    "test": _ci_json(ci),
                    "vs_best_single": _delta_json(r),
                    "verdict": verdict,
                    "vs_default": _delta_json(vs_default),
                    "selection": c.selection(METRIC),
                }
            )
            if first is None:
                macros[f"hpArms{stem}Acc"] = tex(fmt_pct(ci.mean))
                macros[f"hpArms{stem}N"] = str(ci.n)
                macros[f"hpArms{stem}Delta"] = tex(d)
                macros[f"hpArms{stem}DeltaCI"] = tex(dci)
                macros[f"hpArms{stem}Verdict"] = tex(verdict)
        if first is None:
            first = block
            macros["hpArmsData"] = tex(short_block(block))
            macros["hpArmsBest"] = tex(cell_label(best)) if best is not None else tex(DASH)
            macros["hpArmsMargin"] = tex(fmt_pct(margin))
            macros["hpArmsSelection"] = tex(selection_text(found[0][2].selection(METRIC)))
        groups.append((block, rows))
        data_blocks.append(block_data)
    dash = tex(DASH)
    for stem, _, _ in DESIGN_ARMS:
        for k in ("Acc", "N", "Delta", "DeltaCI", "Verdict"):
            macros.setdefault(f"hpArms{stem}{k}", tex(NOT_TESTED) if k == "Verdict" else dash)
    for k in ("hpArmsData", "hpArmsBest", "hpArmsMargin", "hpArmsSelection"):
        macros.setdefault(k, dash)
    several = len(groups) > 1
    rows, midrules = [], []
    for block, group in groups:
        if rows:
            midrules.append(len(rows))
        rows += [[block_title(block), *r] if several else r for r in group]
    where = "" if several or not groups else f" on {block_title(groups[0][0])}"
    arms = "; ".join(f"{sel.label}: {words}" for _, words, sel in DESIGN_ARMS)
    caption = (
        f"Q1 design arms of the scalar hybrid hybrid(avg,max,gem,attn){where}, each a cell of its own ({arms}): "
        f"test accuracy (%, mean and {pc}% interval over units), the paired difference to the best single pool "
        f"chosen on validation (pp: mean [{pc}% interval]) with the Q1a verdict (non-inferiority: agrees when the "
        f"interval lies above minus the margin, the larger of {_pp(q1a.margin_pp)} pp and {q1a.margin_images} test "
        "image; no Holm, one comparison per row), and the paired difference to the hybrid at its defaults (pp: mean "
        "[interval])."
    )
    text = "; ".join(notes)
    table = Table(
        name="q1-design-arms",
        caption=caption,
        header=(["Dataset", *header] if several else header),
        rows=rows or [["no runs of the hybrid's design arms in these records"] + [""] * 6],
        align=("l" if several else "") + "lrrrrlr",
        label="tab:q1-design-arms",
        notes=[f"{n}." for n in notes],
        midrules=midrules,
    )
    verdict = next((a["verdict"] for b in data_blocks[:1] for a in b["arms"] if a["arm"] == "Default"), NOT_TESTED)
    return Diagnosis(first, table, macros, {"blocks": data_blocks}, text, verdict)
