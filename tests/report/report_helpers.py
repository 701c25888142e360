"""Helpers of the report tests: the fixture's location and numbers, a record writer, an offline W&B run."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUNS = FIXTURES / "runs"
AVG_SYNTH = [0.80, 0.82, 0.84, 0.86, 0.88]  # test/acc of the fixture's synth_detail avg cell, seeds 0-4


def write_record(run_dir: Path, **fields) -> Path:
    """A minimal well-formed results.json (schema of hybridpool.records) with ``fields`` merged in."""
    seed = fields.pop("seed", 0)
    pool = fields.pop("pool", "avg")
    record = {
        "schema": 1,
        "status": "completed",
        "task_name": "t",
        "tags": [f"pool:{pool}", "data:synth_texture", "backbone:SmallCNN"],
        "seed": seed,
        "finished_at": "2026-01-01T00:00:00+00:00",
        "wall_time_s": 10.0,
        "metrics": {"test/acc": 0.5, "epochs": 2.0},
        "paths": {"output_dir": str(run_dir)},
        "git": {"commit": "abc", "dirty": False},
        "config": {"seed": seed, "task_name": "t", "pool": {"_target_": f"x.{pool}"}, "trainer": {"max_epochs": 2}},
    }
    record.update(fields)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(record))
    return run_dir / "results.json"


OFFLINE_RUN = textwrap.dedent(
    """
    import sys, wandb
    run = wandb.init(mode="offline", dir=sys.argv[1], project="hybridpool", group="t",
                     config={"seed": 3, "task_name": "t", "pool": {"_target_": "hybridpool.pooling.GeM", "p": 3.0}},
                     tags=["pool:gem", "data:synth_texture", "backbone:SmallCNN"])
    for s in range(3):
        run.log({"pool/p": 3.0 + 0.5 * s, "trainer/global_step": 10 * s})
    run.summary.update({"final/test/acc": 0.75, "final/val/acc": 0.7})
    print(run.id)
    run.finish()
    """
)


def load_fixture_generator():
    """tests/report/fixtures/make_fixtures.py as a module."""
    spec = importlib.util.spec_from_file_location("hp_make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_study_generator():
    """tests/report/fixtures/make_study.py (the new-schema fake study) as a module."""
    spec = importlib.util.spec_from_file_location("hp_make_study", FIXTURES / "make_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
