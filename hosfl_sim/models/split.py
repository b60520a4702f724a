"""The split contract: a model cut in two, the registry of model builders, and helpers on parts.

Every model family registers a builder with `register_model`; `build_split_model` looks it up by
`ModelConfig.name`, checks the cut, and runs the builder with torch's global RNG forked and seeded,
so the same (config, seed) gives bit-identical parameters in every process and the caller's RNG
state is left untouched.
"""

from __future__ import annotations

import functools
import importlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hosfl_sim.config import ConfigError, ModelConfig


@dataclass
class SplitModel:
    """A model cut in two. `client(**inputs) -> a` (smashed data); `server(a, **side) -> logits (B, num_classes)`.

    `input_keys` names the input fields the client takes; `side_keys` names the input fields the server
    also needs (e.g. an attention mask); vision models have none. Both parts are plain nn.Modules holding
    ordinary nn.Parameters, so callers may perturb parameters in place or use `torch.func.functional_call`.
    """

    client: nn.Module
    server: nn.Module
    input_keys: tuple[str, ...] = ("x",)
    side_keys: tuple[str, ...] = ()


class JoinedModel(nn.Module):
    """Client then server as one module (centralized baselines): `forward(**inputs) = server(client(**inputs), **side)`.

    It holds the very same part modules (no copy), so training it trains the split model's parts.
    """

    def __init__(self, split: SplitModel):
        super().__init__()
        self.client = split.client
        self.server = split.server
        self.input_keys = tuple(split.input_keys)
        self.side_keys = tuple(split.side_keys)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        a = self.client(**{k: inputs[k] for k in self.input_keys})
        return self.server(a, **{k: inputs[k] for k in self.side_keys})


class Stage(nn.Sequential):
    """Named layers applied in order. `forward(x)` so a client stage can be called as `client(x=...)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


def split_layers(layers: OrderedDict[str, nn.Module], cut: str) -> SplitModel:
    """Client = the layers up to and including `cut`, server = the rest. Names are kept, so the two
    parts' state-dict keys together are the whole model's keys."""
    names = list(layers)
    i = names.index(cut) + 1
    client = Stage(OrderedDict((n, layers[n]) for n in names[:i]))
    server = Stage(OrderedDict((n, layers[n]) for n in names[i:]))
    return SplitModel(client=client, server=server)


def recut(split: SplitModel, cut: str) -> SplitModel:
    """The same layers cut at another named layer (multi-cut methods): both parts share `split`'s modules.
    Only models made of two Stages (`split_layers`) can be recut; a part in another dtype keeps casting its
    float inputs to it."""
    if not (isinstance(split.client, Stage) and isinstance(split.server, Stage)):
        raise ValueError(f"only a model cut by split_layers can be recut, not {type(split.client).__name__}")
    layers = OrderedDict([*split.client.named_children(), *split.server.named_children()])
    if cut not in layers:
        raise ValueError(f"no layer {cut!r} to cut at; the layers are {', '.join(layers)}")
    out = split_layers(layers, cut)
    dtype = next(split.client.parameters()).dtype
    if dtype != torch.float32:
        for part in (out.client, out.server):
            part.register_forward_pre_hook(functools.partial(_float_inputs_to, dtype), with_kwargs=True)
    return SplitModel(out.client, out.server, split.input_keys, split.side_keys)


# ----------------------------------------------------------------------------- registry

Builder = Callable[[ModelConfig, dict[str, np.ndarray], int, int], SplitModel]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    cut_points: tuple[str, ...]
    matches: Callable[[str], bool] | None


_REGISTRY: dict[str, _Entry] = {}
# Families that register themselves when imported; tried only for names nobody has registered yet,
# so importing the vision models never pulls in transformers.
_LAZY_FAMILIES = ("hosfl_sim.models.language",)


def register_model(
    name: str,
    builder: Builder,
    cut_points: list[str] | None = None,
    matches: Callable[[str], bool] | None = None,
) -> None:
    """Register `builder(cfg, sample_features, num_classes, seed) -> SplitModel` under `name`.

    `cut_points`: the named cuts the family accepts (checked before the builder runs); None or empty
    for families that check their own cut (e.g. a layer index). `matches`: an optional predicate that
    lets the family claim other names too (e.g. any Hugging Face model id); exact names win over it.
    """
    _REGISTRY[name] = _Entry(builder, tuple(cut_points or ()), matches)


def _lookup(name: str) -> _Entry:
    for attempt in range(2):
        if name in _REGISTRY:
            return _REGISTRY[name]
        for entry in reversed(_REGISTRY.values()):  # the latest, most specific family wins
            if entry.matches is not None and entry.matches(name):
                return entry
        if attempt == 0:
            for module in _LAZY_FAMILIES:
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as e:
                    if e.name != module:  # the family exists but one of its imports is missing
                        raise
    known = ", ".join(sorted(_REGISTRY))
    raise ConfigError("task.model.name", name, f"one of {known} (or a name a registered model family accepts)")


def cut_points(name: str) -> list[str]:
    """The named cut points of model `name`, in order from the input (empty if the family has none)."""
    return list(_lookup(name).cut_points)


def build_split_model(
    cfg: ModelConfig, sample_features: dict[str, np.ndarray], num_classes: int, seed: int
) -> SplitModel:
    """Build model `cfg.name` for inputs shaped like `sample_features` (arrays with a leading batch axis), cut at
    `cfg.cut`. Parameters depend only on (cfg, input shape, num_classes, seed); the global RNG is left as it was."""
    entry = _lookup(cfg.name)
    if entry.cut_points and cfg.cut not in entry.cut_points:
        raise ConfigError("task.model.cut", cfg.cut, f"one of {', '.join(entry.cut_points)} for model {cfg.name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        split = entry.builder(cfg, sample_features, num_classes, seed)
    dtype = getattr(torch, cfg.dtype)
    if dtype != torch.float32:  # both parts in `cfg.dtype`, taking their float inputs (images) in it too
        for part in (split.client, split.server):
            part.to(dtype)
            part.register_forward_pre_hook(functools.partial(_float_inputs_to, dtype), with_kwargs=True)
    if cfg.freeze_bn_affine:
        for part in (split.client, split.server):
            for m in part.modules():
                if isinstance(m, _BATCHNORMS) and m.affine:
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
    return split


# ----------------------------------------------------------------------------- parts


def _float_inputs_to(dtype: torch.dtype, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A forward pre-hook: floating-point inputs cast to the part's dtype (integer ones, ids and masks, untouched)."""

    def cast(v: object) -> object:
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    return tuple(cast(v) for v in args), {k: cast(v) for k, v in kwargs.items()}


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    # A later module.train() flips the flag back; reset it before every forward.
    module.training = False


def freeze_batchnorm(module: nn.Module) -> None:
    """Freeze every BatchNorm in `module`: affine parameters get requires_grad=False and the layer always
    normalises with its running statistics, which no forward (nor a later `.train()`) ever changes."""
    for m in module.modules():
        if isinstance(m, _BATCHNORMS):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
            m.eval()
            if _stay_in_eval not in m._forward_pre_hooks.values():
                m.register_forward_pre_hook(_stay_in_eval)


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters with requires_grad, in `named_parameters` order (the order perturbations follow)."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def image_shape(sample_features: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The per-sample shape of the `x` field: (C, H, W) for images, (F,) for flat features."""
    x = sample_features["x"]
    if x.ndim not in (2, 4):
        raise ValueError(f"vision models need x shaped (B, C, H, W) or (B, F), got {x.shape}")
    return tuple(int(s) for s in x.shape[1:])
