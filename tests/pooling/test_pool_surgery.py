"""swap_global_pool on torchvision and timm classifiers (random weights, 64x64 inputs)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from pool_refs import ref_gem
from torch import nn

from hybridpool.pooling import GeM, GlobalAvgPool, HybridPool, create_pool, pooling_parameters, swap_global_pool

NUM_CLASSES = 10
# torchvision constructor -> width of its last feature map
TORCHVISION = {
    "resnet18": 512,
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "efficientnet_b0": 1280,
}


@torch.no_grad()
def calibrated(model: nn.Module) -> nn.Module:
    """Set BatchNorm statistics from one batch, then eval mode.

    With random weights and fresh running statistics the activations shrink layer by layer and the logits come out
    around 1e-10, which would make any comparison of logits trivially true; calibrated, they are of order 0.1-1.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(99)))
    return model.eval()


def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return calibrated(getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES))


def timm_model(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return calibrated(timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES))


def assert_same_logits(out: torch.Tensor, before: torch.Tensor) -> None:
    scale = float(before.abs().max())
    assert scale > 1e-2, f"logits of order {scale:g} would make the comparison meaningless"
    torch.testing.assert_close(out, before, rtol=1e-5, atol=1e-5 * scale)


def clearly_differ(out: torch.Tensor, before: torch.Tensor) -> bool:
    return float((out - before).abs().max()) > 1e-2 * float(before.abs().max())


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def first_linear(model: nn.Module) -> nn.Linear:
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


class Recorder:
    """Forward hook that keeps the pool's input and output of every call."""

    def __init__(self, pool: nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        pool.register_forward_hook(lambda _m, args, out: self.calls.append((args[0].detach(), out.detach())))


@functools.cache
def _pristine(kind: str, name: str) -> tuple[nn.Module, int]:
    if kind == "timm":
        model = timm_model(name)
        return model, model.num_features
    return torchvision_model(name), TORCHVISION[name]


@functools.cache
def _logits(kind: str, name: str, seed: int) -> torch.Tensor:
    with torch.no_grad():
        return _pristine(kind, name)[0](images(seed))


def build_model(kind: str, name: str, seed: int) -> tuple[nn.Module, int, torch.Tensor, torch.Tensor]:
    """A fresh copy of a calibrated model, its width, the images ``images(seed)`` and its logits on them."""
    model, channels = _pristine(kind, name)
    return copy.deepcopy(model), channels, images(seed), _logits(kind, name, seed)


MODELS = [("torchvision", name) for name in TORCHVISION] + [("timm", "resnet18")]
IDS = [f"{kind}-{name}" for kind, name in MODELS]
# one model per code path of swap_global_pool (ResNet, MobileNetV2's replaced forward, timm) for the GeM check
CORE = [("torchvision", "resnet18"), ("torchvision", "mobilenet_v2"), ("timm", "resnet18")]
CORE_IDS = [f"{kind}-{name}" for kind, name in CORE]


@pytest.mark.parametrize(("kind", "name"), MODELS, ids=IDS)
def test_gap_init_hybrid_keeps_the_logits_and_is_used(kind, name):
    model, channels, x, before = build_model(kind, name, 0)
    pool = HybridPool(channels, branches=("max", "gem", "avg", "attn"), mixing="channel", init="gap")
    assert swap_global_pool(model, pool) is model
    rec = Recorder(pool)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert_same_logits(out, before)
    assert len(rec.calls) == 1 and rec.calls[0][0].shape[:2] == (2, channels)
    (blend_grad,) = torch.autograd.grad(out.square().sum(), pool.blend)
    assert float(blend_grad.abs()) > 0  # it trains from step 0
    ids = {id(p) for p in pooling_parameters(model)}
    assert ids == {id(p) for p in pool.parameters()}  # the pool's parameters, nothing of the backbone


@pytest.mark.parametrize(("kind", "name"), MODELS, ids=IDS)
def test_concat_hybrid_widens_the_classifier_and_starts_as_gap(kind, name):
    model, channels, x, before = build_model(kind, name, 0)
    pool = create_pool("hybrid(max,avg,gem,attn)", channels=channels, mixing="concat")
    swap_global_pool(model, pool)
    linear = first_linear(model)
    assert linear.in_features == 4 * channels
    rec = Recorder(pool)
    with torch.no_grad():
        out = model(x)
        assert_same_logits(out, before)  # the avg block got the old weights, the others start at zero
        assert rec.calls[0][1].flatten(1).shape == (2, 4 * channels)  # (B, 4C) or (B, 4C, 1, 1), as the model had
        linear.weight[:, :channels].normal_()  # the max block: the extra features really reach the classifier
        assert clearly_differ(model(x), before)


@pytest.mark.parametrize(("kind", "name"), CORE, ids=CORE_IDS)
def test_gem_swap_pools_the_feature_map_with_gem(kind, name):
    model, channels, x, before = build_model(kind, name, 0)
    pool = GeM(channels, p=4.0, flatten=False)  # the swap sets the output rank the model expects
    swap_global_pool(model, pool)
    rec = Recorder(pool)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    feats, pooled = rec.calls[0]
    assert pooled.shape in ((2, channels), (2, channels, 1, 1))
    torch.testing.assert_close(pooled.flatten(1).double(), ref_gem(feats, 4.0), rtol=1e-5, atol=1e-6)
    assert clearly_differ(out, before)


def test_concat_without_avg_branch_gets_a_fresh_classifier():
    model = build_model("torchvision", "resnet18", 0)[0]
    swap_global_pool(model, create_pool("hybrid(max,gem)", channels=512, mixing="concat"))
    assert model.fc.in_features == 1024 and model.fc.out_features == NUM_CLASSES
    assert model(images()).shape == (2, NUM_CLASSES)


def test_pooling_parameters_of_a_swapped_model_are_the_pool_ones():
    model = build_model("torchvision", "mobilenet_v2", 0)[0]
    pool = create_pool("hybrid(avg,gem,lse,attn)", channels=1280, mixing="gate", gate_hidden=4)
    swap_global_pool(model, pool)
    found = pooling_parameters(model)
    assert {id(p) for p in found} == {id(p) for p in pool.parameters()}
    assert len(found) == len(list(pool.parameters())) > 0


@pytest.mark.parametrize(("kind", "name"), [("torchvision", "resnet18"), ("torchvision", "mobilenet_v2")])
def test_channel_mismatch_is_a_value_error(kind, name):
    model, channels, _, _ = build_model(kind, name, 0)
    with pytest.raises(ValueError, match=rf"{channels + 1}.*{channels}"):
        swap_global_pool(model, GeM(channels + 1))


def test_timm_channel_mismatch_is_a_value_error():
    model = build_model("timm", "resnet18", 0)[0]
    with pytest.raises(ValueError, match="512"):
        swap_global_pool(model, HybridPool(256))


def test_unknown_model_is_a_type_error_listing_what_is_supported():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(TypeError, match=r"Sequential.*supported: .*ResNet.*MobileNetV2.*EfficientNet.*timm"):
        swap_global_pool(model, GlobalAvgPool())


def test_pool_must_be_a_hybridpool_layer():
    with pytest.raises(TypeError, match="hybridpool layer"):
        swap_global_pool(build_model("torchvision", "resnet18", 0)[0], nn.AdaptiveAvgPool2d(1))


def test_a_model_whose_pool_is_not_global_is_refused_not_guessed():
    """AlexNet (like VGG) has features / avgpool / classifier, but its avgpool is a 6x6 adaptive pool whose
    flattened output feeds a 9216-wide classifier: swapping in a global pool cannot work, so it must be refused."""
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None, num_classes=NUM_CLASSES)
    with pytest.raises(TypeError, match="supported"):
        swap_global_pool(model, GlobalAvgPool())


