"""Figures of the report (matplotlib, Agg backend), each written as PNG and PDF.

The paper's two main figures:

- ``differences``: per data set of the main table, each pool's paired per-unit differences to the baseline (GAP)
  in percentage points, with the reported interval of the mean difference (red: significant by the decision rule
  after Holm), a band of plus or minus one test image, and the count of exactly-zero differences.
- ``learned``: what the pools learned, per data set: the default hybrid's mixing weights per branch and GeM's
  exponent p (alone and as a hybrid branch), as recorded at the end of training, per unit with mean and interval.

The report's other figures:

- ``accuracy``: the metric per pool and dataset: every seed as a dot, the mean with its t-interval.
- ``paired``: per-seed differences to the baseline pool, mean difference with its interval, Holm-adjusted
  p-values and Cohen's d_z written next to it.
- ``mixing_weights``: a hybrid pool's mixing weights over training (mean over seeds, band = min..max).
- ``gem_p``: GeM's exponent p over training, alone and inside hybrids.
- ``attention_grid``: attention maps per pool (regenerated from ``attention_maps.npz`` arrays when a run saved
  them; otherwise the top rows of the run's ``attention_maps.png``).
- ``cost``: parameters and time per epoch per pool.

A figure with nothing to show is still written, saying what is missing, so the paper never lacks a file.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from hybridpool.report.analysis import Analysis, cell_interval, cell_order, cost_rows, dataset_facts, pool_name
from hybridpool.report.runs import Cell, Run, Study
from hybridpool.report.tables import (
    PIPELINE_CHECK,
    block_title,
    cell_name,
    fmt_p,
    main_blocks,
    selection_text,
    short_block,
)

__all__ = ["FIGURES", "write_figures"]

FIGURES = ("differences", "learned", "accuracy", "paired", "mixing_weights", "gem_p", "attention_grid", "cost")
WIDTH = 6.5  # inches: the text width of an article
plt.rcParams.update(
    {
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "svg.hashsalt": "hybridpool",
    }
)


def _save(fig: Any, folder: Path, name: str, fixture: bool) -> list[Path]:
    if fixture:
        fig.text(0.5, 1.03, PIPELINE_CHECK, ha="center", va="bottom", color="crimson", fontsize=9, weight="bold")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = folder / f"{name}.{ext}"
        kwargs = {"dpi": 150} if ext == "png" else {"metadata": {"CreationDate": None, "ModDate": None}}
        fig.savefig(p, bbox_inches="tight", **kwargs)
        out.append(p)
    plt.close(fig)
    return out


def _placeholder(folder: Path, name: str, message: str, fixture: bool) -> list[Path]:
    fig, ax = plt.subplots(figsize=(WIDTH, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    return _save(fig, folder, name, fixture)


def _grid(n: int, ncols: int = 2, height: float = 2.4) -> tuple[Any, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, height * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _short(cell: Cell) -> str:
    return cell_name(cell).replace(" [", "\n[")


# ============================================================================================ main figures
def fig_differences(analysis: Analysis, folder: Path) -> list[Path]:
    """Paired differences to the baseline per data set of the main table (one panel each)."""
    from hybridpool.report.claims import S

    study = analysis.study
    fixture = study.fixture
    blocks = main_blocks(study)
    cells_of = study.blocks()
    facts = dataset_facts(study, analysis.metric)
    panels = []
    for b in blocks:
        comps = []
        for c in sorted(cells_of[b], key=lambda c: cell_order(c, analysis.baseline)):
            if c.pool == analysis.baseline:
                continue
            chosen, _ = S(c.pool).find(cells_of[b])
            comp = analysis.comparison_of(c) if chosen is c else None
            if comp is not None and comp.result.n >= 1:
                comps.append(comp)
        if comps:
            panels.append((b, comps))
    base = pool_name(analysis.baseline)
    if not panels:
        return _placeholder(folder, "differences", f"No paired comparisons with {base} in these runs.", fixture)
    order: list[str] = []  # one row per pool across the panels, in the tables' order
    for _, comps in panels:
        for comp in comps:
            if cell_name(comp.cell) not in order:
                order.append(cell_name(comp.cell))
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH, 0.3 * len(order) + 1.5), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, (b, comps) in zip(axes[0], panels, strict=True):
        f = facts[b]
        if f.num_test:
            ax.axvspan(-f.image_pp, f.image_pp, color="C0", alpha=0.12, lw=0)
        ax.axvline(0, color="C0", lw=0.8, ls="--")
        for comp in comps:
            i = order.index(cell_name(comp.cell))
            r = comp.result
            d = 100 * np.asarray(r.diffs, dtype=float)
            ax.scatter(d, i + rng.uniform(-0.18, 0.18, d.size), s=4, color="0.65", zorder=2, lw=0)
            if r.n >= 2 and np.isfinite(r.ci.low):
                spans = r.ci.low <= 0 <= r.ci.high
                color = ("C1" if spans else "C3") if r.significant else "k"
                lo, hi = 100 * (r.mean_diff - r.ci.low), 100 * (r.ci.high - r.mean_diff)
                ax.errorbar(
                    100 * r.mean_diff,
                    i,
                    xerr=[[lo], [hi]],
                    fmt="o",
                    ms=3.5,
                    color=color,
                    capsize=2.5,
                    zorder=3,
                    mfc="white" if r.ci.method != "t" else color,
                )
            else:
                ax.plot(100 * r.mean_diff, i, "o", color="k", ms=3.5)
            ax.annotate(
                f"{r.n_zero}/{r.n}",
                (1, i),
                xycoords=("axes fraction", "data"),
                xytext=(2, 0),
                textcoords="offset points",
                va="center",
                ha="left",
                fontsize=5.5,
            )
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        sel = selection_text(f.selection).replace("validation", "val.")
        name = short_block(b).replace(") (", ")\n(")
        ax.set_title(f"{name}\n{f.units_text} units, {sel}", fontsize=6)
        ax.set_xlabel(f"Δ vs {base} (pp)")
        ax.grid(axis="x", lw=0.3)
    fig.suptitle(
        f"Paired differences to {base} per unit (grey), mean and {round(100 * analysis.level)}% interval (open: "
        "two-level bootstrap; red: significant, t and sign-flip after Holm;\norange: significant, but the interval "
        "spans 0); band: ±1 test image; right: zero differences",
        y=1.0,
        fontsize=6.5,
    )
    fig.tight_layout()
    return _save(fig, folder, "differences", fixture)


def _final_values(cell: Cell, key: str) -> dict:
    return cell.completed(key)


def fig_learned(analysis: Analysis, folder: Path) -> list[Path]:
    """The default hybrid's final mixing weights, and GeM's p (alone and in the hybrid), per data set."""
    from hybridpool.report.claims import S

    study = analysis.study
    fixture = study.fixture
    blocks = main_blocks(study)
    cells_of = study.blocks()
    mix: list[tuple[tuple, Cell, list[str]]] = []
    ps: list[tuple[tuple, str, dict]] = []
    for b in blocks:
        hyb, _ = S("hybrid").find(cells_of[b])
        if hyb is not None:
            keys = sorted(
                {
                    k
                    for r in hyb.completed_runs()
                    for k in r.metrics
                    if k.startswith("pool/mix/") and not k.endswith(("_std", "blend"))
                }
            )
            if keys:
                mix.append((b, hyb, keys))
            vals = _final_values(hyb, "pool/gem/p")
            if vals:
                ps.append((b, "GeM branch of the hybrid", vals))
        gem, _ = S("gem").find(cells_of[b])
        if gem is not None:
            vals = _final_values(gem, "pool/p") or _final_values(gem, "pool/gem/p")
            if vals:
                ps.append((b, "GeM alone", vals))
    if not mix and not ps:
        return _placeholder(
            folder,
            "learned",
            "No recorded mixing weights (pool/mix/*) or GeM p (pool/p, pool/gem/p) in these runs.",
            fixture,
        )
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(WIDTH, 2.8), gridspec_kw={"width_ratios": [3, 2]})
    rng = np.random.default_rng(0)
    if mix:
        branches = sorted(
            {k.split("/")[-1] for _, _, keys in mix for k in keys},
            key=lambda x: ["avg", "max", "gem", "attn"].index(x) if x in ("avg", "max", "gem", "attn") else 9,
        )
        width = 0.8 / len(branches)
        for j, br in enumerate(branches):
            for i, (_, cell, _) in enumerate(mix):
                vals = cell.completed(f"pool/mix/{br}")
                if not vals:
                    continue
                ci = cell_interval(vals, analysis.level)
                x = i + (j - (len(branches) - 1) / 2) * width
                a1.bar(x, ci.mean, width=width * 0.9, color=f"C{j}", alpha=0.75, label=br if i == 0 else None)
                if ci.n >= 2:
                    a1.errorbar(
                        x, ci.mean, yerr=[[ci.mean - ci.low], [ci.high - ci.mean]], color="k", lw=0.8, capsize=1.5
                    )
                v = np.asarray(list(vals.values()))
                a1.scatter(x + rng.uniform(-width / 4, width / 4, v.size), v, s=2, color="k", alpha=0.5, lw=0, zorder=3)
        a1.axhline(1.0 / len(branches), color="0.5", lw=0.6, ls=":")
        a1.set_xticks(range(len(mix)), [short_block(b).replace(" (", "\n(", 1) for b, _, _ in mix], fontsize=6)
        a1.set_ylabel("mixing weight (end of training)")
        a1.set_title(f"{pool_name('hybrid')}: weights per branch (dotted: uniform start)")
        a1.legend(frameon=False, ncol=len(branches), fontsize=6, loc="upper left")
        a1.grid(axis="y", lw=0.3)
    else:
        a1.axis("off")
        a1.text(0.5, 0.5, "no mixing weights recorded (pool/mix/*)", ha="center", va="center")
    if ps:
        labels = sorted({lbl for _, lbl, _ in ps})
        names = [short_block(b) for b in blocks if any(bb == b for bb, _, _ in ps)]
        labelled: set[str] = set()
        for j, lbl in enumerate(labels):
            for b, l2, vals in ps:
                if l2 != lbl:
                    continue
                i = names.index(short_block(b))
                x = i + (j - (len(labels) - 1) / 2) * 0.3
                v = np.asarray(list(vals.values()), dtype=float)
                ci = cell_interval(vals, analysis.level)
                a2.scatter(x + rng.uniform(-0.05, 0.05, v.size), v, s=3, color=f"C{j + 4}", alpha=0.5, lw=0)
                yerr = [[ci.mean - ci.low], [ci.high - ci.mean]] if ci.n >= 2 else None
                a2.errorbar(
                    x,
                    ci.mean,
                    yerr=yerr,
                    fmt="o",
                    ms=3,
                    color=f"C{j + 4}",
                    capsize=2,
                    label=None if lbl in labelled else lbl,
                )
                labelled.add(lbl)
        a2.axhline(3.0, color="0.5", lw=0.6, ls=":")
        a2.set_xticks(
            range(len(names)), [n.replace(" (", "\n(", 1) for n in names], fontsize=5.5, rotation=25, ha="right"
        )
        a2.set_ylabel("GeM p (end of training)")
        a2.set_title("GeM exponent p (dotted: p = 3 at the start)")
        a2.legend(frameon=False, fontsize=6)
        a2.grid(axis="y", lw=0.3)
    else:
        a2.axis("off")
        a2.text(0.5, 0.5, "no GeM p recorded (pool/p, pool/gem/p)", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, folder, "learned", fixture)


# ============================================================================================ accuracy
def fig_accuracy(analysis: Analysis, folder: Path) -> list[Path]:
    blocks = analysis.study.blocks()
    fixture = analysis.study.fixture
    if not blocks:
        return _placeholder(folder, "accuracy", "No runs found.", fixture)
    fig, axes = _grid(len(blocks))
    rng = np.random.default_rng(0)
    for ax, (block, cells) in zip(axes, blocks.items(), strict=True):
        cells = sorted(cells, key=lambda c: cell_order(c, analysis.baseline))
        for i, c in enumerate(cells):
            s = analysis.summary_of(c)
            vals = 100 * np.asarray(list(s.values.values()), dtype=float)
            ax.scatter(i + rng.uniform(-0.12, 0.12, vals.size), vals, s=8, color="0.6", zorder=2)
            if s.ci.n >= 2:
                ax.errorbar(
                    i, 100 * s.ci.mean, yerr=100 * s.ci.half_width, fmt="o", color="k", ms=4, capsize=3, zorder=3
                )
            elif s.ci.n == 1:
                ax.plot(i, 100 * s.ci.mean, "o", color="k", ms=4, zorder=3)
            if s.not_used:
                ax.annotate(
                    f"n={s.n_label}",
                    (i, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    color="crimson",
                    fontsize=6,
                )
        base = [analysis.summary_of(c) for c in cells if c.pool == analysis.baseline]
        if base and base[0].ci.n:
            ax.axhline(100 * base[0].ci.mean, ls="--", lw=0.7, color="C0")
        ax.set_xticks(range(len(cells)), [_short(c) for c in cells], rotation=45, ha="right")
        ax.set_title(block_title(block))
        ax.set_ylabel(f"{analysis.metric} (%)")
        ax.grid(axis="y", lw=0.3)
    fig.suptitle(f"Mean and {round(100 * analysis.level)}% CI over units (dots: units; red: incomplete cells)", y=1.0)
    fig.tight_layout()
    return _save(fig, folder, "accuracy", fixture)


def _p(p: float) -> str:
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def fig_paired(analysis: Analysis, folder: Path) -> list[Path]:
    fixture = analysis.study.fixture
    by_block: dict[tuple, list] = defaultdict(list)
    for comp in analysis.comparisons:
        by_block[comp.cell.block].append(comp)
    if not by_block:
        return _placeholder(
            folder, "paired", f"No paired comparisons: no cell shares seeds with a {analysis.baseline!r} cell.", fixture
        )
    fig, axes = _grid(len(by_block))
    base = pool_name(analysis.baseline)
    for ax, (block, comps) in zip(axes, by_block.items(), strict=True):
        comps = sorted(comps, key=lambda c: cell_order(c.cell, analysis.baseline))
        for i, comp in enumerate(comps):
            r = comp.result
            d = 100 * np.asarray(r.diffs, dtype=float)
            ax.scatter(np.full(d.size, i) + np.linspace(-0.1, 0.1, max(d.size, 1))[: d.size], d, s=8, color="0.6")
            if r.ci.n >= 2:
                sig = bool(r.significant)
                ax.errorbar(
                    i,
                    100 * r.mean_diff,
                    yerr=100 * r.ci.half_width,
                    fmt="o",
                    ms=4,
                    capsize=3,
                    color="C3" if sig else "k",
                )
            label = f"p_t {_p(r.p_t_holm)}\np_flip {_p(r.p_perm_holm)}\nd_z = {r.d_z:.2f}\nn = {r.n}"
            ax.annotate(
                label.replace("−", "-"),
                (i, 1),
                xycoords=("data", "axes fraction"),
                xytext=(0, -2),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=5.5,
            )
        ax.axhline(0, color="C0", lw=0.8, ls="--")
        ax.set_xticks(range(len(comps)), [_short(c.cell) for c in comps], rotation=45, ha="right")
        ax.set_xlim(-0.6, len(comps) - 0.4)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.9 * (hi - lo))
        ax.set_title(block_title(block))
        ax.set_ylabel(f"Δ {analysis.metric} vs {base} (pp)")
        ax.grid(axis="y", lw=0.3)
    fig.suptitle(f"Per-unit differences to {base}; mean and CI (red: t and sign-flip both p < 0.05 after Holm)", y=1.0)
    fig.tight_layout()
    return _save(fig, folder, "paired", fixture)


# ============================================================================================ curves
def _mean_curve(
    runs: list[Run], key: str, points: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Runs' ``key`` curves on a common step grid: (x, mean, min, max, number of runs)."""
    curves = [np.asarray(r.curves().get(key, []), dtype=float) for r in runs]
    curves = [c for c in curves if c.size and c.shape[0] >= 1]
    if not curves:
        return np.array([]), np.array([]), np.array([]), np.array([]), 0
    lo = max(c[:, 0].min() for c in curves)
    hi = min(c[:, 0].max() for c in curves)
    x = np.array([lo]) if hi <= lo else np.linspace(lo, hi, points)
    ys = np.stack([np.interp(x, c[:, 0], c[:, 1]) for c in curves])
    return x, ys.mean(0), ys.min(0), ys.max(0), len(curves)


