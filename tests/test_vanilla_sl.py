"""Vanilla split learning: the ledger and the sequential clock in closed form, the round policies acting on the
handover (the next client starts from the last part handed over), both backends and a resume to the same numbers,
and learning on digits.

A constant profile (every client computes at F FLOP/s, uplink U and downlink D bit/s, latency L s; the server at
S FLOP/s), N = K clients: a client's turn is the same closed form for every client, and the turns follow each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms.task import count_flops
from hosfl_sim.algorithms.vanilla_sl import VanillaSLClient, VanillaSLServer
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario

F, U, D, L, S = 2e8, 4e6, 8e6, 0.01, 1e9  # client FLOP/s, up/down bit/s, latency s, server FLOP/s
K, B, W, STEPS = 3, 16, 8, 2  # clients, batch, CNN width, local steps
ACT = W * 4 * 4  # values per sample after block1 on 8x8 digits
D_C = W * 9 + W  # client part: block1 conv 1 -> W, 3x3, with bias
SYSTEM = {
    "compute_flops": {"kind": "constant", "value": F},
    "uplink_bps": {"kind": "constant", "value": U},
    "downlink_bps": {"kind": "constant", "value": D},
    "latency_s": {"kind": "constant", "value": L},
    "server_flops": S,
}
WALL = ["wall_time_s", "wall_compute_s", "memory_overhead_s"]  # host timings: the only columns that may differ
ALGO = {"name": "vanilla_sl", "local_steps": STEPS}
LOCAL = {"backend": "local", "num_workers": 2}


def scenario(system: dict | None = None, runtime: dict | None = None, **fed) -> dict:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 5, **fed}
    return tiny_scenario(
        algorithms=[ALGO], federation=federation, system={**SYSTEM, **(system or {})}, runtime=runtime or LOCAL
    )


def run(out: Path, sc: dict) -> tuple[pd.DataFrame, pd.DataFrame, Engine]:
    engine = Engine(load_scenario(sc), progress=False)
    try:
        (summary,) = engine.run_all(out)
    finally:
        if sc["runtime"]["backend"] == "ray":  # the local backend's roles stay readable
            engine.close()
    assert summary.status == "completed"
    tables = [pd.read_parquet(summary.run_dir / f"{name}.parquet") for name in ("rounds", "clients")]
    rounds, clients = (df.drop(columns=[c for c in WALL if c in df]) for df in tables)
    return rounds, clients, engine


def up(nbytes: float) -> float:
    return nbytes * 8 / U + L


def down(nbytes: float) -> float:
    return nbytes * 8 / D + L


@pytest.fixture(scope="module")
def turn() -> float:
    """One client's turn on the constant profile: the part down, STEPS split steps, the part up."""
    sc = load_scenario(scenario())
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    fc, fs = count_flops(split.client, x=x), count_flops(split.server, split.client(x=x))
    step = fc / F + up(4 * B * ACT) + up(8 * B) + 3 * fs / S + down(4 * B * ACT) + 2 * fc / F
    return down(4 * D_C) + STEPS * step + up(4 * D_C)


