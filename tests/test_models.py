"""The vision models and the split contract: cuts, parameter counts, seeding, frozen BN, weight files."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hosfl_sim.config import ConfigError, ModelConfig
from hosfl_sim.models import (
    JoinedModel,
    SplitModel,
    build_split_model,
    cut_points,
    freeze_batchnorm,
    load_vision_weights,
    register_model,
    trainable_parameters,
)
from hosfl_sim.models import split as split_module
from hosfl_sim.models.resnet import resnet18_layers
from hosfl_sim.models.split import Stage

REPO = Path(__file__).resolve().parents[1]
DIGITS = {"x": np.zeros((2, 1, 8, 8), np.float32)}
CIFAR = {"x": np.zeros((2, 3, 32, 32), np.float32)}


def build(name: str, cut: str, width: int = 4, sample=CIFAR, num_classes: int = 10, seed: int = 0, weights=None):
    cfg = ModelConfig(name=name, cut=cut, width=width, weights=None if weights is None else str(weights))
    return build_split_model(cfg, sample, num_classes, seed)


def state(split: SplitModel) -> dict[str, torch.Tensor]:
    return {**split.client.state_dict(), **split.server.state_dict()}


def count(params) -> int:
    return sum(p.numel() for _, p in params)


@pytest.mark.parametrize(
    "name, sample",
    [("cnn", DIGITS), ("cnn", {"x": np.zeros((2, 64), np.float32)}), ("resnet18_cifar", CIFAR)],
)
def test_client_then_server_is_the_whole_model_at_every_cut(name, sample):
    x = torch.randn(5, *sample["x"].shape[1:], generator=torch.Generator().manual_seed(1))
    outputs = []
    for cut in cut_points(name):
        split = build(name, cut, sample=sample)
        split.client.eval(), split.server.eval()
        with torch.no_grad():
            y = split.server(split.client(x=x))
            assert torch.equal(y, JoinedModel(split).eval()(x=x))
        assert y.shape == (5, 10)
        outputs.append(y)
    # The cut moves the boundary, not the function: same seed, same network at every cut.
    for y in outputs[1:]:
        assert torch.equal(y, outputs[0])


def test_resnet18_client_at_layer2_has_the_reference_parameter_count():
    w = 64
    stem = 3 * w * 7 * 7  # conv1 7x7, no bias
    layer1 = 4 * (w * w * 3 * 3)  # two blocks of two 3x3 convs
    layer2 = (w * 2 * w * 9) + (2 * w * 2 * w * 9) + (w * 2 * w) + 2 * (2 * w * 2 * w * 9)  # block 0 with 1x1 proj
    assert stem + layer1 + layer2 == 681_152
    split = build("resnet18_imagenet", "layer2", width=w, sample={"x": np.zeros((1, 3, 224, 224), np.float32)})
    convs = [m for m in split.client.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.weight.numel() for c in convs) == 681_152 and all(c.bias is None for c in convs)
    freeze_batchnorm(split.client)
    assert count(trainable_parameters(split.client)) == 681_152
    # Client plus server is torchvision's ResNet-18 (11,689,512 parameters with a 1000-class fc).
    fc_diff = (1000 - 10) * (8 * w + 1)
    assert count(split.client.named_parameters()) + count(split.server.named_parameters()) + fc_diff == 11_689_512


def test_cut_points_move_the_boundary():
    x = torch.zeros(2, 3, 32, 32)
    expected = {  # CIFAR stem, width 4
        "layer1": ({"conv1", "bn1", "relu", "maxpool", "layer1"}, (2, 4, 32, 32)),
        "layer2": ({"conv1", "bn1", "relu", "maxpool", "layer1", "layer2"}, (2, 8, 16, 16)),
        "layer3": ({"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"}, (2, 16, 8, 8)),
    }
    assert cut_points("resnet18") == list(expected)
    totals = set()
    for cut, (client_names, shape) in expected.items():
        split = build("resnet18", cut)
        assert {n for n, _ in split.client.named_children()} == client_names
        assert split.client(x=x).shape == shape
        totals.add(count(split.client.named_parameters()) + count(split.server.named_parameters()))
    assert len(totals) == 1

    assert cut_points("cnn") == ["block1", "block2", "block3"]
    shapes = {"block1": (2, 4, 4, 4), "block2": (2, 8, 2, 2), "block3": (2, 16, 2, 2)}
    client_params = {"block1": 1 * 4 * 9 + 4, "block2": 40 + 4 * 8 * 9 + 8, "block3": 40 + 296 + 8 * 16 * 9 + 16}
    for cut, shape in shapes.items():
        split = build("cnn", cut, sample=DIGITS)
        assert split.client(x=torch.zeros(2, 1, 8, 8)).shape == shape
        assert count(trainable_parameters(split.client)) == client_params[cut]


def test_same_seed_same_parameters_in_any_process_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = (
        build("resnet18_cifar", "layer2"),
        build("resnet18_cifar", "layer2"),
        build("resnet18_cifar", "layer2", seed=1),
    )
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = state(a), state(b), state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layer1.0.conv1.weight"], sc["layer1.0.conv1.weight"])

    def digest(s: dict[str, torch.Tensor]) -> str:
        h = hashlib.sha256()
        for k in sorted(s):
            h.update(k.encode() + s[k].numpy().tobytes())
        return h.hexdigest()

    code = (
        "import numpy as np, torch, hashlib\n"
        "from hosfl_sim.config import ModelConfig\n"
        "from hosfl_sim.models import build_split_model\n"
        "torch.manual_seed(999); torch.rand(7)\n"  # another process, another RNG history
        "s = build_split_model(ModelConfig(name='resnet18_cifar', cut='layer2', width=4),"
        " {'x': np.zeros((2, 3, 32, 32), np.float32)}, 10, 0)\n"
        "d = {**s.client.state_dict(), **s.server.state_dict()}\n"
        "h = hashlib.sha256()\n"
        "for k in sorted(d): h.update(k.encode() + d[k].numpy().tobytes())\n"
        "print(h.hexdigest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == digest(sa)


def test_freeze_batchnorm_keeps_running_stats_and_eval_mode():
    split = build("resnet18_cifar", "layer2")
    freeze_batchnorm(split.client)
    bns = [m for m in split.client.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    names = [n for n, _ in trainable_parameters(split.client)]
    assert names == [n for n, p in split.client.named_parameters() if "bn" not in n and "downsample.1" not in n]
    stats = {k: v.clone() for k, v in split.client.state_dict().items() if "running" in k or "num_batches" in k}

    split.client.train()  # a caller switching to training must not bring batch statistics back
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g) * 3 + 1
    y_train = split.client(x=x)
    assert all(not m.training for m in bns)
    params = {n: p + 0.1 * torch.randn(p.shape, generator=g) for n, p in split.client.named_parameters()}
    torch.func.functional_call(split.client, params, kwargs={"x": x})  # a ZO probe
    now = split.client.state_dict()
    assert all(torch.equal(now[k], v) for k, v in stats.items())
    split.client.eval()
    assert torch.equal(split.client(x=x), y_train)

    # The server was not frozen: its BN still learns batch statistics.
    server_before = split.server.state_dict()["layer3.0.bn1.running_mean"].clone()
    split.server.train()
    split.server(y_train.detach())
    assert not torch.equal(split.server.state_dict()["layer3.0.bn1.running_mean"], server_before)


def torchvision_state(width: int, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-format ResNet-18 state dict with random values everywhere (stats included)."""
    g = torch.Generator().manual_seed(seed)
    model = Stage(resnet18_layers(3, num_classes, width, stem="imagenet"))
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = torch.rand(v.shape, generator=g) + 0.5  # positive: a valid running_var too
        else:
            v = torch.full_like(v, 17)
        out[k] = v.contiguous()
    return out


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_weights_file_maps_onto_client_and_server(tmp_path, fmt):
    saved = torchvision_state(width=4, num_classes=10, seed=3)
    path = tmp_path / f"resnet18.{fmt}"
    if fmt == "pt":
        torch.save({f"module.{k}": v for k, v in saved.items()}, path)  # as saved from DataParallel
    else:
        save_file(saved, str(path))
    # `resnet18` with weights takes the ImageNet stem.
    split = build("resnet18", "layer2", weights=path)
    assert split.client.conv1.weight.shape == (4, 3, 7, 7)
    loaded = state(split)
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert set(split.client.state_dict()) == {
        k for k in saved if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")
    }


