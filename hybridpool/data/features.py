"""Frozen-backbone feature cache: compute a frozen backbone's feature maps once, train pool + head from disk.

With a frozen pretrained backbone, every epoch of every pooling variant would recompute the same feature maps.
:class:`FeatureCache` stores them once per (backbone, weights, dataset, split, transform) as float16 ``.npy``
files, so a sweep over pooling heads costs seconds per run instead of re-running the backbone.

The key is the SHA-256 of a JSON description holding: the cache format version, the backbone's ``describe()``
(architecture, weights name, input channels), a hash of its actual weights and buffers, the datamodule's
``describe()`` (dataset, root, transforms, split seed and fractions, ...), the split name and the number of
samples. Any change gives a different key, so a stale cache is never used; an entry is complete only once its
metadata file exists (written last, atomically), and it is re-checked against the key on every load.

Layout under ``<cache dir>/features/`` (``$HYBRIDPOOL_CACHE_DIR``, default ``~/.cache/hybridpool``):
``<key>.json`` (metadata), ``<key>.features.npy`` ``(N, C, H', W')`` float16 and ``<key>.labels.npy``
``(N,)`` int64.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from hybridpool.data.progress import Progress

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_VERSION",
    "CachedFeatureDataset",
    "FeatureCache",
    "FeatureDataModule",
    "default_cache_dir",
    "images_identity",
    "weights_digest",
]

CACHE_VERSION = 1
CACHE_DIR_ENV = "HYBRIDPOOL_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$HYBRIDPOOL_CACHE_DIR`` if set, else ``~/.cache/hybridpool``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybridpool"


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer of ``module`` (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return repr(obj)


class CachedFeatureDataset(Dataset):
    """``(feature map (C, H', W') float32, label int)`` pairs read from the cached arrays.

    Indexing with a list of indices returns a whole batch at once (``(N, C, H', W')`` float32, ``(N,)`` int64):
    :class:`FeatureDataModule` feeds it index batches, so a batch costs one gather instead of ``N`` reads and a
    stack. Caches up to ``max_ram_bytes`` are held in memory (float16), larger ones stay memory-mapped.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, max_ram_bytes: int = 4 << 30):
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature maps but {len(labels)} labels")
        self.features = np.ascontiguousarray(features) if features.nbytes <= max_ram_bytes else features
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, Any]:
        if isinstance(index, (int, np.integer)):
            return torch.from_numpy(np.asarray(self.features[index], dtype=np.float32)), int(self.labels[index])
        idx = np.asarray(index, dtype=np.int64)
        feats = torch.from_numpy(np.asarray(self.features[idx])).float()
        return feats, torch.from_numpy(self.labels[idx])


@contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Restore torch's (CPU and ``device``), NumPy's and Python's global random states on exit.

    The backbone pass draws from them (a DataLoader iterator takes its base seed from torch's generator), so
    without this a run that fills the cache would shuffle and initialise differently from the same run
    reading it: a job's results would depend on whether its features were cached before.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@dataclass
class CacheEvent:
    """One lookup: ``kind`` is ``"hit"`` or ``"miss"``."""

    kind: str
    split: str
    key: str
    seconds: float


@dataclass
class FeatureCache:
    """Feature maps of a frozen backbone on disk (see the module docstring for key and layout).

    Args:
        root: cache folder; ``None`` -> :func:`default_cache_dir`. Entries go to ``root/features``.
        batch_size: batch size of the one-off backbone pass.
        num_workers: DataLoader workers of that pass.
        device: device of that pass (``None``: CUDA when available, else CPU).
        progress_every_s: during a long pass, a line with the images done and the time left every this many
            seconds (a live bar instead when stderr is a terminal; a pass shorter than this prints nothing).
        clock: ``monotonic()`` and ``time()`` of those lines (the ``time`` module; tests pass a fake one).
    """

    root: str | Path | None = None
    batch_size: int = 128
    num_workers: int = 0
    device: str | None = None
    events: list[CacheEvent] = field(default_factory=list)
    progress_every_s: float = 30.0
    clock: Any = field(default=time, repr=False, compare=False)

    @property
    def dir(self) -> Path:
        return Path(self.root if self.root is not None else default_cache_dir()).expanduser() / "features"

    @staticmethod
    def describe_entry(
        backbone: nn.Module, data_description: dict[str, Any], split: str, n: int
    ) -> dict[str, Any]:
        """The JSON-able identity of one cache entry (everything the key depends on)."""
        describe = getattr(backbone, "describe", None)
        return {
            "version": CACHE_VERSION,
            "backbone": describe() if describe is not None else {"class": type(backbone).__name__},
            "weights_sha256": weights_digest(backbone),
            "data": data_description,
            "split": split,
            "num_samples": int(n),
            "dtype": "float16",
        }

    @staticmethod
    def key_of(entry: dict[str, Any]) -> str:
        text = json.dumps(entry, sort_keys=True, default=_json_default)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        d = self.dir
        return d / f"{key}.json", d / f"{key}.features.npy", d / f"{key}.labels.npy"

    def lookup(self, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached ``(features, labels)`` of ``entry`` if present, complete and matching; else ``None``."""
        key = self.key_of(entry)
        meta_path, feat_path, label_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        stored = json.loads(json.dumps(entry, sort_keys=True, default=_json_default))
        if meta.get("entry") != stored:
            return None
        try:
            feats = np.load(feat_path, mmap_mode="r")
            labels = np.load(label_path)
        except (OSError, ValueError):
            return None
        n = entry["num_samples"]
        if feats.shape[0] != n or labels.shape != (n,) or list(feats.shape) != meta.get("shape"):
            return None
        return feats, labels

    def get(
        self, backbone: nn.Module, dataset: Dataset, data_description: dict[str, Any], split: str
    ) -> CachedFeatureDataset:
        """Feature maps of ``backbone`` over ``dataset`` (``(image, label)`` pairs): cached or computed.

        ``data_description`` must change whenever the images change (datamodule ``describe()``); the backbone
        is run in eval mode under ``torch.inference_mode`` and its output stored as float16. A miss leaves the
        global random states (torch, NumPy, Python) as they were, so a hit and a miss train alike afterwards.
        """
        start = time.perf_counter()
        entry = self.describe_entry(backbone, data_description, split, len(dataset))
        key = self.key_of(entry)
        found = self.lookup(entry)
        if found is not None:
            self.events.append(CacheEvent("hit", split, key, time.perf_counter() - start))
            return CachedFeatureDataset(*found)
        feats, labels = self._compute(backbone, dataset, entry, key)
        self.events.append(CacheEvent("miss", split, key, time.perf_counter() - start))
        return CachedFeatureDataset(feats, labels)

    def _progress(self, loader: Iterable[Any], split: str, n: int) -> Iterator[Any]:
        """The batches ``(x, y)`` of ``loader``, with progress: a live bar on a terminal, else a line with the time
        left every ``progress_every_s`` seconds (:class:`~hybridpool.data.progress.Progress`)."""
        what = f"caching {split} features"
        if _stderr_is_terminal():
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover
                pass
            else:
                yield from tqdm(loader, desc=f"{what} ({n} images)", leave=False)
                return
        progress = Progress(what, n, unit="images", every_s=self.progress_every_s, clock=self.clock)
        for x, y in loader:
            yield x, y
            progress.advance(len(y))
        progress.finish()

    def _compute(
        self, backbone: nn.Module, dataset: Dataset, entry: dict[str, Any], key: str
    ) -> tuple[np.ndarray, np.ndarray]:
        meta_path, feat_path, label_path = self.paths(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        was_training = backbone.training
        backbone.eval()
        param = next(iter(backbone.parameters()), None)
        orig_device = param.device if param is not None else torch.device("cpu")
        backbone.to(device)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        n = len(dataset)
        tag = f".tmp-{os.getpid()}-{time.time_ns()}"
        tmp_feat = self.dir / f"{key}.features{tag}.npy"
        tmp_label = self.dir / f"{key}.labels{tag}.npy"
        out: np.ndarray | None = None
        labels = np.empty((n,), dtype=np.int64)
        i = 0
        try:
            with _random_state_kept(device), torch.inference_mode():
                for x, y in self._progress(loader, entry["split"], n):
                    f = backbone(x.to(device)).float().cpu().numpy().astype(np.float16)
                    if out is None:
                        out = np.lib.format.open_memmap(
                            tmp_feat, mode="w+", dtype=np.float16, shape=(n, *f.shape[1:])
                        )
                    out[i : i + len(f)] = f
                    labels[i : i + len(f)] = np.asarray(y, dtype=np.int64)
                    i += len(f)
            if out is None or i != n:
                raise RuntimeError(f"the dataset yielded {i} samples, expected {n}")
            out.flush()
            shape = list(out.shape)
            del out
            np.save(tmp_label, labels, allow_pickle=False)
            os.replace(tmp_feat, feat_path)
            os.replace(tmp_label, label_path)
            meta = {
                "entry": json.loads(json.dumps(entry, sort_keys=True, default=_json_default)),
                "shape": shape,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            tmp_meta = self.dir / f"{key}{tag}.json"
            tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True))
            os.replace(tmp_meta, meta_path)
        finally:
            backbone.to(orig_device)
            backbone.train(was_training)
            for p in (tmp_feat, tmp_label):
                p.unlink(missing_ok=True)
        found = self.lookup(entry)
        if found is None:  # pragma: no cover - the files were just written
            raise RuntimeError(f"feature cache entry {key} could not be read back from {self.dir}")
        return found


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


#: datamodule description keys that do not change the images of the eval transforms (training seed, augmentation)
NOT_IN_CACHE_KEY = ("seed", "augment", "train_transform")


def images_identity(description: dict[str, Any]) -> dict[str, Any]:
    """A datamodule's ``describe()`` without what the cached eval-transform images do not depend on.

    The split's images are fixed by ``split_digest`` (the indices), ``sources`` and ``root``, their pixels by
    ``eval_transform``; the training ``seed`` (batch order, initialisation), ``augment`` and ``train_transform``
    change neither, so runs that differ only in those share one cache entry.
    """
    return {k: v for k, v in description.items() if k not in NOT_IN_CACHE_KEY}


class FeatureDataModule(pl.LightningDataModule):
    """Serves cached backbone feature maps ``(C, H', W')`` of an image datamodule's train/val/test splits.

    The feature maps are computed with the datamodule's deterministic eval transforms
    (``eval_dataset(split)``),
    so training from the cache sees no augmentation. ``eval_dataset`` still returns the images (for the
    attention-map panels), and ``num_classes``/``name``/``describe`` are forwarded.

    Args:
        datamodule: an image datamodule with ``eval_dataset(split)`` and ``describe()``.
        backbone: the frozen backbone (``forward: (B, C_in, H, W) -> (B, C, H', W')``).
        cache: the :class:`FeatureCache`.
        batch_size: training batch size (default: the datamodule's ``batch_size``).
        num_workers: DataLoader workers for the cached tensors.
    """

    def __init__(
        self,
        datamodule: Any,
        backbone: nn.Module,
        cache: FeatureCache,
        batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.datamodule = datamodule
        self.backbone = backbone
        self.cache = cache
        self.batch_size = int(batch_size or getattr(datamodule, "batch_size", 64))
        self.num_workers = int(num_workers)
        self.datasets: dict[str, CachedFeatureDataset] = {}

    @property
    def num_classes(self) -> int:
        return self.datamodule.num_classes

    @property
    def name(self) -> str:
        return getattr(self.datamodule, "name", type(self.datamodule).__name__)

    def describe(self) -> dict[str, Any]:
        return {
            "features_of": self.datamodule.describe(),
            "backbone": getattr(self.backbone, "describe", dict)(),
        }

    def eval_dataset(self, split: str) -> Dataset:
        return self.datamodule.eval_dataset(split)

    def prepare_data(self) -> None:
        prepare = getattr(self.datamodule, "prepare_data", None)
        if prepare is not None:
            prepare()

    def _split(self, split: str) -> CachedFeatureDataset:
        if split not in self.datasets:
            description = images_identity(self.datamodule.describe())
            self.datasets[split] = self.cache.get(
                self.backbone, self.datamodule.eval_dataset(split), description, split
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for split in splits:
            self._split(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self._split(split)
        order = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        n, bs = len(ds), self.batch_size
        # in training, drop only a trailing batch of one sample (BatchNorm cannot train on it)
        drop_last = shuffle and n > bs and n % bs == 1
        return DataLoader(
            ds,
            sampler=BatchSampler(order, batch_size=bs, drop_last=drop_last),
            batch_size=None,  # the dataset returns whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
