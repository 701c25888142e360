"""Lightning callbacks of hybridpool: attention maps of the trained pool over validation images, a one-line summary,
the time left of a long run, the accuracy on the training images in eval mode."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.callbacks import ModelSummary

from hybridpool.data.progress import eta_text
from hybridpool.run.console import say

__all__ = [
    "AttentionMaps",
    "ParameterSummary",
    "TimeLeft",
    "TrainSetAccuracy",
    "render_attention_panels",
    "save_attention_arrays",
]


def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


class ParameterSummary(ModelSummary):
    """Lightning's model summary as one line: ``model: SmallCNN -> HybridPool -> Linear: 94.4 K parameters (...)``.

    Lightning's table lists the metric modules and a FLOPs column that is 0 without an example input.
    """

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        self._module = pl_module
        return super()._summary(trainer, pl_module)

    def summarize(self, summary_data: Any, total_parameters: int, trainable_parameters: int, *args: Any,
                  **kwargs: Any) -> None:
        model = getattr(self._module, "model", None)
        parts = [type(getattr(model, name, None)).__name__ for name in ("backbone", "pool", "head")]
        path = " -> ".join(p for p in parts if p != "NoneType")
        say(f"model: {path}: {_count(total_parameters)} parameters ({_count(trainable_parameters)} trainable)")


def _to_rgb(img: torch.Tensor) -> np.ndarray:
    """``img: (C, H, W)`` (normalised) -> ``(H, W, 3)`` float in [0, 1], min-max scaled per image."""
    x = img.detach().float().cpu()
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    elif x.shape[0] != 3:
        x = x[:3] if x.shape[0] > 3 else x.mean(0, keepdim=True).repeat(3, 1, 1)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(1e-8)
    return x.permute(1, 2, 0).numpy()


def _heat(a: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white colour ramp of ``a: (H, W)`` in [0, 1] -> ``(H, W, 3)``."""
    r = np.clip(3 * a, 0, 1)
    g = np.clip(3 * a - 1, 0, 1)
    b = np.clip(3 * a - 2, 0, 1)
    return np.stack([r, g, b], axis=-1)


def render_attention_panels(
    images: torch.Tensor,
    attn: torch.Tensor,
    captions: list[str] | None = None,
    scale: int = 4,
    max_heads: int = 4,
) -> list[Image.Image]:
    """One panel per image: the image, then its attention map(s) blended over it (one per head).

    Args:
        images: ``(N, C, H, W)`` validation images (normalised is fine: each is min-max scaled).
        attn: ``(N, heads, h, w)`` attention weights over the feature map; upsampled bilinearly to ``H x W``
            and scaled so each map's maximum is 1.
        captions: unused here, kept for symmetry with the W&B call.
        scale: nearest-neighbour upscaling of the panel (small images stay visible).
        max_heads: at most this many heads are drawn.

    Returns:
        ``N`` RGB PIL images of size ``(H * scale) x (W * scale * (1 + heads))``.
    """
    n, _, h, w = images.shape
    a = attn.detach().float().cpu()[:, :max_heads]
    a = F.interpolate(a, size=(h, w), mode="bilinear", align_corners=False)
    a = a / a.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    panels = []
    for i in range(n):
        rgb = _to_rgb(images[i])
        tiles = [rgb] + [0.45 * rgb + 0.55 * _heat(a[i, k].numpy()) for k in range(a.shape[1])]
        row = np.concatenate(tiles, axis=1)
        im = Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8))
        panels.append(im.resize((im.width * scale, im.height * scale), Image.NEAREST))
    return panels


def save_attention_arrays(
    path: str | Path,
    images: torch.Tensor,
    attn: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
) -> Path:
    """Write ``images (N, C, H, W)``, ``attn (N, heads, h, w)`` (float32), ``labels (N,)`` and ``preds (N,)``
    (int64) to the compressed ``.npz`` file ``path``; returns ``path``."""
    n = images.shape[0]
    if attn.ndim != 4 or attn.shape[0] != n or labels.shape != (n,) or preds.shape != (n,):
        raise ValueError(
            f"expected images (N, C, H, W), attn (N, heads, h, w), labels (N,), preds (N,); got "
            f"{tuple(images.shape)}, {tuple(attn.shape)}, {tuple(labels.shape)}, {tuple(preds.shape)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=images.detach().float().cpu().numpy(),
        attn=attn.detach().float().cpu().numpy(),
        labels=labels.detach().cpu().numpy().astype(np.int64),
        preds=preds.detach().cpu().numpy().astype(np.int64),
    )
    return path