def test_weights_with_another_head_keep_a_fresh_fc(tmp_path):
    saved = torchvision_state(width=4, num_classes=1000, seed=4)
    path = tmp_path / "imagenet.pth"
    torch.save(saved, path)
    fresh = build("resnet18_imagenet", "layer2", num_classes=10)
    split = build("resnet18_imagenet", "layer2", num_classes=10)
    assert load_vision_weights(split, path) == ["fc.bias", "fc.weight"]
    loaded = state(split)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved if not k.startswith("fc."))
    assert torch.equal(split.server.fc.weight, fresh.server.fc.weight) and split.server.fc.weight.shape == (10, 32)


def test_weights_that_do_not_fit_name_the_problem(tmp_path):
    saved = torchvision_state(width=4, num_classes=10, seed=5)
    saved["layer5.0.conv1.weight"] = saved.pop("layer4.1.conv2.weight")
    path = tmp_path / "bad.pt"
    torch.save(saved, path)
    with pytest.raises(ConfigError) as e:
        build("resnet18_imagenet", "layer2", weights=path)
    assert e.value.path == "task.model.weights"
    assert "missing keys: layer4.1.conv2.weight" in str(e.value) and "unexpected keys: layer5.0.conv1.weight" in str(
        e.value
    )

    good = tmp_path / "good.safetensors"
    save_file(torchvision_state(width=4, num_classes=10, seed=5), str(good))
    with pytest.raises(ConfigError, match=r"conv1.weight \(4, 3, 7, 7\) vs \(4, 3, 3, 3\).*stem"):
        build("resnet18_cifar", "layer2", weights=good)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        build("resnet18", "block1")
    assert e.value.path == "task.model.cut" and "layer1, layer2, layer3" in e.value.expected
    with pytest.raises(ConfigError) as e:
        build("cnn", "layer2", sample=DIGITS)
    assert e.value.path == "task.model.cut"
    with pytest.raises(ConfigError) as e:
        build("vgg11", "block1")
    assert e.value.path == "task.model.name" and "resnet18" in e.value.expected
    with pytest.raises(ConfigError) as e:
        build("resnet18", "layer2", weights=tmp_path / "absent.safetensors")
    assert e.value.path == "task.model.weights"
    with pytest.raises(ConfigError) as e:
        cut_points("vgg11")
    assert e.value.path == "task.model.name"


