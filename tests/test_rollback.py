"""A round's cheap start mark: rolling back to it gives exactly the state a deep copy of state_dict kept, the rerun
gives the numbers of a round run once, and a resumed run that loses a worker still gives the forewarned numbers."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import get_algorithm
from hosfl_sim.algorithms.hosfl import HOSFLClient
from hosfl_sim.algorithms.replay import ReplayLog
from hosfl_sim.comm import Ledger
from hosfl_sim.comm.channel import Channel
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.local import LocalBackend
from hosfl_sim.system.clock import sync_clock
from tests.conftest import tiny_scenario
from tests.test_robustness import assert_same_metrics, metrics


def assert_same_state(got: dict, want: dict) -> None:
    """Driver state dicts equal, array by array (dtype and shape included)."""
    assert sorted(got) == sorted(want)
    for name, part in want.items():
        assert sorted(got[name]) == sorted(part), name
        for key, value in part.items():
            other = got[name][key]
            assert other.dtype == value.dtype and other.shape == value.shape, (name, key)
            assert np.array_equal(other, value), (name, key)


def flat_tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """{path: tensor} of a role's state tree."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: t for key, v in items for k, t in flat_tensors(v, f"{prefix}/{key}").items()}


def assert_same_role_state(got: dict, want: dict) -> None:
    got, want = flat_tensors(got), flat_tensors(want)
    assert sorted(got) == sorted(want)
    for key, t in want.items():
        assert got[key].dtype == t.dtype and torch.equal(got[key], t), key


def random_round(log: ReplayLog, channel: Channel, rng: np.random.Generator, n: int, p: int) -> None:
    """What a round does to the log, in a random order: catch-ups (a client may come twice), worker syncs,
    appends of p-wide records, and positions set for groups that may repeat a client."""
    for _ in range(rng.integers(1, 6)):
        op = rng.integers(4)
        if op == 0:
            log.catch_up(channel, int(rng.integers(n)))
        elif op == 1:
            log.for_worker(int(rng.integers(len(log.worker_seen))))
        elif op == 2:
            log.append(rng.integers(0, 2**63, p, dtype=np.uint64), rng.standard_normal(p).astype(np.float32))
        else:
            log.mark_seen(rng.integers(n, size=rng.integers(1, 5)))


def test_replay_log_rollback_is_a_reload_of_the_state_at_the_mark():
    rng = np.random.default_rng(0)
    log, channel = ReplayLog(30, 3), Channel(Ledger(), sync_clock(np.arange(30), 30))
    for rnd in range(40):
        mark, before = log.mark(), copy.deepcopy(log.state_dict())
        random_round(log, channel, rng, 30, 3)
        if rnd % 3 == 0:
            for _ in range(2):  # the same mark serves every rerun of a round
                log.rollback(mark)
                assert_same_state({"log": log.state_dict()}, {"log": before})
                assert not log.worker_seen.any()  # every worker counts as fresh, as after load_state_dict
                random_round(log, channel, rng, 30, 3)
    stale = log.mark()
    log.mark()
    with pytest.raises(ValueError, match="latest mark"):
        log.rollback(stale)


def test_catch_up_charges_the_bytes_of_the_records_missed():
    p = 3
    log = ReplayLog(5, 1)
    for _ in range(12):
        log.append(np.arange(p, dtype=np.uint64), np.ones(p, np.float32))
    log.mark_seen(np.array([1]))
    mark = log.mark()
    for _ in range(3):
        log.append(np.arange(p, dtype=np.uint64), np.ones(p, np.float32))
        log.mark_seen(np.array([2]))
    log.rollback(mark)  # dropped records are charged to nobody
    for _ in range(2):
        log.append(np.arange(p, dtype=np.uint64), np.ones(p, np.float32))
    clone = ReplayLog(5, 1)
    clone.load_state_dict(log.state_dict())  # the byte counts are rebuilt on load
    for lg in (log, clone):
        ledger = Ledger()
        channel = Channel(ledger, sync_clock(np.arange(5), 5))
        assert lg.catch_up(channel, 0) == 14 and lg.catch_up(channel, 1) == 2 and lg.catch_up(channel, 0) == 0
        assert lg.catch_up(channel, 2) == 14  # its positions of the dropped round are gone
        assert ledger.totals["seed_down"] == 8 * p * (14 + 2 + 14)
        assert ledger.totals["scalar_down"] == 4 * p * (14 + 2 + 14)


