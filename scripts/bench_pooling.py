"""Speed and memory of every pooling layer, side by side with GAP and with a naive hybrid, in one process.

Each round times every candidate once, in a shuffled order, forward (under torch.no_grad(), as in inference) and
forward+backward (a training step's pooling part); a candidate's ratio is the median over rounds of (its time /
GAP's time in the same round), so load from other processes on a shared machine hits both sides of a ratio alike.
Peak memory is the most memory allocated at once during one forward+backward, beyond the input, as a multiple of
the input's size (CPU: the profiler's allocation records; CUDA: max_memory_allocated).

Rows without "+compile" run eagerly; "+compile" rows are the same module under torch.compile (default inductor).

Run:  python scripts/bench_pooling.py                       # CPU, float32, the three shapes, with torch.compile
      python scripts/bench_pooling.py --shapes 64,2048,7,7 --rounds 15 --layers targets  # the targets only, minutes
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

from hybridpool.pooling import _native, create_pool

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
        makers["hybrid_scalar+compile"] = lambda: torch.compile(create_pool("hybrid(avg,max,gem,attn)", channels))
        makers["hybrid_channel+compile"] = lambda: torch.compile(
            create_pool("hybrid(avg,max,gem,attn)", channels, mixing="channel")
        )
        makers["naive+compile"] = lambda: torch.compile(NaiveHybrid(channels))
    unknown = set(only or ()) - set(makers) - {name for name in TARGET_LAYERS if "+compile" in name}
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
            runs[(name, mode)] = make_run(pool.to(device) if isinstance(pool, nn.Module) else pool, x)
    pools = list(dict.fromkeys(name for name, _ in runs))
    warm_start = time.perf_counter()
    for run in runs.values():  # warm-up (and compilation) outside the timed rounds
        run()
        run()
    print(f"  warm-up and compilation: {time.perf_counter() - warm_start:.1f} s", flush=True)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
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
    results: dict[str, dict[str, float]] = {}
    for name in pools:
        results[name] = {
            "fwd_ms": 1e3 * statistics.median(times[(name, "fwd")]),
            "fwd_x": statistics.median(ratios[(name, "fwd")]),
            "fwdbwd_ms": 1e3 * statistics.median(times[(name, "fwd+bwd")]),
            "fwdbwd_x": statistics.median(ratios[(name, "fwd+bwd")]),
            "mem_x": peak_memory_ratio(runs[(name, "fwd+bwd")], x),
        }
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
    return rows


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
        type=lambda v: set(TARGET_LAYERS) if v == "targets" else set(v.split(",")),
        default=None,
        help="comma-separated rows to time (GAP and naive are always timed), or 'targets' for "
        + ",".join(TARGET_LAYERS),
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
        lib = _native.library()
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
