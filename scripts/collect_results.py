#!/usr/bin/env python
"""Copy the small files of finished runs (records, metric CSVs, attention arrays) into ``paper/results/``.

    scripts/collect_results.py SOURCE [SOURCE ...] DEST [--max-kb 512]

For every ``results.json`` under the SOURCE folders (run or sweep folders), copies into
``DEST/<sweep>/<job>/``: ``results.json``, ``csv/metrics.csv`` and ``attention_maps/attention_maps.{npz,png}`` when
present and smaller than ``--max-kb``; never checkpoints, feature caches or W&B folders. Failed runs are copied too:
the paper lists them. Prints what it copied and what it skipped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridpool.report.records import find_results

SMALL_FILES = (
    "results.json",
    "csv/metrics.csv",
    "attention_maps/attention_maps.npz",
    "attention_maps/attention_maps.png",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="run or sweep folders")
    p.add_argument("dest", help="destination, e.g. paper/results/<experiment>")
    p.add_argument("--max-kb", type=int, default=512, help="skip any file larger than this (default 512 KiB)")
    args = p.parse_args(argv)
    dest = Path(args.dest)
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
    print(f"copied {copied} files into {dest} ({skipped} skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
