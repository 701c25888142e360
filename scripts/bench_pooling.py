"""Speed and memory of every pooling layer, side by side with GAP and with a naive hybrid, in one process.

Each round times every candidate once, in a shuffled order, forward (under torch.no_grad(), as in inference) and
forward+backward (a training step's pooling part); a candidate's ratio is the median over rounds of (its time /
GAP's time in the same round), so load from other processes on a shared machine hits both sides of a ratio alike.
Peak memory is the most memory allocated at once during one forward+backward, beyond the input, as a multiple of
the input's size (CPU: the profiler's allocation records; CUDA: max_memory_allocated).

Rows without "+compile" run eagerly; "+compile" rows are the same module under torch.compile (default inductor), and
a second table gives each compiled row's time over its eager row's, also the median of per-round ratios (on a CPU,
float32, both run the C kernel: eagerly, or as the torch op ``hybridpool::branches`` inside the compiled graph).

Run:  python scripts/bench_pooling.py                       # CPU, float32, the three shapes, with torch.compile
      python scripts/bench_pooling.py --shapes 64,2048,7,7 --rounds 15 --layers targets  # the targets only, minutes
      python scripts/bench_pooling.py --shapes 64,2048,7,7 --rounds 10 --layers compiled  # compiled vs eager only
      python scripts/bench_pooling.py --device cuda --dtype bfloat16
      python scripts/bench_pooling.py --quick --no-compile  # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from hybridpool.pooling import create_pool
from hybridpool.pooling.kernels import native

SHAPES = [(64, 2048, 7, 7), (64, 512, 14, 14), (32, 256, 28, 28)]
TARGET_SHAPE = (64, 2048, 7, 7)


class NaiveHybrid(nn.Module):
    """The baseline: four standard modules, GeM as avg_pool2d(x.clamp(eps).pow(p)).pow(1/p), stacked and mixed."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.p = nn.Parameter(torch.tensor(3.0))
        self.attn = nn.Conv2d(channels, 1, 1)
        self.mix = nn.Parameter(torch.zeros(4))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        gem = nn.functional.avg_pool2d(x.clamp(min=self.eps).pow(self.p), (h, w)).pow(1.0 / self.p)
        a = torch.softmax(self.attn(x).flatten(2), dim=2).view(x.shape[0], 1, h, w)
        attn = (x * a).sum((2, 3), keepdim=True)
        branches = torch.stack([self.avg(x), self.max(x), gem, attn], dim=1).flatten(2)  # (B, 4, C)
        return torch.einsum("n,bnc->bc", torch.softmax(self.mix, 0), branches)


SINGLE_LAYERS = ("avg", "max", "gem", "lse", "kmax", "attn", "qattn")
# --layers targets: what the targets need (GAP, the naive composition, the scalar hybrid), eager and compiled
TARGET_LAYERS = ("gap", "naive", "hybrid_scalar", "naive+compile", "hybrid_scalar+compile")
# rows with a compiled twin ("<name>+compile"); --layers compiled: these and their twins
COMPILED_LAYERS = ("hybrid_scalar", "hybrid_channel", "gem", "attn", "lse")
COMPILED_VS_EAGER_LIMIT = 1.2  # the target: compiled within 1.2x of eager


def candidates(channels: int, compile_too: bool, only: set[str] | None = None) -> dict[str, nn.Module | Callable]:
    """Name -> pooling callable; ``only`` keeps those names (GAP and the naive composition are always kept)."""
    makers: dict[str, Callable[[], nn.Module | Callable]] = {"gap": lambda: lambda x: x.mean((2, 3))}
    for name in SINGLE_LAYERS:
        makers[name] = lambda name=name: create_pool(name, channels)
    makers["hybrid_scalar"] = lambda: create_pool("hybrid(avg,max,gem,attn)", channels, mixing="scalar")
    makers["hybrid_channel"] = lambda: create_pool("hybrid(avg,max,gem,attn)", channels, mixing="channel")
    makers["hybrid_scalar_unfused"] = lambda: create_pool("hybrid(avg,max,gem,attn)", channels, fused=False)
    makers["naive"] = lambda: NaiveHybrid(channels)
    if compile_too:
        for name in COMPILED_LAYERS:
            makers[f"{name}+compile"] = lambda name=name: torch.compile(makers[name]())
        makers["naive+compile"] = lambda: torch.compile(NaiveHybrid(channels))
    unknown = set(only or ()) - set(makers) - {name for name in (*TARGET_LAYERS, *makers) if "+compile" in name}
    if unknown:
        raise ValueError(f"unknown --layers {sorted(unknown)}; known: {', '.join(makers)}")
    keep = None if only is None else only | {"gap", "naive"}
    return {name: make() for name, make in makers.items() if keep is None or name in keep}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_only(pool, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            pool(x)

    return run


def forward_backward(pool, x: torch.Tensor) -> Callable[[], None]:
    leaf = x.detach().clone().requires_grad_()
    grad_out = None

    def run() -> None:
        nonlocal grad_out
        leaf.grad = None
        if isinstance(pool, nn.Module):
            pool.zero_grad(set_to_none=True)
        out = pool(leaf)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)

    return run


