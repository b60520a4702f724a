"""SplitFed-V1, MU-SplitFed and FSL-SAGE: ledger signatures as closed forms, learning on digits, invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.fsl_sage import FSLSAGE, aux_flops, estimated_grad
from hosfl_sim.algorithms.mu_splitfed import MUSplitFed
from hosfl_sim.algorithms.sfl import average_into
from hosfl_sim.algorithms.task import sample_batch
from hosfl_sim.comm import Ledger
from hosfl_sim.comm.channel import Channel
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.system.clock import sync_clock
from hosfl_sim.zo import directions
from tests.conftest import tiny_scenario

B, ROUNDS, K, W = 16, 3, 3, 8  # batch, rounds, clients per round, cnn width
ACT = W * 4 * 4  # cnn block1 on 8x8 digits: (W, 4, 4) per sample
D_C = W * 1 * 9 + W  # block1: conv 1 -> W, 3x3, bias
# block2 conv W -> 2W, block3 conv 2W -> 4W (2x2 left), hidden 4W*2*2 -> 8W, fc 8W -> 10
D_S = (2 * W * W * 9 + 2 * W) + (4 * W * 2 * W * 9 + 4 * W) + (16 * W * 8 * W + 8 * W) + (8 * W * 10 + 10)
D_AUX = ACT * 10 + 10  # FSL-SAGE aux head: linear map of the flattened activation to 10 classes
SGD = {"name": "sgd", "weight_decay": 0.0}
MU_REFERENCE = {
    "name": "mu_splitfed",
    "mu": 0.005,
    "client_optimizer": {**SGD, "lr": 0.005},
    "server_optimizer": {**SGD, "lr": 0.01},
}
WALL = ["wall_time_s"]


def _run(tmp_path, algorithm: dict, n: int = 5, rounds: int = ROUNDS, **runtime) -> tuple[pd.DataFrame, pd.DataFrame]:
    sc = tiny_scenario(
        algorithms=[algorithm],
        federation={"num_clients": n, "clients_per_round": K, "rounds": rounds, "batch_size": B, "eval_every": rounds},
        runtime={"backend": "local", "num_workers": 2, **runtime},
    )
    out = tmp_path / f"{algorithm['name']}_{runtime.get('backend', 'local')}_{runtime.get('num_workers', 2)}"
    engine = Engine(load_scenario(sc), progress=False)
    engine.run_all(out)
    if runtime.get("backend") == "ray":
        engine.backend.shutdown()
    (run,) = out.iterdir()
    return pd.read_parquet(run / "rounds.parquet"), pd.read_parquet(run / "clients.parquet")


def _per_round(rounds: pd.DataFrame) -> pd.DataFrame:
    cols = rounds[[c for c in rounds if c.startswith("bytes_")]]
    return cols.diff().fillna(cols).astype(np.int64)


def test_registered_with_one_line_summaries():
    for name in ("splitfed_v1", "mu_splitfed", "fsl_sage"):
        summary = ALGORITHMS[name].summary
        assert "\n" not in summary and "order" in summary and "up:" in summary and "down:" in summary


def test_splitfed_v1_charges_the_server_side_exchange(tmp_path):
    steps = 2
    rounds, clients = _run(tmp_path, {"name": "splitfed_v1", "local_steps": steps})
    per_round = _per_round(rounds)
    assert (per_round["bytes_model_up"] == K * (D_C + D_S) * 4).all()
    assert (per_round["bytes_model_down"] == K * (D_C + D_S) * 4).all()
    assert (per_round["bytes_act_up"] == K * steps * B * ACT * 4).all()
    assert (per_round["bytes_grad_down"] == per_round["bytes_act_up"]).all()
    assert (per_round["bytes_labels_up"] == K * steps * B * 8).all()
    for col in ("bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (per_round[col] == 0).all()
    # each client's own link carries its client part only; the server copies travel on the server link
    assert (clients["bytes_up"] == steps * B * (ACT * 4 + 8) + D_C * 4).all()
    assert (clients["bytes_down"] == steps * B * ACT * 4 + D_C * 4).all()
    off_clients = rounds["bytes_total"].iloc[-1] - clients["bytes_up"].sum() - clients["bytes_down"].sum()
    assert off_clients == ROUNDS * K * 2 * D_S * 4


def test_mu_splitfed_sends_three_activations_up_and_one_scalar_down_per_step(tmp_path):
    steps = 2
    rounds, clients = _run(tmp_path, {**MU_REFERENCE, "local_steps": steps})
    per_round = _per_round(rounds)
    assert (per_round["bytes_act_up"] == K * steps * 3 * B * ACT * 4).all()
    assert (per_round["bytes_scalar_down"] == K * steps * 4).all()
    assert (per_round["bytes_labels_up"] == K * steps * B * 8).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_seed_down"):
        assert (per_round[col] == 0).all()  # the client's direction never travels: only its scalar comes back
    assert (per_round["bytes_model_up"] == K * (D_C + D_S) * 4).all()
    assert (per_round["bytes_model_down"] == K * (D_C + D_S) * 4).all()
    assert (clients["bytes_up"] == steps * (3 * B * ACT * 4 + B * 8) + D_C * 4).all()
    assert (clients["bytes_down"] == steps * 4 + D_C * 4).all()


@pytest.mark.parametrize("every, expected", [(5, [2, 1, 2]), (3, [3, 2, 2])])
def test_fsl_sage_sends_cut_gradients_only_at_alignment_steps(tmp_path, every, expected):
    steps = 7  # run-wide local steps t = 0..20; alignments at t % align_every == 0, per round 1..3
    rounds, clients = _run(tmp_path, {"name": "fsl_sage", "local_steps": steps, "align_every": every})
    t = np.arange(ROUNDS * steps).reshape(ROUNDS, steps)
    aligned = (t % every == 0).sum(axis=1)
    assert aligned.tolist() == expected
    per_round = _per_round(rounds)
    assert per_round["bytes_grad_down"].tolist() == (K * aligned * B * ACT * 4).tolist()
    assert per_round["bytes_act_up"].tolist() == (K * aligned * B * ACT * 4).tolist()
    assert per_round["bytes_labels_up"].tolist() == (K * aligned * B * 8).tolist()
    assert (per_round["bytes_model_up"] == K * (D_C + D_AUX) * 4).all()
    assert (per_round["bytes_model_down"] == K * (D_C + D_AUX) * 4).all()
    for col in ("bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (per_round[col] == 0).all()
    n = aligned[clients["round"].to_numpy() - 1]
    assert (clients["bytes_down"] == n * B * ACT * 4 + (D_C + D_AUX) * 4).all()
    assert (clients["bytes_up"] == n * B * (ACT * 4 + 8) + (D_C + D_AUX) * 4).all()
    assert (clients["samples"] == steps * B).all()  # every step trains, aligned or not


def test_fsl_sage_server_steps_only_at_alignment_while_clients_train_from_the_aux_head():
    sc = load_scenario(
        tiny_scenario(
            algorithms=[{"name": "fsl_sage", "local_steps": 1}],
            federation={"num_clients": 4, "clients_per_round": 2, "rounds": 2, "batch_size": B},
        )
    )
    engine = Engine(sc, progress=False)
    spec, backend = engine.spec(0, 0), engine.backend
    backend.setup(FSLSAGE, spec)
    algo = FSLSAGE(sc.algorithms[0], sc.federation, 0, 2, spec.partition.sizes())
    ledger, clients = Ledger(), np.array([1, 3])

    def snapshot():
        role = backend.server_role
        return [
            p.detach().clone() for p in [*role.server.parameters(), *role.client.parameters(), *role.aux.parameters()]
        ]

    def same(x, y):
        return all(torch.equal(a, b) for a, b in zip(x, y))

    n_server = len(list(backend.server_role.server.parameters()))
    before = snapshot()
    ledger.start_round(1)
    algo.run_round(
        1, clients, backend, Channel(ledger, sync_clock(clients, sc.federation.num_clients))
    )  # t = 0: alignment
    after_aligned = snapshot()
    assert not same(before[:n_server], after_aligned[:n_server])
    assert ledger.totals["grad_down"] == 2 * B * ACT * 4
    ledger.start_round(2)
    algo.run_round(
        2, clients, backend, Channel(ledger, sync_clock(clients, sc.federation.num_clients))
    )  # t = 1: the aux head's gradient only
    after_local = snapshot()
    assert same(after_aligned[:n_server], after_local[:n_server]), "the server stepped without an alignment"
    assert not same(after_aligned[n_server:], after_local[n_server:]), "the clients did not train"
    assert ledger.totals["grad_down"] == ledger.totals["act_up"] == 2 * B * ACT * 4  # nothing new crossed


def test_average_into_is_fedavg_or_a_global_step():
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 1.0]]))
    states = [{"weight": np.array([[3.0, 1.0]], np.float32)}, {"weight": np.array([[1.0, 5.0]], np.float32)}]
    average_into(module, states, np.array([1.0, 3.0]))  # (1*[3,1] + 3*[1,5]) / 4
    assert module.weight.tolist() == [[1.5, 4.0]]
    average_into(module, states, np.ones(2), global_lr=0.3)  # [1.5, 4] + 0.3 * ([2, 3] - [1.5, 4])
    assert np.allclose(module.weight.detach().numpy(), [[1.65, 3.7]])


def mu_splitfed_probed(algo: dict) -> tuple:
    """MU-SplitFed's roles in this process, client 1 begun and probed at round 1, step 0:
    (spec, client role, server role, the global client state, the probe's upload)."""
    sc = load_scenario(tiny_scenario(algorithms=[algo], federation={"num_clients": 4, "clients_per_round": 2}))
    engine = Engine(sc, progress=False)
    spec, backend = engine.spec(0, 0), engine.backend
    backend.setup(MUSplitFed, spec)
    client, server = backend.workers[0], backend.server_role
    state, _ = server.global_client()
    server.begin_copies(1)
    client.begin(1, state)
    upload, _ = client.probe(1, 1, 0)
    return spec, client, server, state, upload


def test_mu_splitfed_client_step_follows_the_directional_derivative():
    """s / mu from the server is <dL/dtheta_c, u> (central difference through the server copy after its tau
    steps), and the client's SGD step is exactly -lr * (s / mu) * u with u regenerated from the client's seed."""
    spec, client, server, state, upload = mu_splitfed_probed(MU_REFERENCE)
    s, _ = server.step(1, 1, 0, upload)
    part, seed = client.local[1], client.seed_of[1]
    feats, labels = sample_batch(spec, 1, 1, 0)
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in part.named.items()}
    a = functional_call(part.module, leaves, args=(), kwargs=client.client_inputs(feats))
    loss = F.cross_entropy(server.copies[1].module(a), torch.from_numpy(labels))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    u = list(directions(list(leaves.values()), seed))
    derivative = sum(float((g * ui).sum()) for g, ui in zip(grads, u))
    mu, lr = MU_REFERENCE["mu"], MU_REFERENCE["client_optimizer"]["lr"]
    assert s[0] / mu == pytest.approx(derivative, rel=0.1)  # float32 losses, ReLU kinks within mu: a few % off
    before = [p.detach().clone() for p in part.named.values()]
    client.update(1, s)
    for p0, p1, ui in zip(before, part.named.values(), u):
        torch.testing.assert_close(p1, p0 - lr * float(s[0]) / mu * ui)


