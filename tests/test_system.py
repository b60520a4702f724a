"""The scenario engine: simulated round durations against closed forms, and the round policies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms.task import count_flops
from hosfl_sim.config import load_scenario
from hosfl_sim.config.schema import SystemConfig
from hosfl_sim.runtime import Engine
from hosfl_sim.system import Availability, RoundClock, build_profiles
from tests.conftest import tiny_scenario

F, U, D, L, S = 2e8, 4e6, 8e6, 0.01, 1e9  # client FLOP/s, up/down bit/s, latency s, server FLOP/s
K, B, P, W = 3, 16, 4, 8  # clients, batch, perturbations, CNN width
APPLY = 2 * P * (W * 9 + W) / F  # a client applying one (seeds, scalars) record: a multiply-add per weight and seed


def const(v: float) -> dict:
    return {"kind": "constant", "value": v}


SYSTEM = {
    "compute_flops": const(F),
    "uplink_bps": const(U),
    "downlink_bps": const(D),
    "latency_s": const(L),
    "server_flops": S,
}


def run(tmp_path, algorithm: dict, system: dict | None = None, **fed) -> tuple[pd.DataFrame, pd.DataFrame]:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 5, **fed}
    sc = tiny_scenario(algorithms=[algorithm], federation=federation, system={**SYSTEM, **(system or {})})
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / algorithm["name"])
    return pd.read_parquet(summary.run_dir / "rounds.parquet"), pd.read_parquet(summary.run_dir / "clients.parquet")


@pytest.fixture(scope="module")
def flops():
    """Forward FLOPs of the tiny CNN's parts on one batch, counted the way the roles count them."""
    sc = load_scenario(tiny_scenario(federation={"num_clients": K, "clients_per_round": K, "batch_size": B}))
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    a = split.client(x=x)
    return count_flops(split.client, x=x), count_flops(split.server, a), a.numel() * 4


def up(nbytes: float) -> float:
    return nbytes * 8 / U + L


def down(nbytes: float) -> float:
    return nbytes * 8 / D + L


def test_hosfl_round_duration_is_the_closed_form(tmp_path, flops):
    fc, fs, act = flops
    rounds, clients = run(tmp_path, {"name": "hosfl", "perturbations": P})
    expected = (
        down(8 * P)  # seeds
        + fc / F  # anchor
        + up(act)
        + up(8 * B)  # labels
        + K * 3 * fs / S  # one server step over the K clients (forward + backward)
        + down(act)  # cut gradient
        + P * fc / F  # probes
        + up(4 * P)  # scalars
        + down(4 * P)  # averaged scalars
        + APPLY  # the update, on every replica
    )
    assert rounds["round_duration_s"].tolist() == pytest.approx([expected] * 2, rel=1e-12)
    assert rounds["sim_time_s"].iloc[-1] == pytest.approx(2 * expected, rel=1e-12)
    assert clients["compute_s"].tolist() == pytest.approx([(1 + P) * fc / F + APPLY] * 2 * K, rel=1e-12)


@pytest.mark.parametrize("name", ["hosfl", "sfl_zo"])
def test_a_returning_client_replays_the_records_it_missed_on_the_clock(tmp_path, flops, name):
    """With 2 of 6 clients a round, a client that comes back downloads and applies every record it missed before
    its first forward: its compute grows by one update per missed record (one record a round here)."""
    fc = flops[0]
    rounds, clients = run(tmp_path, {"name": name, "perturbations": P}, num_clients=6, clients_per_round=2, rounds=6)
    last_seen: dict[int, int] = {}
    missed = []
    for row in clients.sort_values(["round", "client_id"]).itertuples():
        missed.append(row.round - 1 - last_seen.get(row.client_id, 0))
        last_seen[row.client_id] = row.round
    work = (1 + P) * fc / F if name == "hosfl" else 2 * P * fc / F  # anchor + probes, or the 2P probe forwards
    expected = [work + (1 + m) * APPLY for m in missed]
    assert max(missed) > 1  # some client came back after missing several records
    assert clients.sort_values(["round", "client_id"])["compute_s"].tolist() == pytest.approx(expected, rel=1e-12)
    assert (clients["status"] == "completed").all() and (rounds["num_dropped"] == 0).all()


def test_sfl_round_duration_queues_clients_at_the_one_server(tmp_path, flops):
    fc, fs, act = flops
    rounds, clients = run(tmp_path, {"name": "sfl"})
    weights = 4 * (W * 9 + W)  # block1 conv weights + bias
    arrive = down(weights) + fc / F + up(act) + up(8 * B)
    after = down(act) + 2 * fc / F + up(weights)
    server = 3 * fs / S
    finish = sorted(arrive + (k + 1) * server + after for k in range(K))  # first come, first served
    assert rounds["round_duration_s"].tolist() == pytest.approx([finish[-1]] * 2, rel=1e-12)
    first = clients[clients["round"] == 1].sort_values("client_id")
    assert first["finish_s"].tolist() == pytest.approx([finish[-1]] * K, rel=1e-12)  # FedAvg waits for all


def test_sfl_zo_round_duration_is_the_closed_form(tmp_path, flops):
    fc, fs, act = flops
    rounds, _ = run(tmp_path, {"name": "sfl_zo", "perturbations": P})
    expected = down(8 * P) + 2 * P * fc / F + up(2 * P * act) + up(8 * B) + K * 2 * P * fs / S + down(4 * P) + APPLY
    assert rounds["round_duration_s"].tolist() == pytest.approx([expected] * 2, rel=1e-12)


TIERS = [
    {"name": "fast", "proportion": 0.5, "compute_flops": 1e9},
    {"name": "slow", "proportion": 0.5, "compute_flops": 1e5},
]


