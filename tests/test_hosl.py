"""HOSL: one step of the roles against the closed form (the client's Q + 1 activations, the server's loss
differences and first-order step, the client's zeroth-order update), the ledger and clock in closed form, the round
policies, both backends to the same numbers, a resume to the same numbers, and learning on digits.

Closed forms (cnn cut after block1 on 8x8 digits, width W, batch B, K = N clients so every client is sampled every
round and none has records to catch up on, S local steps, Q perturbations): per round act_up = K S (Q + 1) B ACT 4,
labels_up = K S B 8, seed_down = K S Q 8, scalar_down = K S Q 4, and nothing else (no weights, no cut gradient).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.hosl import HOSLClient, HOSLServer
from hosfl_sim.algorithms.task import count_flops, sample_batch
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from hosfl_sim.zo import derive_seeds
from hosfl_sim.zo.perturb import directions
from tests.conftest import tiny_scenario
from tests.golden.make_golden import VOLATILE

FC, U, D, L = 2e8, 4e6, 8e6, 0.01  # client FLOP/s, up/down bit/s, latency s
K, B, W, Q = 3, 16, 8, 3  # clients per round, batch, cnn width, perturbations
ACT = W * 4 * 4  # cnn block1 on 8x8 digits: (W, 4, 4) per sample
D_C = W * 9 + W  # client part: block1 conv 1 -> W, 3x3, with bias
NAME = "hosl"


def run(tmp_path, algorithm: dict | None = None, system: dict | None = None, **fed) -> tuple[pd.DataFrame, ...]:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2, **fed}
    algorithms = [{"name": NAME, "perturbations": Q, **(algorithm or {})}]
    sc = tiny_scenario(algorithms=algorithms, federation=federation, system=system or {})
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(out)
    assert summary.status == "completed"
    return pd.read_parquet(summary.run_dir / "rounds.parquet"), pd.read_parquet(summary.run_dir / "clients.parquet")


def per_round(rounds: pd.DataFrame) -> pd.DataFrame:
    cols = rounds[[c for c in rounds if c.startswith("bytes_")]]
    return cols.diff().fillna(cols).astype(np.int64)


def test_registered_with_its_options():
    cls = ALGORITHMS[NAME]
    assert "\n" not in cls.summary and "up:" in cls.summary and "down:" in cls.summary
    assert cls.supports_policies and {"perturbations", "mu", "distribution", "probe"} <= cls.options


def test_one_step_of_the_roles_is_the_closed_form():
    """Two clients, plain SGD on both sides (lr eta): the client sends f_c(theta; x) and f_c(theta + mu u_q; x); the
    server returns s_q = l(f_s(a_q)) - l(f_s(a_0)) at its current theta_s and steps theta_s by the gradient of the
    mean unperturbed loss; every replica then takes theta - eta (1 / (Q mu)) sum_q mean_k(s_q) u_q."""
    eta, mu, rnd, step = 0.05, 1e-3, 1, 0
    sgd = {"name": "sgd", "lr": eta, "momentum": 0.0, "weight_decay": 0.0}
    algo = {"name": NAME, "perturbations": Q, "mu": mu, "client_optimizer": sgd, "server_optimizer": sgd}
    sc = load_scenario(tiny_scenario(algorithms=[algo], federation={"num_clients": 4, "clients_per_round": 2}))
    spec = Engine(sc, backend=object(), progress=False).spec(0, 0)
    client, server = HOSLClient(spec), HOSLServer(spec)
    seeds = derive_seeds(spec.seed, rnd, step, Q)
    ups = [client.probe([], cid, rnd, step, seeds)[0] for cid in (0, 1)]
    diffs, meta = server.train_step([(0, 0), (0, 1)], ups)
    s_bar = server.aggregate(seeds, diffs)
    client.sync([(seeds, s_bar)])

    split = spec.build_model()
    theta = [p.detach().clone() for p in split.client.parameters()]
    theta_s = {n: p.detach().clone() for n, p in split.server.named_parameters()}
    us = [list(directions(theta, int(seed), "gaussian")) for seed in seeds]
    losses, want_diffs = [], []
    for cid, up in zip((0, 1), ups):
        feats, labels = sample_batch(spec, cid, rnd, step)
        x, y = torch.from_numpy(feats["x"]), torch.from_numpy(labels)
        acts = []
        with torch.no_grad():
            acts.append(split.client(x=x))
            for u in us:
                for p, t, d in zip(split.client.parameters(), theta, u):
                    p.copy_(t + mu * d)
                acts.append(split.client(x=x))
            for p, t in zip(split.client.parameters(), theta):
                p.copy_(t)
            np.testing.assert_allclose(up["a"], torch.stack(acts).numpy(), rtol=0, atol=1e-6)
            l_q = [float(F.cross_entropy(split.server(a), y)) for a in acts]
        want_diffs.append(np.array(l_q[1:]) - l_q[0])
        losses.append(F.cross_entropy(split.server(acts[0]), y))
    for got, want in zip(diffs, want_diffs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert meta["losses"] == pytest.approx([float(v.detach()) for v in losses], rel=1e-6)
    grads = torch.autograd.grad(sum(losses) / 2, list(split.server.parameters()))
    for (n, p), g in zip(server.server.named_parameters(), grads):
        np.testing.assert_allclose(p.detach().numpy(), (theta_s[n] - eta * g).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s_bar, np.mean(want_diffs, axis=0), rtol=1e-5, atol=1e-7)
    for i, (p, t) in enumerate(zip(client.model.parameters(), theta)):
        want = t - eta / (Q * mu) * sum(float(s) * u[i] for s, u in zip(s_bar, us))
        np.testing.assert_allclose(p.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
        assert torch.equal(p, list(server.client.parameters())[i])  # the server's replica took the same step
        assert not p.requires_grad and p.grad is None  # backprop-free client


@pytest.fixture(scope="module")
def flops() -> dict[str, float]:
    """Forward FLOPs on one batch as the roles count them: the client part, the server part."""
    sc = load_scenario(tiny_scenario(federation={"num_clients": K, "clients_per_round": K, "batch_size": B}))
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    return {"fc": count_flops(split.client, x=x), "fs": count_flops(split.server, split.client(x=x))}


def test_ledger_and_clock_in_closed_form(tmp_path, flops):
    """Per step, alike clients: the seeds down, Q + 1 forwards, activations and labels up; the server's step on all
    K (forward + backward and Q + 1 evaluations each); the averaged differences down and the update applied."""
    steps, server_flops = 2, 1e9
    const = lambda v: {"kind": "constant", "value": v}  # noqa: E731
    system = {"compute_flops": const(FC), "uplink_bps": const(U), "downlink_bps": const(D), "latency_s": const(L)}
    rounds, clients = run(tmp_path, {"local_steps": steps}, {**system, "server_flops": server_flops}, rounds=3)
    grown = per_round(rounds)
    assert (grown["bytes_act_up"] == K * steps * (Q + 1) * B * ACT * 4).all()
    assert (grown["bytes_labels_up"] == K * steps * B * 8).all()
    assert (grown["bytes_seed_down"] == K * steps * Q * 8).all()
    assert (grown["bytes_scalar_down"] == K * steps * Q * 4).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_model_up", "bytes_model_down"):
        assert (grown[col] == 0).all(), col
    assert (clients["samples"] == steps * B).all()

    up, down = (lambda n: n * 8 / U + L), (lambda n: n * 8 / D + L)
    server = K * (3 + Q + 1) * flops["fs"] / server_flops
    step = down(8 * Q) + (Q + 1) * flops["fc"] / FC + up(4 * (Q + 1) * B * ACT) + up(8 * B) + server
    step += down(4 * Q) + 2 * Q * D_C / FC  # the record down and applied
    assert rounds["round_duration_s"].tolist() == pytest.approx([steps * step] * 3, rel=1e-12)


def test_policies_deadline_failures_and_overcommit(tmp_path):
    trace = tmp_path / "trace.csv"
    speeds = {"client_id": [0, 1, 2, 3], "compute_flops": [FC, FC, FC / 1000, FC / 1000]}
    pd.DataFrame(speeds).to_csv(trace, index=False)
    system = {"trace": str(trace), "policy": "deadline", "deadline_s": 1.0}
    rounds, clients = run(tmp_path, {}, system, num_clients=4, clients_per_round=4)
    clients = clients.sort_values(["round", "client_id"])
    assert clients["status"].tolist() == (["completed"] * 2 + ["straggler_dropped"] * 2) * 2
    assert rounds["samples_seen"].tolist() == [2 * B, 4 * B] and (rounds["round_duration_s"] <= 1.0).all()

    rounds, clients = run(tmp_path, {}, {"availability": {"mid_round_dropout": 0.5}}, num_clients=6, rounds=3)
    failed = clients[clients["status"] == "failed"]
    assert len(failed) > 0 and (failed["bytes_up"] == 0).all() and (failed["samples"] == 0).all()

    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    rounds, _ = run(tmp_path, {}, system, num_clients=12, clients_per_round=4)
    assert (rounds["num_sampled"] == 6).all() and (rounds["num_completed"] == 4).all()  # ceil(1.3 x 4) sampled
    rounds, clients = run(tmp_path, {}, {"policy": "deadline", "deadline_s": 1e-6})  # nobody in time
    assert (rounds["num_completed"] == 0).all() and (rounds["samples_seen"] == 0).all()
    assert rounds["train_loss"].isna().all() and (clients["status"] == "straggler_dropped").all()


def _tables(run_dir) -> list[pd.DataFrame]:
    tables = [pd.read_parquet(run_dir / f"{name}.parquet") for name in ("rounds", "clients")]
    return [df.drop(columns=[c for c in VOLATILE if c in df]) for df in tables]


def test_both_backends_give_the_same_numbers(tmp_path, ray_session):
    """Deadline drops and mid-round failures, two workers: the replicas catch up from the log on either backend."""
    system = {
        "compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 0.5},
        "availability": {"mid_round_dropout": 0.15},
        "policy": "deadline",
        "deadline_s": 0.9,
    }
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "batch_size": B, "eval_every": 1}
    tables = {}
    for backend in ("local", "ray"):
        algo = {"name": NAME, "perturbations": Q, "local_steps": 2}
        sc = tiny_scenario(algorithms=[algo], federation=fed, system=system, runtime={"backend": backend})
        engine = Engine(load_scenario(sc), progress=False)
        try:
            (summary,) = engine.run_all(tmp_path / backend)
        finally:
            engine.close()
        assert summary.status == "completed"
        tables[backend] = _tables(summary.run_dir)
    for local, ray in zip(tables["local"], tables["ray"]):
        pd.testing.assert_frame_equal(ray, local, check_exact=True)


def test_a_resumed_run_gives_the_same_numbers(tmp_path):
    class StopInRound3(Engine):  # as a Ctrl-C during round 3 would
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 5, "batch_size": B, "eval_every": 2}
    sc = load_scenario(tiny_scenario(algorithms=[{"name": NAME, "perturbations": 2, "local_steps": 2}], federation=fed))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "stopped"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for got, want in zip(_tables(out), _tables(reference.run_dir)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_learns_on_digits(tmp_path):
    """Budget: digits (10 classes, chance 0.10), 20 clients, 5 per round, batch 32, cnn width 16 cut after block1,
    10 rounds of 5 local steps, Q = 5 (~5 s)."""
    fed = {"num_clients": 20, "clients_per_round": 5, "rounds": 10, "batch_size": 32, "eval_every": 10}
    sc = tiny_scenario(algorithms=[{"name": NAME, "local_steps": 5}], federation=fed)
    sc["task"]["model"]["width"] = 16
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path)
    assert summary.status == "completed" and summary.final["test_acc"] > 0.8  # 0.89 here
