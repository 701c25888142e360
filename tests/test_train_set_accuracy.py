"""``TrainSetAccuracy`` (callbacks=study_overfit): the tested model on its training images, eval mode."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hybridpool.models import Classifier, SmallCNN
from hybridpool.records import read_results
from hybridpool.run.build import build_data
from hybridpool.run.callbacks import TrainSetAccuracy
from hybridpool.run.heads import group_problem
from hybridpool.run.module import ClassificationModule
from hybridpool.run.train import train


def _logged(module: ClassificationModule) -> dict[str, float]:
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    return logged


def test_it_classifies_the_training_images_through_the_eval_transform_in_eval_mode(make_cfg):
    dm = build_data(make_cfg(["data.augment=true", "data.num_train=40"]))
    torch.manual_seed(0)
    module = ClassificationModule(Classifier(SmallCNN(3, (8,)), "gem", dm.num_classes, dropout=0.5))
    module.train()
    logged = _logged(module)
    TrainSetAccuracy().on_test_epoch_end(SimpleNamespace(datamodule=dm), module)
    assert module.training  # the mode is restored
    module.eval()
    with torch.no_grad():  # reference: every eval-transformed training image, one at a time
        hits = [int(module(x[None]).argmax(1)) == int(y) for x, y in dm.eval_dataset("train")]
    assert len(hits) == 40
    assert logged["train_eval/acc"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    few = TrainSetAccuracy(max_images=7)
    _logged(module)
    few.on_test_epoch_end(SimpleNamespace(datamodule=dm), module)
    assert few.value is not None and round(few.value * 7) == pytest.approx(few.value * 7, abs=1e-9)
    with pytest.raises(ValueError, match="max_images"):
        TrainSetAccuracy(max_images=0)
    with pytest.raises(ValueError, match="eval_dataset"):
        TrainSetAccuracy().on_test_epoch_end(SimpleNamespace(datamodule=object()), module)


def test_callbacks_study_overfit_records_train_eval_acc_and_trains_alone_under_heads(make_cfg, train_env):
    cfg = make_cfg(["callbacks=study_overfit", "trainer.max_epochs=2"])
    metrics = train(cfg)
    assert 0.0 <= metrics["train_eval/acc"] <= 1.0 and "val/acc_best_epoch" in metrics
    assert read_results(cfg.paths.output_dir)["metrics"]["train_eval/acc"] == metrics["train_eval/acc"]
    frozen = make_cfg(["callbacks=study_overfit", "model.freeze_backbone=true"], name="frozen")
    assert "TrainSetAccuracy" in (group_problem(frozen) or "")