@pytest.mark.parametrize("name", ["hosfl", "zo_fl"])
def test_a_rolled_back_round_reruns_to_the_numbers_of_a_round_run_once(name):
    """Rounds 1-3, then round 4 twice: rolled back (driver state, ledger, server snapshot, fresh workers) after the
    first run. The state after the rollback is the deep copy taken at the round's start; the rerun ends where the
    first run did."""
    fed = {"num_clients": 12, "clients_per_round": 3, "rounds": 4, "batch_size": 8}
    algos = [{"name": name, "perturbations": 2, "local_steps": 2}]
    sc = load_scenario(tiny_scenario(algorithms=algos, federation=fed))
    spec = Engine(sc, backend=object(), progress=False).spec(0, 0)
    cls = get_algorithm(name, "algorithms[0].name")
    backend, ledger = LocalBackend(2), Ledger()
    backend.setup(cls, spec)
    algo = cls(sc.algorithms[0], sc.federation, 0, 2, spec.partition.sizes())
    sampler = np.random.default_rng(3)
    for rnd in range(1, 4):
        ledger.start_round(rnd)
        sampled = np.sort(sampler.choice(12, 3, replace=False))
        algo.run_round(rnd, sampled, backend, Channel(ledger, sync_clock(sampled, 12)))
    clients = np.array([0, 5, 11])  # 11 never ran: it catches up on every record
    before, start_ledger = copy.deepcopy(algo.state_dict()), ledger.state_dict()
    server = backend.server_role
    server_before = copy.deepcopy(server.state_dict())
    assert server.end_round(True) is None  # the check, and the snapshot the rollback restores
    mark = algo.round_mark()
    ledger.start_round(4)
    first = algo.run_round(4, clients, backend, Channel(ledger, sync_clock(clients, sc.federation.num_clients)))
    after, end_ledger = copy.deepcopy(algo.state_dict()), ledger.state_dict()
    server_after = copy.deepcopy(server.state_dict())
    assert len(algo.log) == len(before["log"]["seeds"]) + 2  # two local steps appended

    algo.rollback(mark)
    assert_same_state(algo.state_dict(), before)
    ledger.load_state_dict(start_ledger)
    backend.server(algo.server_role.restore)
    assert_same_role_state(server.state_dict(), server_before)  # AdamW's moments included
    backend.reset_workers([1])
    ledger.start_round(4)
    again = algo.run_round(4, clients, backend, Channel(ledger, sync_clock(clients, sc.federation.num_clients)))
    assert_same_state(algo.state_dict(), after)
    assert_same_role_state(server.state_dict(), server_after)
    assert ledger.state_dict() == end_ledger
    assert again.train_loss == first.train_loss and again.samples == first.samples


def test_snapshot_restore_is_exact_keeps_shared_tensors_shared_and_does_not_alias(tmp_path):
    """ZO-FL's server holds its model under three names (model, client, server share modules)."""
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 2, "batch_size": 8}
    sc = load_scenario(tiny_scenario(algorithms=[{"name": "zo_fl", "perturbations": 2}], federation=fed))
    engine = Engine(sc, backend=LocalBackend(2), progress=False)
    engine.run_one(0, 0, tmp_path / "run")  # a role with optimizer state
    role = engine.backend.server_role
    before = copy.deepcopy(role.state_dict())
    role.snapshot()
    live = {t.data_ptr() for t in flat_tensors(role.state_dict()["attrs"]).values()}
    kept = {t.data_ptr() for t in flat_tensors(role._snapshot["attrs"]).values()}
    assert len(kept) == len(live) and not kept & live  # one copy per tensor, none shared with the live role
    for _ in range(2):  # a restore hands out a copy: training after it leaves the snapshot as it was
        with torch.no_grad():  # in place, as training would: parameters and optimizer moments
            for t in flat_tensors(role.state_dict()["attrs"]).values():
                t.add_(1.0)
        torch.rand(3)  # the process RNG is part of the state
        role.restore()
        assert_same_role_state(role.state_dict(), before)


