"""DSL-Aux: the ledger and the sequential clock in closed form (no gradient comes down, nobody waits for the
server), the round policies acting on the handover (the part a dropped client trained is never kept, and the server
never learns from its uploads), both backends and a resume to the same numbers, and learning on digits.

A constant profile (every client computes at F FLOP/s, uplink U and downlink D bit/s, latency L s; the server at
S FLOP/s), N = K clients: every turn is the same closed form, and the turns follow each other.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.dsl_aux import DSLAuxClient, DSLAuxServer
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario
from tests.test_local_loss_sl import ACT, WEIGHTS, B, D, F, K, L, U, _tables, constant_system, flops, per_round

assert flops  # the fixture, imported for the tests below
NAME, STEPS = "dsl_aux", 2


def run(tmp_path, system: dict, algorithm: dict | None = None, runtime: dict | None = None, **fed) -> tuple:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2, **fed}
    algo = {"name": NAME, "local_steps": STEPS, **(algorithm or {})}
    runtime = runtime or {"backend": "local", "num_workers": 2}
    sc = tiny_scenario(algorithms=[algo], federation=federation, system=system, runtime=runtime)
    engine = Engine(load_scenario(sc), progress=False)
    try:
        (summary,) = engine.run_all(tmp_path / f"run{len(list(tmp_path.iterdir()))}")
    finally:
        if runtime["backend"] == "ray":
            engine.close()
    assert summary.status == "completed"
    return (*_tables(summary.run_dir), engine)


def up(n: float) -> float:
    return n * 8 / U + L


def timing(flops: dict, server_flops: float) -> tuple[float, list[float], float]:
    """(a turn, each upload's arrival in the round's first turn, the server's time per upload)."""
    compute = (3 * flops["fc"] + 3 * 2 * B * ACT * 10) / F  # forward + backward (~2x), the aux head's 3 products
    step = compute + up(4 * B * ACT) + up(8 * B)
    start = WEIGHTS * 8 / D + L
    return (
        start + STEPS * step + up(WEIGHTS),
        [start + (s + 1) * step for s in range(STEPS)],
        3 * flops["fs"] / server_flops,
    )


def test_registered_with_a_one_line_summary():
    cls = ALGORITHMS[NAME]
    assert "\n" not in cls.summary and "up:" in cls.summary and "down:" in cls.summary
    assert cls.supports_policies and cls.supports_epochs


@pytest.mark.parametrize("server_flops, bound", [(1e12, "clients"), (1e7, "server")])
def test_ledger_and_clock_in_closed_form(tmp_path, flops, server_flops, bound):
    """Turn after turn, each as long as the client's own work (no reply to wait for); the server serves the uploads
    first come, first served, and the round ends when the last part is in and the queue is worked off."""
    rounds, clients, _ = run(tmp_path, constant_system(server_flops), rounds=3)
    grown = per_round(rounds)
    assert (grown["bytes_act_up"] == K * STEPS * B * ACT * 4).all()
    assert (grown["bytes_labels_up"] == K * STEPS * B * 8).all()
    assert (grown["bytes_model_up"] == K * WEIGHTS).all() and (grown["bytes_model_down"] == K * WEIGHTS).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (grown[col] == 0).all(), col
    assert (clients["bytes_up"] == STEPS * B * (ACT * 4 + 8) + WEIGHTS).all() and (
        clients["bytes_down"] == WEIGHTS
    ).all()

    turn, first, serve = timing(flops, server_flops)
    arrivals = [i * turn + a for i in range(K) for a in first]
    server_done = max(a + (len(arrivals) - j) * serve for j, a in enumerate(arrivals))
    assert (K * turn > server_done) == (bound == "clients")
    assert rounds["round_duration_s"].tolist() == pytest.approx([max(K * turn, server_done)] * 3, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([K * turn] * 3 * K, rel=1e-12)  # the barrier: the last turn
    assert (clients["samples"] == STEPS * B).all() and (clients["status"] == "completed").all()


def chain_by_hand(engine: Engine, clients: list[int]) -> dict[str, dict[str, torch.Tensor]]:
    """The server's parts after `clients` take their turns in round 1 and hand over, from its initial parts."""
    spec = engine.spec(0, 0)
    client, server = DSLAuxClient(spec), DSLAuxServer(spec)
    part, _ = server.part()
    for cid in clients:
        client.take_over(cid, part)
        for step in range(STEPS):
            upload, _ = client.step(cid, 1, step, True)
            server.step(upload)
        part = client.upload(cid)
    server.accept(part)
    return {k: getattr(server, k).state_dict() for k in ("client", "aux", "server")}


def test_a_client_past_the_deadline_hands_nothing_over_and_teaches_the_server_nothing(tmp_path, flops):
    turn, _, _ = timing(flops, 1e12)
    system = {**constant_system(1e12), "policy": "deadline", "deadline_s": 2.5 * turn}
    rounds, clients, engine = run(tmp_path, system, rounds=1, eval_every=1)
    assert clients["status"].tolist() == ["completed"] * 2 + ["straggler_dropped"]
    assert rounds["num_completed"].tolist() == [2] and rounds["samples_seen"].tolist() == [2 * STEPS * B]
    assert rounds["round_duration_s"].iloc[0] == pytest.approx(2 * turn, rel=1e-12)  # the server's queue: done
    assert clients["finish_s"].iloc[2] == pytest.approx(3 * turn, rel=1e-12)  # it did its turn, too late
    assert clients["train_loss"].iloc[:2].notna().all() and clients["train_loss"].iloc[2:].isna().all()
    order = clients["client_id"].tolist()
    role = engine.backend.server_role
    kept, everyone = chain_by_hand(engine, order[:2]), chain_by_hand(engine, order)
    for part, state in kept.items():
        for name, value in getattr(role, part).state_dict().items():
            torch.testing.assert_close(value, state[name], msg=f"{part}.{name}", rtol=0, atol=0)
    assert any(not torch.equal(v, everyone["client"][n]) for n, v in role.client.state_dict().items())


def test_failed_clients_send_nothing_up_and_overcommit_keeps_the_first_k(tmp_path, flops):
    turn, _, _ = timing(flops, 1e12)
    system = {**constant_system(1e12), "availability": {"mid_round_dropout": 0.5}}
    rounds, clients, _ = run(tmp_path, system, num_clients=6, rounds=4)
    failed, done = clients[clients["status"] == "failed"], clients[clients["status"] == "completed"]
    assert len(failed) > 0 and len(done) > 0
    assert (
        (failed["bytes_up"] == 0).all() and (failed["compute_s"] == 0).all() and (failed["bytes_down"] == WEIGHTS).all()
    )
    for rnd, group in clients.groupby("round"):  # a failed client costs the chain nothing: a turn per kept client
        n = int((group["status"] == "completed").sum())
        assert rounds.set_index("round").loc[rnd, "round_duration_s"] == pytest.approx(n * turn, rel=1e-12)

    system = {**constant_system(1e12), "policy": "overcommit", "overcommit": 1.5}
    rounds, clients, _ = run(tmp_path, system, num_clients=5)
    assert (rounds["num_sampled"] == 5).all() and (rounds["num_completed"] == K).all()
    for _, group in clients.groupby("round"):
        assert group["status"].tolist() == ["completed"] * K + ["straggler_dropped"] * 2  # in sampling order
    assert rounds["round_duration_s"].tolist() == pytest.approx([K * turn] * 2, rel=1e-12)


def test_both_backends_give_the_same_numbers(tmp_path, ray_session):
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "eval_every": 1}
    local = run(tmp_path, system, **fed)
    ray = run(tmp_path, system, runtime={"backend": "ray", "num_workers": 2}, **fed)
    for a, b in zip(local[:2], ray[:2]):
        pd.testing.assert_frame_equal(b, a, check_exact=True)
    assert (local[0]["num_dropped"] > 0).all()


def test_a_resumed_run_gives_the_same_numbers(tmp_path):
    class StopInRound3(Engine):
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    fed = {"num_clients": 12, "clients_per_round": 3, "rounds": 5, "batch_size": 32, "eval_every": 2}
    sc = load_scenario(tiny_scenario(algorithms=[{"name": NAME, "local_epochs": 1}], federation=fed))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "stopped"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for got, want in zip(_tables(out), _tables(reference.run_dir)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_learns_digits_in_twenty_rounds(tmp_path):
    """Budget: 20 rounds x 4 clients in turn x 5 steps x 16 samples (6,400 samples, ~3 s); chance is 10 %."""
    fed = {"num_clients": 8, "clients_per_round": 4, "rounds": 20, "batch_size": B, "eval_every": 20}
    algo = {"local_steps": 5, "client_optimizer": {"lr": 3e-3}, "server_optimizer": {"lr": 3e-3}}
    rounds, _, _ = run(tmp_path, {}, algo, **fed)
    assert rounds["test_acc"].iloc[-1] > 0.8
    assert rounds["train_loss"].iloc[-3:].mean() < 0.5 * rounds["train_loss"].iloc[0]
