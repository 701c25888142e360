"""Many heads per pass: the pool + head of many frozen-backbone runs, trained together in one process.

On a frozen backbone with the feature cache, a run trains only its pool and head over cached feature maps: a few
seconds of compute, next to the ten seconds a job of its own pays for process start, imports, Lightning and W&B.
:func:`train_heads` trains a group of such runs (pools x seeds x ...) in one process, step by step over one
in-memory copy of each cached split (DINOv2's linear evaluation trains its grid of heads the same way). Each run
in the group keeps what it would have alone:

- its random stream: torch's global generator is swapped to the run's own state around everything of the run that
  draws from it (initialisation, the loaders' seeds and batch order, dropout), in the order Lightning draws, so
  a run gives the metrics of :func:`hybridpool.run.train` on the same config whether it ran alone or in a group
  (``tests/test_heads.py`` compares them);
- its folder with ``results.json``, ``csv/metrics.csv`` and its W&B run (both written when the run ends, from the
  rows kept in memory), its attention maps, and ``checkpoints/last.ckpt`` after every epoch (pool + head,
  optimizer, schedule, random state, rows so far; removed once the run completed), from which a re-run resumes;
- its failures: a run that raises is recorded as failed and leaves the group; the others go on.

The test split is evaluated with the weights of the epoch a ``ModelCheckpoint(monitor=...)`` callback would have
kept (best validation value, the first such epoch on ties), as :func:`~hybridpool.run.train` does with
``ckpt_path="best"``; without one, with the last epoch's. :func:`group_problem` says why a config cannot join a
group (it then runs alone through Lightning); :mod:`hybridpool.sweep.grouped` is the Hydra launcher
(``hydra/launcher=heads``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from hybridpool.run.console import say
from hybridpool.run.resume import Placement
from hybridpool.run.wandb import WandbSession

__all__ = ["HEADS_CKPT_FORMAT", "copy_config", "group_key", "group_problem", "train_heads"]

#: the group holds its cached splits as float32 tensors while they take at most this many bytes in all (a batch is
#: then a slice or an index_select, no float16 conversion); splits beyond it are read batch by batch as in a lone run
DENSE_SPLITS_BYTES = 4 << 30

#: marks a ``checkpoints/last.ckpt`` written by this engine (pool + head only, not a Lightning checkpoint)
HEADS_CKPT_FORMAT = "hybridpool-heads-1"

#: trainer settings a grouped run replays; any other value of these keys makes the run train alone
_TRAINER_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "devices": (1, "1", [0], "auto"),
    "precision": (32, "32", "32-true"),
    "accumulate_grad_batches": (None, 1),
    "max_steps": (None, -1),
    "min_epochs": (None,),
    "check_val_every_n_epoch": (None, 1),
    "val_check_interval": (None, 1.0, 1),
    "limit_train_batches": (None, 1.0),
    "limit_val_batches": (None, 1.0),
    "limit_test_batches": (None, 1.0),
    "fast_dev_run": (None, False, 0),
    "gradient_clip_val": (None, 0, 0.0),
    "num_nodes": (None, 1),
    "strategy": (None, "auto"),
    "overfit_batches": (None, 0, 0.0),
}
_CALLBACKS = {
    "pytorch_lightning.callbacks.ModelCheckpoint",
    "pytorch_lightning.callbacks.LearningRateMonitor",
    "hybridpool.run.callbacks.AttentionMaps",
}


def group_problem(cfg: DictConfig) -> str | None:
    """Why the run ``cfg`` cannot train in a group (``None``: it can).

    A grouped run trains pool + head on cached features of a frozen backbone, on one device in float32, with
    the joint schedule, one validation per epoch and the callbacks this engine replays (checkpoints, learning
    rates, attention maps).
    """
    model, module, trainer = cfg.get("model") or {}, cfg.get("module") or {}, cfg.get("trainer") or {}
    features = cfg.get("features") or {}
    if not model.get("freeze_backbone"):
        return "the backbone trains (model.freeze_backbone=false)"
    if features.get("enabled", "auto") is False:
        return "the feature cache is off (features.enabled=false)"
    if module.get("pool_schedule", "joint") != "joint":
        return f"module.pool_schedule={module.get('pool_schedule')}"
    if module.get("robustness"):
        return "module.robustness tests transform images"
    if not trainer.get("max_epochs") or int(trainer.get("max_epochs")) < 1:
        return "trainer.max_epochs is not set"
    if int((cfg.get("data") or {}).get("num_workers", 0) or 0) > 0:
        return "data.num_workers > 0 (grouped runs read the cached maps in memory, in this process)"
    if cfg.get("ckpt_path"):
        return f"ckpt_path={cfg.get('ckpt_path')}"
    for key, accepted in _TRAINER_DEFAULTS.items():
        value = trainer.get(key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if key in trainer and value not in accepted:
            return f"trainer.{key}={value}"
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and node.get("_target_") not in _CALLBACKS:
            return f"callback {name} ({node.get('_target_')}) is not replayed by the heads engine"
    for name, node in (cfg.get("logger") or {}).items():
        target = str((node or {}).get("_target_", ""))
        if node is not None and not target.endswith(("CSVLogger", "WandbLogger", "make_wandb_logger")):
            return f"logger {name} ({target})"
    return None


def group_key(cfg: DictConfig) -> str:
    """Runs with the same key share cached features and device settings and can train in one group."""
    keep = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "features") if cfg.get(k) is not None}
    keep["data"] = {k: v for k, v in (keep.get("data") or {}).items() if k not in ("seed", "batch_size")}
    model = OmegaConf.to_container(cfg.model, resolve=True)
    keep["backbone"] = {k: v for k, v in model.items() if k not in ("post_bn", "dropout", "head_hidden")}
    keep["trainer"] = {k: cfg.trainer.get(k) for k in ("accelerator", "deterministic")}
    return json.dumps(keep, sort_keys=True, default=str)


@dataclass
class _Run:
    """One configuration of the group and everything it owns."""

    cfg: DictConfig
    placement: Placement
    container: dict[str, Any] = field(default_factory=dict)
    record: Any = None
    session: Any = None
    built: Any = None
    optimizer: Any = None
    scheduler: Any = None
    rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None
    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    epoch_times: list[float] = field(default_factory=list)
    compute_s: float = 0.0
    monitor: str | None = None
    mode: str = "max"
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False
    train_iter: Any = None
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    epoch_t: float = 0.0

    @property
    def model(self) -> Any:
        return self.built.model

    @property
    def module(self) -> Any:
        return self.built.module

    @property
    def out_dir(self) -> Path:
        return Path(self.container["paths"]["output_dir"]).absolute()

    @property
    def ckpt_file(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"

    def swap_in(self) -> None:
        """Make this run's random state torch's global one."""
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)

    def swap_out(self) -> None:
        self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state()


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Pool, post-BN and head weights and buffers (not the frozen backbone's), copied."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def _monitor_of(cfg: DictConfig) -> tuple[str | None, str]:
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None and str(node.get("_target_", "")).endswith("ModelCheckpoint") and node.get("monitor"):
            return str(node.monitor), str(node.get("mode", "min"))
    return None, "max"


def _device(cfg: DictConfig) -> torch.device:
    accel = str(cfg.trainer.get("accelerator", "cpu"))
    if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


class _Group:
    """The runs of one group, with the cached splits they share."""

    def __init__(self, runs: list[_Run]):
        self.runs = runs
        self.shared: dict[str, tuple[Any, dict[str, Any]]] = {}  # data identity -> (backbone, datasets by split)
        self.step_batches: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # this step's gathered batches
        self.dense_splits: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}  # see dense()
        self.dense_bytes = 0

    @property
    def alive(self) -> list[_Run]:
        return [r for r in self.runs if r.error is None and not r.done]

    # ------------------------------------------------------------------ set-up
    def start(self, run: _Run, device: torch.device) -> None:
        import pytorch_lightning as pl

        from hybridpool.data.features import images_identity
        from hybridpool.run.build import build_data, build_model, describe_datamodule, run_tags
        from hybridpool.run.config import validate_config
        from hybridpool.run.record import open_record, torch_threads

        t0 = time.perf_counter()
        cfg = run.cfg
        run.container = validate_config(cfg)
        run.out_dir.mkdir(parents=True, exist_ok=True)
        startup_s = time.time() - (run.placement.start_unix or time.time())
        run.record = open_record(
            run.container, run.out_dir, run.placement, list(run.placement.job.get("overrides") or []),
            run.placement.start_unix or time.time(), startup_s,
        )
        run.session = WandbSession(
            run.container, run.record.data["job"], run.placement.previous, run.placement.wandb_group,
            run.placement.wandb_name,
        )
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        dm = build_data(cfg)
        model, module, fit_dm, cache, pool = build_model(cfg, dm, run.container)
        ident = json.dumps([images_identity(dm.describe()), model.backbone.describe()], sort_keys=True, default=str)
        if ident in self.shared:  # one copy of the backbone and the cached maps for the whole group
            backbone, datasets = self.shared[ident]
            model.backbone = backbone
            fit_dm.backbone = backbone
            fit_dm.datasets = datasets
        else:
            self.shared[ident] = (model.backbone, fit_dm.datasets)
        fit_dm.setup("fit")
        fit_dm.setup("test")
        model.to(device)
        run.built = SimpleNamespace(
            datamodule=dm, fit_datamodule=fit_dm, model=model, module=module, cache=cache, pool=pool,
            tags=run_tags(cfg, dm, model, pool), device=device,
        )
        write_split = getattr(dm, "write_split", None)
        if write_split is not None:
            run.record.update(paths={"split": str(write_split(run.out_dir / "split.json"))})
        run.record.update(
            tags=run.built.tags, pool=pool, model=model.describe(), data=describe_datamodule(dm),
            schedule=module.schedule_info(cfg.trainer.get("max_epochs")),
        )
        run.record.data["devices"].update(torch_threads=torch_threads(), world_size=1)
        max_epochs = int(cfg.trainer.max_epochs)
        steps = len(fit_dm.train_dataloader()) * max_epochs
        run.optimizer, run.scheduler = module.optimizer_and_schedule(max(1, steps), max_epochs)
        run.monitor, run.mode = _monitor_of(cfg)
        run.swap_out()  # the run's stream starts where model building left the global one
        if device.type == "cuda":
            run.cuda_rng = torch.cuda.get_rng_state()
        if run.placement.ckpt:  # Lightning's sanity check runs under isolate_rng: nothing to replay for it
            self._resume(run)
        run.record.data["timing"]["setup_s"] = time.perf_counter() - t0

    def _resume(self, run: _Run) -> None:
        state = torch.load(run.placement.ckpt, map_location="cpu", weights_only=False)
        if state.get("format") != HEADS_CKPT_FORMAT:
            raise ValueError(f"{run.placement.ckpt} is not a checkpoint of the heads engine (hybridpool.run.heads)")
        run.model.load_state_dict(state["model"], strict=False)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.rng, run.cuda_rng = state["rng"], state.get("cuda_rng")
        run.rows, run.epoch, run.step = list(state["rows"]), int(state["epoch"]), int(state["step"])
        run.epoch_times = list(state["epoch_times"])
        run.best = state["best"]
        say(f"resuming {run.out_dir} at epoch {run.epoch} from {run.placement.ckpt}")

    # ------------------------------------------------------------------ one epoch
    def dense(self, dataset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A cached split as float32 tensors on ``device``, ``x (N, C, H', W')`` and ``y (N,)``, made once for the
        group while the splits held so fit in :data:`DENSE_SPLITS_BYTES`; ``None`` for other datasets."""
        from hybridpool.data.features import CachedFeatureDataset

        key = (id(dataset), device)
        if key not in self.dense_splits:
            fits = isinstance(dataset, CachedFeatureDataset) and len(dataset) > 0
            nbytes = dataset.features[:1].size * 4 * len(dataset) if fits else 0
            if fits and self.dense_bytes + nbytes <= DENSE_SPLITS_BYTES:
                x, y = dataset[np.arange(len(dataset))]
                self.dense_splits[key] = (x.to(device), y.to(device))
                self.dense_bytes += nbytes
            else:
                self.dense_splits[key] = None
        return self.dense_splits[key]

    def gather(self, dataset: Any, index: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``index`` of ``dataset`` on ``device``: ``dataset[index]``, read from the dense copy when there
        is one (a slice, not a copy, for consecutive indices)."""
        dense = self.dense(dataset, device)
        if dense is None:
            x, y = dataset[index]
            return x.to(device), y.to(device)
        first, n = int(index[0]), len(index)
        if list(index) == list(range(first, first + n)):
            return dense[0][first : first + n], dense[1][first : first + n]
        rows = torch.as_tensor(list(index), dtype=torch.long, device=device)
        return dense[0].index_select(0, rows), dense[1].index_select(0, rows)

    def fetch(self, run: _Run, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch ``index`` of ``run``'s cached split, gathered once per step for every run that
        draws the same indices (runs of one seed share their batch order)."""
        dataset = run.built.fit_datamodule.datasets["train"]
        key = (id(dataset), run.built.device, tuple(int(i) for i in index))
        if key not in self.step_batches:
            self.step_batches[key] = self.gather(dataset, index, run.built.device)
        return self.step_batches[key]

    def begin_epoch(self, run: _Run) -> None:
        run.module.train()
        run.swap_in()
        run.train_iter = iter(run.built.fit_datamodule.train_dataloader())
        run.swap_out()
        run.epoch_sums = [0.0, 0.0]
        run.module.train_acc.reset()
        run.epoch_t = 0.0

    def train_step(self, run: _Run) -> bool:
        """One optimizer step of ``run``; ``False`` once its epoch has no batch left."""
        t0 = time.perf_counter()
        run.swap_in()
        try:
            try:
                index = run.train_iter._next_index()  # the loader's own sampler step (its random draws included)
            except StopIteration:
                return False
            x, y = self.fetch(run, index)
            module = run.module
            loss, logits = module.training_loss(x, y)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            module.train_acc.update(logits.detach(), y)
            value, bs = float(loss.detach()), int(y.shape[0])
            run.epoch_sums[0] += value * bs
            run.epoch_sums[1] += bs
            every = int(run.cfg.trainer.get("log_every_n_steps", 50) or 50)
            if (run.step + 1) % every == 0:
                run.rows.append((run.step, {"train/loss_step": value, "epoch": float(run.epoch)}))
            every_pool = module.log_pool_every_n_steps
            if every_pool > 0 and run.step % every_pool == 0:
                stats = _pool_stats(run.model)
                if stats:
                    run.rows.append((run.step, {**stats, "epoch": float(run.epoch)}))
            run.step += 1
            return True
        finally:
            run.swap_out()
            dt = time.perf_counter() - t0
            run.epoch_t += dt
            run.compute_s += dt

    @torch.no_grad()
    def evaluate(self, run: _Run, split: str) -> dict[str, float]:
        """Loss and metrics of ``run`` on ``split`` (``val`` also: mixing weights and attention entropy)."""
        from hybridpool.run.module import attention_entropy, mixing_statistics

        t0 = time.perf_counter()
        module = run.module
        module.eval()
        metrics = module.val_metrics if split == "val" else module.test_metrics
        metrics.reset()
        loader = getattr(run.built.fit_datamodule, f"{split}_dataloader")()
        run.swap_in()
        loss_sum, n, mixes, entropies = 0.0, 0, [], []
        try:
            iter(loader)  # opening a loader draws its base seed from the global generator, as Lightning's loop does
            for index in loader.sampler:  # the loader's index batches (in order: evaluation does not shuffle)
                x, y = self.gather(loader.dataset, index, run.built.device)
                logits, extras = run.model.forward_head(x, return_extras=True)
                loss_sum += float(F.cross_entropy(logits, y)) * int(y.shape[0])
                n += int(y.shape[0])
                metrics.update(logits, y)
                if split == "val" and "mix" in extras:
                    mixes.append(extras["mix"].detach().float().cpu())
                if split == "val" and "attn" in extras:
                    entropies.append(attention_entropy(extras["attn"]))
        finally:
            run.swap_out()
        values = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        values[f"{split}/loss"] = loss_sum / max(n, 1)
        if mixes:
            stats = mixing_statistics(torch.cat(mixes), getattr(run.model.pool, "branch_names", None))
            values.update({f"pool/val/mix/{k}": v for k, v in stats.items()})
        if entropies:
            values["pool/val/attn_entropy"] = sum(entropies) / len(entropies)
        run.compute_s += time.perf_counter() - t0
        return values

    def end_epoch(self, run: _Run) -> None:
        val = self.evaluate(run, "val")
        run.epoch_times.append(run.epoch_t)
        train = {
            "train/loss_epoch": run.epoch_sums[0] / max(run.epoch_sums[1], 1),
            "train/acc": float(run.module.train_acc.compute()),
            "time/epoch_s": run.epoch_t,
            "time/epoch_s_mean": sum(run.epoch_times) / len(run.epoch_times),
            **_pool_stats(run.model),
        }
        last = run.step - 1
        epoch = {"epoch": float(run.epoch)}
        run.rows.append((last, {**val, **epoch}))
        for group in run.optimizer.param_groups if _wants_lr(run.cfg) else ():
            train[f"lr-{type(run.optimizer).__name__}/{group['name']}"] = float(group["lr"])
        run.rows.append((last, {**train, **epoch}))
        run.metrics.update(val)
        run.metrics.update(train)
        run.metrics["train/loss"] = train["train/loss_epoch"]
        if run.monitor is not None and run.monitor in val:
            value = val[run.monitor]
            better = run.best is None or (value > run.best[0] if run.mode == "max" else value < run.best[0])
            if better:
                run.best = (value, run.epoch, _trainable_state(run.model))
        run.epoch += 1
        self._save(run)

    def _save(self, run: _Run) -> None:
        state = {
            "format": HEADS_CKPT_FORMAT,
            "config_hash": run.record.data.get("config_hash"),
            "model": _trainable_state(run.model),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": run.rng,
            "cuda_rng": run.cuda_rng,
            "rows": run.rows,
            "epoch": run.epoch,
            "step": run.step,
            "epoch_times": run.epoch_times,
            "best": run.best,
        }
        run.ckpt_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = run.ckpt_file.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(run.ckpt_file)

    # ------------------------------------------------------------------ the end of a run
    def finish(self, run: _Run) -> None:
        """Attention maps (last weights), the test split (selected weights), the CSV, W&B and the record."""
        from hybridpool.run.build import build_loggers
        from hybridpool.run.outputs import cache_events

        t0 = time.perf_counter()
        loggers = build_loggers(run.cfg, run.session, run.built.tags)
        callbacks = _attention_callbacks(run.cfg)
        fake_trainer = SimpleNamespace(
            datamodule=run.built.fit_datamodule, is_global_zero=True, fast_dev_run=False, loggers=[],
            global_step=run.step,
        )
        for cb in callbacks:
            cb.on_train_end(fake_trainer, run.module)
        metrics = dict(run.metrics)
        if run.best is not None:
            run.model.load_state_dict(run.best[2], strict=False)
            metrics[f"{run.monitor}_best"] = float(run.best[0])
            metrics[f"{run.monitor}_best_epoch"] = float(run.best[1])
        test = self.evaluate(run, "test") if run.cfg.get("test", True) else {}
        metrics.update(test)
        metrics.update(epochs=float(run.epoch), global_step=float(run.step))
        metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}  # as hybridpool.run.train
        run.rows.append((run.step, {**test, "epoch": float(run.epoch)}))
        run.record.data["timing"].update(fit_s=run.compute_s, group_size=len(self.runs))
        info = run.session.start(loggers)
        run.record.update(wandb=info)
        for step, row in run.rows:
            for lg in loggers:
                lg.log_metrics(row, step)
        for cb in callbacks:
            panels = getattr(cb, "saved", None)
            if panels is not None:
                _log_panels(loggers, cb, run.step)
        run.session.summarize(loggers, metrics)
        for lg in loggers:
            lg.save()
        paths: dict[str, Any] = {"output_dir": str(run.out_dir)}
        for lg in loggers:
            if type(lg).__name__ == "CSVLogger":
                paths["metrics_csv"] = str(Path(lg.log_dir) / "metrics.csv")
        for cb in callbacks:
            if getattr(cb, "saved", None) is not None:
                paths["attention_maps"] = str(cb.saved)
        if run.built.cache is not None:
            paths["feature_cache"] = str(run.built.cache.dir)
            paths["feature_cache_events"] = cache_events(run.built.cache)
        run.record.data["timing"]["finish_s"] = time.perf_counter() - t0
        run.record.complete(metrics, paths=paths, wandb=run.session.info)
        run.session.finish(loggers, ok=True)
        run.ckpt_file.unlink(missing_ok=True)
        run.metrics = metrics
        run.done = True

    def fail(self, run: _Run, err: BaseException) -> None:
        run.error = err
        if run.record is None:
            return
        run.record.fail(err, metrics=run.metrics, wandb=getattr(run.session, "info", None))
        if run.session is not None and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            run.record.update(wandb=run.session.record_failure(run.cfg, run.record.data))
            run.session.finish([], ok=False)
        say(f"{run.out_dir}: {type(err).__name__}: {err}")


