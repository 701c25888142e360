"""Backbones (small CNN, torchvision, EfficientNet-Lite0, timm) and the classifier: backbone, pool, head."""

from hybridpool.models.backbones import (
    Backbone,
    EfficientNetLite0,
    SmallCNN,
    TimmBackbone,
    TorchvisionBackbone,
    adapt_in_channels,
)
from hybridpool.models.classifier import Classifier, build_pool

__all__ = [
    "Backbone",
    "Classifier",
    "EfficientNetLite0",
    "SmallCNN",
    "TimmBackbone",
    "TorchvisionBackbone",
    "adapt_in_channels",
    "build_pool",
]