def peak_memory_ratio(run: Callable[[], None], x: torch.Tensor) -> float:
    """Peak bytes allocated during ``run()`` beyond what existed before, divided by the input's bytes."""
    nbytes = x.numel() * x.element_size()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / nbytes
    from torch.profiler import ProfilerActivity, profile

    with (
        contextlib.redirect_stdout(io.StringIO()),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        run()
    records = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes_change in records:
        current += nbytes_change
        peak = max(peak, current)
    return peak / nbytes


def bench_shape(shape, args, device, dtype) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype).relu_()  # post-ReLU features
    # Separate instances for the two modes: a compiled module first compiled with grad enabled and then called
    # under no_grad recompiles into a slower no-grad graph than one compiled under no_grad from the start, so each
    # mode gets a module compiled in that mode, as a training and an inference script would have.
    runs = {}
    for mode, make_run in (("fwd", forward_only), ("fwd+bwd", forward_backward)):
        for name, pool in candidates(shape[1], args.compile, args.layers).items():
            runs[(name, mode)] = make_run(pool.to(device, dtype) if isinstance(pool, nn.Module) else pool, x)
    pools = list(dict.fromkeys(name for name, _ in runs))
    warm_start = time.perf_counter()
    for run in runs.values():  # warm-up (and compilation) outside the timed rounds
        run()
        run()
    print(f"  warm-up and compilation: {time.perf_counter() - warm_start:.1f} s", flush=True)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    vs_eager: dict[tuple[str, str], list[float]] = {}  # compiled / eager twin, per round
    order = list(runs)
    for _ in range(args.rounds):
        random.shuffle(order)
        this_round = {}
        for key in order:
            sync(device)
            start = time.perf_counter()
            runs[key]()
            sync(device)
            this_round[key] = time.perf_counter() - start
        for key, t in this_round.items():
            times[key].append(t)
            ratios[key].append(t / this_round[("gap", key[1])])
            twin = (key[0].removesuffix("+compile"), key[1])
            if key[0].endswith("+compile") and twin in this_round:
                vs_eager.setdefault(key, []).append(t / this_round[twin])
    results: dict[str, dict[str, float]] = {}
    for name in pools:
        results[name] = {
            "fwd_ms": 1e3 * statistics.median(times[(name, "fwd")]),
            "fwd_x": statistics.median(ratios[(name, "fwd")]),
            "fwdbwd_ms": 1e3 * statistics.median(times[(name, "fwd+bwd")]),
            "fwdbwd_x": statistics.median(ratios[(name, "fwd+bwd")]),
            "mem_x": peak_memory_ratio(runs[(name, "fwd+bwd")], x),
        }
        if (name, "fwd") in vs_eager:
            results[name]["vs_eager_fwd"] = statistics.median(vs_eager[(name, "fwd")])
            results[name]["vs_eager_fwdbwd"] = statistics.median(vs_eager[(name, "fwd+bwd")])
    return results


