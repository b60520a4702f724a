"""HERON-SFL: a local step against the zeroth-order update in closed form, the ledger and clock in closed form,
the round policies, both backends to the same numbers, a resume to the same numbers, no feedback from the server
to the clients, and learning on digits.

Closed forms (cnn cut after block1 on 8x8 digits, width W, batch B, K = N clients so all are sampled every round,
S local steps, h = upload_every, P perturbations): uploads at the steps t % h == 0, n = ceil(S / h) of them, so per
round act_up = K n B ACT 4, labels_up = K n B 8, model up = model down = K (D_C + D_AUX) 4, and nothing else.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.fsl_sage import build_aux
from hosfl_sim.algorithms.heron_sfl import HERONClient, PartAndHead
from hosfl_sim.algorithms.sfl import shared_state, to_numpy
from hosfl_sim.algorithms.task import count_flops, sample_batch
from hosfl_sim.config import load_scenario
from hosfl_sim.models.split import trainable_parameters
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from hosfl_sim.zo import derive_seeds
from hosfl_sim.zo.perturb import directions
from tests.conftest import tiny_scenario
from tests.golden.make_golden import VOLATILE

FC, U, D, L = 2e8, 4e6, 8e6, 0.01  # client FLOP/s, up/down bit/s, latency s
K, B, W, P = 3, 16, 8, 3  # clients per round, batch, cnn width, perturbations
ACT = W * 4 * 4  # cnn block1 on 8x8 digits: (W, 4, 4) per sample
D_C = W * 9 + W  # client part: block1 conv 1 -> W, 3x3, with bias
D_AUX = ACT * 10 + 10  # aux head: a linear map of the activation to 10 classes
WEIGHTS = 4 * (D_C + D_AUX)  # client part and aux head, float32, each way once per round
NAME = "heron_sfl"


def constant_system(server_flops: float) -> dict:
    const = lambda v: {"kind": "constant", "value": v}  # noqa: E731
    return {"compute_flops": const(FC), "uplink_bps": const(U), "downlink_bps": const(D), "latency_s": const(L),
            "server_flops": server_flops}  # fmt: skip


def run(tmp_path, algorithm: dict | None = None, system: dict | None = None, **fed) -> tuple[pd.DataFrame, ...]:
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2, **fed}
    algorithms = [{"name": NAME, "perturbations": P, **(algorithm or {})}]
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
    assert cls.supports_policies and cls.supports_epochs
    assert {"perturbations", "mu", "distribution", "probe", "upload_every"} <= cls.options


def test_a_local_step_is_the_zeroth_order_update_of_part_and_head_in_closed_form():
    """With plain SGD (lr eta): w' = w - eta (1 / (P mu)) sum_p (l(w + mu u_p) - l(w)) u_p over the client part and
    aux head together, u_p from the client's own seeds; the upload is f_c(theta_c; x) at w. No gradient anywhere."""
    eta, mu, cid, rnd, step = 0.05, 1e-3, 2, 1, 0
    sgd = {"name": "sgd", "lr": eta, "momentum": 0.0, "weight_decay": 0.0}
    algo = {"name": NAME, "perturbations": P, "mu": mu, "client_optimizer": sgd}
    sc = load_scenario(tiny_scenario(algorithms=[algo], federation={"num_clients": 4, "clients_per_round": 2}))
    spec = Engine(sc, backend=object(), progress=False).spec(0, 0)
    role = HERONClient(spec)
    role.begin(cid, to_numpy(shared_state(role.base)), to_numpy(role.aux_base.state_dict()))
    up, meta = role.step(cid, rnd, step, True)
    got = role.upload(cid)

    part = spec.build_model().client
    joint = PartAndHead(part, build_aux(spec, part, ("x",)))
    named = dict(trainable_parameters(joint))
    w = {n: p.detach().clone() for n, p in named.items()}
    feats, labels = sample_batch(spec, cid, rnd, step)
    x, y = torch.from_numpy(feats["x"]), torch.from_numpy(labels)
    loss = lambda params: F.cross_entropy(functional_call(joint, params, kwargs={"x": x}), y)  # noqa: E731
    seeds = derive_seeds(spec.seed, rnd, step, P, stream=2 * cid)
    expected = {n: t.clone() for n, t in w.items()}
    with torch.no_grad():
        l0 = loss(w)
        for seed in seeds:
            u = dict(zip(w, directions(list(w.values()), int(seed), "gaussian")))
            s = float(loss({n: w[n] + mu * u[n] for n in w}) - l0)
            for n in w:
                expected[n] -= eta * s / (P * mu) * u[n]
        np.testing.assert_allclose(up["a"], part(x=x).numpy(), rtol=0, atol=0)
    assert meta["loss"] == pytest.approx(float(l0), rel=1e-6)
    for n, t in expected.items():
        where, key = ("client", n.removeprefix("part.")) if n.startswith("part.") else ("aux", n.removeprefix("head."))
        np.testing.assert_allclose(got[where][key], t.numpy(), rtol=1e-5, atol=1e-7, err_msg=n)
        assert not np.array_equal(got[where][key], w[n].numpy()), n  # every parameter moved
    assert not role.zo and all(p.grad is None for p in role.base.parameters())


