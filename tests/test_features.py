"""Frozen-backbone feature cache: miss, hit, staleness, and training pool + head from the cache."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from hybridpool.data import SyntheticDataModule
from hybridpool.data.features import FeatureCache, FeatureDataModule
from hybridpool.models import SmallCNN
from hybridpool.records import read_results
from hybridpool.run.train import train


def _dm(**kw) -> SyntheticDataModule:
    args = {"task": "detail", "num_train": 24, "num_val": 8, "num_test": 8, "image_size": 16, "batch_size": 8}
    return SyntheticDataModule(**{**args, **kw})


def _backbone(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(3, (4, 8)).eval()


class _Counter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.calls += 1


def _get(cache: FeatureCache, backbone, dm, split="train"):
    return cache.get(backbone, dm.eval_dataset(split), dm.describe(), split)


def test_miss_then_hit_returns_the_same_fp16_features(tmp_path):
    dm, bb = _dm(), _backbone()
    counter = _Counter(bb)
    first = _get(FeatureCache(tmp_path), bb, dm)
    assert counter.calls > 0
    files = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(files) == 3 and any(f.endswith(".features.npy") for f in files)
    assert first.features.dtype == np.float16 and first.features.shape == (24, 8, 8, 8)

    counter.calls = 0
    cache = FeatureCache(tmp_path)
    second = _get(cache, bb, dm)
    assert counter.calls == 0 and [e.kind for e in cache.events] == ["hit"]
    np.testing.assert_array_equal(np.asarray(first.features), np.asarray(second.features))
    x, y = second[3]
    img, label = dm.eval_dataset("train")[3]
    with torch.no_grad():
        direct = bb(img[None])[0]
    torch.testing.assert_close(x, direct, rtol=2e-3, atol=2e-3)
    assert y == label


@pytest.mark.parametrize(
    "change",
    [
        {"image_size": 12},  # transform
        {"split_seed": 5},  # data / split
        {"normalize": "dataset"},  # transform
        {"noise": 0.3},  # dataset content
    ],
)
def test_a_changed_dataset_or_transform_is_a_miss(tmp_path, change):
    bb = _backbone()
    _get(FeatureCache(tmp_path), bb, _dm())
    cache = FeatureCache(tmp_path)
    _get(cache, bb, _dm(**change))
    assert [e.kind for e in cache.events] == ["miss"]


def test_changed_weights_split_or_backbone_is_a_miss(tmp_path):
    dm, bb = _dm(), _backbone()
    _get(FeatureCache(tmp_path), bb, dm)
    cache = FeatureCache(tmp_path)
    _get(cache, bb, dm, split="val")  # another split
    with torch.no_grad():
        bb.features[0][0].weight[0, 0, 0, 0] += 1e-3  # fine-tuned weights, same architecture
    _get(cache, bb, dm)
    _get(cache, SmallCNN(3, (4, 6)).eval(), dm)  # another architecture
    assert [e.kind for e in cache.events] == ["miss", "miss", "miss"]


def test_tampered_or_truncated_entries_are_never_used(tmp_path):
    dm, bb = _dm(), _backbone()
    _get(FeatureCache(tmp_path), bb, dm)
    meta = next((tmp_path / "features").glob("*.json"))
    data = json.loads(meta.read_text())
    data["entry"]["data"]["seed"] = 123  # metadata no longer matches the key
    meta.write_text(json.dumps(data))
    cache = FeatureCache(tmp_path)
    _get(cache, bb, dm)
    assert [e.kind for e in cache.events] == ["miss"]
    feats = next((tmp_path / "features").glob("*.features.npy"))
    np.save(feats, np.zeros((3, 8, 8, 8), dtype=np.float16))  # wrong sample count
    _get(cache, bb, dm)
    assert [e.kind for e in cache.events] == ["miss", "miss"]
    _get(cache, bb, dm)
    assert cache.events[-1].kind == "hit"


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _draws() -> tuple[list[float], float, float]:
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


def test_a_miss_leaves_the_global_random_states_as_a_hit_does(tmp_path):
    """The backbone pass (its DataLoader takes a seed from torch's generator) must not move any global stream."""
    dm, bb = _dm(), _backbone()
    _seed_all(7)
    expected = _draws()
    for kind in ("miss", "hit"):
        cache = FeatureCache(tmp_path)
        _seed_all(7)
        _get(cache, bb, dm)
        assert [e.kind for e in cache.events] == [kind]
        assert _draws() == expected, kind


def test_feature_datamodule_serves_cached_maps(tmp_path):
    dm, bb = _dm(), _backbone()
    fdm = FeatureDataModule(dm, bb, FeatureCache(tmp_path), batch_size=5)
    fdm.setup("fit")
    x, y = next(iter(fdm.train_dataloader()))
    assert x.shape == (5, 8, 8, 8) and x.dtype == torch.float32 and y.shape == (5,)
    assert fdm.num_classes == dm.num_classes
    assert len(fdm.eval_dataset("val")) == 8  # images, for the attention maps


def test_runs_that_differ_only_in_seed_or_augmentation_share_one_entry(tmp_path):
    bb = _backbone()
    first = FeatureDataModule(_dm(seed=0, split_seed=0), bb, FeatureCache(tmp_path))
    first.setup("fit")
    second = FeatureDataModule(_dm(seed=1, split_seed=0, augment=True), bb, FeatureCache(tmp_path))
    second.setup("fit")
    assert [e.kind for e in first.cache.events] == ["miss", "miss"]
    assert [e.kind for e in second.cache.events] == ["hit", "hit"]
    torch.testing.assert_close(first.datasets["train"][[0, 1]][0], second.datasets["train"][[0, 1]][0])
    third = FeatureDataModule(_dm(seed=1, split_seed=1), bb, FeatureCache(tmp_path))  # another split
    third.setup("fit")
    assert [e.kind for e in third.cache.events] == ["miss", "miss"]


def test_frozen_backbone_run_trains_from_the_cache_and_reuses_it(make_cfg, train_env, run_path):
    over = ["model.freeze_backbone=true", "trainer.max_epochs=2", "pool=gem"]
    first = train(make_cfg(over, name="f1"))
    rec = read_results(run_path("f1"))
    events = rec["paths"]["feature_cache_events"]
    assert [e.split(":")[0] for e in events] == ["miss", "miss", "miss"], events
    assert "frozen-backbone" in rec["tags"]
    assert str(train_env / "cache") in rec["paths"]["feature_cache"]
    second = train(make_cfg([*over, "pool=hybrid_scalar"], name="f2"))
    events = read_results(run_path("f2"))["paths"]["feature_cache_events"]
    assert [e.split(":")[0] for e in events] == ["hit", "hit", "hit"], events
    assert 0 <= first["test/acc"] <= 1 and 0 <= second["test/acc"] <= 1


def test_a_run_that_fills_the_cache_trains_exactly_like_one_that_reads_it(make_cfg, train_env, run_path):
    over = ["model.freeze_backbone=true", "trainer.max_epochs=2", "pool=gem", "data.augment=true"]
    over.append("callbacks=checkpoint")
    cold = train(make_cfg(over, name="cold"))
    warm = train(make_cfg(over, name="warm"))
    events = [read_results(run_path(n))["paths"]["feature_cache_events"] for n in ("cold", "warm")]
    assert [[e.split(":")[0] for e in ev] for ev in events] == [["miss"] * 3, ["hit"] * 3], events
    untimed = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in (cold, warm)]
    assert len(untimed[0]) > 5 and untimed[0] == untimed[1]
    weights = [torch.load(run_path(n) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for n in ("cold", "warm")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)


def test_cache_without_a_frozen_backbone_is_refused(make_cfg):
    with pytest.raises(ValueError, match="freeze_backbone=true"):
        train(make_cfg(["features.enabled=true"], name="nofreeze"))
