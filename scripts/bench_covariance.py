"""Forward+backward time of second-order pooling (CovariancePool) side by side with GAP, in one process.

Each round times every candidate once, in a shuffled order: a forward pass and the backward pass of a fixed
random output gradient into the input (and the layer's parameters), as in a training step's pooling part. A
candidate's ratio is the median over rounds of (its time / GAP's time in the same round), so load from other
processes on a shared machine hits both sides of a ratio alike. ``reduce only`` is the 1x1 reduction of
CovariancePool on its own (its share of the cost); ``cov`` rows are the whole layer.

Run:  python scripts/bench_covariance.py                          # (64, 1280, 7, 7) float32 on the CPU
      python scripts/bench_covariance.py --rounds 30 --threads 1
      python scripts/bench_covariance.py --device cuda --shape 64,1280,7,7
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from hybridpool.pooling import CovariancePool, create_pool


def candidates(channels: int, reduce_dim: int) -> dict[str, nn.Module]:
    cov = CovariancePool(channels, reduce_dim=reduce_dim)
    return {
        "avg (GAP)": create_pool("avg", channels),
        f"cov (reduce_dim={reduce_dim}, matrix_sqrt, 5 iter)": cov,
        f"cov (reduce_dim={reduce_dim}, signed_sqrt)": CovariancePool(
            channels, reduce_dim=reduce_dim, normalization="signed_sqrt"
        ),
        f"cov (reduce_dim={reduce_dim}, none)": CovariancePool(channels, reduce_dim=reduce_dim, normalization="none"),
        f"reduce only (1x1 conv {channels}->{reduce_dim})": nn.Conv2d(channels, reduce_dim, 1),
    }


def step(layer: nn.Module, x: torch.Tensor, grads: dict[tuple, torch.Tensor]) -> None:
    x.grad = None
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    g = grads.setdefault(tuple(out.shape), torch.randn_like(out))
    out.backward(g)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,1280,7,7", help="B,C,H,W of the feature map")
    parser.add_argument("--reduce-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    b, c, h, w = (int(v) for v in args.shape.split(","))
    x = torch.randn(b, c, h, w, device=device).relu().requires_grad_()  # post-ReLU features, like a CNN's
    layers = {name: layer.to(device) for name, layer in candidates(c, args.reduce_dim).items()}
    grads: dict[tuple, torch.Tensor] = {}
    names = list(layers)
    for _ in range(args.warmup):
        for name in names:
            step(layers[name], x, grads)
    times: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(args.seed)
    for _ in range(args.rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            times[name].append(timed(lambda name=name: step(layers[name], x, grads), device))
    gap = names[0]
    print(
        f"forward+backward, input ({b}, {c}, {h}, {w}) float32 on {device} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {args.rounds} rounds after {args.warmup} warm-up"
    )
    print(f"{'layer':<48} {'median ms':>10} {'x GAP (median of per-round ratios)':>36}")
    for name in names:
        ratios = [t / g for t, g in zip(times[name], times[gap], strict=True)]
        print(f"{name:<48} {1e3 * statistics.median(times[name]):>10.3f} {statistics.median(ratios):>36.2f}")


if __name__ == "__main__":
    main()
