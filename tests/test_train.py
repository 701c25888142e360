"""End-to-end runs of hybridpool.train: fast_dev_run of every pool, a real short fit, resume, records, W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from hybridpool.records import read_results
from hybridpool.run import config_dir
from hybridpool.run.train import train

POOLS = sorted(p.stem for p in (config_dir() / "pool").glob("*.yaml"))
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pool", POOLS)
def test_fast_dev_run_of_every_pool_with_the_small_cnn(pool, make_cfg):
    size = ["pool.spatial_size=[8,8]"] if pool == "flatten" else []  # the tiny config's 8x8 feature map
    metrics = train(make_cfg([f"pool={pool}", *size, "+trainer.fast_dev_run=true"], name=pool))
    assert "test/acc" in metrics and 0.0 <= metrics["test/acc"] <= 1.0


def test_fast_dev_run_of_a_torchvision_backbone(make_cfg):
    cfg = make_cfg(
        ["model=resnet18", "model.backbone.weights=null", "data.image_size=32", "data.batch_size=4",
         "pool=gem", "+trainer.fast_dev_run=true"]
    )
    metrics = train(cfg)
    assert "test/acc" in metrics


SHORT_FIT = [
    "data.task=detail", "data.num_train=512", "data.num_val=128", "data.num_test=128", "data.batch_size=32",
    "trainer.max_epochs=3", "pool=hybrid_scalar", "callbacks=checkpoint", "logger=csv",
    "model.backbone.widths=[16,32]",
]


def test_short_fit_on_a_synthetic_task_beats_chance(make_cfg, train_env, run_path):
    metrics = train(make_cfg(SHORT_FIT, name="short"))
    chance = 1 / 4
    assert metrics["test/acc"] >= chance + 0.3, metrics
    assert metrics["val/acc_best"] >= metrics["val/acc"] - 1e-9
    # the record of the run holds its config, seed, git commit, metrics, wall time and status
    rec = read_results(run_path("short"))
    assert rec["status"] == "completed" and rec["schema"] == 1
    assert rec["seed"] == 0 and rec["task_name"] == "main"
    assert rec["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert rec["config"]["pool"]["_target_"] == "hybridpool.pooling.pool_factory"
    # the pool's one identity, its create_pool spec, is a field of the record and the tag
    assert rec["pool"]["spec"] == "hybrid" and rec["pool"]["kwargs"]["mixing"] == "scalar"
    assert "pool:hybrid" in rec["tags"]
    assert rec["config"]["data"]["num_train"] == 512
    assert rec["wall_time_s"] > 0 and rec["started_at"] and rec["finished_at"]
    assert set(rec["git"]) == {"commit", "dirty"}
    assert any(t.startswith("pool:") for t in rec["tags"]) and "data:synth_detail" in rec["tags"]
    assert Path(rec["paths"]["best_checkpoint"]).is_file() and Path(rec["paths"]["last_checkpoint"]).is_file()
    csv = Path(rec["paths"]["metrics_csv"]).read_text()
    assert "val/acc" in csv and "pool/mix/avg" in csv and "pool/gem/p" in csv
    assert rec["data"]["name"] == "synth_detail"


def test_same_config_and_seed_give_the_same_metrics(make_cfg):
    a = train(make_cfg(["trainer.max_epochs=2"], name="a"))
    b = train(make_cfg(["trainer.max_epochs=2"], name="b"))
    keys = [k for k in a if k.startswith(("val/", "test/", "train/"))]
    assert keys and all(a[k] == b[k] for k in keys), {k: (a[k], b[k]) for k in keys}


class _Crash(pl.Callback):
    """Simulates an interrupted run: raises after ``epochs`` finished epochs."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            raise RuntimeError("simulated crash")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_from_last_continues_the_interrupted_run_exactly(make_cfg, train_env, run_path):
    common = ["trainer.max_epochs=3", "callbacks=checkpoint", "logger=csv", "data.augment=true",
              "model.dropout=0.3"]
    full = train(make_cfg(common, name="full"))

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(common, name="crashed"), extra_callbacks=[_Crash(epochs=2)])
    crashed = run_path("crashed")
    assert read_results(crashed)["status"] == "failed"
    assert (crashed / "checkpoints" / "last.ckpt").is_file()

    # a new launch with ckpt_path=last finds the interrupted run (same config) and continues it in its folder
    resumed = train(make_cfg([*common, "ckpt_path=last"], name="relaunch"))
    rec = read_results(crashed)
    assert rec["status"] == "completed" and rec["resumed_from"].endswith("last.ckpt") and rec["attempts"] == 2
    assert not (run_path("relaunch") / "results.json").exists()
    assert (crashed / "csv" / "metrics.attempt1.csv").is_file()  # the first attempt's rows are kept
    for k in ("val/acc", "val/loss", "test/acc", "test/loss", "train/loss"):
        assert resumed[k] == pytest.approx(full[k], abs=1e-6), k
    w_full = _weights(run_path("full") / "checkpoints" / "last.ckpt")
    w_res = _weights(crashed / "checkpoints" / "last.ckpt")
    for k, v in w_full.items():
        torch.testing.assert_close(w_res[k], v, rtol=0, atol=1e-6, msg=k)