def print_table(shape, results) -> None:
    print(
        f"\nshape {shape}  (fwd = forward under torch.no_grad(); f+b = forward+backward; x = ratio to GAP measured"
        " in the same round; mem = peak fwd+bwd / input size; +compile = torch.compile, else eager)"
    )
    print(f"  {'layer':24s} {'fwd ms':>9s} {'fwd x':>7s} {'f+b ms':>9s} {'f+b x':>7s} {'mem x':>6s}")
    for name, r in results.items():
        print(
            f"  {name:24s} {r['fwd_ms']:9.2f} {r['fwd_x']:7.2f} {r['fwdbwd_ms']:9.2f} {r['fwdbwd_x']:7.2f}"
            f" {r['mem_x']:6.2f}"
        )
    compiled = [name for name, r in results.items() if "vs_eager_fwd" in r]
    if compiled:
        print(
            "\n  compiled vs eager, side by side (ms; ratio = compiled / eager, median of the per-round ratios;"
            f" target <= {COMPILED_VS_EAGER_LIMIT:g})"
        )
        print(
            f"  {'layer':16s} {'fwd eager':>10s} {'fwd comp':>9s} {'ratio':>6s}"
            f" {'f+b eager':>10s} {'f+b comp':>9s} {'ratio':>6s}"
        )
        for name in compiled:
            r, e = results[name], results[name.removesuffix("+compile")]
            print(
                f"  {name.removesuffix('+compile'):16s} {e['fwd_ms']:10.2f} {r['fwd_ms']:9.2f} {r['vs_eager_fwd']:6.2f}"
                f" {e['fwdbwd_ms']:10.2f} {r['fwdbwd_ms']:9.2f} {r['vs_eager_fwdbwd']:6.2f}"
            )


def check_targets(results) -> list[tuple[str, float, float, bool]]:
    """The issue's targets on (64, 2048, 7, 7): rows of (what, measured, limit, met)."""
    rows = []
    for name in ("hybrid_scalar", "hybrid_channel", "hybrid_scalar+compile", "hybrid_channel+compile"):
        if name not in results:
            continue
        r, naive = results[name], results["naive"]
        speedup = naive["fwdbwd_ms"] / r["fwdbwd_ms"]
        rows += [
            (f"{name}: fwd+bwd / GAP fwd+bwd <= 8", r["fwdbwd_x"], 8.0, r["fwdbwd_x"] <= 8.0),
            (f"{name}: naive fwd+bwd / its fwd+bwd >= 4", speedup, 4.0, speedup >= 4.0),
            (f"{name}: fwd (no_grad) / GAP fwd <= 6", r["fwd_x"], 6.0, r["fwd_x"] <= 6.0),
            (f"{name}: peak fwd+bwd memory / input <= 3", r["mem_x"], 3.0, r["mem_x"] <= 3.0),
        ]
    limit = COMPILED_VS_EAGER_LIMIT
    for name, r in results.items():
        if "vs_eager_fwd" in r and name != "naive+compile":
            for mode, key in (("fwd", "vs_eager_fwd"), ("fwd+bwd", "vs_eager_fwdbwd")):
                rows.append((f"{name}: {mode} compiled / eager <= {limit:g}", r[key], limit, r[key] <= limit))
    return rows


def _compiled_rows() -> set[str]:
    return {*COMPILED_LAYERS, *(f"{name}+compile" for name in COMPILED_LAYERS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="small shape, 5 rounds")
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=lambda v: tuple(int(d) for d in v.split(",")),
        default=SHAPES,
        help="input shapes B,C,H,W (default: the three of the README)",
    )
    parser.add_argument(
        "--layers",
        type=lambda v: {"targets": set(TARGET_LAYERS), "compiled": _compiled_rows()}.get(v, set(v.split(","))),
        default=None,
        help="comma-separated rows to time (GAP and naive are always timed), 'targets' for "
        + ",".join(TARGET_LAYERS)
        + ", or 'compiled' for "
        + ",".join(sorted(_compiled_rows())),
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    # Every compiled pool instance, mode and shape is one more compiled graph of PoolBase.forward
    torch._dynamo.config.recompile_limit = 64
    shapes = [(8, 256, 7, 7)] if args.quick else [tuple(shape) for shape in args.shapes]
    if args.quick:
        args.rounds = 5
    print(
        f"bench_pooling: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, {args.dtype}, {args.rounds} rounds"
    )
    print(f"command: python {' '.join(sys.argv)}")
    if device.type == "cpu":
        lib = native.library()
        where = f"loaded from {lib._name}" if lib is not None else "NOT available (the torch path runs instead)"
        print(f"native CPU kernel of the fused branches (eager float32 and half precision): {where}")
    all_results = {}
    for shape in shapes:
        print(f"shape {shape} ...", flush=True)
        all_results[shape] = bench_shape(shape, args, device, dtype)
        print_table(shape, all_results[shape])
    if TARGET_SHAPE in all_results:
        print(f"\ntargets on {TARGET_SHAPE}:")
        for what, measured, limit, met in check_targets(all_results[TARGET_SHAPE]):
            print(f"  {'met ' if met else 'MISS'} {what}: {measured:.2f} (limit {limit:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