def test_torchvision_convnext_is_swapped_correctly_or_refused():
    """torchvision ConvNeXt pools globally (avgpool) but its classifier starts with a LayerNorm2d over the pooled
    (B, C, 1, 1) map. The swap must either refuse with a TypeError or keep the model working, with its logits."""
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None, num_classes=NUM_CLASSES).eval()
    x = images(4)
    with torch.no_grad():
        before = model(x)
    try:
        swap_global_pool(model, GlobalAvgPool(768))
    except TypeError as err:
        assert "supported" in str(err)
        return
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))


@pytest.mark.parametrize("name", ["convnext_atto", "mobilenetv3_small_050"])
@pytest.mark.parametrize("mixing", ["scalar", "concat"])
def test_timm_models_with_a_head_after_the_pool(name, mixing):
    """timm models whose head works on the pooled (B, C, 1, 1) map: ConvNeXt normalises it (head.norm), MobileNetV3
    runs a 1x1 conv_head on it. A GAP-initialised hybrid must swap in and keep the logits; a concat hybrid (wider
    output) must either be refused with a TypeError or give a model that runs and keeps the logits at step 0."""
    model, channels, x, before = build_model("timm", name, 0)
    if mixing == "scalar":
        swap_global_pool(model, HybridPool(channels, branches=("avg", "gem", "attn"), init="gap"))
    else:
        try:
            swap_global_pool(model, create_pool("hybrid(max,avg)", channels=channels, mixing="concat"))
        except TypeError as err:
            assert "supported" in str(err)
            return
    with torch.no_grad():
        assert_same_logits(model(x), before)
