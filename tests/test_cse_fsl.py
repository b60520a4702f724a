"""CSE-FSL: the ledger's signature and the simulated clock as closed forms, the round policies, both backends to
the same numbers, a resume to the same numbers, and learning on digits.

Closed forms (cnn cut after block1 on 8x8 digits, width W, batch B, K clients per round, S local steps, h =
upload_every): a client uploads at the steps t = 0 .. S-1 of a round with t % h == 0, n = ceil(S / h) of them, so
per round act_up = K n B ACT 4, labels_up = K n B 8, grad_down = 0, model up = model down = K (D_C + D_AUX) 4; the
one server part takes K n optimizer steps a round.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.task import count_flops
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario

B, K, W, ROUNDS = 16, 3, 8, 3  # batch, clients per round, cnn width, rounds
ACT = W * 4 * 4  # cnn block1 on 8x8 digits: (W, 4, 4) per sample
D_C = W * 1 * 9 + W  # block1: conv 1 -> W, 3x3, bias
D_AUX = ACT * 10 + 10  # the aux head: a linear map of the flattened activation to 10 classes
F_C, U, DN, L = 2e8, 4e6, 8e6, 0.01  # client FLOP/s, up/down bit/s, latency s
SYSTEM = {
    "compute_flops": {"kind": "constant", "value": F_C},
    "uplink_bps": {"kind": "constant", "value": U},
    "downlink_bps": {"kind": "constant", "value": DN},
    "latency_s": {"kind": "constant", "value": L},
}
VOLATILE = ["wall_time_s", "wall_compute_s", "memory_overhead_s"]


def _engine(algorithm: dict, system: dict | None = None, **fed) -> Engine:
    federation = {"num_clients": 5, "clients_per_round": K, "rounds": ROUNDS, "batch_size": B, "eval_every": 3, **fed}
    sc = tiny_scenario(algorithms=[{"name": "cse_fsl", **algorithm}], federation=federation, system=system or {})
    return Engine(load_scenario(sc), progress=False)


def _run(tmp_path, algorithm: dict, system: dict | None = None, **fed) -> tuple[pd.DataFrame, pd.DataFrame, Engine]:
    engine = _engine(algorithm, system, **fed)
    (summary,) = engine.run_all(tmp_path / "out")
    assert summary.status == "completed"
    read = lambda name: pd.read_parquet(summary.run_dir / f"{name}.parquet")  # noqa: E731
    return read("rounds"), read("clients"), engine


def _per_round(rounds: pd.DataFrame) -> pd.DataFrame:
    cols = rounds[[c for c in rounds if c.startswith("bytes_")]]
    return cols.diff().fillna(cols).astype(np.int64)


def test_registered_with_its_options_and_upload_every_is_checked():
    cls = ALGORITHMS["cse_fsl"]
    assert "\n" not in cls.summary and "up:" in cls.summary and "down:" in cls.summary
    assert cls.supports_policies and cls.supports_epochs and "upload_every" in cls.options
    with pytest.raises(ConfigError, match=r"algorithms\[0\]\.upload_every"):
        _engine({"upload_every": 0})
    with pytest.raises(ConfigError, match="upload_every"):  # another algorithm cannot be given it
        Engine(load_scenario(tiny_scenario(algorithms=[{"name": "sfl", "upload_every": 2}])), progress=False).validate()


@pytest.mark.parametrize("every, n", [(1, 7), (3, 3), (5, 2), (9, 1)])
def test_uploads_only_every_h_local_steps_and_no_gradient_comes_down(tmp_path, every, n):
    steps = 7  # uploads at t = 0 .. 6 with t % h == 0: n = ceil(7 / h) per round
    assert n == math.ceil(steps / every)
    rounds, clients, engine = _run(tmp_path, {"local_steps": steps, "upload_every": every})
    per_round = _per_round(rounds)
    assert (per_round["bytes_act_up"] == K * n * B * ACT * 4).all()
    assert (per_round["bytes_labels_up"] == K * n * B * 8).all()
    assert (per_round["bytes_model_up"] == K * (D_C + D_AUX) * 4).all()
    assert (per_round["bytes_model_down"] == K * (D_C + D_AUX) * 4).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (per_round[col] == 0).all()
    assert (clients["bytes_up"] == n * B * (ACT * 4 + 8) + (D_C + D_AUX) * 4).all()
    assert (clients["bytes_down"] == (D_C + D_AUX) * 4).all()
    assert (clients["samples"] == steps * B).all()  # every step trains, uploading or not
    server = engine.backend.server_role
    steps_taken = {int(s["step"]) for s in server.optimizer.state.values()}
    assert steps_taken == {ROUNDS * K * n}  # one server step per upload; no per-client server model
    assert set(server.state()) == {"client", "server", "optimizer", "aux"}


@pytest.fixture(scope="module")
def flops() -> dict[str, float]:
    """Forward FLOPs on one batch as the roles count them: the client part, the server part."""
    sc = load_scenario(tiny_scenario(federation={"num_clients": K, "clients_per_round": K, "batch_size": B}))
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    return {"fc": count_flops(split.client, x=x), "fs": count_flops(split.server, split.client(x=x))}


def up(nbytes: float) -> float:
    return nbytes * 8 / U + L


def down(nbytes: float) -> float:
    return nbytes * 8 / DN + L


@pytest.mark.parametrize("server_flops", [1e12, 2e6])
def test_the_clients_never_wait_for_the_server_and_the_round_ends_with_its_queue(tmp_path, flops, server_flops):
    """N = K identical clients, 5 local steps, uploads at t = 0 and 3. Each client's own time is weights down,
    5 steps (forward, aux head and backward: 3x the forward of both), two uploads, weights up, whatever the
    server's speed. The round ends at that, or once the server has worked off its 2K requests: with the slow
    server it is busy from the first arrivals on, so it ends 2K requests after them."""
    steps, every, n = 5, 3, 2
    system = {**SYSTEM, "server_flops": server_flops}
    rounds, clients, _ = _run(tmp_path, {"local_steps": steps, "upload_every": every}, system, num_clients=K, rounds=2)
    weights, step = 4 * (D_C + D_AUX), 3 * (flops["fc"] + 2 * B * ACT * 10) / F_C
    sent = up(4 * B * ACT) + up(8 * B)  # activations, labels
    own = down(weights) + steps * step + n * sent + up(weights)
    request = 3 * flops["fs"] / server_flops  # forward + backward of the server part
    first = down(weights) + step + sent  # the K uploads of step 0 arrive together
    if server_flops < 1e9:
        assert K * request > every * step + sent  # the server is still busy when the step-3 uploads arrive
        expected = first + K * n * request
        assert expected > own
    else:
        expected = own
    assert rounds["round_duration_s"].tolist() == pytest.approx([expected] * 2, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([own] * 2 * K, rel=1e-12)
    assert (clients["status"] == "completed").all()


def test_a_deadline_drops_the_slow_clients_and_counts_only_the_kept(tmp_path):
    """Clients 0 and 1 compute fast, 2 and 3 a thousand times slower; the deadline falls between them."""
    trace = tmp_path / "trace.csv"
    speeds = {"client_id": [0, 1, 2, 3], "compute_flops": [F_C, F_C, F_C / 1000, F_C / 1000]}
    pd.DataFrame(speeds).to_csv(trace, index=False)
    system = {**SYSTEM, "trace": str(trace), "policy": "deadline", "deadline_s": 1.0}
    rounds, clients, _ = _run(tmp_path, {"local_steps": 2}, system, num_clients=4, clients_per_round=4, rounds=2)
    clients = clients.sort_values(["round", "client_id"])
    assert clients["status"].tolist() == (["completed"] * 2 + ["straggler_dropped"] * 2) * 2
    assert rounds["num_completed"].tolist() == [2, 2]
    assert rounds["samples_seen"].tolist() == [2 * 2 * B, 4 * 2 * B]  # the kept clients' samples only
    assert rounds["train_loss"].notna().all()


def test_clients_that_fail_mid_round_send_nothing_up(tmp_path):
    system = {**SYSTEM, "availability": {"mid_round_dropout": 0.5}}
    rounds, clients, _ = _run(tmp_path, {"local_steps": 2}, system, num_clients=6, rounds=3)
    failed, done = clients[clients["status"] == "failed"], clients[clients["status"] == "completed"]
    assert len(failed) > 0 and len(done) > 0
    assert (failed["bytes_up"] == 0).all() and (failed["bytes_down"] == (D_C + D_AUX) * 4).all()
    assert (failed["compute_s"] == 0).all() and (failed["samples"] == 0).all()
    assert (done["bytes_up"] == B * (ACT * 4 + 8) + (D_C + D_AUX) * 4).all()
    kept = done.groupby("round")["samples"].sum().reindex(rounds["round"], fill_value=0)
    assert rounds["samples_seen"].diff().fillna(rounds["samples_seen"]).tolist() == kept.tolist()


def test_overcommit_keeps_the_first_k(tmp_path):
    system = {"policy": "overcommit", "overcommit": 1.5}
    rounds, clients, _ = _run(tmp_path, {"local_steps": 2}, system, num_clients=6, clients_per_round=2, rounds=2)
    assert (clients.groupby("round")["status"].apply(lambda s: (s == "completed").sum()) == 2).all()
    assert (clients["status"] == "straggler_dropped").sum() == 2


def _tables(run_dir) -> list[pd.DataFrame]:
    out = []
    for name in ("rounds", "clients"):
        df = pd.read_parquet(run_dir / f"{name}.parquet")
        out.append(df.drop(columns=[c for c in VOLATILE if c in df]))
    return out


def test_local_and_ray_backends_give_the_same_numbers(tmp_path, ray_session):
    tables = {}
    for backend in ("local", "ray"):
        sc = tiny_scenario(
            algorithms=[{"name": "cse_fsl", "local_steps": 3, "upload_every": 2}],
            federation={"num_clients": 6, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2},
            runtime={"backend": backend, "num_workers": 2},
        )
        engine = Engine(load_scenario(sc), progress=False)
        try:
            (summary,) = engine.run_all(tmp_path / backend)
        finally:
            engine.close()
        tables[backend] = _tables(summary.run_dir)
    for local, ray in zip(tables["local"], tables["ray"]):
        pd.testing.assert_frame_equal(ray, local, check_exact=True)


def test_a_resumed_run_gives_the_same_numbers(tmp_path):
    class StopInRound3(Engine):  # as a Ctrl-C during round 3 would
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    algorithm = {"name": "cse_fsl", "local_steps": 3, "upload_every": 2}
    fed = {"num_clients": 8, "clients_per_round": K, "rounds": 5, "batch_size": B, "eval_every": 2}
    sc = load_scenario(tiny_scenario(algorithms=[algorithm], federation=fed))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "resumed"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for got, want in zip(_tables(out), _tables(reference.run_dir)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_learns_on_digits(tmp_path):
    """Budget: digits (10 classes, chance 0.10), 20 clients, 5 per round, batch 32, cnn width 16 cut after block1,
    10 rounds of 5 local steps, uploads every 2 steps."""
    fed = {"num_clients": 20, "clients_per_round": 5, "rounds": 10, "batch_size": 32, "eval_every": 10}
    sc = tiny_scenario(algorithms=[{"name": "cse_fsl", "local_steps": 5, "upload_every": 2}], federation=fed)
    sc["task"]["model"]["width"] = 16
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path)
    assert summary.status == "completed" and summary.final["test_acc"] > 0.8  # 0.93 here
