"""Check that the synthetic tasks test what they claim: a tiny CNN with global average vs. global max pooling.

    python -m hybridpool.data.diagnose --task detail --epochs 2 --num-train 4000

Prints the test accuracy of each pooling after every epoch (plain torch, no Lightning; a few minutes on
a 2-core CPU). Expected: ``avg`` wins on ``texture``, ``max`` wins on ``detail`` and ``finegrained``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from hybridpool.data.synthetic import TASKS, SyntheticDataModule

__all__ = ["TinyCNN", "main", "run"]


class TinyCNN(nn.Module):
    """3 conv layers (16, 32, 64 channels, one stride 2) -> global ``avg`` or ``max`` pool -> linear.

    ``forward(x: (B, C, H, W)) -> (B, num_classes)`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h.mean((2, 3)) if self.pool == "avg" else h.amax((2, 3)))


def run(
    task: str, epochs: int = 2, num_train: int = 4000, noise: float | None = None, seed: int = 0, lr: float = 3e-3
) -> dict[str, list[float]]:
    """Train a :class:`TinyCNN` per pooling; returns ``{"avg": [test acc per epoch], "max": [...]}``."""
    dm = SyntheticDataModule(task=task, num_train=num_train, num_val=1000, num_test=1000, noise=noise, seed=seed)
    dm.setup("fit")
    results: dict[str, list[float]] = {}
    for pool in ("avg", "max"):
        torch.manual_seed(seed)
        net = TinyCNN(dm.in_channels, dm.num_classes, pool)
        opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
        start = time.time()
        results[pool] = []
        for epoch in range(epochs):
            net.train()
            for x, y in dm.train_dataloader():
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            correct = total = 0
            with torch.no_grad():
                for x, y in dm.test_dataloader():
                    correct += int((net(x).argmax(1) == y).sum())
                    total += len(y)
            results[pool].append(correct / total)
            print(
                f"{task:12s} {pool}  epoch {epoch + 1}: test acc {correct / total:.3f}  ({time.time() - start:.0f}s)",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--noise", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for task in TASKS if args.task == "all" else (args.task,):
        run(task, args.epochs, args.num_train, args.noise, args.seed)


if __name__ == "__main__":
    main()