def _mix_keys(runs: list[Run]) -> tuple[list[str], str]:
    """The mixing-weight series of these runs: per step ``pool/mix/<branch>``, else per epoch ``_mean``."""
    keys = sorted(
        {k for r in runs for k in r.curves() if k.startswith("pool/mix/") and not k.endswith(("_std", "blend"))}
    )
    if keys:
        return keys, "step"
    keys = sorted({k for r in runs for k in r.curves() if k.startswith("pool/val/mix/") and k.endswith("_mean")})
    return keys, "step (validation, per epoch)"


def fig_mixing(study: Study, folder: Path) -> list[Path]:
    panels = []
    for c in study.cells:
        runs = c.completed_runs()
        keys, xlabel = _mix_keys(runs)
        if keys:
            panels.append((c, runs, keys, xlabel))
    if not panels:
        return _placeholder(folder, "mixing_weights", "No mixing-weight curves in these runs' metrics.", study.fixture)
    fig, axes = _grid(len(panels))
    for ax, (c, runs, keys, xlabel) in zip(axes, panels, strict=True):
        for j, k in enumerate(keys):
            x, m, lo, hi, n = _mean_curve(runs, k)
            name = k.split("/")[-1].removesuffix("_mean")
            ax.plot(x, m, color=f"C{j}", lw=1, label=name)
            ax.fill_between(x, lo, hi, color=f"C{j}", alpha=0.2, lw=0)
        ax.set_title(f"{block_title(c.block)}\n{cell_name(c)} (n={n})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mixing weight")
        ax.legend(ncol=2, loc="best", frameon=False)
        ax.grid(lw=0.3)
    fig.suptitle("Mixing weights over training: mean over seeds, band = min to max", y=1.0)
    fig.tight_layout()
    return _save(fig, folder, "mixing_weights", study.fixture)


