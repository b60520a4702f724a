"""Client memory: exact static bytes, the meter on known allocations, and the four modes' ordering."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from hosfl_sim.cli import main
from hosfl_sim.config import ModelConfig, load_scenario
from hosfl_sim.memory import MemoryMeter, chain, optimizer_state_bytes, static_bytes
from hosfl_sim.memory_modes import (
    cut_gradient,
    first_order_mode,
    hosfl_mode,
    inference_mode,
    measure_mode,
    scenario_spec,
    warm_up,
)
from hosfl_sim.models import build_split_model, register_model
from hosfl_sim.models.split import split_layers
from tests.conftest import tiny_scenario

F32 = 4
MLP_CUTS = [f"layer{i}" for i in range(1, 9)]
MLP_BATCH, MLP_ACT = 256, 256 * 32 * 4  # bytes of one (B, width) float32 activation


def build_mlp(cfg: ModelConfig, sample: dict, num_classes: int, seed: int):
    """Eight Linear+ReLU layers of width `cfg.width`: a client whose depth is its cut."""
    layers = OrderedDict(flatten=nn.Flatten())
    fan_in = int(np.prod(sample["x"].shape[1:]))
    for name in MLP_CUTS:
        layers[name] = nn.Sequential(nn.Linear(fan_in, cfg.width), nn.ReLU())  # (B, width)
        fan_in = cfg.width
    layers["fc"] = nn.Linear(fan_in, num_classes)
    return split_layers(layers, cfg.cut)


register_model("memtest_mlp", build_mlp, MLP_CUTS)


# ----------------------------------------------------------------------------- static bytes


def stack() -> nn.Sequential:
    return nn.Sequential(nn.Linear(7, 11), nn.BatchNorm1d(11), nn.ReLU(), nn.Linear(11, 3, bias=False))


def test_static_bytes_of_a_linear_stack_match_the_closed_form():
    model = stack()
    n_params = 7 * 11 + 11 + 2 * 11 + 11 * 3
    buffers = 2 * 11 * F32 + 8  # running mean and var, num_batches_tracked (int64)
    adamw = torch.optim.AdamW(model.parameters())
    expected_state = 2 * n_params * F32 + 5 * F32  # exp_avg + exp_avg_sq per param, a float32 step per tensor
    s = static_bytes(model, adamw, grads=True)
    assert s == {
        "params": n_params * F32,
        "buffers": buffers,
        "grads": n_params * F32,
        "optimizer_state": expected_state,
        "total": 2 * n_params * F32 + buffers + expected_state,
    }
    assert static_bytes(model)["grads"] == 0 and static_bytes(model)["optimizer_state"] == 0

    # The predicted state (no step yet) is what the optimizer really allocates at its first step.
    model(torch.randn(5, 7)).sum().backward()
    adamw.step()
    assert optimizer_state_bytes(adamw) == expected_state


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_state_is_the_momentum_buffer_or_nothing(momentum):
    model = stack()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    params = sum(p.numel() for p in model.parameters()) * F32
    expected = params if momentum else 0
    assert optimizer_state_bytes(sgd) == expected
    model(torch.randn(5, 7)).sum().backward()
    sgd.step()
    assert optimizer_state_bytes(sgd) == expected


def test_grads_count_only_trainable_parameters_and_shared_ones_once():
    model = stack()
    model[0].weight.requires_grad_(False)
    tied = nn.Sequential(model, nn.Linear(11, 3, bias=False))
    tied[1].weight = model[3].weight  # the same Parameter twice
    s = static_bytes(tied, grads=True)
    n_all = 7 * 11 + 11 + 2 * 11 + 3 * 11
    assert s["params"] == n_all * F32
    assert s["grads"] == (n_all - 7 * 11) * F32


def test_static_bytes_of_the_project_cnn_match_its_architecture():
    width, cut = 8, "block2"
    split = build_split_model(ModelConfig(name="cnn", cut=cut, width=width), {"x": np.zeros((1, 1, 8, 8))}, 10, 0)
    conv = lambda cin, cout: cout * cin * 9 + cout  # noqa: E731  (3x3 kernel + bias)
    client = conv(1, width) + conv(width, 2 * width)
    # server: block3 conv, hidden Linear(4w * 2 * 2 -> 8w), fc Linear(8w -> 10); 8x8 digits end at 2x2
    server = conv(2 * width, 4 * width) + (16 * width * 8 * width + 8 * width) + (8 * width * 10 + 10)
    assert static_bytes(split.client)["params"] == client * F32
    assert static_bytes(split.server)["params"] == server * F32
    opt = torch.optim.AdamW(split.client.parameters())
    assert static_bytes(split.client, opt, grads=True)["optimizer_state"] == 2 * client * F32 + 4 * F32


# ----------------------------------------------------------------------------- the meter


def test_cpu_meter_measures_a_known_allocation_exactly():
    meter = MemoryMeter("cpu")
    with meter.measure() as m:
        x = torch.empty(1_000_000)  # 4 MB, kept
        y = torch.ones(250_000)  # 1 MB, freed inside the block
        z = y * 2
        del y, z
    assert 6_000_000 <= m.peak_bytes <= 6_000_000 + 64  # + the scalar 2 as a tensor
    assert m.retained_bytes == 4_000_000
    assert meter.overhead()["measurements"] == 1

    # A free of a block from before the block is ignored, unless `after=` names its measurement.
    with meter.measure() as plain:
        x2 = x.clone()
        del x2
    with meter.measure(after=m) as freeing:
        del x
    assert (plain.peak_bytes, plain.retained_bytes) == (4_000_000, 0)
    assert (freeing.peak_bytes, freeing.retained_bytes) == (0, -4_000_000)


def test_disabled_meter_times_but_does_not_measure():
    meter = MemoryMeter("cpu", enabled=False)
    with meter.measure() as m:
        torch.empty(1000)
    assert not m.measured and m.peak_bytes is None and m.columns()["mem_peak_bytes"] is None
    with meter.measure(enabled=True) as m:
        x = torch.empty(1000)
    assert m.peak_bytes == 4000 and x.numel() == 1000


def test_measurements_do_not_nest():
    meter = MemoryMeter("cpu")
    with meter.measure(), pytest.raises(RuntimeError, match="nest"):
        with meter.measure():
            pass


def test_chain_composes_blocks_run_in_sequence():
    meter = MemoryMeter("cpu")
    with meter.measure() as forward:
        keep = [torch.empty(250_000)]  # 1 MB held into the next block
    with meter.measure(after=forward) as backward:
        keep.append(torch.empty(500_000))  # 2 MB on top
        keep.pop(0)
    both = chain(forward, backward)
    assert (both.peak_bytes, both.retained_bytes) == (3_000_000, 2_000_000)


# ----------------------------------------------------------------------------- the modes


def digits_spec(cut: str = "block1", batch: int = 32, device: str = "cpu", model: str = "cnn", width: int = 8):
    sc = tiny_scenario(
        task={"dataset": {"name": "digits"}, "model": {"name": model, "cut": cut, "width": width}},
        federation={"num_clients": 4, "clients_per_round": 2, "batch_size": batch},
    )
    return scenario_spec(load_scenario(sc), device=device)


def measured(spec, meter: MemoryMeter) -> dict[str, dict]:
    warm_up(spec)
    g = cut_gradient(spec, int(np.argmax(spec.partition.sizes())))
    modes = {
        "hosfl_adamw": hosfl_mode(spec, "adamw", "inplace", g),
        "hosfl_functional": hosfl_mode(spec, "sgd", "functional", g),
        "hosfl": hosfl_mode(spec, "sgd", "inplace", g),
        "first_order": first_order_mode(spec, "adamw", g),
        "inference": inference_mode(spec),
    }
    rows = {k: measure_mode(m, meter) for k, m in modes.items()}
    for r in rows.values():
        r["a_bytes"] = g.nbytes  # the smashed data (float32, like g)
    return rows


@pytest.fixture(scope="module")
def cpu_rows():
    meter = MemoryMeter("cpu")
    cases = [("block1", 8), ("block1", 32), ("block3", 32)]
    return {(cut, b): measured(digits_spec(cut, b), meter) for cut, b in cases}


@pytest.fixture(scope="module")
def mlp_rows():
    meter = MemoryMeter("cpu")
    # Batch 256, width 32: the activations, not the weights, dominate a step.
    specs = {cut: digits_spec(cut, MLP_BATCH, model="memtest_mlp", width=32) for cut in ("layer2", "layer8")}
    return {cut: measured(spec, meter) for cut, spec in specs.items()}


def test_what_a_step_leaves_allocated_is_its_static_state(cpu_rows):
    rows = cpu_rows["block3", 32]
    fo, ho = rows["first_order"], rows["hosfl_adamw"]
    assert fo["retained"] == fo["grads"] + fo["optimizer_state"] > 0  # .grad and AdamW state, nothing else
    assert ho["grads"] == 0 and ho["retained"] == ho["optimizer_state"] > 0  # AdamW state only
    assert rows["hosfl"]["retained"] == rows["inference"]["retained"] == 0


def test_first_order_working_memory_grows_with_batch_and_depth(cpu_rows, mlp_rows):
    small, big = (cpu_rows[k]["first_order"]["working"] for k in [("block1", 8), ("block1", 32)])
    assert big > 3 * small  # activations held for backward scale with the batch
    # ...and with every layer before the cut (each Linear+ReLU keeps its (B, width) output for backward).
    shallow, deep = mlp_rows["layer2"]["first_order"]["working"], mlp_rows["layer8"]["first_order"]["working"]
    assert deep - shallow >= 4 * MLP_ACT  # six more layers; part of it is already freed at the peak


def test_hosfl_client_needs_about_what_inference_needs(cpu_rows, mlp_rows):
    for rows in [*cpu_rows.values(), *mlp_rows.values()]:
        ho, inf, a = rows["hosfl"]["working"], rows["inference"]["working"], rows["hosfl"]["a_bytes"]
        assert inf <= ho
        # On top of one forward's transient memory the probe holds only cut-sized buffers (the anchor a,
        # g and the last difference, the last two in float64): nothing per layer, whatever the depth.
        assert ho - inf <= 6 * a
        functional = rows["hosfl_functional"]["working"]
        assert functional - ho <= rows["hosfl"]["params"]  # out-of-place probes add one copy of the weights
    # The margin does not grow with depth, while the first-order client's excess does.
    excess = {
        mode: {cut: rows[mode]["working"] - rows["inference"]["working"] for cut, rows in mlp_rows.items()}
        for mode in ("hosfl", "first_order")
    }
    assert excess["hosfl"]["layer8"] == excess["hosfl"]["layer2"]
    assert excess["first_order"]["layer8"] - excess["first_order"]["layer2"] >= 4 * MLP_ACT


def test_memory_command_prints_the_table_and_draws_the_chart(tmp_path, capsys):
    code = main(["memory", "quickstart", "task.model.width=4", "federation.batch_size=8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "HO-SFL client · AdamW · inplace probes" in out and "inference (client part)" in out
    assert "local-loss client (+ aux head)" in out
    for name in ("memory_modes.png", "memory_modes.pdf", "memory_modes.csv"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_meter_and_mode_ordering():
    meter = MemoryMeter("cuda")
    with meter.measure() as m:
        x = torch.empty(1_000_000, device="cuda")
    assert 4_000_000 <= m.peak_bytes < 4_000_000 + 4096  # the caching allocator rounds to 512 B blocks
    assert m.absolute_peak_bytes == m.entry_bytes + m.peak_bytes and x.is_cuda
    small, big = (measured(digits_spec("block3", b, "cuda"), meter) for b in (8, 32))
    assert big["first_order"]["working"] > small["first_order"]["working"]
    mlp = {cut: measured(digits_spec(cut, MLP_BATCH, "cuda", "memtest_mlp", 32), meter) for cut in ("layer2", "layer8")}
    for rows in (small, big, *mlp.values()):
        ho, inf = rows["hosfl"]["working"], rows["inference"]["working"]
        x_bytes = MLP_BATCH * 64 * F32  # on CUDA the probes also keep the (B, 1, 8, 8) input batch
        assert inf <= ho <= inf + 6 * rows["hosfl"]["a_bytes"] + x_bytes + 64 * 1024
        fo = rows["first_order"]  # blocks round up to 512 B; AdamW's step counters stay on the CPU
        assert abs(fo["retained"] - (fo["grads"] + fo["optimizer_state"])) <= 32 * 1024
    excess = {cut: rows["first_order"]["working"] - rows["hosfl"]["working"] for cut, rows in mlp.items()}
    assert excess["layer8"] - excess["layer2"] >= 4 * MLP_ACT


def test_the_local_loss_client_holds_its_aux_head_besides_the_client_part():
    """Local-loss SL and CSE-FSL: the client keeps a first-order client part and an aux head with their gradients
    and optimizer states (exact), and never holds a cut gradient: what it measures is its own forward and backward."""
    from hosfl_sim.memory_modes import local_loss_mode

    spec = digits_spec("block1", 32)
    warm_up(spec)
    g = cut_gradient(spec, int(np.argmax(spec.partition.sizes())))
    meter = MemoryMeter("cpu")
    local, first = (
        measure_mode(m, meter) for m in (local_loss_mode(spec, "adamw"), first_order_mode(spec, "adamw", g))
    )
    split = spec.build_model()
    head_params = (split.client(x=torch.zeros(1, 1, 8, 8)).numel() + 1) * spec.num_classes * F32  # linear head
    assert local["params"] - first["params"] == local["grads"] - first["grads"] == head_params
    # AdamW: two moments per value and a float32 step count per tensor (the head's weight and bias)
    assert local["optimizer_state"] - first["optimizer_state"] == 2 * head_params + 2 * F32
    assert local["working"] > 0 and local["measured_peak"] >= local["grads"] + local["optimizer_state"]


def test_the_heron_and_hosl_clients_hold_no_gradient_and_little_above_inference():
    """HERON-SFL: the local-loss client's part and aux head with the same optimizer state (exact), but no gradients,
    and forward-only: above inference it holds a (kept for the upload) and the head's logits, under 2 a. HOSL: no aux
    head, no gradient; above inference it holds the P perturbed activations it uploads with a: at most (P + 1) a."""
    from hosfl_sim.memory_modes import heron_mode, hosl_mode, local_loss_mode

    spec = digits_spec("block1", 32)
    warm_up(spec)
    a = cut_gradient(spec, int(np.argmax(spec.partition.sizes()))).nbytes  # the smashed data's bytes (float32)
    meter = MemoryMeter("cpu")
    heron, local, hosl, inference = (
        measure_mode(m, meter)
        for m in (
            heron_mode(spec, "adamw", "inplace"),
            local_loss_mode(spec, "adamw"),
            hosl_mode(spec, "sgd", "inplace"),
            inference_mode(spec),
        )
    )
    assert heron["grads"] == hosl["grads"] == 0 and heron["retained"] == heron["optimizer_state"]
    assert (heron["params"], heron["optimizer_state"]) == (local["params"], local["optimizer_state"])
    assert inference["working"] <= heron["working"] <= inference["working"] + 2 * a < local["working"]
    P = spec.algorithm.perturbations
    assert hosl["optimizer_state"] == 0 and hosl["params"] == inference["params"]
    assert inference["working"] <= hosl["working"] <= inference["working"] + (P + 1) * a