def test_deadline_drops_exactly_the_clients_that_miss_it(tmp_path):
    system = {"tiers": TIERS, "policy": "deadline", "deadline_s": 1.0}
    rounds, clients = run(tmp_path, {"name": "hosfl", "perturbations": P}, system, num_clients=12, rounds=4)
    assert set(clients["tier"]) == {"fast", "slow"}
    assert ((clients["tier"] == "fast") == (clients["status"] == "completed")).all()
    late = clients[clients["status"] == "straggler_dropped"]
    assert (late["finish_s"] > 1.0).all()
    assert (rounds["num_completed"] + rounds["num_dropped"] == rounds["num_sampled"]).all()
    completed = clients.groupby("round")["status"].apply(lambda s: (s == "completed").sum())
    assert rounds["num_completed"].tolist() == completed.tolist()
    # the server does not wait for clients it knows will be late: rounds with a fast client end in time
    assert (rounds.loc[rounds["num_completed"] > 0, "round_duration_s"] <= 1.0).all()


def test_dropped_clients_contribute_nothing(tmp_path):
    algos = {"name": "hosfl", "perturbations": P}
    system = {"policy": "deadline", "deadline_s": 1e-6}  # nobody can make it
    sc = tiny_scenario(algorithms=[algos], system={**SYSTEM, **system})
    engine = Engine(load_scenario(sc), progress=False)
    (summary,) = engine.run_all(tmp_path)
    before = engine.spec(0, 0).build_model()
    after = engine.backend.server_role
    for part, ref in ((after.client, before.client), (after.server, before.server)):
        for (name, p), q in zip(part.state_dict().items(), ref.state_dict().values()):
            assert torch.equal(p, q), name
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    assert summary.status == "completed" and (rounds["num_completed"] == 0).all()
    assert rounds["bytes_scalar_up"].iloc[-1] == 0 and rounds["bytes_grad_down"].iloc[-1] == 0


def test_overcommit_keeps_exactly_the_first_k_to_arrive():
    cfg = SystemConfig(policy="overcommit", overcommit=2.0)
    profiles = build_profiles(cfg, 6, seed=0)
    clock = RoundClock(np.arange(6), profiles, cfg, quota=3)
    for cid, flops in enumerate([5e10, 1e9, 3e10, 2e9, 4e10, 6e10]):
        clock.client_compute(cid, flops)
    kept = clock.barrier(list(range(6)))
    assert kept == [1, 2, 3]
    assert [clock.record(c).status for c in range(6)].count("straggler_dropped") == 3
    assert clock.record(1).t == clock.record(3).t == 3.0  # everyone kept waits for the third arrival
    assert clock.barrier([1, 2, 3]) == [1, 2, 3]  # the quota acts once


def test_overcommit_in_a_run_samples_ceil_ck_and_completes_k(tmp_path):
    system = {
        "compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0},
        "policy": "overcommit",
        "overcommit": 1.5,
    }
    rounds, clients = run(tmp_path, {"name": "sfl"}, system, num_clients=12, clients_per_round=4, rounds=3)
    assert (rounds["num_sampled"] == math.ceil(1.5 * 4)).all() and (rounds["num_completed"] == 4).all()
    for _, group in clients.groupby("round"):
        done, dropped = group[group["status"] == "completed"], group[group["status"] != "completed"]
        assert len(done) == 4 and (dropped["bytes_up"] > 0).all()


def test_unavailable_clients_are_never_sampled(tmp_path):
    system = {"availability": {"period": 4, "on_rounds": 2, "dropout": 0.2}}
    rounds, clients = run(tmp_path, {"name": "hosfl", "perturbations": 2}, system, num_clients=20, clients_per_round=3,
                          rounds=8)  # fmt: skip
    avail = Availability(load_scenario(tiny_scenario(system=system)).system.availability, 20, seed=0)
    for rnd, group in clients.groupby("round"):
        assert avail.available(int(rnd))[group["client_id"].to_numpy()].all()
    assert (rounds["num_sampled"] <= 3).all()


def test_mid_round_failures_send_nothing_up(tmp_path):
    system = {"availability": {"mid_round_dropout": 0.5}}
    rounds, clients = run(tmp_path, {"name": "hosfl", "perturbations": 2}, system, num_clients=10, rounds=5)
    failed = clients[clients["status"] == "failed"]
    assert len(failed) > 0 and (failed["bytes_up"] == 0).all() and (failed["bytes_down"] > 0).all()
    dropped = clients.groupby("round")["status"].apply(lambda s: (s != "completed").sum())
    assert rounds["num_dropped"].tolist() == dropped.tolist()


def test_profiles_follow_tiers_stragglers_and_traces(tmp_path):
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"client_id": [0, 1], "uplink_bps": [1e3, 2e3], "tier": ["sat", "sat"]}).to_csv(trace, index=False)
    cfg = load_scenario(
        tiny_scenario(
            system={"tiers": TIERS, "trace": str(trace), "straggler_fraction": 0.25, "straggler_slowdown": 4.0}
        )
    ).system
    p = build_profiles(cfg, 400, seed=1)
    assert p.uplink_bps[:2].tolist() == [1e3, 2e3] and p.tier_of(0) == "sat"
    assert 0.4 < np.mean(p.tier[2:] == 0) < 0.6 and p.straggler.sum() == 100
    fast = (p.tier == 0) & ~p.straggler
    assert np.all(p.compute_flops[fast] == 1e9) and np.all(p.compute_flops[(p.tier == 0) & p.straggler] == 2.5e8)
    assert np.array_equal(build_profiles(cfg, 400, seed=1).compute_flops, p.compute_flops)
