#!/usr/bin/env python
"""Copy the small files of finished runs (records, metric CSVs, attention arrays) into ``paper/results/``.

    scripts/collect_results.py SOURCE [SOURCE ...] DEST [--max-kb 512]

For every ``results.json`` under the SOURCE folders (run or sweep folders), copies into
``DEST/<sweep>/<job>/``: ``results.json`` and ``csv/metrics.csv`` when smaller than ``--max-kb``, and, for runs
whose seed is in ``--attention-seeds`` (default 0: one run per cell), a compact
``attention_maps/attention_maps.npz`` (the first 4 images, shrunk to at most 64 px, float16; the report draws its
attention grid from it); never checkpoints, feature caches, W&B folders or the full-size attention PNG. Failed runs
are copied too: the paper lists them. Prints what it copied and what it skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridpool.report.runs import find_results

SMALL_FILES = ("results.json", "csv/metrics.csv")
ATTENTION = "attention_maps/attention_maps.npz"


def compact_attention(src: Path, dest: Path, images: int = 4, max_px: int = 64) -> None:
    """Write the first ``images`` of an attention-maps npz (``images (N, C, H, W)``, ``attn (N, heads, h, w)``,
    ``labels``, ``preds``) with the images strided down to at most ``max_px`` pixels a side, as float16."""
    import numpy as np

    with np.load(src) as z:
        arrays = {k: z[k][:images] for k in z.files}
    if "images" in arrays:
        h, w = arrays["images"].shape[-2:]
        step = max(1, -(-max(h, w) // max_px))
        arrays["images"] = arrays["images"][..., ::step, ::step].astype(np.float16)
    if "attn" in arrays:
        arrays["attn"] = arrays["attn"].astype(np.float16)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest, **arrays)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="run or sweep folders")
    p.add_argument("dest", help="destination, e.g. paper/results/<experiment>")
    p.add_argument("--max-kb", type=int, default=512, help="skip any file larger than this (default 512 KiB)")
    p.add_argument("--attention-seeds", default="0", help="seeds whose attention maps are kept, e.g. 0,1 ('': none)")
    args = p.parse_args(argv)
    dest = Path(args.dest)
    attention_seeds = {int(x) for x in args.attention_seeds.split(",") if x.strip()}
    copied = skipped = 0
    for src in args.sources:
        root = Path(src).resolve()
        for rec in find_results([root]):
            run_dir = rec.parent
            rel = run_dir.relative_to(root) if run_dir != root else Path(run_dir.name)
            rel = Path(root.name) / rel
            for name in SMALL_FILES:
                f = run_dir / name
                if not f.is_file():
                    continue
                if f.stat().st_size > args.max_kb * 1024:
                    print(f"skipped (> {args.max_kb} KiB): {f}")
                    skipped += 1
                    continue
                target = dest / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
                copied += 1
            if (run_dir / ATTENTION).is_file() and json.loads(rec.read_text()).get("seed") in attention_seeds:
                compact_attention(run_dir / ATTENTION, dest / rel / ATTENTION)
                copied += 1
    print(f"copied {copied} files into {dest} ({skipped} skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
