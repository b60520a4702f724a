"""Local-loss split learning: its ledger and clock in closed form, the round policies, both backends to the same
numbers, a resume to the same numbers, no feedback from the server to the clients, and learning on digits.

The closed forms use the constant profile of test_baselines_clock (every client computes at F FLOP/s, uplink U
and downlink D bit/s, latency L s; the server at S FLOP/s) and N = K, so every client is sampled every round.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.task import count_flops
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario
from tests.golden.make_golden import VOLATILE

F, U, D, L = 2e8, 4e6, 8e6, 0.01  # client FLOP/s, up/down bit/s, latency s
K, B, W = 3, 16, 8  # clients per round, batch, cnn width
ACT = W * 4 * 4  # cnn block1 on 8x8 digits: (W, 4, 4) per sample
D_C = W * 9 + W  # client part: block1 conv 1 -> W, 3x3, with bias
D_AUX = ACT * 10 + 10  # aux head: a linear map of the activation to 10 classes
WEIGHTS = 4 * (D_C + D_AUX)  # client part and aux head, float32, each way once per round
NAME = "local_loss_sl"


def constant_system(server_flops: float) -> dict:
    const = lambda v: {"kind": "constant", "value": v}  # noqa: E731
    return {
        "compute_flops": const(F),
        "uplink_bps": const(U),
        "downlink_bps": const(D),
        "latency_s": const(L),
        "server_flops": server_flops,
    }


def run(tmp_path, algorithm: dict | None = None, system: dict | None = None, **fed) -> tuple[pd.DataFrame, ...]:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2, **fed}
    algorithms = [{"name": NAME, **(algorithm or {})}]
    sc = tiny_scenario(algorithms=algorithms, federation=federation, system=system or {})
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(out)
    assert summary.status == "completed"
    return pd.read_parquet(summary.run_dir / "rounds.parquet"), pd.read_parquet(summary.run_dir / "clients.parquet")


def per_round(rounds: pd.DataFrame) -> pd.DataFrame:
    cols = rounds[[c for c in rounds if c.startswith("bytes_")]]
    return cols.diff().fillna(cols).astype(np.int64)


@pytest.fixture(scope="module")
def flops() -> dict[str, float]:
    """Forward FLOPs on one batch, as the roles count them: client part and server part."""
    sc = load_scenario(tiny_scenario(federation={"num_clients": K, "clients_per_round": K, "batch_size": B}))
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    return {"fc": count_flops(split.client, x=x), "fs": count_flops(split.server, split.client(x=x))}


def test_registered_with_a_one_line_summary():
    cls = ALGORITHMS[NAME]
    assert "\n" not in cls.summary and "up:" in cls.summary and "down:" in cls.summary
    assert cls.supports_policies and cls.supports_epochs


@pytest.mark.parametrize("server_flops, bound", [(1e12, "clients"), (1e7, "server")])
def test_ledger_and_clock_in_closed_form(tmp_path, flops, server_flops, bound):
    """Per step a client computes, sends activations and labels and goes straight on: nobody waits for the server,
    which serves the K uploads of each step in turn as they arrive. The round ends when the weights are in and the
    server is through its queue: whichever is later (a fast server: the clients; a slow one: the server)."""
    steps = 3
    rounds, clients = run(tmp_path, {"local_steps": steps}, constant_system(server_flops), rounds=3)
    grown = per_round(rounds)
    assert (grown["bytes_act_up"] == K * steps * B * ACT * 4).all()
    assert (grown["bytes_labels_up"] == K * steps * B * 8).all()
    assert (grown["bytes_model_up"] == K * WEIGHTS).all() and (grown["bytes_model_down"] == K * WEIGHTS).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (grown[col] == 0).all(), col  # no gradient, ever
    assert (grown["bytes_total"] == K * (steps * B * (ACT * 4 + 8) + 2 * WEIGHTS)).all()
    assert (clients["bytes_up"] == steps * B * (ACT * 4 + 8) + WEIGHTS).all()
    assert (clients["bytes_down"] == WEIGHTS).all()
    assert (clients["samples"] == steps * B).all() and (rounds["samples_seen"] == np.arange(1, 4) * K * steps * B).all()

    up = lambda n: n * 8 / U + L  # noqa: E731
    compute = (3 * flops["fc"] + 3 * 2 * B * ACT * 10) / F  # forward + backward (~2x), aux head's 3 products
    step = compute + up(4 * B * ACT) + up(8 * B)
    arrive = [WEIGHTS * 8 / D + L + (s + 1) * step for s in range(steps)]  # all K uploads of step s at once
    clients_done = arrive[-1] + up(WEIGHTS)
    serve = 3 * flops["fs"] / server_flops  # forward + backward per upload
    server_done = max(a + (steps - s) * K * serve for s, a in enumerate(arrive))  # all work queued from a_s on
    assert (clients_done > server_done) == (bound == "clients")
    assert rounds["round_duration_s"].tolist() == pytest.approx([max(clients_done, server_done)] * 3, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([clients_done] * 3 * K, rel=1e-12)  # no wait for replies
    assert clients["compute_s"].tolist() == pytest.approx([steps * compute] * 3 * K, rel=1e-12)


def test_a_deadline_keeps_the_fast_clients_and_the_server_learns_from_them_only(tmp_path):
    """Clients 0 and 1 compute fast, 2 and 3 a thousand times slower; the deadline falls between them."""
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"client_id": [0, 1, 2, 3], "compute_flops": [F, F, F / 1000, F / 1000]}).to_csv(trace, index=False)
    system = {**constant_system(1e9), "trace": str(trace), "policy": "deadline", "deadline_s": 1.0}
    rounds, clients = run(tmp_path, {"local_steps": 2}, system, num_clients=4, clients_per_round=4, rounds=2)
    clients = clients.sort_values(["round", "client_id"])
    assert clients["status"].tolist() == (["completed"] * 2 + ["straggler_dropped"] * 2) * 2
    assert rounds["num_completed"].tolist() == [2, 2] and rounds["samples_seen"].tolist() == [4 * B, 8 * B]
    assert (clients["bytes_up"] > 0).all()  # everyone uploaded; the server knew two would arrive too late
    done = clients["status"] == "completed"
    assert clients.loc[done, "train_loss"].notna().all() and clients.loc[~done, "train_loss"].isna().all()
    assert (rounds["round_duration_s"] <= 1.0).all() and rounds["train_loss"].notna().all()


def test_clients_that_fail_mid_round_send_nothing_up(tmp_path):
    system = {"availability": {"mid_round_dropout": 0.5}}
    rounds, clients = run(tmp_path, {"local_steps": 2}, system, num_clients=6, rounds=3)
    failed = clients[clients["status"] == "failed"]
    assert len(failed) > 0 and (failed["bytes_up"] == 0).all() and (failed["bytes_down"] == WEIGHTS).all()
    assert (failed["compute_s"] == 0).all() and (failed["samples"] == 0).all()
    done = clients[clients["status"] == "completed"]
    assert (done["bytes_up"] > 0).all() and (done["compute_s"] > 0).all()
    assert rounds["samples_seen"].diff().fillna(rounds["samples_seen"]).tolist() == (
        clients[clients["status"] == "completed"].groupby("round")["samples"].sum().tolist()
    )


def test_overcommit_keeps_k_and_nobody_in_time_trains_nothing(tmp_path):
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    rounds, _ = run(tmp_path, {}, system, num_clients=12, clients_per_round=4, rounds=2)
    assert (rounds["num_sampled"] == math.ceil(1.3 * 4)).all() and (rounds["num_completed"] == 4).all()
    rounds, clients = run(tmp_path, {}, {"policy": "deadline", "deadline_s": 1e-6})
    assert (rounds["num_completed"] == 0).all() and (rounds["samples_seen"] == 0).all()
    assert rounds["train_loss"].isna().all() and (clients["status"] == "straggler_dropped").all()


def test_the_clients_get_no_feedback_from_the_server(tmp_path):
    """No gradient comes down, so the server's optimizer cannot change what the clients learn within a round: the
    averaged client part and aux head are the same for any server learning rate; the server part is not."""

    def after_one_round(lr: float) -> dict[str, dict[str, torch.Tensor]]:
        algo = {"name": NAME, "local_steps": 3, "server_optimizer": {"lr": lr}}
        fed = {"num_clients": 6, "clients_per_round": 3, "rounds": 1, "batch_size": B, "eval_every": 1}
        engine = Engine(load_scenario(tiny_scenario(algorithms=[algo], federation=fed)), progress=False)
        engine.run_all(tmp_path / str(lr))
        role = engine.backend.server_role
        return {
            k: {n: v.clone() for n, v in getattr(role, k).state_dict().items()} for k in ("client", "aux", "server")
        }

    slow, fast = after_one_round(1e-4), after_one_round(1e-1)
    for part in ("client", "aux"):
        for name, value in slow[part].items():
            assert torch.equal(value, fast[part][name]), (part, name)
    assert any(not torch.equal(v, fast["server"][n]) for n, v in slow["server"].items())


def test_alike_clients_give_cse_fsl_numbers_with_an_upload_every_step(tmp_path):
    """On alike clients (sync, constant profile) uploads arrive in step order and nobody is dropped: then this is
    CSE-FSL with upload_every = 1, number for number."""
    fed = {"num_clients": 6, "clients_per_round": 3, "rounds": 3, "eval_every": 1}
    ours = run(tmp_path, {"local_steps": 3}, constant_system(1e9), **fed)
    cse = run(tmp_path, {"name": "cse_fsl", "local_steps": 3, "upload_every": 1}, constant_system(1e9), **fed)
    for a, b in zip(ours, cse):
        keep = [c for c in a if c not in (*VOLATILE, "algorithm", "label")]
        pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=True)


def _tables(run_dir) -> list[pd.DataFrame]:
    """rounds and clients without the host-timing columns."""
    tables = [pd.read_parquet(run_dir / f"{name}.parquet") for name in ("rounds", "clients")]
    return [df.drop(columns=[c for c in VOLATILE if c in df]) for df in tables]


def test_both_backends_give_the_same_numbers(tmp_path, ray_session):
    """Heterogeneous devices under over-commit: the kept clients and the server's arrival order vary by round."""
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "batch_size": B, "eval_every": 1}
    tables = {}
    for backend in ("local", "ray"):
        runtime = {"backend": backend, "num_workers": 2}
        sc = tiny_scenario(
            algorithms=[{"name": NAME, "local_steps": 2}], federation=fed, system=system, runtime=runtime
        )
        engine = Engine(load_scenario(sc), progress=False)
        try:
            (summary,) = engine.run_all(tmp_path / backend)
        finally:
            engine.close()
        assert summary.status == "completed"
        tables[backend] = _tables(summary.run_dir)
    for local, ray in zip(tables["local"], tables["ray"]):
        pd.testing.assert_frame_equal(ray, local, check_exact=True)
    assert (tables["local"][0]["num_dropped"] > 0).all()


def test_a_resumed_run_gives_the_same_numbers(tmp_path):
    """Stopped in round 3 (as Ctrl-C would) and resumed, with local epochs: the same tables as a run through."""

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
    clients = pd.read_parquet(out / "clients.parquet")
    assert (clients["samples"] > 3 * 32).all()  # a whole partition (about 120 rows) per round


def test_learns_digits_in_twenty_rounds(tmp_path):
    """Budget: 20 rounds x 4 clients x 5 steps x 16 samples (6,400 samples, ~3 s); chance is 10 %."""
    fed = {"num_clients": 8, "clients_per_round": 4, "rounds": 20, "batch_size": B, "eval_every": 20}
    algo = {"local_steps": 5, "client_optimizer": {"lr": 3e-3}, "server_optimizer": {"lr": 3e-3}}
    rounds, _ = run(tmp_path, algo, **fed)
    assert rounds["test_acc"].iloc[-1] > 0.8
    assert rounds["train_loss"].iloc[-3:].mean() < 0.5 * rounds["train_loss"].iloc[0]
