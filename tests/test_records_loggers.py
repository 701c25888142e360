"""results.json writing, and the W&B mode decision that never hangs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from hybridpool.records import RunRecord, read_results, to_jsonable, write_json_atomic
from hybridpool.run.wandb import resolve_wandb_mode, wandb_api_key_configured


def test_atomic_json_write_leaves_no_temporary_files(tmp_path):
    path = write_json_atomic(tmp_path / "r" / "results.json", {"a": float("nan"), "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_run_record_lifecycle(tmp_path):
    rec = RunRecord(tmp_path, {"seed": 3}, seed=3, task_name="t", tags=["x"])
    rec.write()
    assert read_results(tmp_path)["status"] == "running"
    rec.complete({"test/acc": 0.5})
    d = read_results(tmp_path)
    assert d["status"] == "completed" and d["metrics"] == {"test/acc": 0.5} and d["wall_time_s"] >= 0
    assert d["config"] == {"seed": 3} and "commit" in d["git"] and d["versions"]["torch"]
    rec.fail(KeyboardInterrupt())
    assert read_results(tmp_path)["status"] == "interrupted"


def test_to_jsonable_handles_tensors():
    import torch

    assert to_jsonable({"x": torch.tensor(0.25), "p": tmp_path_like()}) == {"x": 0.25, "p": "/a/b"}


def tmp_path_like():
    from pathlib import Path

    return Path("/a/b")


def test_wandb_mode_offline_from_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == ("offline", "WANDB_MODE=offline")
    assert resolve_wandb_mode("disabled")[0] == "disabled"


def test_wandb_online_without_a_key_falls_back_to_offline_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert not wandb_api_key_configured()
    t = time.perf_counter()
    with pytest.warns(UserWarning, match="logging offline"):
        mode, reason = resolve_wandb_mode("online")
    assert mode == "offline" and "API key" in reason and time.perf_counter() - t < 1


def test_wandb_unreachable_host_falls_back_within_the_probe_timeout(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    # non-routable: the connect hangs, or (behind an intercepting proxy) succeeds without a real server
    monkeypatch.setenv("WANDB_BASE_URL", "https://10.255.255.1:9")
    t = time.perf_counter()
    mode, reason = resolve_wandb_mode("auto", timeout=0.5)
    assert mode == "offline" and "not reachable" in reason and time.perf_counter() - t < 2


@pytest.mark.parametrize(("logger", "preloaded"), [("wandb", True), ("csv", False), ("none", False)])
def test_wandb_launch_modules_are_imported_before_torch_when_wandb_logs(logger, preloaded, train_env):
    """``train`` imports the W&B module that ``wandb.init`` would import, ahead of torch, only when a W&B logger is
    configured (in a fresh interpreter: this one has imported both long ago)."""
    code = (
        "import sys\n"
        "from hybridpool.run import compose_config\n"
        "from hybridpool.run.wandb import preload\n"
        f"cfg = compose_config(['logger={logger}'])\n"
        "preload(cfg)\n"
        "print('wandb.sdk.launch.inputs.internal' in sys.modules, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.split() == [str(preloaded), "False"]


def test_wandb_start_retries_while_a_killed_attempt_still_holds_the_run_id(monkeypatch):
    """Resuming after SIGKILL: W&B's service of the dead process may hold the run id for a while."""
    from pytorch_lightning.loggers import WandbLogger

    import hybridpool.run.wandb as hw

    class Held(WandbLogger):
        def __init__(self, busy: int):
            self.busy, self.calls, self.params = busy, 0, []

        @property
        def experiment(self):
            self.calls += 1
            if self.calls <= self.busy:
                raise RuntimeError("run ID 1kr2f2ox is in use")
            return object()

        def log_hyperparams(self, params, *args, **kwargs):
            self.params.append(params)

    sleeps = []
    monkeypatch.setattr("time.sleep", lambda s: sleeps.append(s))
    monkeypatch.setattr(hw, "wandb_run_info", lambda lg: {"id": "1kr2f2ox"})
    session = hw.WandbSession({"seed": 0}, {"num": 1})
    logger = Held(busy=2)
    assert session.start([logger], wait_s=60) == {"id": "1kr2f2ox"}
    assert logger.calls == 3 and sleeps == [2.0, 2.0] and logger.params  # config logged once the run is open
    with pytest.raises(RuntimeError, match="is in use"):
        session.start([Held(busy=100)], wait_s=0)  # past the deadline: the error, not a hang
