"""``experiment=study_finetune``: MobileNetV2 fine-tuned end to end on Flowers-17 at 160 px (the study's arm)."""

from __future__ import annotations

from pathlib import Path

import torch

from hybridpool.records import read_results
from hybridpool.run import compose_config
from hybridpool.run.config import validate_config
from hybridpool.run.train import train


def test_the_finetune_arm_trains_the_pretrained_backbone_at_160_px(train_env: Path, shared_data: Path, torch_home):
    out = train_env / "finetune"
    cfg = compose_config([
        "experiment=study_finetune", "pool=gem", f"paths.data_dir={shared_data}", f"paths.output_dir={out}",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "callbacks=checkpoint", "logger=none",
    ])
    container = validate_config(cfg)
    assert container["data"]["image_size"] == 160 and container["model"]["freeze_backbone"] is False
    assert container["optim"]["backbone_lr_mult"] == 0.1 and container["data"]["split_seed"] == 0
    metrics = train(cfg)
    rec = read_results(out)
    assert rec["status"] == "completed" and rec["metrics"]["epochs"] == 1.0 and "test/acc" in metrics
    assert rec["data"]["image_size"] == 160 and not rec["paths"].get("feature_cache")  # images, not cached maps
    trained = torch.load(next((out / "checkpoints").glob("last*.ckpt")), map_location="cpu", weights_only=False)
    pretrained = torch.load(torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth", map_location="cpu")
    first_conv = next(v for k, v in trained["state_dict"].items() if k.startswith("model.backbone") and v.ndim == 4)
    assert first_conv.shape == pretrained["features.0.0.weight"].shape
    assert not torch.equal(first_conv, pretrained["features.0.0.weight"])  # the backbone moved