def _pool_stats(model: Any) -> dict[str, float]:
    stats = getattr(model.pool, "stats", None)
    return {f"pool/{k}": float(v) for k, v in stats().items()} if stats is not None else {}


def _wants_lr(cfg: DictConfig) -> bool:
    return any(
        n is not None and str(n.get("_target_", "")).endswith("LearningRateMonitor")
        for n in (cfg.get("callbacks") or {}).values()
    )


def _attention_callbacks(cfg: DictConfig) -> list[Any]:
    from hydra.utils import instantiate

    return [
        instantiate(n, _convert_="all")
        for n in (cfg.get("callbacks") or {}).values()
        if n is not None and str(n.get("_target_", "")).endswith("AttentionMaps")
    ]


def _log_panels(loggers: list[Any], callback: Any, step: int) -> None:
    from PIL import Image

    for lg in loggers:
        log_image = getattr(lg, "log_image", None)
        if log_image is not None:
            log_image(key=callback.key, images=[Image.open(callback.saved)], step=step)


def train_heads(cfgs: Sequence[DictConfig], placements: Sequence[Placement | None] | None = None) -> list[Any]:
    """Train the runs ``cfgs`` together; returns, per run, its final metrics (a dict) or the error it failed with.

    Args:
        cfgs: composed, resolved ``train.yaml`` configs for which :func:`group_problem` is ``None`` and that share
            one :func:`group_key` (the cached splits and the backbone are loaded once for all).
        placements: per run, where and as what it runs (folder, checkpoint to resume from, earlier attempt, W&B
            group and name), as for :func:`hybridpool.run.train`; ``None``: each config's ``paths.output_dir``.

    A ``KeyboardInterrupt`` (or ``SystemExit``) marks every unfinished run ``interrupted`` (each keeps its
    ``checkpoints/last.ckpt`` of the last finished epoch) and is raised again.
    """
    from hybridpool.run.console import quiet_third_party
    from hybridpool.run.wandb import preload

    if not cfgs:
        return []
    placements = list(placements) if placements is not None else [None] * len(cfgs)
    for cfg in cfgs:
        problem = group_problem(cfg)
        if problem:
            raise ValueError(f"this run cannot train in a group of heads: {problem}")
    keys = {group_key(cfg) for cfg in cfgs}
    if len(keys) > 1:
        raise ValueError(f"the runs of one group must share data, features and backbone; got {len(keys)} kinds")
    preload(cfgs[0])
    quiet_third_party()
    t_group = time.perf_counter()
    device = _device(cfgs[0])
    torch.use_deterministic_algorithms(bool(cfgs[0].trainer.get("deterministic", False)), warn_only=True)
    runs = [
        _Run(cfg, p or Placement(start_unix=time.time(), job={"num": None, "overrides": []}))
        for cfg, p in zip(cfgs, placements, strict=True)
    ]
    group = _Group(runs)
    try:
        for run in runs:
            try:
                group.start(run, device)
            except Exception as err:
                group.fail(run, err)
        say(f"heads: {len(group.alive)} runs in one group ({len(runs) - len(group.alive)} failed to start)")
        _fit(group)
    except (KeyboardInterrupt, SystemExit) as err:
        for run in group.alive:
            group.fail(run, err)
        raise
    say(
        f"heads: {sum(r.done for r in runs)} completed, {sum(r.error is not None for r in runs)} failed, "
        f"{time.perf_counter() - t_group:.1f} s for the group"
    )
    return [run.error if run.error is not None else run.metrics for run in runs]


def _fit(group: _Group) -> None:
    """Epoch by epoch, step by step: every run that still has a batch takes one step in turn."""

    def guarded(run: _Run, fn: Any, *args: Any) -> Any:
        try:
            return fn(run, *args)
        except Exception as err:
            group.fail(run, err)
            return False

    while group.alive:
        active = [r for r in group.alive if r.epoch < int(r.cfg.trainer.max_epochs)]
        for run in active:
            guarded(run, group.begin_epoch)
        stepping = [r for r in active if r.error is None]
        while stepping:
            group.step_batches = {}
            stepping = [r for r in stepping if guarded(r, group.train_step) and r.error is None]
        group.step_batches = {}
        for run in active:
            if run.error is None:
                guarded(run, group.end_epoch)
        for run in group.alive:
            if run.epoch >= int(run.cfg.trainer.max_epochs):
                guarded(run, group.finish)
        if not active:
            break


def copy_config(cfg: DictConfig) -> DictConfig:
    """A resolved, detached copy of ``cfg`` (no ``hydra`` key): safe to keep after Hydra moves to the next job."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return OmegaConf.create(copy.deepcopy(container))
