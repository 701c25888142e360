"""Speed of a 16-job head-only sweep with the basic, joblib(2) and Ray(2) launchers (a benchmark, not a test).

The sweep: ``experiment=frozen_mobilenet`` (ImageNet MobileNetV2, frozen, on Oxford Flowers-17 from the offline
data folder), whose backbone features are computed once and cached, so each job trains only pool + head from
the cache (8 pools x 2 seeds, W&B offline, best/last checkpoints). The feature cache is warmed first for
every seed, whose split it follows (timed separately), then the same sweep runs once per launcher, one after the
other in this one script, each into its own sweep folder; finally the basic sweep is run again (every job
skipped) to time a re-run.

For every launcher it reports the wall time of the whole command and, from the jobs' ``results.json``
(``timing``), the useful training time (``fit_s + test_s``) and the per-job fixed cost:

    fixed per job = (wall x workers - sum of useful) / jobs

i.e. every second of a worker not spent training (process start, imports, Hydra, W&B, data set-up, idle at
the end), shared out over the jobs; with its breakdown (imports, W&B init/finish, set-up) from the records, and per
worker process when its first job started, the gaps between its jobs and its idle time at the end. Next to
each parallel launcher's ratio to the sequential wall it prints the bound that the jobs' own thread scaling sets:
``(sum of useful / workers) / sequential sum of useful``, the ratio with no fixed cost on either side (jobs with 1
thread each run longer than with 2). ``--rounds N`` runs the launchers N times, interleaved, and reports the median
ratio.
Targets (issue 4): fixed cost <= 25% of a 30-s job's wall; 2 workers <= 0.65x the sequential wall.

    python scripts/bench_sweep.py                          # all launchers -> benchmarks/sweep_cpu.txt
    python scripts/bench_sweep.py --launchers basic joblib --epochs 10 --out /tmp/quick.txt
    python scripts/bench_sweep.py --launchers basic joblib --rounds 2   # interleaved: basic, joblib, basic, joblib
    python scripts/bench_sweep.py --launchers basic joblib ray --epochs 100   # ~30-s jobs here, as the targets say

Needs the offline data (``--data-root``, default ``$HYBRIDPOOL_DATA_ROOT`` or ``../shared/data``) with
``flowers17/`` and ``torch_home/`` (MobileNetV2 weights), and the joblib and Ray launchers installed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOLS = ["avg", "max", "gem", "lse", "attn", "hybrid_scalar", "hybrid_gate", "hybrid_channel"]

#: a local Ray with 2 CPUs, one CPU per job
RAY_LOCAL = [
    "hydra/launcher=ray",
    "hydra.launcher.ray.init.num_cpus=2",
    "hydra.launcher.ray.remote.num_cpus=1",
    "+hydra.launcher.ray.init.include_dashboard=false",
]
RAY_GPU_PATH = [*RAY_LOCAL, "hydra.launcher.ray.init.num_gpus=2", "hydra.launcher.ray.remote.num_gpus=1"]
LAUNCHERS = {
    "basic": ("basic (sequential)", 1, []),
    "joblib": ("joblib(2)", 2, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    # the "one machine, N GPUs" path with 2 fake GPUs: one worker per GPU (CUDA_VISIBLE_DEVICES=0 or 1) that
    # runs job after job (hybridpool/ray_workers.py)
    "ray": ("ray(2) gpu path (fake GPUs)", 2, RAY_GPU_PATH),
    # the same with the plugin's own launcher: a fresh worker process per job (Ray's max_calls=1 for GPU tasks)
    "ray_tasks": (
        "ray(2) gpu path, a Ray task per job (fake GPUs)",
        2,
        [*RAY_GPU_PATH, "hydra.launcher._target_=hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"],
    ),
    # CPU only: the same 2 workers, without GPUs
    "ray_cpu": ("ray(2) cpu", 2, [*RAY_LOCAL, "hydra.launcher.ray.remote.num_gpus=0"]),
}


def _commit() -> str:
    """The checkout's commit, with ``+changes`` when tracked files differ from it (``unknown`` outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" +changes" if dirty else "") if head.returncode == 0 else "unknown"


def _data_root(arg: str | None) -> Path:
    for c in [arg, os.environ.get("HYBRIDPOOL_DATA_ROOT"), str(REPO.parent / "shared" / "data")]:
        if c and (Path(c) / "flowers17").is_dir():
            return Path(c).resolve()
    sys.exit("bench_sweep: the offline data folder with flowers17/ was not found; pass --data-root")


def _run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    return time.perf_counter() - t, rc


