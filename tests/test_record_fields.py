"""The fields of results.json that the report reads: parameter counts, time per epoch, attention arrays and the
final (end-of-training) pooling internals."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from hybridpool.models import Classifier, SmallCNN
from hybridpool.pooling import pooling_parameters
from hybridpool.records import read_results
from hybridpool.run import compose_config
from hybridpool.run.callbacks import save_attention_arrays
from hybridpool.run.train import train


# ----------------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    ("pool", "kwargs"),
    [("avg", {}), ("gem", {"post_bn": True}), ("hybrid(avg,max,gem,attn)", {"freeze_backbone": True})],
)
def test_describe_counts_parameters_by_part(pool, kwargs):
    model = Classifier(SmallCNN(3, (8, 16)), pool, num_classes=5, **kwargs)
    params = model.describe()["params"]
    assert set(params) == {"total", "trainable", "backbone", "pool", "head"}
    assert all(type(v) is int for v in params.values())
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert params["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    assert params["pool"] == sum(p.numel() for p in model.pool.parameters())
    head = sum(p.numel() for p in model.head.parameters()) + sum(p.numel() for p in model.post_bn.parameters())
    assert params["head"] == head
    assert params["total"] == params["backbone"] + params["pool"] + params["head"]
    if kwargs.get("freeze_backbone"):
        assert params["trainable"] == params["pool"] + params["head"]
    # the counts agree with the optimizer groups (which hold the trainable parameters only)
    groups = model.parameter_groups()
    assert sum(p.numel() for g in groups.values() for p in g) == params["trainable"]
    # the pool group holds the pools' shape parameters (p, mixing); their weights (attention projection) train with
    # the head
    shape = sum(p.numel() for p in pooling_parameters(model, "shape"))
    assert sum(p.numel() for p in groups["pool"]) == shape
    assert sum(p.numel() for p in groups["head"]) == params["head"] + params["pool"] - shape


def test_avg_pool_has_no_parameters_and_gem_one():
    assert Classifier(SmallCNN(3, (8,)), "avg", num_classes=2).describe()["params"]["pool"] == 0
    assert Classifier(SmallCNN(3, (8,)), "gem", num_classes=2).describe()["params"]["pool"] == 1


# ----------------------------------------------------------------------------------------- attention arrays
def test_attention_arrays_shapes_and_dtypes(tmp_path):
    images, attn = torch.randn(3, 1, 12, 10), torch.rand(3, 2, 3, 5)
    labels, preds = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])
    path = save_attention_arrays(tmp_path / "a" / "attention_maps.npz", images, attn, labels, preds)
    with np.load(path) as z:
        assert set(z.files) == {"images", "attn", "labels", "preds"}
        np.testing.assert_allclose(z["images"], images.numpy())
        np.testing.assert_allclose(z["attn"], attn.numpy())
        assert z["labels"].tolist() == [0, 1, 2] and z["preds"].tolist() == [0, 2, 2]
        assert z["labels"].dtype == np.int64 and z["images"].dtype == np.float32
    with pytest.raises(ValueError, match=r"attn \(N, heads, h, w\)"):
        save_attention_arrays(tmp_path / "b.npz", images, attn[:, 0], labels, preds)


# ----------------------------------------------------------------------------------------- a real tiny fit
class _PoolAtFitEnd(pl.Callback):
    """Keeps the pool's ``stats()`` as they are when the fit ends (before test() loads the best checkpoint)."""

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    def on_fit_end(self, trainer, pl_module):
        self.stats = {f"pool/{k}": float(v) for k, v in pl_module.model.pool.stats().items()}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


