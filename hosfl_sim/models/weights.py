"""Load a vision state dict (.safetensors, or a torchvision-format .pt/.pth) into a model or its split.

Keys are torchvision's names (`conv1.weight`, `layer2.0.downsample.1.running_var`, ...); the parts of a
split model keep those names, so the file maps onto client and server together. `imagenet` names torchvision's
ImageNet ResNet-18 on the Hugging Face hub (hosfl_sim/hfhub.py); any other value is a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hosfl_sim.config import ConfigError
from hosfl_sim.hfhub import HUB_WEIGHTS, hub_file

FIELD = "task.model.weights"
HEAD_PREFIX = "fc."  # the classifier: left fresh when its shape (number of classes) differs


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, with `module.` prefixes (DataParallel) stripped: a local file, or a name of
    `HUB_WEIGHTS` (`imagenet`), read from the Hugging Face cache or downloaded into it."""
    p = hub_file(FIELD, str(path)) if str(path) in HUB_WEIGHTS else Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(FIELD, str(path), "an existing local .safetensors, .pt or .pth file, or imagenet (hub)")
    state: object
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    elif p.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickled model object, a corrupt file, ...
            raise ConfigError(FIELD, str(path), f"a state dict that torch.load(weights_only=True) reads ({e})") from e
        for wrapper in ("state_dict", "model"):  # common training-checkpoint layouts
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    else:
        raise ConfigError(FIELD, str(path), "a file ending in .safetensors, .pt or .pth")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(FIELD, str(path), "a mapping from parameter names to tensors")
    return {_strip_module(k): v for k, v in state.items()}


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _target_tensors(model: nn.Module | object) -> dict[str, torch.Tensor]:
    """Name -> tensor (sharing storage) over a module, or over client and server of a split/joined model."""
    if hasattr(model, "client") and hasattr(model, "server"):
        parts = [model.client, model.server]
    elif isinstance(model, nn.Module):
        parts = [model]
    else:
        raise TypeError(f"weights load into a module, a SplitModel or a JoinedModel, not {type(model).__name__}")
    target: dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.state_dict(keep_vars=True).items():
            if k in target:
                raise ValueError(f"client and server both hold {k!r}; cannot map a single state dict onto them")
            target[k] = v
    return target


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_vision_weights(model: nn.Module | object, path: str | Path) -> list[str]:
    """Copy the tensors of `path` into `model` (a module, a SplitModel or a JoinedModel) in place.

    The classifier `fc.*` is skipped when its shape differs (a new head for another number of classes);
    every other key must match in name and shape, or a ConfigError lists what is missing, unexpected or
    mis-shaped. `num_batches_tracked` may be absent (older checkpoints). Returns the keys left untouched.
    """
    state = read_state_dict(path)
    target = _target_tensors(model)
    skipped = [k for k in target if k.startswith(HEAD_PREFIX) and k in state and state[k].shape != target[k].shape]
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and k not in skipped and state[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches (file vs model): {_listing(mis_shaped)}")
    if problems:
        hint = ""
        if any(m.startswith("conv1.weight") for m in mis_shaped):
            hint = " (is the stem right? ImageNet weights need resnet18 or resnet18_imagenet)"
        raise ConfigError(FIELD, str(path), "a state dict matching the model; " + "; ".join(problems) + hint)
    with torch.no_grad():
        for k, v in target.items():
            if k in state and k not in skipped:
                v.copy_(state[k].to(dtype=v.dtype))
    return sorted(set(skipped) | {k for k in target if k not in state})