def test_mu_splitfed_reads_server_steps_and_global_lr_from_the_config():
    spec, client, server, state, upload = mu_splitfed_probed({**MU_REFERENCE, "server_steps": 3, "global_lr": 0.5})
    _, smeta = server.step(1, 1, 0, upload)
    fs = server.forward_flops(torch.from_numpy(upload["a"][0]), upload["side"])
    assert smeta["flops"] == (2 * 3 + 2) * fs  # three two-sided steps on the anchor, then a+ and a-
    trained = server.copies[1].state()
    before = {n: p.detach().numpy().copy() for n, p in server.server.named_parameters() if n in trained}
    assert any(not np.array_equal(trained[n], before[n]) for n in trained)
    algorithm = MUSplitFed(spec.algorithm, spec.federation, 0, 1, spec.partition.sizes())
    weights, lr = algorithm.aggregation([1])  # the driver reads global_lr; unweighted
    assert lr == 0.5 and list(weights) == [1.0]
    server.finish([1], weights, lr, {k: v + 1.0 for k, v in state.items()})  # the client part came back moved by +1
    client_now = dict(server.client.named_parameters())
    server_now = dict(server.server.named_parameters())
    for n, v in state.items():  # theta + 0.5 * (mean_k theta_k - theta)
        np.testing.assert_allclose(client_now[n].detach().numpy(), v + 0.5, rtol=0, atol=1e-6, err_msg=n)
    for n, v in before.items():
        expected = v + 0.5 * (trained[n] - v)
        np.testing.assert_allclose(server_now[n].detach().numpy(), expected, rtol=0, atol=1e-6, err_msg=n)
    assert not server.copies  # every copy of the round is discarded