def test_resume_without_a_checkpoint_says_where_it_looked(make_cfg):
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no checkpoint to resume"):
        train(make_cfg(["ckpt_path=last"], name="nothing"))


def test_offline_wandb_run_holds_metrics_and_config(make_cfg, train_env, run_path):
    from hybridpool.run.wandb import read_wandb_run

    cfg = make_cfg(["logger=wandb", "trainer.max_epochs=2", "pool=hybrid_channel", "tags=[probe]"], name="wb")
    metrics = train(cfg)
    rec = read_results(run_path("wb"))
    w = rec["wandb"]
    assert w["mode"] == "offline" and w["sync_command"].startswith("wandb sync ")
    wandb_dir = Path(w["dir"])
    assert list(wandb_dir.glob("run-*.wandb")), wandb_dir
    run = read_wandb_run(wandb_dir)
    assert run["config"]["pool"]["mixing"] == "channel"
    assert run["config"]["data"]["num_train"] == 64 and run["config"]["seed"] == 0
    assert "probe" in run["tags"] and "mixing:channel" in run["tags"]
    val_acc = [h["val/acc"] for h in run["history"] if "val/acc" in h]
    assert len(val_acc) == 2 and val_acc[-1] == pytest.approx(metrics["val/acc"])
    assert any("pool/mix/avg" in h for h in run["history"])
    assert any("pool/val/mix/avg_mean" in h for h in run["history"])
    assert run["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert run["state"] == "finished"
    import wandb

    assert wandb.run is None  # finished in train()'s finally


def test_missing_dataset_fails_at_start_with_where_it_looked(make_cfg, train_env, run_path):
    empty = train_env / "no_data_here"
    empty.mkdir()
    cfg = make_cfg(["data=cub", f"paths.data_dir={empty}"], name="missing")
    with pytest.raises(FileNotFoundError) as err:
        train(cfg)
    assert str(empty) in str(err.value)
    rec = read_results(run_path("missing"))
    assert rec["status"] == "failed" and "not found" in rec["error"]


def test_cli_multirun_gives_each_job_its_own_results_and_wandb_run(train_env, tiny_overrides):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    overrides = [o for o in tiny_overrides if not o.startswith("logger=")]
    sweep = train_env / "sweep"
    cmd = [sys.executable, "-m", "hybridpool.cli", "-m", *overrides, "logger=wandb", "pool=avg,gem",
           f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=train_env, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "results:" in done.stdout and "wandb sync" in done.stdout
    ids = set()
    for job in ("0", "1"):
        rec = json.loads((sweep / job / "results.json").read_text())
        assert rec["status"] == "completed"
        assert rec["overrides"] and any(o.startswith("pool=") for o in rec["overrides"])
        ids.add(rec["wandb"]["id"])
        assert Path(rec["wandb"]["dir"]).is_relative_to(sweep / job)
    assert len(ids) == 2
    tags = {t for job in ("0", "1") for t in json.loads((sweep / job / "results.json").read_text())["tags"]}
    assert {"pool:avg", "pool:gem"} <= tags


def test_last_checkpoint_is_the_last_epoch_even_when_val_acc_stops_improving(make_cfg, train_env, run_path):
    import torch

    # "best" = the lowest epoch: the best checkpoint stays at epoch 0 while last.ckpt must follow every epoch
    # (Lightning's own save_last only rewrites last.ckpt when a new best is saved)
    cfg = make_cfg([*SHORT_FIT, "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"],
                   name="flat")
    train(cfg)
    rec = read_results(run_path("flat"))
    last = torch.load(rec["paths"]["last_checkpoint"], map_location="cpu", weights_only=False)
    best = torch.load(rec["paths"]["best_checkpoint"], map_location="cpu", weights_only=False)
    assert Path(rec["paths"]["last_checkpoint"]).name == "last.ckpt"
    assert (best["epoch"], last["epoch"]) == (0, 2)
    assert sorted(p.name for p in Path(rec["paths"]["last_checkpoint"]).parent.iterdir()) == [
        "best-epoch000.ckpt", "last.ckpt"]


def test_cli_run_prints_what_matters_and_no_third_party_noise(train_env, tiny_overrides):
    """A single run with W&B (offline), the summary on, the progress bar off: no Lightning tips, no FLOPs table,
    no W&B ``anonymous`` warning, no pytree deprecation; one line of parameter counts and where the outputs went."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WANDB_SILENT", None)
    overrides = [o for o in tiny_overrides if not o.startswith(("logger=", "trainer.enable_model_summary"))]
    cmd = [sys.executable, "-m", "hybridpool.cli", *overrides, "logger=wandb", "pool=hybrid_scalar"]
    done = subprocess.run(cmd, cwd=train_env, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for noise in ("💡 Tip", "FLOPs", "anonymous setting", "LeafSpec", "model summary callbacks", "stepping batches"):
        assert noise not in out, noise
    assert "[hybridpool] model: SmallCNN -> HybridPool -> Linear: " in out
    assert "[hybridpool]   results:" in out
