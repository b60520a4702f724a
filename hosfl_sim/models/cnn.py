"""A small CNN for any image size: three conv blocks (channels w, 2w, 4w), then an MLP head.

Each block is conv 3x3 + ReLU + 2x2 max-pool, pooling only along axes still at least 4 long so that
tiny images keep some layout for the head: 8x8 digits end at 2x2, 28x28 MNIST at 3x3, 32x32 CIFAR
at 4x4. Flat features (B, F) are viewed as (B, 1, 1, F).
Cut points: after block1, block2 or block3.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from hosfl_sim.config import ModelConfig
from hosfl_sim.models.split import SplitModel, image_shape, register_model, split_layers
from hosfl_sim.models.weights import load_vision_weights

CUT_POINTS = ["block1", "block2", "block3"]


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d run in channels-last layout on the CPU: the same outputs and gradients, and a forward
    faster on this CNN's small maps, where torch's NCHW CPU kernel is slow: 177 us against 18 us on a
    32x16x8x8 map, which took the digits client's forward from 0.30 to 0.14-0.18 ms (README, Performance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        try:
            x = x.contiguous(memory_format=torch.channels_last)
        except RuntimeError:  # inside torch.func.vmap (batched probes), which cannot change layouts
            return super().forward(x)
        return super().forward(x).contiguous()


def cnn_layers(shape: tuple[int, ...], num_classes: int, width: int) -> OrderedDict[str, nn.Module]:
    """The whole CNN as named layers, for inputs of per-sample `shape` ((C, H, W) or (F,))."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(shape) == 1:
        layers["unflatten"] = nn.Unflatten(1, (1, 1, shape[0]))
        shape = (1, 1, shape[0])
    c, h, w = shape
    for i, name in enumerate(CUT_POINTS):
        out = width * 2**i
        pool = (2 if h >= 4 else 1, 2 if w >= 4 else 1)
        layers[name] = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(c, out, 3, padding=1),
                relu=nn.ReLU(),
                pool=MaxPool2d(pool) if pool != (1, 1) else nn.Identity(),
            )
        )
        c, h, w = out, h // pool[0], w // pool[1]
        # after block i+1: (B, width * 2**i, h, w)
    # Keep up to 4x4 positions: spatial layout matters on small images, and the head stays small on big ones.
    ph, pw = min(h, 4), min(w, 4)
    # Where the maps are already that small the pool is the identity (a mean over one element), and its CPU
    # kernel is slow: 0.14 ms forward and as much backward on a (32, 64, 2, 2) batch, as long as a conv there.
    layers["pool"] = nn.AdaptiveAvgPool2d((ph, pw)) if (ph, pw) != (h, w) else nn.Identity()
    layers["flatten"] = nn.Flatten()
    layers["hidden"] = nn.Linear(c * ph * pw, 8 * width)
    layers["act"] = nn.ReLU()
    layers["fc"] = nn.Linear(8 * width, num_classes)  # (B, num_classes)
    return layers


def build_cnn(cfg: ModelConfig, sample_features: dict[str, np.ndarray], num_classes: int, seed: int) -> SplitModel:
    """The CNN cut at `cfg.cut`; default PyTorch init (drawn from the RNG `build_split_model` seeded)."""
    split = split_layers(cnn_layers(image_shape(sample_features), num_classes, cfg.width), str(cfg.cut))
    if cfg.weights is not None:
        load_vision_weights(split, cfg.weights)
    return split


register_model("cnn", build_cnn, CUT_POINTS)
