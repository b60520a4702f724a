"""task.model.dtype: bfloat16 end to end on the CPU: every algorithm trains, and what travels is bfloat16 on the wire
(numpy has no bfloat16: a value travels as its raw bits, a uint16, 2 bytes, and the ledger prices it so)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.sfl import average_into, load_numpy, to_numpy
from hosfl_sim.algorithms.task import from_wire, to_wire
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

B, K, STEPS, ROUNDS, W = 16, 3, 2, 2, 8  # batch, clients per round, local steps, rounds, cnn width
ACT = W * 4 * 4  # cnn block1 on 8x8 digits: (W, 4, 4) per sample
D_C = W * 1 * 9 + W  # block1: conv 1 -> W, 3x3, bias
T = 12  # tokens per text (padded to max_length)


def _run(tmp_path, name: str, dtype: str) -> pd.DataFrame:
    algorithm = {"name": name, "local_steps": STEPS}
    model = {"name": "cnn", "cut": "block1", "width": W, "dtype": dtype}
    sc = tiny_scenario(
        task={"dataset": {"name": "digits"}, "model": model},
        algorithms=[algorithm],
        federation={"num_clients": 6, "clients_per_round": K, "rounds": ROUNDS, "batch_size": B, "eval_every": 1},
    )
    out = tmp_path / f"{name}_{dtype}"
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(out)
    assert summary.status == "completed"
    return pd.read_parquet(summary.run_dir / "rounds.parquet")


def test_the_wire_carries_bfloat16_bits_exactly():
    t = torch.randn(4, 5).to(torch.bfloat16)
    t[0, :4] = torch.tensor([float("inf"), -0.0, float("nan"), 1e-40])  # odd values keep their bits too
    wire = to_wire(t)
    assert wire.dtype == np.uint16 and wire.shape == (4, 5) and wire.nbytes == 2 * t.numel()
    wire.flags.writeable = False  # as an object store hands it over
    back = from_wire(wire, "cpu", torch.bfloat16)
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.int16), t.view(torch.int16))
    torch.testing.assert_close(from_wire(wire, "cpu", torch.float32), t.float(), rtol=0, atol=0, equal_nan=True)
    x = torch.randn(3, 2)  # float32 travels as it always did
    assert to_wire(x).dtype == np.float32 and torch.equal(from_wire(to_wire(x), "cpu", torch.float32), x)


def test_weights_average_in_float64_and_stay_bfloat16():
    module = nn.Linear(3, 2).to(torch.bfloat16)
    states = [to_numpy(nn.Linear(3, 2).to(torch.bfloat16).state_dict()) for _ in range(2)]
    assert all(v.dtype == np.uint16 for s in states for v in s.values())
    average_into(module, states, np.array([1.0, 3.0]))
    for k, v in module.state_dict().items():
        wide = [from_wire(s[k], "cpu", torch.float64) for s in states]
        assert v.dtype == torch.bfloat16 and torch.equal(v, (0.25 * wide[0] + 0.75 * wide[1]).to(torch.bfloat16))
    load_numpy(module, states[0])
    assert all(np.array_equal(to_wire(v), states[0][k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_trains_in_bfloat16(tmp_path, name):
    rounds = _run(tmp_path, name, "bfloat16")
    assert len(rounds) == ROUNDS
    assert np.isfinite(rounds["train_loss"]).all() and np.isfinite(rounds["test_loss"]).all(), rounds


def test_bfloat16_halves_what_travels(tmp_path):
    bf16, fp32 = _run(tmp_path, "sfl", "bfloat16"), _run(tmp_path, "sfl", "float32")
    per_round = K * STEPS * B * ACT
    assert (fp32["bytes_act_up"].diff().fillna(fp32["bytes_act_up"]) == per_round * 4).all()
    assert (bf16["bytes_act_up"].diff().fillna(bf16["bytes_act_up"]) == per_round * 2).all()
    assert (2 * bf16["bytes_act_up"] == fp32["bytes_act_up"]).all()
    assert (2 * bf16["bytes_grad_down"] == fp32["bytes_grad_down"]).all()
    assert (bf16["bytes_model_up"] == np.arange(1, ROUNDS + 1) * K * D_C * 2).all()
    assert (bf16["bytes_labels_up"] == fp32["bytes_labels_up"]).all()  # int64 labels are what they were


@pytest.mark.parametrize("name", ["sfl", "hosfl"])
def test_a_bfloat16_transformer_trains_and_sends_half(tmp_path, name):
    from hosfl_sim.config import to_dict
    from tests.test_language import tiny_cfg
    from tests.test_language_runs import _keyword_task

    data, tokenizer, vocab = _keyword_task(tmp_path)
    out = {}
    for dtype in ("bfloat16", "float32"):
        model = to_dict(tiny_cfg("opt", vocab, dtype=dtype, overrides={"tokenizer": tokenizer, "padding_side": "left"}))
        algorithm = {"name": name, **({"perturbations": 2} if name == "hosfl" else {})}
        sc = {
            "task": {
                "dataset": {"name": "files", "path": data, "text_column": "sentence", "max_length": T},
                "model": model,
            },
            "algorithms": [algorithm],
            "federation": {
                "num_clients": 6,
                "clients_per_round": K,
                "rounds": ROUNDS,
                "batch_size": B,
                "eval_every": 1,
            },
            "runtime": {"backend": "local", "num_workers": 1},
        }
        (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / dtype)
        out[dtype] = pd.read_parquet(summary.run_dir / "rounds.parquet")
    bf16, fp32 = out["bfloat16"], out["float32"]
    assert np.isfinite(bf16["train_loss"]).all() and np.isfinite(bf16["test_loss"]).all(), bf16
    mask = np.arange(1, ROUNDS + 1) * K * B * T * 8  # the int64 attention mask travels with the activations
    assert (bf16["bytes_act_up"] > mask).all() and (
        fp32["bytes_act_up"] - mask == 2 * (bf16["bytes_act_up"] - mask)
    ).all()
    assert (2 * bf16["bytes_grad_down"] == fp32["bytes_grad_down"]).all()