def _p_key(run: Run) -> str | None:
    curves = run.curves()
    for k in ("pool/gem/p", "pool/p"):
        if k in curves:
            return k
    return None


def fig_gem_p(study: Study, folder: Path) -> list[Path]:
    by_block: dict[tuple, list] = defaultdict(list)
    for c in study.cells:
        runs = c.completed_runs()
        keys = {_p_key(r) for r in runs} - {None}
        if keys:
            by_block[c.block].append((c, runs, sorted(keys)[0]))
    if not by_block:
        return _placeholder(
            folder, "gem_p", "No GeM exponent (pool/p, pool/gem/p) curves in these runs.", study.fixture
        )
    fig, axes = _grid(len(by_block))
    for ax, (block, items) in zip(axes, by_block.items(), strict=True):
        for j, (c, runs, key) in enumerate(items):
            x, m, lo, hi, n = _mean_curve(runs, key)
            ax.plot(x, m, color=f"C{j}", lw=1, label=f"{cell_name(c)} (n={n})")
            ax.fill_between(x, lo, hi, color=f"C{j}", alpha=0.2, lw=0)
        ax.set_title(block_title(block))
        ax.set_xlabel("step")
        ax.set_ylabel("GeM p")
        ax.legend(frameon=False)
        ax.grid(lw=0.3)
    fig.suptitle("GeM exponent p over training: mean over seeds, band = min to max", y=1.0)
    fig.tight_layout()
    return _save(fig, folder, "gem_p", study.fixture)


