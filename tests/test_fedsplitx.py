"""FedSplitX: a model recut at another layer, the ledger and clock per cut in closed form, the layer-wise average
in closed form, one cut giving local-loss SL's numbers, bad cuts refused, both backends and a resume to the same
numbers, and learning on digits.

The closed forms use the constant profile of test_local_loss_sl (every client computes at F FLOP/s, uplink U and
downlink D bit/s, latency L s; the server at S FLOP/s) with cuts [block1, block2]: client c cuts at block1 when c
is even, at block2 when it is odd.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.fedsplitx import FedSplitXClient, FedSplitXServer
from hosfl_sim.algorithms.task import count_flops
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.models.split import recut
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario
from tests.golden.make_golden import VOLATILE
from tests.test_local_loss_sl import B, D, F, K, L, U, W, _tables, constant_system, per_round

NAME, CUTS = "fedsplitx", ["block1", "block2"]
ACT = [W * 4 * 4, 2 * W * 2 * 2]  # values per sample at each cut on 8x8 digits
D_C = [W * 9 + W, W * 9 + W + 2 * W * W * 9 + 2 * W]  # the layers up to each cut: block1; block1 and block2
WEIGHTS = [4 * (d + a * 10 + 10) for d, a in zip(D_C, ACT)]  # client layers and the cut's aux head, float32


def run(tmp_path, algorithm: dict | None = None, system: dict | None = None, runtime: dict | None = None, **fed):
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2, **fed}
    runtime = runtime or {"backend": "local", "num_workers": 2}
    algos = [{"name": NAME, "cuts": CUTS, **(algorithm or {})}]
    sc = tiny_scenario(algorithms=algos, federation=federation, system=system or {}, runtime=runtime)
    engine = Engine(load_scenario(sc), progress=False)
    try:
        (summary,) = engine.run_all(tmp_path / f"run{len(list(tmp_path.iterdir()))}")
    finally:
        if runtime["backend"] == "ray":
            engine.close()
    assert summary.status == "completed"
    return (*_tables(summary.run_dir), engine)


def test_a_recut_model_shares_its_layers_and_computes_the_same():
    sc = load_scenario(tiny_scenario())
    split = Engine(sc, backend=object(), progress=False).spec(0, 0).build_model()
    deeper = recut(split, "block2")
    assert deeper.client.block1 is split.client.block1 and deeper.server.fc is split.server.fc
    assert list(deeper.client.state_dict()) == [f"block{i}.conv.{p}" for i in (1, 2) for p in ("weight", "bias")]
    assert set(deeper.client.state_dict()) | set(deeper.server.state_dict()) == (
        set(split.client.state_dict()) | set(split.server.state_dict())
    )
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(deeper.server(deeper.client(x=x)), split.server(split.client(x=x)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no layer"):
        recut(split, "block9")


def test_registered_and_cuts_are_checked():
    cls = ALGORITHMS[NAME]
    assert "\n" not in cls.summary and "up:" in cls.summary and "down:" in cls.summary and "cuts" in cls.options
    assert cls.supports_policies and cls.supports_epochs
    for cuts in (["block1", "hidden"], ["block1", "block1"], ["nowhere"]):
        sc = tiny_scenario(algorithms=[{"name": "sfl"}, {"name": NAME, "cuts": cuts}])
        with pytest.raises(ConfigError, match=r"algorithms\[1\]\.cuts"):
            Engine(load_scenario(sc), progress=False).validate()


@pytest.mark.parametrize("server_flops", [1e12, 1e7])
def test_ledger_and_clock_per_cut_in_closed_form(tmp_path, server_flops):
    """Each client sends its cut's activations every step and its cut's weights once; nobody waits for the server,
    which serves the uploads first come, first served, each at the cost of the layers after its cut."""
    steps = 2
    rounds, clients, engine = run(tmp_path, {"local_steps": steps}, constant_system(server_flops), rounds=2)
    cut = clients["client_id"] % 2
    count = np.bincount(np.arange(K) % 2)  # clients per cut
    grown = per_round(rounds)
    assert (grown["bytes_act_up"] == sum(count[k] * steps * B * ACT[k] * 4 for k in (0, 1))).all()
    assert (grown["bytes_labels_up"] == K * steps * B * 8).all() and (grown["bytes_grad_down"] == 0).all()
    assert (grown["bytes_model_up"] == sum(count[k] * WEIGHTS[k] for k in (0, 1))).all()
    assert (grown["bytes_model_down"] == grown["bytes_model_up"]).all()
    assert (clients["bytes_down"] == cut.map(dict(enumerate(WEIGHTS)))).all()
    assert (clients["bytes_up"] == cut.map(lambda k: steps * B * (ACT[k] * 4 + 8) + WEIGHTS[k])).all()

    split = engine.spec(0, 0).build_model()
    x = torch.zeros(B, 1, 8, 8)
    parts = [recut(split, c) for c in CUTS]
    fc = [count_flops(p.client, x=x) for p in parts]
    fs = [count_flops(p.server, p.client(x=x)) for p in parts]
    up = lambda n: n * 8 / U + L  # noqa: E731
    compute = [(3 * fc[k] + 3 * 2 * B * ACT[k] * 10) / F for k in (0, 1)]
    step = [compute[k] + up(4 * B * ACT[k]) + up(8 * B) for k in (0, 1)]
    for rnd, group in clients.groupby("round"):
        place = {c: i for i, c in enumerate(group["client_id"])}
        arrivals = sorted(  # (arrival, step, place in the sample, cut)
            (WEIGHTS[c % 2] * 8 / D + L + (s + 1) * step[c % 2], s, place[c], c % 2)
            for c in place
            for s in range(steps)
        )
        free = 0.0
        for a, *_, k in arrivals:
            free = max(free, a) + 3 * fs[k] / server_flops
        done = max(WEIGHTS[k] * 8 / D + L + steps * step[k] + up(WEIGHTS[k]) for k in (0, 1))
        assert rounds.set_index("round").loc[rnd, "round_duration_s"] == pytest.approx(max(done, free), rel=1e-12)
        assert group["finish_s"].tolist() == pytest.approx([done] * K, rel=1e-12)
        assert group["compute_s"].tolist() == pytest.approx([steps * compute[c % 2] for c in place], rel=1e-12)


def test_the_layer_wise_average_in_closed_form(tmp_path):
    """Two clients, one step each: client 0 cuts at block1, client 1 at block2. After the round, block1 is the
    partition-size average of the two clients' copies; block2 that of client 1's copy and the server's, trained on
    client 0's upload alone (AdamW keeps a step count per parameter, so the order of the uploads does not matter to
    it); each aux head is its one client's."""
    fed = {"num_clients": 2, "clients_per_round": 2, "rounds": 1, "eval_every": 1}
    _, _, engine = run(tmp_path, {"local_steps": 1}, constant_system(1e9), **fed)
    role, spec = engine.backend.server_role, engine.spec(0, 0)
    sizes = spec.partition.sizes()[:2].astype(np.float64)
    client, server = FedSplitXClient(spec), FedSplitXServer(spec)
    parts, _ = server.global_parts()
    trained = []
    for cid in (0, 1):
        client.begin_at(cid, cid, parts)
        upload, _ = client.step(cid, 1, 0, True)
        if cid == 0:
            server.step(upload)
        trained.append(client.upload(cid))
    w = sizes / sizes.sum()

    def mean(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(w[0] * a.astype(np.float64) + w[1] * b.astype(np.float64)).float()

    got = role.whole.state_dict()
    for name in ("block1.conv.weight", "block1.conv.bias"):
        torch.testing.assert_close(got[name], mean(trained[0]["client"][name], trained[1]["client"][name]))
    own = server.whole.state_dict()
    for name in ("block2.conv.weight", "block2.conv.bias"):
        torch.testing.assert_close(got[name], mean(own[name].numpy(), trained[1]["client"][name]))
    for k in (0, 1):
        for name, value in role.aux[k].state_dict().items():
            torch.testing.assert_close(value, torch.from_numpy(trained[k]["aux"][name]), rtol=0, atol=0)


def test_one_cut_gives_local_loss_sl_numbers(tmp_path):
    fed = {"num_clients": 6, "clients_per_round": 3, "rounds": 3, "eval_every": 1}
    ours = run(tmp_path, {"local_steps": 3, "cuts": []}, constant_system(1e9), **fed)[:2]
    sc = tiny_scenario(
        algorithms=[{"name": "local_loss_sl", "local_steps": 3}],
        federation={**fed, "batch_size": B, "num_clients": 6},
        system=constant_system(1e9),
    )
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / "local_loss")
    for a, b in zip(ours, _tables(summary.run_dir)):
        keep = [c for c in a if c not in (*VOLATILE, "algorithm", "label")]
        pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=True)


def test_both_backends_give_the_same_numbers(tmp_path, ray_session):
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "eval_every": 1}
    local = run(tmp_path, {"local_steps": 2}, system, **fed)
    ray = run(tmp_path, {"local_steps": 2}, system, {"backend": "ray", "num_workers": 2}, **fed)
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
    sc = load_scenario(tiny_scenario(algorithms=[{"name": NAME, "cuts": CUTS, "local_epochs": 1}], federation=fed))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "stopped"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for got, want in zip(_tables(out), _tables(reference.run_dir)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_learns_digits_in_twenty_rounds(tmp_path):
    """Budget: 20 rounds x 4 clients (two per cut) x 5 steps x 16 samples (6,400 samples, ~3 s); chance is 10 %."""
    fed = {"num_clients": 8, "clients_per_round": 4, "rounds": 20, "batch_size": B, "eval_every": 20}
    algo = {"local_steps": 5, "client_optimizer": {"lr": 3e-3}, "server_optimizer": {"lr": 3e-3}}
    rounds, _, _ = run(tmp_path, algo, **fed)
    assert rounds["test_acc"].iloc[-1] > 0.8
    assert rounds["train_loss"].iloc[-3:].mean() < 0.5 * rounds["train_loss"].iloc[0]
