"""The LightningModule: loss, metrics, optimizer groups, schedules and logging of the pooling internals.

:class:`ClassificationModule` wraps a :class:`~hybridpool.models.Classifier` (backbone -> pool -> head):

- cross-entropy with optional label smoothing; top-1, top-5 (where classes > 5) and macro (per-class mean)
  accuracy for val and test, logged as ``val/acc``, ``val/acc_top5``, ``val/acc_macro`` (``test/...`` alike);
- three optimizer groups, ``backbone``, ``head`` and ``pool`` (:func:`hybridpool.pooling.pooling_parameters`),
  each with a learning-rate multiplier; the pool group gets its own weight decay (0 by default: GeM's p barely
  moves from 3 otherwise); AdamW or SGD (any ``torch.optim`` class via a Hydra ``_partial_``);
- a per-step schedule: linear warm-up, then cosine (down to ``min_lr_ratio``), step decay or constant;
- the pooling internals over training: the pool's own ``stats()`` every ``log_pool_every_n_steps`` steps under
  ``pool/...`` (GeM p, LSE r, mixing weights, temperatures) and once more at the end of every training epoch,
  so that the last values in ``trainer.callback_metrics`` (and so in ``results.json``) are those of the
  trained pool; per validation epoch the statistics of what it did on the validation set
  (``pool/val/mix/<branch>_mean|_std``, gate spread, ``pool/val/attn_entropy``);
- the cost: ``time/epoch_s`` per training epoch (wall time of the training batches, validation excluded) and
  ``time/epoch_s_mean``, its mean over the epochs run so far by this fit (its last value is the run's mean);
- with ``from_features=True`` the batches hold cached backbone feature maps ``(B, C, H', W')`` (frozen-backbone
  mode, see :mod:`hybridpool.data.features`) and only pool + head run;
- checkpoints carry the RNG states so that ``ckpt_path=last`` resumes an interrupted run exactly;
- ``pool_schedule="freeze_and_train"`` (for a :class:`~hybridpool.pooling.HybridPool` with weighted mixing,
  meant for ``init="gap"``): until ``switch_epoch`` the pool's parameters get no update (backbone + head
  train with plain GAP), from then on the backbone is frozen (no update, BatchNorm in eval mode) and the pool and
  the head train; after "On Global Feature Pooling for Fine-grained Visual Categorization" (ICLR 2020
  submission), where joint training of two combined poolings suffered from gradient conflict. The stage is
  logged per epoch as ``schedule/stage`` (1 or 2);
- ``robustness={"shift": s, "grid": g}``: the test accuracy also on the test images shifted ``s`` pixels right
  and down (``test_shift/acc``) and cut into ``g x g`` tiles shuffled by a fixed permutation
  (``test_grid/acc``), see :mod:`hybridpool.run.robustness`.
"""

from __future__ import annotations

import functools
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from hybridpool.arguments import ArgumentError, check_rules, number, one_of, raise_first
from hybridpool.models.classifier import Classifier
from hybridpool.run.robustness import ROBUSTNESS_KEYS, check_robustness, grid_permutation, permute_grid, shift_image
from hybridpool.run.schedule import (
    POOL_SCHEDULES,
    WEIGHTED_MIXING,
    check_freeze_and_train_pool,
    mixing_parameters,
    resolve_switch_epoch,
)

__all__ = [
    "POOL_SCHEDULES",
    "ROBUSTNESS_KEYS",
    "SCHEDULES",
    "WEIGHTED_MIXING",
    "ClassificationModule",
    "check_freeze_and_train_pool",
    "check_robustness",
    "lr_lambda",
    "mixing_entropy",
    "mixing_parameters",
    "mixing_statistics",
    "resolve_switch_epoch",
]

