"""Many heads per pass against one job per run: the study's CUB grid, grouped vs joblib(2) (a benchmark, not a test).

The grid: ``experiment=study_fg data=cub trainer.max_epochs=8`` (frozen ImageNet MobileNetV2, cached feature maps of
the CUB-200-2011 subset), ``--pools`` x ``--seeds``: by default the study's 11 pools x 10 seeds = 110 runs. The same
sweep runs twice in this one script, one after the other, each into its own sweep folder:

1. ``hydra/launcher=heads hydra.launcher.n_jobs=<--heads-jobs>``: the runs train together (``hybridpool.run.heads``),
   split by seed over that many worker processes (default 2, as joblib's);
2. ``hydra/launcher=joblib hydra.launcher.n_jobs=2``: one Lightning job per run on 2 worker processes.

It prints the wall time of each command, their ratio (target: grouped <= 0.2x joblib's), where each one's time
went (the runs' own training and evaluation, ``timing.fit_s`` + ``test_s`` of their records, against everything
else: process-seconds per run) and how many runs give the same test accuracy both ways (a run's metrics do not
depend on the engine; the test suite checks this on a small grid). The feature cache is warmed first (timed apart).
Both folders must be new or empty.

    python scripts/bench_heads.py --out benchmarks/heads_cpu.txt
    python scripts/bench_heads.py --pools avg,attn --seeds 2 --out /tmp/quick.txt
    python scripts/bench_heads.py --grouped-dir outputs/study/fg-cub-pools   # the grouped half is the study's cell

Needs the offline data (``HYBRIDPOOL_DATA_ROOT``, ``TORCH_HOME``) and the joblib launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOLS = "avg,max,gem,lse,kmax,attn,qattn,hybrid_scalar,hybrid_channel,hybrid_gate,hybrid_concat"
GRID = ["experiment=study_fg", "data=cub", "trainer.max_epochs=8"]


def run(args: list[str], log: Path) -> float:
    """``python -m hybridpool.cli <args>``; returns its wall time (s); its output goes to ``log``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "hybridpool.cli", *args]
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}: {' '.join(args)} (see {log})")
    return wall


def test_accuracies(sweep: Path) -> dict[tuple[str, int], float]:
    """``(pool spec, seed) -> test/acc`` of the completed runs under ``sweep``."""
    out = {}
    for rec_path in sweep.glob("*/results.json"):
        rec = json.loads(rec_path.read_text())
        if rec.get("status") == "completed":
            out[(rec["pool"]["spec"], int(rec["seed"]))] = float(rec["metrics"]["test/acc"])
    return out


def run_seconds(sweep: Path) -> float:
    """Sum over the completed runs under ``sweep`` of their own training and test time (``fit_s + test_s``)."""
    total = 0.0
    for rec_path in sweep.glob("*/results.json"):
        rec = json.loads(rec_path.read_text())
        if rec.get("status") == "completed":
            timing = rec.get("timing") or {}
            total += float(timing.get("fit_s") or 0) + float(timing.get("test_s") or 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pools", default=POOLS)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--heads-jobs", type=int, default=2, help="worker processes of the grouped half")
    parser.add_argument("--grouped-dir", type=Path, default=None)
    parser.add_argument("--joblib-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "heads_cpu.txt")
    a = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench_heads_"))
    grouped_dir = (a.grouped_dir or scratch / "grouped").absolute()
    joblib_dir = (a.joblib_dir or scratch / "joblib").absolute()
    for d in (grouped_dir, joblib_dir):
        if d.is_dir() and any(d.iterdir()):
            raise SystemExit(f"{d} is not empty: its finished runs would be skipped and the timing would mean nothing")
    seeds = ",".join(str(s) for s in range(a.seeds))
    grid = [*GRID, f"pool={a.pools}", f"seed={seeds}"]
    n = len(a.pools.split(",")) * a.seeds
    lines = [
        f"# python scripts/bench_heads.py --pools {a.pools} --seeds {a.seeds} --heads-jobs {a.heads_jobs}",
        f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')}, {platform.node()}, {os.cpu_count()} CPUs,"
        f" python {platform.python_version()}",
        f"# grid: {' '.join(grid)} ({n} runs)",
    ]
    warm = run([*GRID, "pool=avg", "trainer.max_epochs=1", "logger=none", "callbacks=none",
                f"hydra.run.dir={scratch / 'warm'}"], scratch / "warm.log")
    lines.append(f"feature cache warm-up (not in the walls below): {warm:.1f} s")
    heads = ["hydra/launcher=heads", f"hydra.launcher.n_jobs={a.heads_jobs}"]
    grouped = run(["-m", *grid, *heads, f"hydra.sweep.dir={grouped_dir}"], scratch / "grouped.log")
    name = f"grouped   (hydra/launcher=heads, {a.heads_jobs} process(es))"
    lines.append(f"{name:<46} {grouped:8.1f} s wall  {grouped / n:6.2f} s per run")
    joblib = run(["-m", *grid, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={joblib_dir}"],
                 scratch / "joblib.log")
    lines.append(f"{'joblib(2) (one Lightning job per run)':<46} {joblib:8.1f} s wall  {joblib / n:6.2f} s per run")
    lines.append(f"grouped / joblib wall: {grouped / joblib:.3f} (target <= 0.2)")
    halves = (("grouped", grouped_dir, grouped, a.heads_jobs), ("joblib", joblib_dir, joblib, 2))
    for label, sweep, wall, procs in halves:
        own = run_seconds(sweep)
        lines.append(
            f"{label:>7}: {procs} x {wall:.1f} s = {procs * wall:.1f} process-s; the runs' own training + evaluation "
            f"{own:.1f} s ({own / n:.2f} s per run), the rest {(procs * wall - own) / n:.2f} s per run"
        )
    g, j = test_accuracies(grouped_dir), test_accuracies(joblib_dir)
    same = sum(1 for k in g if k in j and abs(g[k] - j[k]) < 1e-6)
    lines.append(f"completed runs: grouped {len(g)}/{n}, joblib {len(j)}/{n}; same test/acc both ways: {same}/{n}")
    diffs = sorted((abs(g[k] - j[k]), k) for k in g if k in j and abs(g[k] - j[k]) >= 1e-6)
    for _, k in diffs[:10]:
        lines.append(f"  differs: pool={k[0]} seed={k[1]}: grouped {g[k]:.4f}, joblib {j[k]:.4f}")
    lines.append(f"folders: grouped {grouped_dir}, joblib {joblib_dir}, logs {scratch}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)


if __name__ == "__main__":
    main()
