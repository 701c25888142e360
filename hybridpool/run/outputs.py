"""What a finished run wrote, for its record: metrics as floats, checkpoints, CSV, attention maps, cache events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["best_checkpoint_callback", "float_metrics", "keep_previous_csv", "output_paths"]


def float_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The entries of ``values`` (tensors, numbers) that convert to ``float``."""
    out: dict[str, float] = {}
    for k, v in values.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out



def keep_previous_csv(output_dir: Path, record: Any) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``; keep the interrupted attempt's rows."""
    for old in output_dir.glob("**/metrics.csv"):
        if "wandb" in old.parts:
            continue
        n = 1
        while (kept := old.with_name(f"metrics.attempt{n}.csv")).exists():
            n += 1
        old.rename(kept)
        record.update(paths={"metrics_csv_previous": str(kept)})



def best_checkpoint_callback(trainer: Any) -> Any:
    """The ModelCheckpoint that keeps the best model (it has a ``monitor``), else Lightning's first one, else None.

    Chosen by role, not by position: ``callbacks.last_checkpoint`` (no monitor, last.ckpt every epoch) may come
    first in a config.
    """
    monitored = [cb for cb in trainer.checkpoint_callbacks if cb.monitor is not None]
    return monitored[0] if monitored else trainer.checkpoint_callback


def checkpoint_epoch(path: str | Path) -> float:
    """The (0-based) epoch a Lightning checkpoint was saved in."""
    import torch

    return float(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def output_paths(output_dir: Path, trainer: Any, loggers: list[Any], callbacks: list[Any], cache: Any) -> dict:
    """Where the run's outputs are: folder, checkpoints (best, last), metrics CSV, attention maps, feature cache."""
    from pytorch_lightning.loggers import CSVLogger

    from hybridpool.run.callbacks import AttentionMaps

    paths: dict[str, Any] = {"output_dir": str(output_dir)}
    ckpt_cb = best_checkpoint_callback(trainer)
    if ckpt_cb is not None:
        paths["checkpoint_dir"] = ckpt_cb.dirpath
        paths["best_checkpoint"] = ckpt_cb.best_model_path or None
        # the latest checkpoint: the monitor-free ModelCheckpoint that writes last.ckpt every epoch, if any
        latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None]
        paths["last_checkpoint"] = next((p for p in latest if p), None) or ckpt_cb.last_model_path or None
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            paths["metrics_csv"] = str(Path(lg.log_dir) / "metrics.csv")
    for cb in callbacks:
        if isinstance(cb, AttentionMaps) and cb.saved is not None:
            paths["attention_maps"] = str(cb.saved)
    if cache is not None:
        paths["feature_cache"] = str(cache.dir)
        paths["feature_cache_events"] = cache_events(cache)
    return paths


def cache_events(cache: Any) -> list[str]:
    """The feature cache's hits and misses of this run, as ``kind:split:key`` strings."""
    return [f"{e.kind}:{e.split}:{e.key[:12]}" for e in cache.events]