SCHEDULES = ("cosine", "step", "constant")
_NON_NEGATIVE = functools.partial(number, low=0)
#: the range of each ClassificationModule argument that has one (ClassificationModule.check_args)
_RULES = {
    "scheduler": functools.partial(one_of, choices=SCHEDULES),
    "warmup_epochs": _NON_NEGATIVE,
    "min_lr_ratio": _NON_NEGATIVE,
    "step_size": functools.partial(number, low=1),
    "gamma": functools.partial(number, low=0, low_open=True),
    "backbone_lr_mult": _NON_NEGATIVE,
    "head_lr_mult": _NON_NEGATIVE,
    "pool_lr_mult": _NON_NEGATIVE,
    "pool_weight_decay": _NON_NEGATIVE,
    "label_smoothing": functools.partial(number, low=0, high=1, high_open=True),
    "mix_entropy_weight": _NON_NEGATIVE,
    "log_pool_every_n_steps": _NON_NEGATIVE,
}


def lr_lambda(
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    step_every: int = 1,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The learning-rate factor of optimizer step ``s`` (for ``torch.optim.lr_scheduler.LambdaLR``).

    Linear warm-up from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps, then ``cosine`` (1 ->
    min_lr_ratio
    over the remaining steps), ``step`` (times ``gamma`` every ``step_every`` steps) or ``constant``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")
    return functools.partial(
        _lr_factor,
        schedule,
        int(total_steps),
        int(warmup_steps),
        float(min_lr_ratio),
        max(1, int(step_every)),
        float(gamma),
    )


def _lr_factor(
    schedule: str, total: int, warmup: int, min_ratio: float, step_every: int, gamma: float, step: int
) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return gamma ** ((step - warmup) // step_every)
    return 1.0


def mixing_statistics(
    mix: torch.Tensor, names: list[str] | tuple[str, ...] | None = None
) -> dict[str, float]:
    """Per-branch mean and spread of mixing weights.

    Args:
        mix: ``(B, n_branches)`` per-sample weights (scalar or gate mixing) or ``(B, n_branches, C)``
            per-channel weights.
        names: branch names (default ``b0, b1, ...``).

    Returns:
        ``{"<branch>_mean", "<branch>_std"}`` over samples (and channels), plus ``"<branch>_sample_std"`` (how
        much the weight varies between samples: the gate's input dependence).
    """
    mix = mix.detach().float()
    if mix.ndim not in (2, 3):
        raise ValueError(f"mix must be (B, n_branches) or (B, n_branches, C), got shape {tuple(mix.shape)}")
    n = mix.shape[1]
    names = list(names) if names is not None and len(names) == n else [f"b{i}" for i in range(n)]
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        w = mix[:, i]
        out[f"{name}_mean"] = float(w.mean())
        out[f"{name}_std"] = float(w.std(unbiased=False))
        per_sample = w.mean(dim=-1) if w.ndim == 2 else w
        out[f"{name}_sample_std"] = float(per_sample.std(unbiased=False))
    return out


def mixing_entropy(mix: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy (0: one branch, 1: uniform) of mixing weights, differentiable.

    Args:
        mix: ``(B, n_branches)`` (scalar or gate mixing) or ``(B, n_branches, C)`` (channel mixing) weights that sum
            to 1 over the branch dimension (``extras["mix"]`` of :class:`~hybridpool.pooling.HybridPool`).

    Returns:
        a scalar tensor in ``[0, 1]``: ``-sum_i w_i log w_i / log(n_branches)``, averaged over samples (and channels).
    """
    if mix.ndim not in (2, 3):
        raise ValueError(f"mix must be (B, n_branches) or (B, n_branches, C), got shape {tuple(mix.shape)}")
    n = mix.shape[1]
    if n < 2:
        return mix.new_zeros(())
    w = mix if mix.dtype == torch.float64 else mix.float()
    return (-(w * w.clamp_min(1e-12).log()).sum(1) / math.log(n)).mean()


def attention_entropy(attn: torch.Tensor) -> float:
    """Mean normalised entropy (0: one location, 1: uniform) of attention maps ``attn: (B, heads, H, W)``."""
    a = attn.detach().float().flatten(2)
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    ent = -(a * a.clamp_min(1e-12).log()).sum(-1)
    n = a.shape[-1]
    return float((ent / math.log(n)).mean()) if n > 1 else 0.0


def _numpy_state() -> dict[str, Any]:
    """numpy's global RNG state with plain types only (checkpoints load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _to_numpy_state(s: dict[str, Any]) -> tuple:
    keys = s["keys"].numpy().astype(np.uint32)
    return (s["name"], keys, s["pos"], s["has_gauss"], s["cached"])


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _to_python_state(s: dict[str, Any]) -> tuple:
    return (s["version"], tuple(int(v) for v in s["internal"].tolist()), s["gauss"])


class ClassificationModule(pl.LightningModule):
    """Trains and evaluates a :class:`~hybridpool.models.Classifier`.

    Args:
        model: the classifier.
        optimizer: a factory ``optimizer(param_groups) -> torch.optim.Optimizer`` (a Hydra ``_partial_`` of
            ``torch.optim.AdamW``/``SGD`` holding ``lr`` and ``weight_decay``); default AdamW(lr=1e-3).
        scheduler: ``"cosine"``, ``"step"`` or ``"constant"`` (per optimizer step, after warm-up).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        min_lr_ratio: final learning rate of the cosine schedule relative to the peak.
        step_size: epochs between decays of the ``step`` schedule.
        gamma: decay factor of the ``step`` schedule.
        backbone_lr_mult, head_lr_mult, pool_lr_mult: learning-rate multipliers of the three groups.
        pool_weight_decay: weight decay of the pooling parameters (0: no decay).
        pool_weights: where the pools' weight matrices train: ``"head"`` (the head's rate and weight decay) or
            ``"pool"`` (``pool_lr_mult``, ``pool_weight_decay``: the old rule, under which attention saturates;
            :meth:`~hybridpool.models.Classifier.parameter_groups`).
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        mix_entropy_weight: weight of an entropy penalty on a HybridPool's mixing weights, added to the training
            loss: ``mix_entropy_weight * mixing_entropy(w)`` (0: uniform weights cost the most, one branch costs
            nothing), which pushes the mixing towards choosing one branch; 0 (default): off. Needs weighted mixing
            (``scalar``, ``channel`` or ``gate``). See :meth:`training_loss`.
        log_pool_every_n_steps: how often the pool's ``stats()`` are logged during training steps (0: never);
            they are also logged at the end of every training epoch.
        from_features: batches hold cached feature maps ``(B, C, H', W')`` instead of images.
        pool_schedule: ``"joint"`` (everything trains together) or ``"freeze_and_train"``: in epochs
            ``< switch_epoch`` the HybridPool's parameters (mixing: ``mix_logits``, ``blend``, gate network, see
            :func:`mixing_parameters`; and the branches' own) get no update, so with ``init="gap"`` backbone +
            head train with plain GAP; from ``switch_epoch`` on the backbone gets no update and runs in eval
            mode (BatchNorm statistics fixed, no backward through it), while the pool (mixing and branch
            parameters) and the head train.
            "No update": their ``.grad`` is set to ``None`` after backward, so AdamW/SGD skip them entirely
            (weight decay included). Needs a HybridPool with mixing ``scalar``, ``channel`` or ``gate``. The
            stage follows the epoch, so a resumed run continues in the right one.
        switch_epoch: first epoch (0-based) of stage 2; ``None``: ``trainer.max_epochs // 2``. Must be ``>= 1``
            and ``< max_epochs`` (checked when fitting starts; :func:`resolve_switch_epoch`).
        robustness: ``None`` (off) or ``{"shift": s, "grid": g}`` (optional ``"seed"``, default 0): every test
            batch is also classified shifted ``s`` pixels right and down with zero fill
            (:func:`hybridpool.run.robustness.shift_image`, metric ``test_shift/acc``) and cut into ``g x g`` tiles
            shuffled by a fixed non-identity permutation (:func:`hybridpool.run.robustness.permute_grid`, metric
            ``test_grid/acc``); either key may be ``None`` to skip that test. Images only: not with
            ``from_features``.
    """

    def __init__(
        self,
        model: Classifier,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        step_size: int = 30,
        gamma: float = 0.1,
        backbone_lr_mult: float = 1.0,
        head_lr_mult: float = 1.0,
        pool_lr_mult: float = 10.0,
        pool_weight_decay: float = 0.0,
        pool_weights: str = "head",
        label_smoothing: float = 0.0,
        mix_entropy_weight: float = 0.0,
        log_pool_every_n_steps: int = 50,
        from_features: bool = False,
        pool_schedule: str = "joint",
        switch_epoch: int | None = None,
        robustness: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        raise_first(
            self.check_args(
                scheduler=scheduler,
                warmup_epochs=warmup_epochs,
                min_lr_ratio=min_lr_ratio,
                step_size=step_size,
                gamma=gamma,
                backbone_lr_mult=backbone_lr_mult,
                head_lr_mult=head_lr_mult,
                pool_lr_mult=pool_lr_mult,
                pool_weight_decay=pool_weight_decay,
                label_smoothing=label_smoothing,
                mix_entropy_weight=mix_entropy_weight,
                log_pool_every_n_steps=log_pool_every_n_steps,
            )
        )
        if pool_schedule not in POOL_SCHEDULES:
            raise ValueError(f"unknown pool_schedule {pool_schedule!r}; accepted: {', '.join(POOL_SCHEDULES)}")
        if pool_schedule == "freeze_and_train":
            check_freeze_and_train_pool(model.pool)
            if switch_epoch is not None:
                resolve_switch_epoch(switch_epoch, None)  # type and >= 1 now; < max_epochs when fitting starts
            if getattr(model.pool, "init", None) != "gap":
                warnings.warn(
                    f"pool_schedule='freeze_and_train' is meant for pool.init='gap' (stage 1 = plain GAP); with "
                    f"init={getattr(model.pool, 'init', None)!r} stage 1 trains with the fixed initial pool "
                    "(mixing weights and branches)",
                    stacklevel=2,
                )
        elif switch_epoch is not None:
            raise ValueError(f"switch_epoch={switch_epoch} is only used with pool_schedule='freeze_and_train'")
        robust = check_robustness(robustness)
        if robust and from_features:
            raise ValueError(
                "robustness tests transform the input images, but this run trains from cached backbone features "
                "(from_features=True: a frozen backbone with the feature cache); set module.robustness=null, or "
                "features.enabled=false to run the frozen backbone on images"
            )
        self.model = model
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, lr=1e-3)
        self.scheduler_name = scheduler
        self.warmup_epochs = float(warmup_epochs)
        self.min_lr_ratio = float(min_lr_ratio)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.lr_mults = {
            "backbone": float(backbone_lr_mult),
            "head": float(head_lr_mult),
            "pool": float(pool_lr_mult),
        }
        self.pool_weight_decay = float(pool_weight_decay)
        if pool_weights not in ("head", "pool"):
            raise ValueError(f"pool_weights must be 'head' or 'pool', got {pool_weights!r}")
        self.pool_weights = pool_weights
        self.label_smoothing = float(label_smoothing)
        if mix_entropy_weight and getattr(model.pool, "mixing", None) not in WEIGHTED_MIXING:
            raise ValueError(
                f"mix_entropy_weight={mix_entropy_weight} penalises a HybridPool's mixing weights, but the pool "
                f"{type(model.pool).__name__}"
                + (f" (mixing={model.pool.mixing!r})" if hasattr(model.pool, "mixing") else "")
                + " has none; use a hybrid with mixing scalar, channel or gate, or set module.mix_entropy_weight=0"
            )
        self.mix_entropy_weight = float(mix_entropy_weight)
        self.log_pool_every_n_steps = int(log_pool_every_n_steps)
        self.from_features = bool(from_features)
        self.pool_schedule = pool_schedule
        self.switch_epoch = switch_epoch
        self._switch_epoch: int | None = None  # resolved when fitting starts
        self._stage = 0  # 0: joint; 1 or 2: the stage of freeze_and_train of the current training epoch
        self.robustness = robust
        self._grid_perm = grid_permutation(robust["grid"], robust["seed"]) if "grid" in robust else None
        self.run_config: dict[str, Any] | None = None  # stored in checkpoints when set
        self._restore_rng: dict[str, Any] | None = None

        n = model.num_classes
        metrics: dict[str, nn.Module] = {
            "acc": MulticlassAccuracy(num_classes=n, average="micro"),
            "acc_macro": MulticlassAccuracy(num_classes=n, average="macro"),
        }
        if n > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes=n, top_k=5, average="micro")
        base = MetricCollection(metrics)
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.robust_metrics = nn.ModuleDict(
            {kind: MulticlassAccuracy(num_classes=n, average="micro") for kind in ("shift", "grid") if kind in robust}
        )
        self._val_mix: list[torch.Tensor] = []
        self._val_entropy: list[float] = []
        self._epoch_times: list[float] = []  # seconds of training per epoch of this fit
        self._epoch_t0: float | None = None
        self._epoch_val_s = 0.0
        self._val_t0: float | None = None

    @staticmethod
    def check_args(**kwargs: Any) -> list[ArgumentError]:
        """The range problems of constructor arguments among ``kwargs`` (those not given are not checked), without
        building anything; the constructor raises the first. ``pool_schedule``, ``switch_epoch`` and ``robustness``
        are checked by :mod:`hybridpool.run.schedule` / :mod:`hybridpool.run.robustness`."""
        return check_rules(_RULES, kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, C_in, H, W)`` images (or ``(B, C, H', W')`` features when ``from_features``) -> logits."""
        return self.model.forward_head(self._features(x))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map ``(B, C, H', W')`` of ``x``; in stage 2 of freeze_and_train without a graph."""
        if self.from_features:
            return x
        if self._stage == 2 and self._trainer is not None and self.trainer.world_size == 1:
            # the backbone gets no update in stage 2: no backward through it (DDP keeps the full graph instead,
            # it expects a gradient for every parameter; the gradients are dropped in on_after_backward)
            with torch.no_grad():
                return self.model.forward_features(x)
        return self.model.forward_features(x)

    def _forward_extras(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.forward_head(self._features(x), return_extras=True)

    # ------------------------------------------------------------------ steps
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training objective of one batch: ``(loss, logits (B, classes))``.

        Cross-entropy with ``label_smoothing``, plus ``mix_entropy_weight`` times the mean normalised entropy of
        the HybridPool's mixing weights on this batch (:func:`mixing_entropy`). Both training engines use it (this
        module's ``training_step`` and :mod:`hybridpool.run.heads`).
        """
        if not self.mix_entropy_weight:
            logits = self(x)
            return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits
        logits, extras = self._forward_extras(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss + self.mix_entropy_weight * mixing_entropy(extras["mix"]), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self.training_loss(x, y)
        self.train_acc(logits.detach(), y)
        bs = y.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        n = self.log_pool_every_n_steps
        if n > 0 and self.global_step % n == 0:
            self._log_pool_stats()
        return loss

    def _log_pool_stats(self, on_step: bool = True) -> None:
        stats = getattr(self.model.pool, "stats", None)
        if stats is None:
            return
        values = {f"pool/{k}": float(v) for k, v in stats().items()}
        if values:
            # at epoch level: the mean over ranks (the same pool everywhere; no DDP warning)
            self.log_dict(values, on_step=on_step, on_epoch=not on_step, batch_size=1, sync_dist=not on_step)

    # ------------------------------------------------------------------ per-epoch time and final pool state
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_fit_start(self) -> None:
        self._epoch_times = []
        fast_dev_run = bool(getattr(self.trainer, "fast_dev_run", False))
        self._switch_epoch = self.schedule_info(self.trainer.max_epochs, fast_dev_run)["switch_epoch"]

    # ------------------------------------------------------------------ freeze_and_train
    def stage_of_epoch(self, epoch: int) -> int:
        """0 with ``pool_schedule="joint"``; 1 before the switch epoch, 2 from it on with ``freeze_and_train``."""
        if self.pool_schedule != "freeze_and_train":
            return 0
        switch = self._switch_epoch if self._switch_epoch is not None else self.switch_epoch
        if switch is None:
            raise RuntimeError("the switch epoch is resolved when fitting starts (on_fit_start)")
        return 1 if epoch < switch else 2

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters that get no update in the current stage: the whole pool (stage 1), backbone (stage 2).

        Stage 1 freezes the branches' own parameters (GeM p, attention projections) with the mixing: with
        ``init="gap"`` their gradients are zero anyway, but decoupled weight decay would still move them.
        """
        if self._stage == 1:
            return list(self.model.pool.parameters())
        if self._stage == 2:
            return list(self.model.backbone.parameters())
        return []

    def schedule_info(self, max_epochs: int | None, fast_dev_run: bool = False) -> dict[str, Any]:
        """``{"pool_schedule", "switch_epoch"}``, the switch epoch resolved for ``max_epochs`` (``None``: joint).

        Raises ``ValueError`` for a switch epoch that leaves a stage empty (:func:`resolve_switch_epoch`); with
        ``fast_dev_run`` (a one-batch smoke test, where Lightning sets ``max_epochs=1``) it is not checked.
        """
        if self.pool_schedule == "joint":
            switch = None
        elif fast_dev_run:
            switch = self.switch_epoch or 1
        else:
            switch = resolve_switch_epoch(self.switch_epoch, max_epochs)
        return {"pool_schedule": self.pool_schedule, "switch_epoch": switch}

    def _apply_stage(self) -> None:
        stage = self.stage_of_epoch(self.current_epoch)
        if stage == 2 and self._stage != 2 and self.trainer.is_global_zero:
            print(
                f"[hybridpool] freeze_and_train: epoch {self.current_epoch}, stage 2: backbone frozen (eval mode), "
                "pool + head train",
                flush=True,
            )
        self._stage = stage
        if stage == 2:
            self.model.backbone.eval()

    def train(self, mode: bool = True) -> ClassificationModule:
        """Train/eval mode; in stage 2 of freeze_and_train the backbone stays in eval mode (BatchNorm fixed)."""
        super().train(mode)
        if mode and getattr(self, "_stage", 0) == 2:
            self.model.backbone.eval()
        return self

    def on_after_backward(self) -> None:
        """Drop the gradients of the frozen set (``frozen_parameters``): the optimizer then skips them."""
        for p in self.frozen_parameters():
            p.grad = None

    def on_train_epoch_start(self) -> None:
        self._apply_stage()
        self._sync()
        self._epoch_t0 = time.perf_counter()
        self._epoch_val_s = 0.0

    def on_validation_start(self) -> None:
        if self._epoch_t0 is not None and not self.trainer.sanity_checking:
            self._sync()
            self._val_t0 = time.perf_counter()

    def on_validation_end(self) -> None:
        if self._val_t0 is not None:
            self._sync()
            self._epoch_val_s += time.perf_counter() - self._val_t0
            self._val_t0 = None

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training time and the pool's ``stats()`` as they are at the end of the epoch.

        Validation (run inside the training epoch by Lightning) is excluded from ``time/epoch_s``. The pool
        statistics logged here, per epoch, are the last values Lightning puts in ``trainer.callback_metrics``
        at the end of a fit: the record's ``pool/...`` values are those of the trained pool, not of whichever
        step was logged last.
        """
        if self._epoch_t0 is not None:
            self._sync()
            seconds = time.perf_counter() - self._epoch_t0 - self._epoch_val_s
            self._epoch_t0 = None
            self._epoch_times.append(seconds)
            mean = float(np.mean(self._epoch_times))
            for key, value in (("time/epoch_s", seconds), ("time/epoch_s_mean", mean)):  # DDP: mean over ranks
                self.log(key, value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        if self.pool_schedule == "freeze_and_train":
            self.log("schedule/stage", float(self._stage), on_step=False, on_epoch=True, batch_size=1)
        self._log_pool_stats(on_step=False)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits, extras = self._forward_extras(x)
        loss = F.cross_entropy(logits, y)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=y.shape[0])
        if stage == "val" and not self.trainer.sanity_checking:
            if "mix" in extras:
                self._val_mix.append(extras["mix"].detach().float().cpu())
            if "attn" in extras:
                self._val_entropy.append(attention_entropy(extras["attn"]))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")
        if self.robustness:
            x, y = batch
            if "shift" in self.robust_metrics:
                self.robust_metrics["shift"].update(self(shift_image(x, self.robustness["shift"])), y)
            if "grid" in self.robust_metrics:
                moved = permute_grid(x, self.robustness["grid"], perm=self._grid_perm)
                self.robust_metrics["grid"].update(self(moved), y)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()
        if self.trainer.sanity_checking:
            return
        values: dict[str, float] = {}
        if self._val_mix:
            names = getattr(self.model.pool, "branch_names", None)
            stats = mixing_statistics(torch.cat(self._val_mix), names)
            values.update({f"pool/val/mix/{k}": v for k, v in stats.items()})
        if self._val_entropy:
            values["pool/val/attn_entropy"] = float(np.mean(self._val_entropy))
        if values:
            self.log_dict(values)
        self._val_mix.clear()
        self._val_entropy.clear()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()
        for kind, metric in self.robust_metrics.items():  # test_shift/acc, test_grid/acc
            self.log(f"test_{kind}/acc", metric.compute())
            metric.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the learning-rate schedule needs a finite run: set trainer.max_epochs or max_steps"
            )
        optimizer, sched = self.optimizer_and_schedule(max(1, int(total)), self.trainer.max_epochs or 0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_and_schedule(
        self, total_steps: int, max_epochs: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """The optimizer over the ``backbone``/``pool``/``head`` groups and its per-step schedule.

        Shared by Lightning's :meth:`configure_optimizers` and :mod:`hybridpool.run.heads` (many heads per pass).
        """
        groups = self.model.parameter_groups(self.pool_weights)
        keywords = getattr(self.optimizer_factory, "keywords", {}) or {}
        base_lr = float(keywords.get("lr", 1e-3))
        param_groups = []
        for name, params in groups.items():
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "lr": base_lr * self.lr_mults[name], "name": name}
            if name == "pool":
                group["weight_decay"] = self.pool_weight_decay
            param_groups.append(group)
        if not param_groups:
            raise ValueError("nothing to train: every parameter of the model is frozen")
        optimizer = self.optimizer_factory(param_groups)
        steps_per_epoch = total_steps / max_epochs if max_epochs > 0 else total_steps
        schedule = lr_lambda(
            self.scheduler_name,
            total_steps=total_steps,
            warmup_steps=round(self.warmup_epochs * steps_per_epoch),
            min_lr_ratio=self.min_lr_ratio,
            step_every=round(self.step_size * steps_per_epoch),
            gamma=self.gamma,
        )
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hybridpool_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": _python_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": None,
        }
        generator = self._train_loader_generator()
        if generator is not None:  # a datamodule that shuffles with its own seeded generator
            checkpoint["hybridpool_rng"]["loader"] = generator.get_state()
        if self.run_config is not None:
            checkpoint["hybridpool_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a fit: put the RNGs back where the interrupted run was when it saved this checkpoint.

        The global RNGs are restored here, before Lightning creates the first training iterator; the training
        loader's own generator (a datamodule that shuffles with a seeded ``torch.Generator``) is restored by
        :meth:`restore_loader_state` as soon as the loader exists (``hybridpool.run.build`` wires it).
        """
        state = checkpoint.get("hybridpool_rng")
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if state is None or not fitting:
            return
        torch.set_rng_state(state["torch"])
        np.random.set_state(_to_numpy_state(state["numpy"]))
        random.setstate(_to_python_state(state["python"]))
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        self._restore_rng = {"loader": state.get("loader")} if state.get("loader") is not None else None

    def restore_loader_state(self, loader: Any) -> None:
        """Give a freshly built training ``loader`` the generator state saved in the resumed checkpoint."""
        pending, self._restore_rng = self._restore_rng, None
        generator = getattr(loader, "generator", None)
        if pending is not None and isinstance(generator, torch.Generator):
            generator.set_state(pending["loader"])

    def _train_loader_generator(self) -> torch.Generator | None:
        if self._trainer is None:
            return None
        try:
            loader = self.trainer.train_dataloader
        except Exception:
            return None
        generator = getattr(loader, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None