# ============================================================================================ attention
def _heat(a: np.ndarray) -> np.ndarray:
    return plt.get_cmap("inferno")(np.clip(a, 0, 1))[..., :3]


def _upsample(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of ``a: (h', w')`` to ``(h, w)``."""
    hh, ww = a.shape
    ys = np.linspace(0, hh - 1, h)
    xs = np.linspace(0, ww - 1, w)
    rows = np.stack([np.interp(xs, np.arange(ww), a[i]) for i in range(hh)])
    return np.stack([np.interp(ys, np.arange(hh), rows[:, j]) for j in range(w)], axis=1)


def _strip_from_npz(path: Path, n: int = 4) -> np.ndarray:
    """``images (N, C, H, W)`` + ``attn (N, heads, h, w)`` -> one RGB strip of image / overlay pairs."""
    with np.load(path) as z:
        images = np.asarray(z["images"], dtype=float)[:n]
        attn = np.asarray(z["attn"], dtype=float)[:n]
    tiles = []
    for img, a in zip(images, attn, strict=True):
        rgb = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0)
        rgb = rgb.transpose(1, 2, 0)
        rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-8)
        m = _upsample(a.mean(0), rgb.shape[0], rgb.shape[1])
        m = m / max(float(m.max()), 1e-12)
        tiles += [rgb, 0.45 * rgb + 0.55 * _heat(m)]
    return np.concatenate(tiles, axis=1)


def _strip_from_png(path: Path, run: Run, rows: int = 2) -> np.ndarray:
    """The top ``rows`` image rows of a run's ``attention_maps.png`` (one row per validation image)."""
    img = plt.imread(path)[..., :3]
    n_img = (run.config.get("callbacks") or {}).get("attention_maps", {}).get("num_images")
    n_img = int(n_img) if n_img else None
    # rows of the PNG are square-ish panels: image height = width / (1 + heads); estimate from the aspect
    per_row = img.shape[0] // n_img if n_img else None
    if not per_row or per_row <= 0:
        ratio = img.shape[1] / img.shape[0]
        per_row = img.shape[1] // 2 if ratio < 2 else img.shape[0]
    return img[: per_row * rows]


def fig_attention(study: Study, folder: Path) -> list[Path]:
    strips = []
    for c in study.cells:
        runs = sorted((r for r in c.completed_runs() if r.attention is not None), key=lambda r: r.seed or 0)
        if not runs:
            continue
        r = runs[0]
        try:
            if r.attention.suffix == ".npz":
                strip, how = _strip_from_npz(r.attention), "maps regenerated from arrays"
            else:
                strip, how = _strip_from_png(r.attention, r), "the run's own PNG"
        except Exception as err:  # one unreadable file must not sink the report
            strip, how = None, f"unreadable: {err}"
        strips.append((c, r, strip, how))
    if not strips:
        return _placeholder(folder, "attention_grid", "No attention maps saved by these runs.", study.fixture)
    fig, axes = plt.subplots(len(strips), 1, figsize=(WIDTH, 1.5 * len(strips)), squeeze=False)
    for ax, (c, r, strip, how) in zip(axes[:, 0], strips, strict=True):
        ax.axis("off")
        if strip is not None:
            ax.imshow(np.clip(strip, 0, 1), interpolation="nearest")
        ax.set_title(f"{block_title(c.block)}: {cell_name(c)}, {r.unit} ({how})", fontsize=7)
    fig.suptitle("Attention maps over validation images (image | attention overlay)", y=1.0)
    fig.tight_layout()
    return _save(fig, folder, "attention_grid", study.fixture)


# ============================================================================================ cost
def fig_cost(analysis: Analysis, folder: Path) -> list[Path]:
    study = analysis.study
    rows = sorted(cost_rows(study), key=lambda r: cell_order(r["cell"], analysis.baseline))
    if not rows:
        return _placeholder(folder, "cost", "No completed runs.", study.fixture)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(WIDTH, 0.3 * len(rows) + 1.2))
    labels = [f"{c['cell'].data}: {cell_name(c['cell'])}" for c in rows]
    y = np.arange(len(rows))
    pool = np.array([r["params"].get("pool", np.nan) if r["params"] else np.nan for r in rows], dtype=float)
    head = np.array([r["params"].get("head", np.nan) if r["params"] else np.nan for r in rows], dtype=float)
    a1.set_yticks(y, labels)
    if np.all(np.isnan(pool)) and np.all(np.isnan(head)):
        a1.text(
            0.5,
            0.5,
            "parameter counts not recorded\n(the records lack model.params)",
            ha="center",
            va="center",
            transform=a1.transAxes,
        )
    else:
        a1.barh(y - 0.2, head, height=0.4, color="0.6", label="head")
        a1.barh(y + 0.2, np.maximum(pool, 0.8), height=0.4, color="C3", label="pool")
        for yi, v in zip(y, pool, strict=True):
            if np.isfinite(v):
                a1.text(max(v, 1.0) * 1.3, yi + 0.2, f"{int(v):,}", va="center", fontsize=6)
        a1.set_xscale("log")
        a1.legend(frameon=False, loc="lower right")
    a1.set_xlabel("parameters (log scale)")
    a1.invert_yaxis()
    t = [r["epoch_time"].mean if r["epoch_time"] else np.nan for r in rows]
    e = [r["epoch_time"].half_width if r["epoch_time"] and r["epoch_time"].n > 1 else 0 for r in rows]
    a2.barh(y, t, xerr=e, color="C0", capsize=2)
    a2.set_yticks(y, [""] * len(rows))
    a2.invert_yaxis()
    sources = sorted({r["time_source"] for r in rows})
    a2.set_xlabel("s / epoch (" + ", ".join(sources) + ")")
    fig.tight_layout()
    return _save(fig, folder, "cost", study.fixture)


def write_figures(analysis: Analysis, folder: Path) -> dict[str, list[Path]]:
    """Every figure of :data:`FIGURES` into ``folder`` (PNG + PDF); returns ``{name: [png, pdf]}``."""
    study = analysis.study
    return {
        "differences": fig_differences(analysis, folder),
        "learned": fig_learned(analysis, folder),
        "accuracy": fig_accuracy(analysis, folder),
        "paired": fig_paired(analysis, folder),
        "mixing_weights": fig_mixing(study, folder),
        "gem_p": fig_gem_p(study, folder),
        "attention_grid": fig_attention(study, folder),
        "cost": fig_cost(analysis, folder),
    }
