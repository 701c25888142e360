"""The LightningModule's schedule, optimizer groups and pooling statistics."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from hybridpool.models import Classifier, SmallCNN
from hybridpool.run.module import ClassificationModule, attention_entropy, lr_lambda, mixing_statistics


def test_warmup_then_cosine_to_the_floor():
    f = lr_lambda("cosine", total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 110))


def test_step_and_constant_schedules():
    f = lr_lambda("step", total_steps=100, warmup_steps=0, step_every=30, gamma=0.1)
    assert [f(0), f(29), f(30), f(60)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert lr_lambda("constant", total_steps=5)(4) == 1.0
    with pytest.raises(ValueError, match="cosine"):
        lr_lambda("linear", total_steps=5)


def test_optimizer_groups_lr_multipliers_and_no_pool_weight_decay():
    model = Classifier(SmallCNN(3, (8, 16)), "hybrid(avg,max,gem,attn)", num_classes=3)
    module = ClassificationModule(
        model,
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.05),
        backbone_lr_mult=0.1,
        pool_lr_mult=10.0,
        warmup_epochs=1,
    )
    module._trainer = SimpleNamespace(estimated_stepping_batches=40, max_epochs=4)
    conf = module.configure_optimizers()
    groups = {g["name"]: g for g in conf["optimizer"].param_groups}
    assert set(groups) == {"backbone", "head", "pool"}
    assert groups["backbone"]["initial_lr"] == pytest.approx(0.001)
    assert groups["head"]["initial_lr"] == pytest.approx(0.01) and groups["head"]["weight_decay"] == 0.05
    assert groups["pool"]["initial_lr"] == pytest.approx(0.1) and groups["pool"]["weight_decay"] == 0.0
    assert conf["lr_scheduler"]["interval"] == "step"
    assert groups["pool"]["lr"] == pytest.approx(0.1 / 10)  # first warm-up step of 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"scheduler": "linear"}, "scheduler"), ({"pool_lr_mult": -1}, "pool_lr_mult"),
     ({"label_smoothing": 1.0}, "label_smoothing")],
)
def test_bad_module_arguments(kwargs, match):
    model = Classifier(SmallCNN(3, (8,)), "avg", num_classes=2)
    with pytest.raises(ValueError, match=match):
        ClassificationModule(model, **kwargs)


def test_mixing_statistics_for_scalar_channel_and_gate_weights():
    scalar = torch.tensor([0.2, 0.8]).expand(4, 2)
    s = mixing_statistics(scalar, ["avg", "max"])
    assert s["avg_mean"] == pytest.approx(0.2) and s["max_sample_std"] == pytest.approx(0.0, abs=1e-7)
    channel = torch.rand(3, 2, 5)
    c = mixing_statistics(channel)
    assert c["b0_mean"] == pytest.approx(float(channel[:, 0].mean())) and c["b1_std"] > 0
    gate = torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    assert mixing_statistics(gate, ["a", "b"])["a_sample_std"] == pytest.approx(0.2)


def test_attention_entropy_bounds():
    uniform = torch.full((2, 1, 4, 4), 1 / 16)
    onehot = torch.zeros(2, 1, 4, 4)
    onehot[:, :, 1, 2] = 1
    assert attention_entropy(uniform) == pytest.approx(1.0)
    assert attention_entropy(onehot) == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(attention_entropy(torch.rand(1, 2, 3, 3)))