def _records(sweep: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    return sorted(recs, key=lambda r: (r.get("job") or {}).get("num") or 0)


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _worker_timeline(sweep: Path, done: list[dict]) -> str | None:
    """Per worker process: when its first job started after the sweep began (``sweep.json``), the gaps between its
    jobs, and how long it sat idle before the sweep ended (another worker still running the last job)."""
    try:
        invocation = json.loads((sweep / "sweep.json").read_text())["invocations"][-1]
        begin, end = float(invocation["start_unix"]), float(invocation["end_unix"])
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return None
    by_pid: dict[int, list[dict]] = {}
    for r in done:
        by_pid.setdefault(r["pid"], []).append(r["timing"])
    first, gaps, idle = [], [], []
    for timings in by_pid.values():
        timings.sort(key=lambda x: x["start_unix"])
        first.append(timings[0]["start_unix"] - begin)
        gaps.append(sum(b["start_unix"] - a["end_unix"] for a, b in itertools.pairwise(timings)))
        idle.append(end - timings[-1]["end_unix"])

    def fmt(xs: list[float]) -> str:
        return " ".join(f"{x:.1f}" for x in xs)

    return (f"   per worker ({len(by_pid)}): first job started {fmt(first)} s after the sweep began; gaps between "
            f"jobs {fmt(gaps)} s; idle at the end {fmt(idle)} s")


def _override(record: dict, key: str) -> str:
    """The value of ``key=...`` among the job's overrides ("?" if absent)."""
    found = [o.split("=", 1)[1] for o in record["job"]["overrides"] if o.startswith(f"{key}=")]
    return found[0] if found else "?"


def _basic_of(results: dict[str, dict], run: dict, rounds: int) -> dict | None:
    """The basic sweep of ``run``'s round (``None`` when basic did not run)."""
    return results.get("basic" if rounds == 1 else f"basic r{run['round']}")


def _thread_scaling_by_pool(results: dict[str, dict], rounds: int, say) -> None:
    """Per pool: a parallel launcher's useful time per job (1 thread, next to another job) over basic's (2 threads,
    alone) in the same round, median over rounds. Pools whose work splits over threads (the native pooling
    kernel) gain from basic's second thread, so for them two 1-thread jobs at once gain the least."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results.values():
        base = _basic_of(results, r, rounds)
        if not base or r["name"] == "basic":
            continue
        for pool, times in r["by_pool"].items():
            if base["by_pool"].get(pool):
                ratio = _mean(times) / _mean(base["by_pool"][pool])
                table.setdefault(pool, {}).setdefault(r["name"], []).append(ratio)
    names = list(dict.fromkeys(name for row in table.values() for name in row))
    if not names:
        return
    say("   useful time per job over basic's, by pool (1 thread beside another job / 2 threads alone; median over "
        "rounds):")
    say("   " + f"{'pool':<16}" + "".join(f"{n:>10}" for n in names))
    for pool, row in table.items():
        cells = "".join(f"{statistics.median(row[n]):>10.2f}" if n in row else f"{'':>10}" for n in names)
        say(f"   {pool:<16}{cells}")


def _throughput_check(py: list[str], common: list[str], env: dict, work: Path, rounds: int, say) -> None:
    """How much two jobs at once (1 thread each) gain over one job (2 threads), measured back to back.

    The same 10-epoch job (pool=hybrid_scalar, no logger, no test) runs alone with 2 threads, then two copies
    run at the same time with 1 thread each (as joblib(2) and Ray(2) run them); alternated ``rounds`` times so
    that the other load of a shared machine falls on both. Compares the fit times only (no start-up costs).
    """
    job = [*py, *common, "pool=hybrid_scalar", "trainer.max_epochs=10", "logger=none", "callbacks=none", "test=false"]
    alone, pair = [], []
    for i in range(rounds):
        d = work / "throughput" / f"alone{i}"
        subprocess.run([*job, f"hydra.run.dir={d}"], env={**env, "OMP_NUM_THREADS": "2"}, cwd=work,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        alone.append(json.loads((d / "results.json").read_text())["timing"]["fit_s"])
        dirs = [work / "throughput" / f"pair{i}_{k}" for k in range(2)]
        procs = [subprocess.Popen([*job, f"hydra.run.dir={d}"], env={**env, "OMP_NUM_THREADS": "1"}, cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]
        for p in procs:
            p.wait()
        pair.append(max(json.loads((d / "results.json").read_text())["timing"]["fit_s"] for d in dirs))
    say("")
    say("== throughput check: the same 10-epoch fit, alone with 2 threads vs two at once with 1 thread each")
    say(f"   alone: {' '.join(f'{x:.1f}' for x in alone)} s; two at once (slower of the pair): "
        f"{' '.join(f'{x:.1f}' for x in pair)} s")
    ratio = statistics.median(pair) / (2 * statistics.median(alone))
    say(f"   two jobs at once take {ratio:.2f}x the time of the same two jobs one after the other "
        "(medians; 0.50 = perfect scaling over 2 cores)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launchers", nargs="+", default=["basic", "joblib", "ray", "ray_cpu"], choices=list(LAUNCHERS))
    ap.add_argument("--pools", nargs="+", default=POOLS)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the experiment's 30)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--workdir", default=None, help="where outputs and the feature cache go (default: a temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "sweep_cpu.txt"))
    ap.add_argument("--no-rerun", action="store_true", help="skip the timed re-run of the basic sweep")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every launcher this many times, interleaved (basic, joblib, basic, joblib, ...), so "
                         "that a shared machine's slow spells fall on all of them; ratios per round and median")
    ap.add_argument("--throughput-rounds", type=int, default=3,
                    help="rounds of the 1-job-with-2-threads vs 2-jobs-with-1-thread check (0: none)")
    args = ap.parse_args()

    data = _data_root(args.data_root)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sweep_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HYBRIDPOOL_DATA_ROOT": str(data),
        "TORCH_HOME": str(data / "torch_home"),
        "HYBRIDPOOL_CACHE_DIR": str(work / "cache"),
        "HYBRIDPOOL_LOG_DIR": str(work / "outputs"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(work / "wandb"),
    }
    py = [sys.executable, "-m", "hybridpool.cli"]
    common = [
        "experiment=frozen_mobilenet",
        "logger=wandb",
        "callbacks=checkpoint",
        "trainer.enable_progress_bar=false",
    ]
    if args.epochs:
        common.append(f"trainer.max_epochs={args.epochs}")
    sweep_args = [*common, f"pool={','.join(args.pools)}", f"seed={args.seeds}"]
    n_jobs = len(args.pools) * len(args.seeds.split(","))
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    say(f"# bench_sweep: {n_jobs}-job head-only sweep, {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    say(f"# command: python scripts/bench_sweep.py {' '.join(sys.argv[1:])}".rstrip())
    say(f"# commit: {_commit()}")
    say(f"# host: {platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}; load average "
        f"at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"# sweep: hybridpool-train -m {' '.join(sweep_args)} hydra.sweep.dir=<work>/sweeps/<launcher> <launcher>")

    # a fresh process: python + imports (what each new worker pays once)
    imp = []
    for _ in range(3):
        t = time.perf_counter()
        code = "import hybridpool.run.train, torch, pytorch_lightning, torchvision, wandb"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        imp.append(time.perf_counter() - t)
    say(f"fresh process: python + import torch, lightning, torchvision, wandb, hybridpool: "
        f"{' '.join(f'{x:.1f}' for x in imp)} s (min {min(imp):.1f})")

    had_cache = (work / "cache").is_dir() and any((work / "cache").iterdir())
    # every seed: the split (so the cache entry) follows the seed, and a launcher must not pay for a cold entry
    if (work / "warm").exists():
        shutil.rmtree(work / "warm")
    warm_cmd = [*py, "-m", *common, "trainer.max_epochs=1", "logger=none", "callbacks=none", f"seed={args.seeds}",
                f"hydra.sweep.dir={work / 'warm'}"]
    wall, rc = _run(warm_cmd, env, work, work / "warm.log")
    cached = "read from the cache" if had_cache else "MobileNetV2 over 1,360 images per seed's split, computed once"
    say(f"feature cache warm-up ({cached}; 1 epoch per seed): {wall:.1f} s (rc {rc})")
    if rc != 0:
        say(f"warm-up failed, see {work / 'warm.log'}")
        Path(args.out).write_text("\n".join(lines) + "\n")
        return 1

    results: dict[str, dict] = {}  # "<launcher>" (one round) or "<launcher> r<k>"
    runs = [(name, k) for k in range(1, args.rounds + 1) for name in args.launchers]  # interleaved rounds
    for name, k in runs:
        label, workers, extra = LAUNCHERS[name]
        key = name if args.rounds == 1 else f"{name} r{k}"
        label = label if args.rounds == 1 else f"{label} round {k}"
        sweep = work / "sweeps" / key.replace(" ", "-")
        if sweep.exists():
            shutil.rmtree(sweep)
        load = os.getloadavg()[0]
        wall, rc = _run([*py, "-m", *sweep_args, *extra, f"hydra.sweep.dir={sweep}"], env, work, work / f"{name}.log")
        recs = _records(sweep)
        done = [r for r in recs if r.get("status") == "completed"]
        useful = [r["timing"]["fit_s"] + r["timing"]["test_s"] for r in done]
        fixed = (wall * workers - sum(useful)) / max(1, len(done))
        job_wall = _mean(useful) + fixed
        t = [r["timing"] for r in done]
        fresh = [x["start_unix"] - x["process_start_unix"] + x.get("startup_s", 0.0) for x in t
                 if x.get("process_start_unix") and x.get("startup_s", 0) > 0.5]
        by_pool: dict[str, list[float]] = {}
        for r, u in zip(done, useful, strict=True):
            by_pool.setdefault(_override(r, "pool"), []).append(u)
        results[key] = dict(label=label, workers=workers, wall=wall, rc=rc, jobs=len(done), useful=useful,
                            fixed=fixed, job_wall=job_wall, name=name, round=k, by_pool=by_pool)
        say("")
        say(f"== {label}: {len(done)}/{n_jobs} jobs completed, rc {rc}, wall {wall:.1f} s (load avg before "
            f"{load:.2f}), torch threads per job {sorted({r['devices'].get('torch_threads') for r in done})}")
        say(f"   useful (fit + test) per job: mean {_mean(useful):.1f} s, total {sum(useful):.1f} s")
        say(f"   fixed per job = (wall x {workers} - useful) / jobs = {fixed:.1f} s -> {fixed / job_wall:.0%} of a "
            f"{job_wall:.1f}-s job")
        say(f"   in the records, per job (mean): startup {_mean([x.get('startup_s', 0) for x in t]):.2f} s, "
            f"W&B init {_mean([x.get('wandb_init_s', 0) for x in t]):.2f} s, "
            f"W&B finish {_mean([x.get('finish_s', 0) for x in t]):.2f} s, "
            f"set-up (data, model, cache load) {_mean([x.get('setup_s', 0) for x in t]):.2f} s, "
            f"fit {_mean([x['fit_s'] for x in t]):.2f} s, test {_mean([x['test_s'] for x in t]):.2f} s")
        if fresh:
            say(f"   jobs in a fresh process ({len(fresh)}): process start -> imports done "
                f"{_mean(fresh):.1f} s (mean)")
        timeline = _worker_timeline(sweep, done)
        if timeline:
            say(timeline)
        for r in recs:
            x = r.get("timing") or {}
            say(f"   job {r['job']['num']:>2} {r['status']:<9} pid {r.get('pid')} fit {x.get('fit_s', 0):5.1f} s "
                f"test {x.get('test_s', 0):4.1f} s startup {x.get('startup_s', 0):4.1f} s "
                f"wandb {x.get('wandb_init_s', 0):4.1f}+{x.get('finish_s', 0):.1f} s "
                f"setup {x.get('setup_s', 0):4.1f} s  val/acc {r.get('metrics', {}).get('val/acc', float('nan')):.4f}"
                f"  {' '.join(o for o in r['job']['overrides'] if o.startswith(('pool=', 'seed=')))}")

    if "basic" in args.launchers and not args.no_rerun:
        sweep = work / "sweeps" / ("basic" if args.rounds == 1 else "basic-r1")
        wall, rc = _run([*py, "-m", *sweep_args, f"hydra.sweep.dir={sweep}"], env, work, work / "basic-rerun.log")
        say("")
        say(f"== re-run of the basic sweep (all {n_jobs} jobs completed before, so skipped): wall {wall:.1f} s, "
            f"rc {rc}")

    if args.throughput_rounds:
        _throughput_check(py, common, env, work, args.throughput_rounds, say)

    say("")
    say("== summary")
    say("   x sequential: the wall time over the basic sweep's of the same round. Bound: the same ratio with no fixed")
    say("   cost on either side (sum of useful / workers over the basic sweep's sum of useful): what the jobs' own")
    say("   thread scaling allows (1 thread each in parallel, 2 threads in sequence); fixed costs come on top of it.")
    ratios: dict[str, list[float]] = {}
    for r in results.values():
        base = _basic_of(results, r, args.rounds)
        ratio = ""
        if base and r["name"] != "basic":
            ratios.setdefault(r["name"], []).append(r["wall"] / base["wall"])
            bound = sum(r["useful"]) / r["workers"] / sum(base["useful"])
            ratio = f", {r['wall'] / base['wall']:.2f}x sequential (bound {bound:.2f}x)"
        say(f"   {r['label']:<36} wall {r['wall']:6.1f} s{ratio}; fixed {r['fixed']:.1f} s per job = "
            f"{r['fixed'] / r['job_wall']:.0%} of the job's wall (useful {_mean(r['useful']):.1f} s)")
    _thread_scaling_by_pool(results, args.rounds, say)
    if args.rounds > 1:
        for name, xs in ratios.items():
            say(f"   {LAUNCHERS[name][0]}: median over {len(xs)} rounds {statistics.median(xs):.2f}x sequential "
                f"({' '.join(f'{x:.2f}' for x in xs)})")
    say("   targets: fixed <= 25% of a 30-s job's wall; 2 workers <= 0.65x sequential")
    say(f"   raw logs and records: {work}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
