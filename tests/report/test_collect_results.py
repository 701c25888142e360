"""scripts/collect_results.py: which files of a run are copied into paper/results, and the compact attention maps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "collect_results.py"


def _load():
    spec = importlib.util.spec_from_file_location("collect_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(job: Path, seed: int) -> None:
    (job / "csv").mkdir(parents=True)
    (job / "checkpoints").mkdir()
    (job / "attention_maps").mkdir()
    (job / "results.json").write_text(json.dumps({"status": "completed", "seed": seed}))
    (job / "csv" / "metrics.csv").write_text("epoch,val/acc\n0,0.5\n")
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x" * 10)
    (job / "attention_maps" / "attention_maps.png").write_bytes(b"png")
    rng = np.random.default_rng(seed)
    np.savez(job / "attention_maps" / "attention_maps.npz", images=rng.random((8, 3, 224, 224), dtype=np.float32),
             attn=rng.random((8, 1, 7, 7), dtype=np.float32), labels=np.arange(8), preds=np.arange(8))


def test_records_csvs_and_one_compact_attention_file_per_cell(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep / "0", seed=0)
    _run(sweep / "1", seed=1)
    dest = tmp_path / "results"
    assert _load().main([str(sweep), str(dest)]) == 0
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [
        "sweep/0/attention_maps/attention_maps.npz", "sweep/0/csv/metrics.csv", "sweep/0/results.json",
        "sweep/1/csv/metrics.csv", "sweep/1/results.json",
    ]
    with np.load(dest / "sweep/0/attention_maps/attention_maps.npz") as z, \
            np.load(sweep / "0/attention_maps/attention_maps.npz") as full:
        assert z["images"].shape == (4, 3, 56, 56) and z["images"].dtype == np.float16
        np.testing.assert_allclose(z["images"], full["images"][:4, :, ::4, ::4], rtol=1e-3)
        np.testing.assert_allclose(z["attn"], full["attn"][:4], rtol=1e-3)
        assert z["labels"].tolist() == [0, 1, 2, 3]