@pytest.fixture(scope="module")
def flops() -> dict[str, float]:
    """Forward FLOPs on one batch as the roles count them: the client part, the server part."""
    sc = load_scenario(tiny_scenario(federation={"num_clients": K, "clients_per_round": K, "batch_size": B}))
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    return {"fc": count_flops(split.client, x=x), "fs": count_flops(split.server, split.client(x=x))}


@pytest.mark.parametrize("every", [1, 3])
def test_ledger_and_clock_in_closed_form(tmp_path, flops, every):
    """Per step a client makes P + 1 forwards of part and head and its update (a multiply-add per parameter per
    direction); at an upload step it sends activations and labels and goes straight on. A fast server: the round
    ends when the weights are in."""
    steps = 4
    n = math.ceil(steps / every)
    rounds, clients = run(tmp_path, {"local_steps": steps, "upload_every": every}, constant_system(1e12), rounds=3)
    grown = per_round(rounds)
    assert (grown["bytes_act_up"] == K * n * B * ACT * 4).all()
    assert (grown["bytes_labels_up"] == K * n * B * 8).all()
    assert (grown["bytes_model_up"] == K * WEIGHTS).all() and (grown["bytes_model_down"] == K * WEIGHTS).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (grown[col] == 0).all(), col  # the estimate stays on the client; no gradient comes down
    assert (clients["bytes_up"] == n * B * (ACT * 4 + 8) + WEIGHTS).all() and (clients["bytes_down"] == WEIGHTS).all()
    assert (clients["samples"] == steps * B).all()

    up = lambda nbytes: nbytes * 8 / U + L  # noqa: E731
    compute = ((P + 1) * (flops["fc"] + 2 * B * ACT * 10) + 2 * P * (D_C + D_AUX)) / FC
    own = WEIGHTS * 8 / D + L + steps * compute + n * (up(4 * B * ACT) + up(8 * B)) + up(WEIGHTS)
    assert rounds["round_duration_s"].tolist() == pytest.approx([own] * 3, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([own] * 3 * K, rel=1e-12)


def test_a_deadline_keeps_the_fast_clients_and_failed_ones_send_nothing_up(tmp_path):
    """Clients 0 and 1 compute fast, 2 and 3 a thousand times slower; the deadline falls between them."""
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"client_id": [0, 1, 2, 3], "compute_flops": [FC, FC, FC / 1000, FC / 1000]}).to_csv(
        trace, index=False
    )
    system = {**constant_system(1e9), "trace": str(trace), "policy": "deadline", "deadline_s": 1.0}
    rounds, clients = run(tmp_path, {"local_steps": 2}, system, num_clients=4, clients_per_round=4)
    clients = clients.sort_values(["round", "client_id"])
    assert clients["status"].tolist() == (["completed"] * 2 + ["straggler_dropped"] * 2) * 2
    assert rounds["num_completed"].tolist() == [2, 2] and rounds["samples_seen"].tolist() == [4 * B, 8 * B]
    assert rounds["train_loss"].notna().all()  # (the round waits for the server's queue, as CSE-FSL's does)

    rounds, clients = run(tmp_path, {"local_steps": 2}, {"availability": {"mid_round_dropout": 0.5}}, num_clients=6)
    failed = clients[clients["status"] == "failed"]
    assert len(failed) > 0 and (failed["bytes_up"] == 0).all() and (failed["bytes_down"] == WEIGHTS).all()
    assert (failed["compute_s"] == 0).all() and (failed["samples"] == 0).all()


