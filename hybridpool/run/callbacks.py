"""Lightning callbacks of hybridpool: attention maps of the trained pool over validation images, a one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.callbacks import ModelSummary

from hybridpool.run.console import say

__all__ = ["AttentionMaps", "ParameterSummary", "render_attention_panels", "save_attention_arrays"]


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
