"""Pretrained starts the way users expect: `weights: imagenet` from the Hugging Face cache (the tests build the
cache; nothing reaches the network), one line when it is missing offline, local files as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hosfl_sim.config import ConfigError, ModelConfig
from hosfl_sim.hfhub import HUB_WEIGHTS
from hosfl_sim.models import build_split_model
from hosfl_sim.models.resnet import resnet18_layers

SAMPLE = {"x": np.zeros((1, 3, 32, 32), np.float32)}


def imagenet_like_state(width: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random ResNet-18 state dict with torchvision's (and timm's) names and a 1000-class head."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(resnet18_layers(3, 1000, width, "imagenet"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def make_hub_cache(root, state: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/file}."""
    repo_id, filename = HUB_WEIGHTS["imagenet"]
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / filename))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_imagenet_weights_load_from_the_hub_cache_with_a_fresh_head(hub_cache):
    width = 8
    state = imagenet_like_state(width)
    make_hub_cache(hub_cache, state)
    cfg = ModelConfig(name="resnet18_imagenet", cut="layer2", width=width, weights="imagenet")
    split = build_split_model(cfg, SAMPLE, num_classes=10, seed=0)
    got = {**split.client.state_dict(), **split.server.state_dict()}
    for key, value in state.items():
        if key.startswith("fc."):
            assert got[key].shape[0] == 10  # a new head for 10 classes
        else:
            assert torch.equal(got[key], value), key
    assert "layer2.1.bn2.running_var" in split.client.state_dict() and "layer3.0.conv1.weight" in got


def test_imagenet_weights_missing_offline_fail_in_one_line(hub_cache):
    cfg = ModelConfig(name="resnet18_imagenet", cut="layer2", width=8, weights="imagenet")
    with pytest.raises(ConfigError) as e:
        build_split_model(cfg, SAMPLE, num_classes=10, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task.model.weights: got 'imagenet'")
    assert "HF_HUB_OFFLINE" in msg and "local path" in msg


def test_a_local_safetensors_file_still_works(tmp_path):
    width = 8
    state = imagenet_like_state(width, seed=2)
    save_file(state, str(tmp_path / "w.safetensors"))
    cfg = ModelConfig(name="resnet18_imagenet", cut="layer2", width=width, weights=str(tmp_path / "w.safetensors"))
    split = build_split_model(cfg, SAMPLE, num_classes=10, seed=0)
    assert torch.equal(split.client.state_dict()["conv1.weight"], state["conv1.weight"])


def test_a_language_model_id_missing_offline_names_the_way_out(hub_cache):
    from hosfl_sim.models.language import load_language_model

    cfg = ModelConfig(name="facebook/opt-125m", cut=3, head="verbalizer", verbalizer=[" bad", " good"])
    with pytest.raises(ConfigError) as e:
        load_language_model(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task.model.name: got 'facebook/opt-125m'") and "cache" in msg
