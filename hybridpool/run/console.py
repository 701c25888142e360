"""What a run prints: one ``[hybridpool]`` line per fact, and where every output went at the end."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["quiet_third_party", "report", "say"]

#: Lightning's info lines that tell a researcher nothing about the run (advertisements, internal steps)
_LIGHTNING_NOISE = (
    "💡 Tip:",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "Trainer already configured with model summary callbacks",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_LIGHTNING_NOISE)


def quiet_third_party() -> None:
    """Keep what matters on the console: drop Lightning's tips and a deprecation warning torch raises inside it.

    Idempotent; called at the start of every run. Lightning's summary table is replaced by one line
    (:class:`~hybridpool.run.callbacks.ParameterSummary`), and W&B's ``anonymous`` warning is avoided in
    :func:`~hybridpool.run.wandb.make_wandb_logger`.
    """
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_DropNoise())
    # torch's pytree deprecates LeafSpec checks that Lightning still makes, once per fit and test
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def say(msg: str) -> None:
    """Print ``[hybridpool] msg`` at once (sweep workers' output is interleaved line by line)."""
    print(f"[hybridpool] {msg}", flush=True)


def report(record: Any, seconds: float) -> None:
    """The run's end: its status and headline metrics, then where each output went (record, CSV, W&B ...)."""
    d = record.data
    m = d.get("metrics") or {}
    shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("test/acc", "val/acc", "test/acc_macro") if k in m)
    say(f"run {d['status']} in {seconds:.1f} s" + (f": {shown}" if shown else ""))
    paths = d.get("paths") or {}
    say(f"  results:      {record.path}")
    if paths.get("metrics_csv"):
        say(f"  metrics CSV:  {paths['metrics_csv']}")
    if paths.get("checkpoint_dir"):
        best = Path(paths["best_checkpoint"]).name if paths.get("best_checkpoint") else "-"
        say(f"  checkpoints:  {paths['checkpoint_dir']} (best: {best}, last: last.ckpt)")
    if paths.get("attention_maps"):
        say(f"  attention:    {paths['attention_maps']}")
    if paths.get("feature_cache"):
        say(
            f"  feature cache: {paths['feature_cache']} ({', '.join(paths.get('feature_cache_events', []))})"
        )
    w = d.get("wandb") or {}
    if w.get("mode") == "online":
        say(f"  W&B:          {w.get('url') or w.get('dir')}")
    elif w.get("mode") == "offline":
        say(f"  W&B (offline, {w.get('reason')}): {w.get('dir')}")
        say(f"  upload with:  {w.get('sync_command')}")
    if d.get("error"):
        say(f"  error:        {d['error']}")