#: conftest's TINY run (synthetic 16 px images, small CNN), 2 epochs, with the CSV logger and the default callbacks
_TINY_FIT = [
    "data=synth_detail", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32",
    "data.image_size=16", "model.backbone.widths=[8,16]", "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1", "logger=csv", "callbacks=default", "callbacks.attention_maps.num_images=3",
    "pool=hybrid_scalar", "module.log_pool_every_n_steps=1000",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny 2-epoch run of the hybrid pool with an attention branch, CSV logger and the default callbacks;
    pool stats logged at step 0 only (so a step value would differ from the end-of-training one)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("fit")
    mp.setenv("HYBRIDPOOL_CACHE_DIR", str(root / "cache"))
    mp.setenv("HYBRIDPOOL_LOG_DIR", str(root / "outputs"))
    mp.setenv("MPLBACKEND", "Agg")
    out = root / "run"
    cfg = compose_config([*_TINY_FIT], output_dir=out)
    probe = _PoolAtFitEnd()
    try:
        metrics = train(cfg, extra_callbacks=[probe])
    finally:
        mp.undo()
    return {"out": out, "metrics": metrics, "record": read_results(out), "final_stats": probe.stats}


def test_record_holds_parameter_counts(fitted):
    params = fitted["record"]["model"]["params"]
    assert set(params) == {"total", "trainable", "backbone", "pool", "head"}
    assert params["total"] == params["backbone"] + params["pool"] + params["head"] > 0
    assert params["pool"] > 0  # GeM p, mixing logits, attention projection


def test_time_per_epoch_in_csv_and_record(fitted):
    rec, out = fitted["record"], fitted["out"]
    rows = _csv_rows(Path(rec["paths"]["metrics_csv"]))
    per_epoch = [float(r["time/epoch_s"]) for r in rows if r.get("time/epoch_s")]
    assert len(per_epoch) == 2 and all(t > 0 for t in per_epoch)
    m = rec["metrics"]
    assert m["time/epoch_s"] == pytest.approx(per_epoch[-1])
    assert m["time/epoch_s_mean"] == pytest.approx(sum(per_epoch) / 2)
    assert m["time/epoch_s_mean"] * 2 <= rec["timing"]["fit_s"]  # training only: within the fit's time
    assert fitted["metrics"]["time/epoch_s_mean"] == pytest.approx(m["time/epoch_s_mean"])
    assert out.is_dir()


def test_record_pool_values_are_those_of_the_trained_pool(fitted):
    final, m = fitted["final_stats"], fitted["record"]["metrics"]
    assert "pool/gem/p" in final and "pool/mix/avg" in final
    for k, v in final.items():
        assert k in m, k
        assert m[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    # the only per-step value (step 0) is the initial one, which training has moved away from
    rows = _csv_rows(Path(fitted["record"]["paths"]["metrics_csv"]))
    p_rows = [float(r["pool/gem/p"]) for r in rows if r.get("pool/gem/p")]
    assert p_rows[0] == pytest.approx(3.0, abs=1e-4)
    assert not math.isclose(m["pool/gem/p"], p_rows[0], rel_tol=0, abs_tol=1e-6)
    assert p_rows[-1] == pytest.approx(m["pool/gem/p"])  # the CSV ends with the final value too


def test_attention_npz_matches_what_the_report_reads(fitted):
    out = fitted["out"]
    npz = out / "attention_maps" / "attention_maps.npz"
    assert npz.is_file() and (out / "attention_maps" / "attention_maps.png").is_file()
    with np.load(npz) as z:
        images, attn, labels, preds = z["images"], z["attn"], z["labels"], z["preds"]
    assert images.shape == (3, 3, 16, 16)
    fmap = SmallCNN(3, (8, 16))(torch.zeros(1, 3, 16, 16))  # the run's backbone: attention over its map
    assert attn.shape == (3, 1, *fmap.shape[2:])
    np.testing.assert_allclose(attn.reshape(3, 1, -1).sum(-1), 1.0, rtol=1e-5)
    assert labels.shape == preds.shape == (3,) and labels.dtype == preds.dtype == np.int64
    # the report picks the .npz and redraws its strip from it
    from hybridpool.report.figures import _strip_from_npz
    from hybridpool.report.runs import run_from_record

    run = run_from_record(fitted["record"], str(out / "results.json"), run_dir=out)
    assert run.attention == npz and run.params == fitted["record"]["model"]["params"]
    strip = _strip_from_npz(npz)
    assert strip.shape == (16, 16 * 2 * 3, 3) and np.isfinite(strip).all()
