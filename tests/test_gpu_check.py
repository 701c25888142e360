"""scripts/gpu_check.sh: its CPU path (``GPU_CHECK_DEVICE=cpu``, tiny sizes) runs every step CI can run, and a
failing step stops the script with the step's name (CI has no GPU: the GPU path fails in its first step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_gpu_check_cpu_path_runs_every_step_and_writes_its_summary(tmp_path, train_env, torch_home):
    out = tmp_path / "gpu_check"
    done = _run({"GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_OUT": str(out)}, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = (out / "summary.md").read_text()
    for step in ("environment", "bench_fp32", "bench_bf16", "ray_shared_gpu", "finetune", "targets"):
        assert f"| {step} | ok |" in summary, summary
        assert (out / f"{step}.txt").is_file()
    assert "GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh" in summary
    # the pooling benchmark ran in both dtypes, and the target line reads the bf16 table
    assert "bfloat16" in (out / "bench_bf16.txt").read_text()
    assert "hybrid_scalar" in (out / "bench_fp32.txt").read_text()
    targets = (out / "targets.txt").read_text()
    assert targets.count("hybrid(avg,max,gem,attn)") == 2 and "x GAP" in targets, targets
    # two Ray jobs holding half of one (fake) GPU each, at the same time; the fine-tune recorded as completed
    assert "2 jobs completed; CUDA_VISIBLE_DEVICES ['0', '0']; ran at the same time: True" in summary, summary
    assert "fine-tune completed: 1 epochs" in summary, summary


def test_gpu_check_stops_at_a_failing_step_and_names_it(tmp_path):
    out = tmp_path / "gpu_check"
    env = {"GPU_CHECK_DEVICE": "cuda", "GPU_CHECK_OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}  # no GPU to find
    done = _run(env, timeout=120)
    assert done.returncode != 0
    assert 'gpu_check: FAILED in step "environment"' in done.stderr, done.stderr[-3000:]
    assert "no CUDA device visible" in done.stdout + done.stderr
    assert "| environment | FAILED" in (out / "steps.txt").read_text()
    assert not (out / "bench_fp32.txt").exists()  # nothing after the failing step ran