def test_fsl_sage_reads_its_aux_settings_from_the_config():
    algo = {"name": "fsl_sage", "aux_lr": 0.02, "aux_buffer": 2, "aux_passes": 3}
    sc = load_scenario(tiny_scenario(algorithms=[algo], federation={"num_clients": 4, "clients_per_round": 2}))
    engine = Engine(sc, progress=False)
    spec, backend = engine.spec(0, 0), engine.backend
    backend.setup(FSLSAGE, spec)
    client, server = backend.workers[0], backend.server_role
    state, _ = server.global_client()
    aux_state, _ = server.global_aux()
    client.begin(1, state, aux_state)
    head, opt, buffer = client.aux[1]
    assert opt.param_groups[0]["lr"] == 0.02
    for step in range(3):
        upload, meta = client.forward(1, 1, step)
        g, _ = server.train_step(upload)
        out = client.align(1, 1, step, g)
        assert len(buffer) == min(step + 1, 2)  # the newest aux_buffer batches
        assert out["aux_flops"] == 3 * len(buffer) * aux_flops(head, len(upload["y"]), refit=True)  # aux_passes over it
    assert opt.state[head[1].weight]["step"] == 3 * (1 + 2 + 2)  # one Adam step per batch per pass


@pytest.mark.parametrize("refit", [False, True])
def test_fsl_sage_aux_flops_are_what_the_flop_counter_counts(refit):
    """The same computation as the aux head's, written without modules (FlopCounterMode's module tracker cannot run
    under autograd.grad), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(ACT, 10))
    w, b = (p.detach().clone().requires_grad_(True) for p in head[1].parameters())
    a, y = torch.randn(B, W, 4, 4), torch.arange(B) % 10
    with FlopCounterMode(display=False) as counter:
        g_hat, _ = estimated_grad(lambda x: F.linear(x.flatten(1), w, b), a, y, create_graph=refit)
        if refit:
            g_hat.pow(2).sum().backward()
    assert aux_flops(head, B, refit) == counter.get_total_flops()


THREE = [{"name": "splitfed_v1"}, {**MU_REFERENCE}, {"name": "fsl_sage", "local_steps": 3}]
FED = {"num_clients": 5, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2}


def _metrics(out) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    return {
        p.name: (
            pd.read_parquet(p / "rounds.parquet").drop(columns=WALL),
            pd.read_parquet(p / "clients.parquet").drop(columns=["wall_compute_s", "worker"]),
        )
        for p in sorted(out.iterdir())
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == 3
    for run, (rounds, clients) in a.items():
        pd.testing.assert_frame_equal(rounds, b[run][0], check_exact=True, obj=run)
        pd.testing.assert_frame_equal(clients, b[run][1], check_exact=True, obj=run)


def test_metrics_do_not_depend_on_the_worker_count(tmp_path):
    for workers in (1, 3):
        sc = tiny_scenario(algorithms=THREE, federation=FED, runtime={"backend": "local", "num_workers": workers})
        Engine(load_scenario(sc), progress=False).run_all(tmp_path / str(workers))
    _assert_same(_metrics(tmp_path / "1"), _metrics(tmp_path / "3"))


def test_same_numbers_on_ray(tmp_path, ray_session):
    runs = {}
    for backend in ("local", "ray"):
        sc = tiny_scenario(algorithms=THREE, federation=FED, runtime={"backend": backend, "num_workers": 2})
        engine = Engine(load_scenario(sc), progress=False)
        engine.run_all(tmp_path / backend)
        if backend == "ray":
            engine.backend.shutdown()
        runs[backend] = _metrics(tmp_path / backend)
    _assert_same(runs["local"], runs["ray"])


def _final_acc(tmp_path, algorithm: dict, rounds: int, width: int) -> float:
    fed = {"num_clients": 20, "clients_per_round": 5, "rounds": rounds, "batch_size": 32, "eval_every": rounds}
    sc = tiny_scenario(algorithms=[algorithm], federation=fed)
    sc["task"]["model"]["width"] = width
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / algorithm["name"])
    assert summary.status == "completed"
    return summary.final["test_acc"]


# Budgets: digits (10 classes, chance 0.10), 20 clients, 5 per round, batch 32, cnn cut after block1.
def test_splitfed_v1_learns_on_digits(tmp_path):
    assert _final_acc(tmp_path, {"name": "splitfed_v1", "local_steps": 2}, rounds=20, width=16) > 0.5


def test_fsl_sage_learns_on_digits(tmp_path):
    assert _final_acc(tmp_path, {"name": "fsl_sage", "local_steps": 5}, rounds=10, width=16) > 0.5


@pytest.mark.slow
def test_mu_splitfed_learns_on_digits_with_its_reference_settings(tmp_path):
    """Fully zeroth-order from a random init: at chance for the first ~100 rounds (5 local steps each), above it
    from ~150. With these settings (SGD, no clipping) the same run diverges near round 476, so the budget stops
    short of that."""
    assert _final_acc(tmp_path, {**MU_REFERENCE, "local_steps": 5}, rounds=350, width=8) > 0.2