def test_ledger_and_clock_are_sfls_bytes_with_the_clients_in_turn(tmp_path, turn):
    rounds, clients, _ = run(tmp_path, scenario())
    final = rounds.iloc[-1]
    per_round = {  # cumulative bytes after 2 rounds: K turns a round
        "bytes_model_down": K * 4 * D_C,  # the part handed over (the first client: the server's copy)
        "bytes_model_up": K * 4 * D_C,  # each client's part, to the server that relays it
        "bytes_act_up": K * STEPS * 4 * B * ACT,
        "bytes_labels_up": K * STEPS * 8 * B,
        "bytes_grad_down": K * STEPS * 4 * B * ACT,
    }
    for column, value in per_round.items():
        assert final[column] == 2 * value, column
    assert final["bytes_total"] == 2 * sum(per_round.values())
    # one turn after another: the round lasts K turns, and the server's barrier holds everyone to its end
    assert rounds["round_duration_s"].tolist() == pytest.approx([K * turn] * 2, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([K * turn] * 2 * K, rel=1e-12)
    assert (clients["status"] == "completed").all() and (clients["samples"] == STEPS * B).all()
    assert rounds["samples_seen"].tolist() == [K * STEPS * B, 2 * K * STEPS * B]


def chain_by_hand(engine: Engine, clients: list[int]) -> dict[str, torch.Tensor]:
    """The client part after `clients` take their turns in round 1, from the server's initial copy."""
    spec = engine.spec(0, 0)
    client, server = VanillaSLClient(spec), VanillaSLServer(spec)
    state, _ = server.global_client()
    for cid in clients:
        client.begin(cid, state)
        for step in range(STEPS):
            upload, _ = client.forward(cid, 1, step)
            g, _ = server.train_step(upload)
            client.backward(cid, g)
        state = client.upload(cid)
    server.accept(state)
    return server.client.state_dict()


def test_a_client_past_the_deadline_hands_nothing_over(tmp_path, turn):
    """The deadline falls in the third turn: the first two clients hand over, the third is dropped and the server
    keeps the second one's part."""
    rounds, clients, engine = run(tmp_path, scenario({"policy": "deadline", "deadline_s": 2.5 * turn}, rounds=1))
    assert clients["status"].tolist() == ["completed"] * 2 + ["straggler_dropped"]
    assert rounds["num_completed"].tolist() == [2] and rounds["samples_seen"].tolist() == [2 * STEPS * B]
    assert rounds["round_duration_s"].tolist() == pytest.approx([2 * turn], rel=1e-12)
    assert clients["finish_s"].iloc[2] == pytest.approx(3 * turn, rel=1e-12)  # it did its turn, too late
    assert (clients["bytes_up"] > 0).all()
    order = clients["client_id"].tolist()
    result = engine.backend.server_role.client.state_dict()
    kept, everyone = chain_by_hand(engine, order[:2]), chain_by_hand(engine, order)
    for name, value in result.items():
        torch.testing.assert_close(value, kept[name], msg=name)
    assert any(not torch.allclose(result[n], everyone[n]) for n in result)


def test_failed_clients_send_nothing_up_and_the_next_turn_starts_at_once(tmp_path, turn):
    rounds, clients, _ = run(tmp_path, scenario({"availability": {"mid_round_dropout": 0.5}}, num_clients=6, rounds=4))
    failed, done = clients[clients["status"] == "failed"], clients[clients["status"] == "completed"]
    assert len(failed) > 0 and len(done) > 0
    assert (failed["bytes_up"] == 0).all() and (failed["compute_s"] == 0).all()
    assert (failed["bytes_down"] == 4 * D_C).all()  # the part came down, then the client vanished
    assert (done["samples"] == STEPS * B).all()
    for rnd, group in clients.groupby("round"):  # a failed client costs the chain nothing: a turn per kept client
        n = int((group["status"] == "completed").sum())
        row = rounds[rounds["round"] == rnd].iloc[0]
        assert row["num_completed"] == n and row["round_duration_s"] == pytest.approx(n * turn, rel=1e-12)
    assert rounds["samples_seen"].iloc[-1] == STEPS * B * len(done)


def test_overcommit_keeps_the_first_k_handovers(tmp_path, turn):
    rounds, clients, _ = run(tmp_path, scenario({"policy": "overcommit", "overcommit": 1.5}, num_clients=5))
    assert (rounds["num_sampled"] == 5).all() and (rounds["num_completed"] == K).all()  # ceil(1.5 x 3) sampled
    for _, group in clients.groupby("round"):
        assert group["status"].tolist() == ["completed"] * K + ["straggler_dropped"] * 2  # in sampling order
    assert rounds["round_duration_s"].tolist() == pytest.approx([K * turn] * 2, rel=1e-12)


def test_local_and_ray_backends_give_the_same_tables(tmp_path, ray_session):
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "eval_every": 3}
    system = {"availability": {"mid_round_dropout": 0.3}}
    local = run(tmp_path / "local", scenario(system, LOCAL, **fed))
    ray = run(tmp_path / "ray", scenario(system, {"backend": "ray", "num_workers": 2}, **fed))
    pd.testing.assert_frame_equal(ray[0], local[0], check_exact=True)
    pd.testing.assert_frame_equal(ray[1], local[1], check_exact=True)
    assert (local[1]["status"] == "failed").any() and local[0]["test_acc"].notna().any()


def test_a_resumed_run_gives_the_uninterrupted_numbers(tmp_path):
    class StopInRound3(Engine):  # as a Ctrl-C during round 3 would
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    sc = load_scenario(scenario(num_clients=8, rounds=6, eval_every=2))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "out"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for name in ("rounds", "clients"):
        got, want = (pd.read_parquet(d / f"{name}.parquet") for d in (out, reference.run_dir))
        pd.testing.assert_frame_equal(got.drop(columns=WALL, errors="ignore"), want.drop(columns=WALL, errors="ignore"))


def test_learns_on_digits(tmp_path):
    """Budget: digits (10 classes, chance 0.10), 20 clients, 5 per round in turn, 5 local steps of batch 32,
    15 rounds (12,000 samples), CNN width 16 cut after block1."""
    fed = {"num_clients": 20, "clients_per_round": 5, "rounds": 15, "batch_size": 32, "eval_every": 15}
    sc = tiny_scenario(algorithms=[{"name": "vanilla_sl", "local_steps": 5}], federation=fed)
    sc["task"]["model"]["width"] = 16
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path)
    assert summary.status == "completed" and summary.final["test_acc"] > 0.85  # 0.98 here
    assert np.isfinite(summary.final["train_loss"])


def test_local_epochs_pass_once_over_each_partition(tmp_path):
    """As SFL's: each turn is one pass over the client's partition (`epoch_batches` steps)."""
    sc = scenario(num_clients=40, clients_per_round=2)
    sc["algorithms"] = [{"name": "vanilla_sl", "local_epochs": 1}]
    rounds, clients, engine = run(tmp_path, sc)
    sizes = engine.spec(0, 0).partition.sizes()
    every = [sizes[c] - (sizes[c] % B == 1) for c in clients["client_id"]]  # a last batch of one is left out
    assert clients["samples"].tolist() == every
    assert (clients["status"] == "completed").all()