class AttentionMaps(pl.Callback):
    """At the end of training, draw the pool's attention maps over the first validation images.

    Works for any pool whose ``forward_with_extras`` returns ``"attn": (B, heads, H', W')`` (attention
    pooling, hybrids with an attention branch); does nothing for the others. The panels are saved as
    ``<dirpath>/attention_maps.png`` (one row per image) and logged to W&B under ``key`` as images; the arrays
    behind them go to ``<dirpath>/attention_maps.npz`` (what the report redraws its figure from):

    - ``images``: ``(N, C, H, W)`` float32, the validation images as the model saw them (normalised);
    - ``attn``: ``(N, heads, h, w)`` float32, the attention weights over the ``h x w`` feature map (each
      head's map sums to 1);
    - ``labels``, ``preds``: ``(N,)`` int64, the true and the predicted classes.

    Args:
        num_images: how many validation images.
        dirpath: folder of the PNG (``None``: not saved).
        split: the datamodule split the images come from (via ``datamodule.eval_dataset(split)``).
        key: the W&B key of the image list.
    """

    def __init__(
        self,
        num_images: int = 8,
        dirpath: str | None = None,
        split: str = "val",
        key: str = "pool/attention_maps",
    ):
        super().__init__()
        self.num_images = int(num_images)
        self.dirpath = dirpath
        self.split = split
        self.key = key
        self.saved: Path | None = None  # the PNG
        self.saved_arrays: Path | None = None  # the .npz

    def _images(self, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor] | None:
        dm = trainer.datamodule
        getter = getattr(dm, "eval_dataset", None)
        if getter is None or self.num_images <= 0:
            return None
        ds = getter(self.split)
        n = min(self.num_images, len(ds))
        if n == 0:
            return None
        items = [ds[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(im) for im, _ in items])
        y = torch.as_tensor([int(lbl) for _, lbl in items])
        return x, y

    @torch.no_grad()
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(model.pool, "forward_with_extras"):
            return
        batch = self._images(trainer)
        if batch is None:
            return
        x, y = batch
        was_training = model.training
        model.eval()
        try:
            fmap = model.forward_features(x.to(pl_module.device))
            logits, extras = model.forward_head(fmap, return_extras=True)
        finally:
            model.train(was_training)
        attn = extras.get("attn")
        if attn is None:
            return
        pred = logits.argmax(-1).cpu()
        captions = [f"label {int(a)} / pred {int(b)}" for a, b in zip(y, pred, strict=True)]
        panels = render_attention_panels(x, attn)
        if self.dirpath is not None:
            out = Path(self.dirpath)
            out.mkdir(parents=True, exist_ok=True)
            grid = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)))
            top = 0
            for p in panels:
                grid.paste(p, (0, top))
                top += p.height
            self.saved = out / "attention_maps.png"
            grid.save(self.saved)
            self.saved_arrays = save_attention_arrays(out / "attention_maps.npz", x, attn, y, pred)
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if log_image is not None:
                log_image(key=self.key, images=panels, caption=captions, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {}


class TimeLeft(pl.Callback):
    """How long a run has been training and how long it has left, when no progress bar shows it.

    With ``trainer.enable_progress_bar=false`` (the study, sweeps, logs), after an epoch (at most one such line
    every ``epoch_every_s`` seconds) and every ``every_s`` seconds within a long epoch it prints one line::

        [hybridpool] epoch 3/12: 41 s elapsed, about 2 min 10 s left (ETA 14:03 UTC)
        [hybridpool] epoch 4/12, batch 120/400: 1 min 12 s elapsed, about 2 min 2 s left (ETA 14:03 UTC)

    The time left extrapolates the time since training started (after the sanity check) over the share of the
    epochs (or of ``max_steps``, whichever ends training first) done since then, so a resumed run counts from its
    resumption. Short runs stay quiet: nothing while the estimated whole run is under ``min_run_s`` seconds, and
    nothing after the last epoch (the run's report follows). Only global rank 0 prints; nothing under
    ``fast_dev_run`` or while a progress bar is on (it shows its own estimate).

    Args:
        every_s: seconds between the lines within an epoch.
        epoch_every_s: at least this many seconds between the lines after epochs (many short epochs: few lines).
        min_run_s: runs estimated shorter than this print nothing.
        clock: an object with ``monotonic()`` and ``time()`` (the ``time`` module; tests pass a fake one).
    """

    def __init__(
        self, every_s: float = 30.0, epoch_every_s: float = 10.0, min_run_s: float = 20.0, clock: Any = time
    ) -> None:
        super().__init__()
        self.every_s = float(every_s)
        self.epoch_every_s = float(epoch_every_s)
        self.min_run_s = float(min_run_s)
        self.clock = clock
        self.lines: list[str] = []  # what it printed (for tests and the curious)
        self._active = False
        self._start = 0.0
        self._last = 0.0
        self._epoch0 = 0
        self._step0 = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = (
            trainer.is_global_zero
            and not getattr(trainer, "fast_dev_run", False)
            and getattr(trainer, "progress_bar_callback", None) is None
        )
        self._start = self._last = self.clock.monotonic()
        self._epoch0 = int(trainer.current_epoch)
        self._step0 = int(trainer.global_step)

    def _fraction(self, trainer: pl.Trainer, epochs_done: float) -> float | None:
        """The share of this fit's training done, by epochs or by ``max_steps`` (the larger: that one ends it)."""
        shares = []
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs > self._epoch0:
            shares.append((epochs_done - self._epoch0) / (max_epochs - self._epoch0))
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps > self._step0:
            shares.append((trainer.global_step - self._step0) / (max_steps - self._step0))
        return min(1.0, max(shares)) if shares else None

    def _report(self, trainer: pl.Trainer, epochs_done: float, where: str) -> None:
        now = self.clock.monotonic()
        elapsed = now - self._start
        fraction = self._fraction(trainer, epochs_done)
        if fraction is not None and (fraction >= 1.0 or (fraction > 0 and elapsed / fraction < self.min_run_s)):
            return  # the run is over, or short
        if fraction is None and elapsed < self.min_run_s:
            return
        self._last = now
        line = f"{where}: {eta_text(elapsed, fraction or 0.0, self.clock.time())}"
        self.lines.append(line)
        say(line)

    def _epoch_name(self, trainer: pl.Trainer) -> str:
        max_epochs = trainer.max_epochs
        known = max_epochs is not None and max_epochs > 0
        return f"epoch {trainer.current_epoch + 1}" + (f"/{max_epochs}" if known else "")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active or self.clock.monotonic() - self._last < self.every_s:
            return
        batches = trainer.num_training_batches
        within = (batch_idx + 1) / batches if isinstance(batches, int) and batches > 0 else 0.0
        of = f"/{batches}" if isinstance(batches, int) and batches > 0 else ""
        where = f"{self._epoch_name(trainer)}, batch {batch_idx + 1}{of}"
        self._report(trainer, trainer.current_epoch + within, where)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active and (not self.lines or self.clock.monotonic() - self._last >= self.epoch_every_s):
            self._report(trainer, trainer.current_epoch + 1, self._epoch_name(trainer))


class TrainSetAccuracy(pl.Callback):
    """The tested model's accuracy on its training images, in eval mode and without augmentation: ``train_eval/acc``.

    ``train/acc`` is the running accuracy of the last training epoch (train mode: dropout and augmentation on, the
    weights still moving). For a train-test gap that measures overfitting, this callback classifies the training
    split again after the test pass, with the weights the test used (the best validation epoch under
    ``ckpt_path="best"``), the model in eval mode and the split read through the eval transform
    (``datamodule.eval_dataset("train")``). It logs ``train_eval/acc`` next to the test metrics (so it lands in the
    run's record and W&B summary).

    Args:
        max_images: at most this many training images, evenly spaced over the split (``None``: all of them).
    """

    def __init__(self, max_images: int | None = None) -> None:
        super().__init__()
        if max_images is not None and int(max_images) < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
        self.max_images = None if max_images is None else int(max_images)
        self.value: float | None = None  # the last accuracy measured

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.utils.data import DataLoader, Subset

        dm = trainer.datamodule
        make = getattr(dm, "eval_dataset", None)
        if make is None:
            raise ValueError(
                f"TrainSetAccuracy needs a datamodule with eval_dataset('train') (the training images through the "
                f"eval transform); {type(dm).__name__} has none"
            )
        dataset = make("train")
        if self.max_images is not None and len(dataset) > self.max_images:
            keep = np.linspace(0, len(dataset) - 1, self.max_images).round().astype(int)
            dataset = Subset(dataset, keep.tolist())
        loader = DataLoader(dataset, batch_size=int(getattr(dm, "batch_size", 128)), shuffle=False)
        was_training = pl_module.training
        pl_module.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in loader:
                logits = pl_module(x.to(pl_module.device))
                correct += int((logits.argmax(1).cpu() == y).sum())
                seen += int(y.shape[0])
        pl_module.train(was_training)
        self.value = correct / max(seen, 1)
        pl_module.log("train_eval/acc", self.value, on_step=False, on_epoch=True, batch_size=seen)