def test_registered_family_is_built_under_the_seed(monkeypatch):
    monkeypatch.setattr(split_module, "_REGISTRY", dict(split_module._REGISTRY))

    def builder(cfg, sample_features, num_classes, seed):
        return SplitModel(client=nn.Linear(3, 2), server=nn.Linear(2, num_classes), input_keys=("x",))

    register_model("toy", builder, matches=lambda name: name.startswith("toy/"))
    a = build_split_model(ModelConfig(name="toy/any", cut=2), {}, 4, seed=7)
    b = build_split_model(ModelConfig(name="toy", cut=2), {}, 4, seed=7)
    assert torch.equal(a.client.weight, b.client.weight) and a.server.out_features == 4
    assert cut_points("toy") == []


def test_the_cnn_max_pool_gives_nn_max_pool2d_outputs_and_gradients():
    """The channels-last pool of the CNN is a speed-up only: post-ReLU maps full of tied zeros included."""
    from hosfl_sim.models.cnn import MaxPool2d

    gen = torch.Generator().manual_seed(0)
    for shape, k in (((8, 16, 8, 8), 2), ((4, 8, 6, 10), (2, 1)), ((2, 3, 32, 32), 2)):
        x = torch.relu(torch.randn(*shape, generator=gen))
        ours, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out, expected = MaxPool2d(k)(ours), nn.MaxPool2d(k)(ref)
        assert torch.equal(out, expected) and out.is_contiguous()
        g = torch.randn(out.shape, generator=gen)
        out.backward(g)
        expected.backward(g)
        assert torch.equal(ours.grad, ref.grad)


def test_the_cnn_skips_its_head_pool_only_where_it_is_the_identity():
    """Small maps skip the adaptive pool (a speed-up only: same outputs and gradients); larger ones are pooled."""
    from hosfl_sim.models.cnn import cnn_layers

    gen = torch.Generator().manual_seed(0)
    for shape, head in (((1, 8, 8), (2, 2)), ((3, 32, 32), (4, 4)), ((3, 64, 64), (4, 4))):
        ours = nn.Sequential(cnn_layers(shape, 10, 4))
        assert isinstance(ours.pool, nn.AdaptiveAvgPool2d) == (shape[1] == 64)
        ref = copy.deepcopy(ours)
        ref.pool = nn.AdaptiveAvgPool2d(head)
        x = torch.randn(2, *shape, generator=gen)
        out, expected = ours(x), ref(x)
        assert torch.equal(out, expected)
        out.sum().backward()
        expected.sum().backward()
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)


def test_freeze_bn_affine_freezes_batchnorm_scale_and_shift_on_both_sides_only():
    from hosfl_sim.config import ModelConfig
    from hosfl_sim.models import build_split_model

    sample = {"x": np.zeros((1, 3, 32, 32), np.float32)}
    cfg = ModelConfig(name="resnet18_imagenet", cut="layer2", width=8, freeze_bn_affine=True)
    split = build_split_model(cfg, sample, num_classes=10, seed=0)
    for part in (split.client, split.server):
        frozen = {n for n, p in part.named_parameters() if not p.requires_grad}
        bn = {n for n, m in part.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        assert bn and frozen == {f"{m}.{w}" for m in bn for w in ("weight", "bias")}
    plain = build_split_model(ModelConfig(name="resnet18_imagenet", cut="layer2", width=8), sample, 10, seed=0)
    assert all(p.requires_grad for p in plain.client.parameters())
