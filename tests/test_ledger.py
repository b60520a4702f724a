"""Ledger totals against closed forms, from real runs on the in-process backend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hosfl_sim.comm import DOWN, UP, Ledger
from hosfl_sim.comm.messages import Activations, Scalars, Weights
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

P, B, ROUNDS = 4, 16, 3


def _run(tmp_path, algorithm: dict, width: int = 8, n: int = 3, k: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    sc = tiny_scenario(
        algorithms=[algorithm],
        task={"dataset": {"name": "digits"}, "model": {"name": "cnn", "cut": "block1", "width": width}},
        federation={"num_clients": n, "clients_per_round": k, "rounds": ROUNDS, "batch_size": B, "eval_every": 5},
    )
    out = tmp_path / f"{algorithm['name']}_{width}_{n}"
    Engine(load_scenario(sc), progress=False).run_all(out)
    (run,) = out.iterdir()
    return pd.read_parquet(run / "rounds.parquet"), pd.read_parquet(run / "clients.parquet")


def _act_values(width: int) -> int:
    return width * 4 * 4  # cnn block1 on 8x8 digits: (width, 4, 4) per sample


def test_hosfl_aggregation_bytes_depend_on_p_and_k_not_on_dc(tmp_path):
    k = 3
    last = {}
    for width in (4, 16):
        rounds, _ = _run(tmp_path, {"name": "hosfl", "perturbations": P}, width=width, n=k, k=k)
        last[width] = rounds.iloc[-1]
        per_round = rounds[[c for c in rounds if c.startswith("bytes_")]].diff().iloc[1:]
        assert (per_round["bytes_seed_down"] == k * P * 8).all()
        assert (per_round["bytes_scalar_up"] == k * P * 4).all()
        assert (per_round["bytes_scalar_down"] == k * P * 4).all()
        assert (per_round["bytes_act_up"] == k * B * _act_values(width) * 4).all()
        assert (per_round["bytes_grad_down"] == per_round["bytes_act_up"]).all()
        assert (per_round["bytes_labels_up"] == k * B * 8).all()
        assert (per_round["bytes_model_up"] == 0).all() and (per_round["bytes_model_down"] == 0).all()
    for col in ("bytes_seed_down", "bytes_scalar_up", "bytes_scalar_down"):
        assert last[4][col] == last[16][col] == ROUNDS * k * P * (8 if "seed" in col else 4)


def test_sfl_model_bytes_scale_with_client_parameters(tmp_path):
    k = 3
    for width in (4, 16):
        rounds, _ = _run(tmp_path, {"name": "sfl"}, width=width, n=k, k=k)
        d_c = width * 1 * 3 * 3 + width  # conv 3x3 weights + bias of block1
        final = rounds.iloc[-1]
        assert final["bytes_model_up"] == final["bytes_model_down"] == ROUNDS * k * d_c * 4
        assert final["bytes_act_up"] == final["bytes_grad_down"] == ROUNDS * k * B * _act_values(width) * 4
        assert final["bytes_scalar_up"] == final["bytes_seed_down"] == 0


def test_hosfl_catch_up_replay_is_charged(tmp_path):
    """A client last seen at round t has downloaded every record up to t: P seeds and P scalars each."""
    rounds, clients = _run(tmp_path, {"name": "hosfl", "perturbations": P}, n=8, k=3)
    last_round = clients.groupby("client_id")["round"].max()
    final = rounds.iloc[-1]
    assert final["bytes_seed_down"] == P * 8 * last_round.sum()
    assert final["bytes_scalar_down"] == P * 4 * last_round.sum()
    assert final["bytes_scalar_up"] == ROUNDS * 3 * P * 4
    # per-client rows add up to the round totals
    totals = clients.groupby("round")[["bytes_up", "bytes_down"]].sum()
    ups = rounds.set_index("round")[[f"bytes_{c}" for c in ("act_up", "labels_up", "scalar_up")]].sum(axis=1)
    assert np.array_equal(totals["bytes_up"].cumsum().to_numpy(), ups.to_numpy())


def test_sfl_zo_sends_two_activations_per_perturbation(tmp_path):
    k = 3
    rounds, _ = _run(tmp_path, {"name": "sfl_zo", "perturbations": P}, n=k, k=k)
    final = rounds.iloc[-1]
    assert final["bytes_act_up"] == ROUNDS * k * 2 * P * B * _act_values(8) * 4
    assert final["bytes_grad_down"] == 0 and final["bytes_model_up"] == 0
    assert final["bytes_scalar_down"] == ROUNDS * k * P * 4


def test_ledger_prices_messages_and_rejects_unknown_categories():
    ledger = Ledger()
    with pytest.raises(KeyError, match="act_down"):
        ledger.charge(0, DOWN, Activations.of(np.zeros(3, np.float32)))  # activations only travel up
    sent = Activations.of(np.zeros((2, 3), np.float32), {"mask": np.zeros(2, np.int64)}).times(2)
    assert ledger.charge(1, UP, sent) == 2 * (6 * 4 + 2 * 8)
    assert ledger.totals["act_up"] == 80 and ledger.client_round_bytes(1) == (80, 0)
    # a message built from shapes is priced as the arrays it stands for; joined payloads add up
    assert Ledger.price(Scalars.array((5,), np.float32)) == Ledger.price(Scalars.of(np.ones(5, np.float32))) == 20
    weights = Weights.of({"w": np.zeros((4, 4), np.float32)}) + Weights.of([np.zeros(3, np.float16)])
    assert Ledger.price(weights) == 64 + 6
    with pytest.raises(TypeError, match="Weights"):
        _ = weights + Scalars.of(np.zeros(1, np.float32))