def test_nonfinite_names_the_first_bad_tensor_and_not_a_large_finite_one():
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 1, "batch_size": 8}
    sc = load_scenario(tiny_scenario(federation=fed))
    backend = LocalBackend(1)
    backend.setup(get_algorithm("hosfl", "algorithms[0].name"), Engine(sc, backend=object()).spec(0, 0))
    role = backend.server_role
    named = [
        (f"{attr}.{key}", t)
        for attr in ("client", "server")
        for key, t in itertools.chain(getattr(role, attr).named_parameters(), getattr(role, attr).named_buffers())
        if t.is_floating_point()
    ]
    with torch.no_grad():
        assert role.end_round(False) is None
        big = next(t for _, t in named if t.numel() > 1)
        big.fill_(3e38)  # finite, though its sum overflows
        assert role.nonfinite() is None
        named[-1][1].view(-1)[-1] = float("inf")
        assert role.nonfinite() == named[-1][0]
        named[1][1].view(-1)[0] = float("nan")
        assert role.end_round(False) == named[1][0]


def test_a_resumed_run_that_loses_a_worker_gives_the_forewarned_numbers(tmp_path, ray_session):
    """Stopped after round 2 (checkpoint), resumed on Ray, and worker 1 is killed mid-round in round 3, the first
    round after the resume: its restore uses the snapshot taken as the resumed run was set up. Round 5 loses the
    worker again, restoring the snapshot taken as round 4 ended."""
    import ray

    from hosfl_sim.runtime.ray_backend import RayBackend

    class KillMidRound(RayBackend):
        """Kills worker 1 between its anchor and its probe (K = 3 on W = 2: one client a round on worker 1)."""

        probes, kills = 0, 0

        def client(self, worker, method, *args, num_returns=1):
            if worker == 1 and method is HOSFLClient.each_of:  # one call a round
                self.probes += 1
                if self.probes in (1, 4):  # round 3, its rerun (worker 1 serves position 1 again), 4, then 5
                    ray.kill(self.workers[1], no_restart=True)
                    self.kills += 1
            return super().client(worker, method, *args, num_returns=num_returns)

    class StopAfterRound2(Engine):
        def _divergence(self, result, row, completed):
            if row["round"] == 2:
                self.request_stop()
            return super()._divergence(result, row, completed)

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 5, "batch_size": 16, "eval_every": 2}
    raw = tiny_scenario(federation=fed, runtime={"backend": "local", "num_workers": 2})
    (stopped,) = StopAfterRound2(load_scenario(raw), progress=False).run_all(tmp_path / "out")
    assert stopped.status == "interrupted" and stopped.rounds == 2
    sc = load_scenario(raw, ["runtime.backend=ray"])
    backend = KillMidRound(sc.runtime)
    try:
        (summary,) = Engine(sc, backend=backend, progress=False).run_all(tmp_path / "out", resume=True)
    finally:
        backend.shutdown()
    assert summary.status == "completed" and backend.kills == 2
    clients = pd.read_parquet(summary.run_dir / "clients.parquet")
    failed = clients[clients["status"] == "failed"]
    assert set(failed["round"]) == {3, 5} and set(failed["worker"]) == {1}
    gone = {rnd: set(failed.loc[failed["round"] == rnd, "client_id"].astype(int)) for rnd in (3, 5)}

    class Forewarned(Engine):
        def _run_round(self, algorithm, rnd, clients, *args):
            if rnd not in gone:
                return super()._run_round(algorithm, rnd, clients, *args)
            result, clock, _, memory = super()._run_round(
                algorithm, rnd, clients[~np.isin(clients, list(gone[rnd]))], *args
            )
            return result, clock, {c: 1 for c in gone[rnd]}, memory

    Forewarned(load_scenario(raw), progress=False).run_all(tmp_path / "forewarned")
    assert_same_metrics(tmp_path / "out", metrics(tmp_path / "forewarned"))
