"""The baselines on the simulated clock: round durations against closed forms, and the round policies.

A constant profile (every client computes at F FLOP/s, uplink U and downlink D bit/s, latency L s; the
server at S FLOP/s) and N = K clients, so nobody has records to replay; each closed form spells out one
client's messages and compute in order. Identical clients meet at the one server at the same time, so
per-client sequential server work queues: the k-th served waits for k earlier requests.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.fedavg import FedAvgClient, FedAvgServer
from hosfl_sim.algorithms.task import count_flops
from hosfl_sim.config import load_scenario
from hosfl_sim.models import JoinedModel
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

F, U, D, L, S = 2e8, 4e6, 8e6, 0.01, 1e9  # client FLOP/s, up/down bit/s, latency s, server FLOP/s
K, B, P, W = 3, 16, 4, 8  # clients, batch, perturbations, CNN width
ACT = W * 4 * 4  # values per sample after block1 on 8x8 digits
D_C = W * 9 + W  # client part: block1 conv 1 -> W, 3x3, with bias
D_AUX = ACT * 10 + 10  # FSL-SAGE's aux head: a linear map of the activation to 10 classes
SYSTEM = {
    "compute_flops": {"kind": "constant", "value": F},
    "uplink_bps": {"kind": "constant", "value": U},
    "downlink_bps": {"kind": "constant", "value": D},
    "latency_s": {"kind": "constant", "value": L},
    "server_flops": S,
}
CLIENT_SIDE = ["fedavg", "zo_fl", "splitfed_v1", "mu_splitfed", "fsl_sage"]


def run(tmp_path, algorithm: dict, system: dict | None = None, **fed) -> tuple[pd.DataFrame, pd.DataFrame]:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 5, **fed}
    sc = tiny_scenario(algorithms=[algorithm], federation=federation, system={**SYSTEM, **(system or {})})
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / algorithm["name"])
    assert summary.status == "completed"
    clients = summary.run_dir / "clients.parquet"
    return pd.read_parquet(summary.run_dir / "rounds.parquet"), pd.read_parquet(clients) if clients.exists() else None


@pytest.fixture(scope="module")
def flops() -> dict[str, float]:
    """Forward FLOPs on one batch, counted the way the roles count them: client part, server part, joined model."""
    sc = load_scenario(tiny_scenario(federation={"num_clients": K, "clients_per_round": K, "batch_size": B}))
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    fc, fs = count_flops(split.client, x=x), count_flops(split.server, split.client(x=x))
    whole = count_flops(JoinedModel(split), x=x)
    assert whole == fc + fs  # the joined model is the two parts, one after the other
    return {"fc": fc, "fs": fs, "whole": whole, "d": sum(p.numel() for p in JoinedModel(split).parameters())}


def up(nbytes: float) -> float:
    return nbytes * 8 / U + L


def down(nbytes: float) -> float:
    return nbytes * 8 / D + L


def queued(arrive: float, server: float, after: float) -> float:
    """When the last of K identical clients finishes: all arrive together, are served in turn, then go on."""
    return arrive + K * server + after


def assert_duration(rounds: pd.DataFrame, clients: pd.DataFrame, expected: float) -> None:
    assert rounds["round_duration_s"].tolist() == pytest.approx([expected] * 2, rel=1e-12)
    assert rounds["sim_time_s"].iloc[-1] == pytest.approx(2 * expected, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([expected] * 2 * K, rel=1e-12)  # the server waits for all
    assert (clients["status"] == "completed").all() and (rounds["num_dropped"] == 0).all()


def test_fedavg_round_is_weights_down_local_training_weights_up(tmp_path, flops):
    steps, weights = 2, 4 * flops["d"]
    rounds, clients = run(tmp_path, {"name": "fedavg", "local_steps": steps})
    compute = steps * 3 * flops["whole"] / F  # forward + backward of the whole model per step
    assert_duration(rounds, clients, down(weights) + compute + up(weights))
    assert clients["compute_s"].tolist() == pytest.approx([compute] * 2 * K, rel=1e-12)


def test_zo_fl_round_is_seeds_probes_scalars_per_step(tmp_path, flops):
    steps = 2
    rounds, clients = run(tmp_path, {"name": "zo_fl", "perturbations": P, "local_steps": steps})
    apply = 2 * P * flops["d"] / F  # the update on the client's replica: a multiply-add per weight and seed
    step = down(8 * P) + 2 * P * flops["whole"] / F + up(4 * P) + down(4 * P) + apply  # seeds, 2P forwards, s, s_bar
    assert_duration(rounds, clients, steps * step)


def test_splitfed_v1_queues_clients_at_the_main_server(tmp_path, flops):
    fc, fs = flops["fc"], flops["fs"]
    rounds, clients = run(tmp_path, {"name": "splitfed_v1"})
    arrive = down(4 * D_C) + fc / F + up(4 * B * ACT) + up(8 * B)  # client part, forward, activations, labels
    after = down(4 * B * ACT) + 2 * fc / F + up(4 * D_C)  # cut gradient, backward, client part
    assert_duration(rounds, clients, queued(arrive, 3 * fs / S, after))


def test_mu_splitfed_server_takes_tau_steps_per_request(tmp_path, flops):
    fc, fs, tau = flops["fc"], flops["fs"], 3
    rounds, clients = run(tmp_path, {"name": "mu_splitfed", "server_steps": tau})
    arrive = down(4 * D_C) + 3 * fc / F + up(3 * 4 * B * ACT) + up(8 * B)  # a, a+, a- and labels
    server = (2 * tau + 2) * fs / S  # tau two-sided steps on the anchor, then a+ and a-
    after = down(4) + up(4 * D_C)  # one scalar down (the update does no forward), client part up
    assert_duration(rounds, clients, queued(arrive, server, after))


def test_fsl_sage_round_is_one_alignment_then_a_local_step(tmp_path, flops):
    fc, fs = flops["fc"], flops["fs"]
    algo = {"name": "fsl_sage", "local_steps": 2, "align_every": 2, "aux_passes": 3}  # steps t = 2r - 2, 2r - 1
    rounds, clients = run(tmp_path, algo)
    product = 2 * B * ACT * 10  # one (B, ACT) x (ACT, 10) matmul of the aux head
    weights = 4 * (D_C + D_AUX)
    arrive = down(weights) + fc / F + up(4 * B * ACT) + up(8 * B)
    refit = 3 * 6 * product  # aux_passes over a buffer of one batch; forward, input gradient and their backward
    aligned = down(4 * B * ACT) + (2 * fc + refit) / F
    local = (3 * fc + 2 * product) / F  # forward, the aux head's gradient, backward
    assert_duration(rounds, clients, queued(arrive, 3 * fs / S, aligned + local + up(weights)))


@pytest.mark.parametrize("name, per_batch", [("centralized", lambda f: 3 * f), ("mezo", lambda f: 2 * P * f)])
def test_centralized_rounds_last_the_server_compute(tmp_path, flops, name, per_batch):
    algo = {"name": name, "perturbations": P} if name == "mezo" else {"name": name}
    rounds, clients = run(tmp_path, algo)
    expected = K * per_batch(flops["whole"]) / S  # as many batches of B as the K clients would process
    assert rounds["round_duration_s"].tolist() == pytest.approx([expected] * 2, rel=1e-12)
    assert clients.empty and (rounds["bytes_total"] == 0).all()


def test_fedavg_aggregates_only_the_clients_that_meet_the_deadline(tmp_path):
    """Clients 0 and 1 compute fast, 2 and 3 a thousand times slower; the deadline falls between them."""
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"client_id": [0, 1, 2, 3], "compute_flops": [F, F, F / 1000, F / 1000]}).to_csv(trace, index=False)
    system = {**SYSTEM, "trace": str(trace), "policy": "deadline", "deadline_s": 1.0}
    fed = {"num_clients": 4, "clients_per_round": 4, "rounds": 1, "batch_size": B, "eval_every": 1}
    sc = tiny_scenario(algorithms=[{"name": "fedavg"}], federation=fed, system=system)
    engine = Engine(load_scenario(sc), progress=False)
    (summary,) = engine.run_all(tmp_path / "run")
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    clients = pd.read_parquet(summary.run_dir / "clients.parquet").sort_values("client_id")
    assert clients["status"].tolist() == ["completed"] * 2 + ["straggler_dropped"] * 2
    assert rounds["num_completed"].tolist() == [2] and rounds["samples_seen"].tolist() == [2 * B]
    assert (clients["bytes_up"] > 0).all()  # everyone uploaded; the server knew two would arrive too late

    spec = engine.spec(0, 0)
    start, _ = FedAvgServer(spec).global_state()
    client, sizes = FedAvgClient(spec), spec.partition.sizes()
    trained = [client.train(c, 1, start)[0] for c in range(4)]

    def average(ids: list[int]) -> dict[str, torch.Tensor]:
        ref = FedAvgServer(spec)
        ref.fedavg(sizes[ids], *[trained[c] for c in ids])
        return ref.model.state_dict()

    result = engine.backend.server_role.model.state_dict()
    kept, everyone = average([0, 1]), average([0, 1, 2, 3])
    for name, value in result.items():
        torch.testing.assert_close(value, kept[name], msg=name)
    assert any(not torch.allclose(result[n], everyone[n]) for n in result)


@pytest.mark.parametrize("name", CLIENT_SIDE)
def test_clients_that_fail_mid_round_send_nothing_up(tmp_path, name):
    system = {"availability": {"mid_round_dropout": 0.5}}
    algo = {"name": name, "perturbations": 2} if "perturbations" in ALGORITHMS[name].options else {"name": name}
    rounds, clients = run(tmp_path, algo, system, num_clients=6, rounds=3)
    failed = clients[clients["status"] == "failed"]
    assert len(failed) > 0 and (failed["bytes_up"] == 0).all() and (failed["bytes_down"] > 0).all()
    assert (failed["compute_s"] == 0).all()
    done = clients[clients["status"] == "completed"]
    assert (done["bytes_up"] > 0).all() and (done["compute_s"] > 0).all()


@pytest.mark.parametrize("name", CLIENT_SIDE)
def test_a_round_nobody_finishes_in_time_trains_nothing_and_completes(tmp_path, name):
    system = {"policy": "deadline", "deadline_s": 1e-6}
    rounds, clients = run(tmp_path, {"name": name}, system)
    assert (rounds["num_completed"] == 0).all() and (rounds["samples_seen"] == 0).all()
    assert rounds["train_loss"].isna().all() and (clients["status"] == "straggler_dropped").all()


@pytest.mark.parametrize("name", ["cifar10_resnet18", "cifar10_resnet18_noniid", "cifar100_resnet18", "noniid_all"])
def test_baseline_scenarios_validate(name):
    sc = load_scenario(name)
    names = {a.name for a in sc.algorithms}
    # the paper's SFL and SFL-ZO: SplitFed-V1 shaped, with local epochs
    paper = name != "noniid_all"
    first_order, zeroth_order = ("splitfed_v1", "sfl_zo_v1") if paper else ("sfl", "sfl_zo")
    assert {"hosfl", first_order, zeroth_order, "mu_splitfed", "fsl_sage_persistent" if paper else "fsl_sage"} <= names
    mu = next(a for a in sc.algorithms if a.name == "mu_splitfed")
    assert (mu.mu, mu.server_steps, mu.global_lr) == (0.005, 2, 0.3)
    assert (mu.client_optimizer.name, mu.client_optimizer.lr, mu.server_optimizer.lr) == ("sgd", 0.005, 0.01)
    if name == "noniid_all":  # every algorithm, the paper code's SplitFed-V1-shaped variants aside
        assert names == set(ALGORITHMS) - {"sfl_zo_v1", "fsl_sage_persistent"}
        return
    model, fed = sc.task.model, sc.federation
    assert (model.name, model.cut, model.width) == ("resnet18_imagenet", "layer2", 64)
    assert (fed.num_clients, fed.clients_per_round, fed.batch_size, fed.budget_samples) == (100, 10, 32, 160000)
    assert fed.rounds * fed.clients_per_round * fed.batch_size > fed.budget_samples  # the budget stops the run
    hosfl = next(a for a in sc.algorithms if a.name == "hosfl")
    assert (hosfl.perturbations, hosfl.mu) == (5, 1e-3)
    assert (hosfl.cut_grad_scale, hosfl.server_grad_scale) == ("1/K", "1/K^2")  # the authors' vision runner
    sfl = next(a for a in sc.algorithms if a.name == "splitfed_v1")
    assert (sfl.label, sfl.local_epochs) == ("SFL", 1)
    assert (model.weights, sc.task.dataset.normalize, model.freeze_bn_affine) == ("imagenet", "cifar", True)
    for opt in (hosfl.client_optimizer, hosfl.server_optimizer):
        assert (opt.name, opt.lr, opt.betas, opt.weight_decay) == ("adamw", 1e-3, [0.9, 0.999], 1e-4)
    assert sc.runtime.worker_num_gpus > 0 and sc.runtime.server_num_gpus > 0
    partition = sc.task.partition
    if "noniid" in name:
        assert (partition.scheme, partition.alpha) == ("dirichlet", 1.0)
    else:
        assert partition.scheme == "iid"


@pytest.mark.parametrize("name", sorted(n for n, c in ALGORITHMS.items() if c.supports_policies))
def test_the_sample_budget_counts_the_samples_of_the_clients_a_round_kept(tmp_path, name):
    """Under deadline drops and mid-round failures, a round adds to samples_seen (what budget_samples counts)
    exactly the samples of the clients that completed it, whatever the algorithm."""
    from tests.golden.make_golden import scenario

    algo = {"name": name, "perturbations": 2} if "perturbations" in ALGORITHMS[name].options else {"name": name}
    sc = {**scenario("deadline"), "algorithms": [algo]}  # one local step: kept for the step is kept for the round
    sync = {**sc["system"], "policy": "sync"}
    (summary,) = Engine(load_scenario({**sc, "system": sync}), progress=False).run_all(tmp_path / "sync")
    finish = pd.read_parquet(summary.run_dir / "clients.parquet").query("status == 'completed'")["finish_s"]
    for q in (0.5, 0.25, 0.1):  # a deadline some clients miss (the barriers come before a client's finish)
        deadline = {**sc["system"], "deadline_s": float(finish.quantile(q))}
        out = tmp_path / f"deadline_{q}"
        (summary,) = Engine(load_scenario({**sc, "system": deadline}), progress=False).run_all(out)
        rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
        clients = pd.read_parquet(summary.run_dir / "clients.parquet")
        if (clients["status"] == "straggler_dropped").any():
            break
    assert (clients["status"] == "straggler_dropped").any() and (clients["status"] == "completed").any()
    kept = clients[clients["status"] == "completed"].groupby("round")["samples"].sum()
    added = rounds.set_index("round")["samples_seen"].diff().fillna(rounds["samples_seen"].iloc[0])
    assert added.tolist() == kept.reindex(added.index, fill_value=0).tolist()
