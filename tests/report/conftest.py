"""Fixtures of the report tests (helpers live in report_helpers.py, importable by the test modules)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_helpers import OFFLINE_RUN, RUNS, load_study_generator


@pytest.fixture
def fixture_runs(tmp_path) -> Path:
    """A private copy of the fixture records (tests may add or break runs in it)."""
    dst = tmp_path / "runs"
    shutil.copytree(RUNS, dst)
    return dst


@pytest.fixture(scope="session")
def offline_wandb_run(tmp_path_factory) -> tuple[Path, str]:
    """A real offline W&B run written by the installed wandb: (its folder, run id)."""
    root = tmp_path_factory.mktemp("wandb_run")
    env_dir = root / "run0"
    env_dir.mkdir()
    res = subprocess.run(
        [sys.executable, "-c", OFFLINE_RUN, str(env_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run_id = res.stdout.strip().splitlines()[-1]
    return env_dir, run_id


@pytest.fixture(scope="session")
def study_records(tmp_path_factory) -> Path:
    """The new-schema fake study (tests/report/fixtures/make_study.py): 10 seeds x 3 splits, best-epoch tests."""
    root = tmp_path_factory.mktemp("study") / "records"
    load_study_generator().write_study(root)
    return root


@pytest.fixture(scope="session")
def study_report(study_records, tmp_path_factory) -> Path:
    """``hybridpool-report`` on the fake study, figures included (written once per session)."""
    from hybridpool.report.cli import main

    out = tmp_path_factory.mktemp("study_report")
    assert main([str(study_records), "--out", str(out)]) == 0
    return out