def test_overcommit_keeps_k_and_nobody_in_time_trains_nothing(tmp_path):
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    rounds, _ = run(tmp_path, {}, system, num_clients=12, clients_per_round=4)
    assert (rounds["num_sampled"] == math.ceil(1.3 * 4)).all() and (rounds["num_completed"] == 4).all()
    rounds, clients = run(tmp_path, {}, {"policy": "deadline", "deadline_s": 1e-6})  # nobody in time
    assert (rounds["num_completed"] == 0).all() and (rounds["samples_seen"] == 0).all()
    assert rounds["train_loss"].isna().all() and (clients["status"] == "straggler_dropped").all()


def test_the_clients_get_no_feedback_from_the_server(tmp_path):
    """Nothing comes down within a round, so the server's learning rate cannot change what the clients learn: the
    averaged client part and aux head are the same for any; the server part is not."""

    def after_one_round(lr: float) -> dict[str, dict[str, torch.Tensor]]:
        algo = {"name": NAME, "perturbations": P, "local_steps": 3, "upload_every": 1, "server_optimizer": {"lr": lr}}
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


def _tables(run_dir) -> list[pd.DataFrame]:
    tables = [pd.read_parquet(run_dir / f"{name}.parquet") for name in ("rounds", "clients")]
    return [df.drop(columns=[c for c in VOLATILE if c in df]) for df in tables]


def test_both_backends_give_the_same_numbers(tmp_path, ray_session):
    """Heterogeneous devices under over-commit: the kept clients and the server's arrival order vary by round."""
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "batch_size": B, "eval_every": 1}
    tables = {}
    for backend in ("local", "ray"):
        algo = {"name": NAME, "perturbations": P, "local_steps": 3, "upload_every": 2}
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
    assert (tables["local"][0]["num_dropped"] > 0).all()


def test_a_resumed_run_gives_the_same_numbers(tmp_path):
    """Stopped in round 3 (as Ctrl-C would) and resumed, with local epochs: the same tables as a run through."""

    class StopInRound3(Engine):
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    fed = {"num_clients": 12, "clients_per_round": 3, "rounds": 5, "batch_size": 32, "eval_every": 2}
    algo = {"name": NAME, "perturbations": 2, "local_epochs": 1, "upload_every": 2}
    sc = load_scenario(tiny_scenario(algorithms=[algo], federation=fed))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "stopped"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for got, want in zip(_tables(out), _tables(reference.run_dir)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_learns_on_digits(tmp_path):
    """Budget: digits (10 classes, chance 0.10), 20 clients, 5 per round, batch 32, cnn width 16 cut after block1,
    10 rounds of 5 local steps, P = 5, uploads every 2 steps (~3 s)."""
    fed = {"num_clients": 20, "clients_per_round": 5, "rounds": 10, "batch_size": 32, "eval_every": 10}
    sc = tiny_scenario(algorithms=[{"name": NAME, "local_steps": 5, "upload_every": 2}], federation=fed)
    sc["task"]["model"]["width"] = 16
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path)
    assert summary.status == "completed" and summary.final["test_acc"] > 0.85  # 0.94 here
