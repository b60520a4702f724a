"""ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a configurable base width and two stems.

Module names are torchvision's (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc; blocks with
conv1/bn1/conv2/bn2/downsample.0/.1), so a torchvision state dict maps key for key.

Stems:
- "imagenet": conv1 7x7 stride 2 + bn1 + relu + 3x3 max-pool stride 2 (the pretrained ResNet-18).
- "cifar": conv1 3x3 stride 1, no max-pool (small images trained from scratch).

Model names: `resnet18_imagenet` and `resnet18_cifar` force the stem; `resnet18` picks "imagenet"
when `weights` is set (pretrained weights are ImageNet-stem) or the images are at least 64 pixels
on their short side, and "cifar" otherwise.
Cut points: after layer1, layer2 (the paper's cut) or layer3.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from hosfl_sim.config import ModelConfig
from hosfl_sim.models.split import SplitModel, image_shape, register_model, split_layers
from hosfl_sim.models.weights import load_vision_weights

CUT_POINTS = ["layer1", "layer2", "layer3"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a residual; a 1x1 conv projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def resnet18_layers(in_channels: int, num_classes: int, width: int = 64, stem: str = "imagenet") -> OrderedDict:
    """The whole ResNet-18 as named layers (torchvision names), kaiming-initialised convs."""
    if stem == "imagenet":
        conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
    elif stem == "cifar":
        conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        maxpool = nn.Identity()
    else:
        raise ValueError(f"unknown stem {stem!r}")
    layers = OrderedDict(conv1=conv1, bn1=nn.BatchNorm2d(width), relu=nn.ReLU(inplace=True), maxpool=maxpool)
    cin = width
    for i in range(4):
        cout = width * 2**i
        stride = 1 if i == 0 else 2
        layers[f"layer{i + 1}"] = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
        cin = cout
        # after layer{i+1}: (B, width * 2**i, H / (s * 2**i), W / (s * 2**i)), s = 4 (imagenet stem) or 1 (cifar)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(cin, num_classes)  # (B, num_classes)
    for m in layers.values():
        for conv in m.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return layers


def choose_stem(name: str, cfg: ModelConfig, shape: tuple[int, ...]) -> str:
    """The stem a ResNet-18 model name means (see the module docstring)."""
    if name.endswith("_imagenet"):
        return "imagenet"
    if name.endswith("_cifar"):
        return "cifar"
    return "imagenet" if cfg.weights is not None or min(shape[1:]) >= 64 else "cifar"


def build_resnet18(cfg: ModelConfig, sample_features: dict[str, np.ndarray], num_classes: int, seed: int) -> SplitModel:
    """ResNet-18 cut at `cfg.cut` with base width `cfg.width`; loads `cfg.weights` if set (fresh fc if its
    number of classes differs)."""
    shape = image_shape(sample_features)
    if len(shape) != 3:
        raise ValueError(f"{cfg.name} needs images shaped (B, C, H, W), got per-sample shape {shape}")
    stem = choose_stem(cfg.name, cfg, shape)
    split = split_layers(resnet18_layers(shape[0], num_classes, cfg.width, stem), str(cfg.cut))
    if cfg.weights is not None:
        load_vision_weights(split, cfg.weights)
    return split


for _name in ("resnet18", "resnet18_imagenet", "resnet18_cifar"):
    register_model(_name, build_resnet18, CUT_POINTS)
