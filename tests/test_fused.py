"""Clients fused (runtime.fuse_clients): a worker's clients as one batched forward give the per-client numbers.

The fused forwards run the same eval-mode client part on the clients' batches concatenated, so a fused run equals a
per-client run up to float rounding (a kernel may block a bigger batch differently): losses and accuracies within a
tolerance, and the ledger and the simulated clock (priced from sizes and FLOPs, not from values) exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hosfl_sim.algorithms.fused import check_batch_independent, fusing
from hosfl_sim.algorithms.hosfl import HOSFLClient, HOSFLServer
from hosfl_sim.algorithms.sfl_zo import SFLZOClient
from hosfl_sim.algorithms.zo_fl import ZOFLClient
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime.engine import Engine
from tests.conftest import tiny_scenario

VALUES = ["train_loss", "test_loss", "test_acc", "best_test_acc"]
EXACT = ["sim_time_s", "round_duration_s", "num_completed", "samples_seen"]
ALGORITHMS = {
    "hosfl": {"name": "hosfl", "perturbations": 3},
    "sfl_zo": {"name": "sfl_zo", "perturbations": 3},
    "zo_fl": {"name": "zo_fl", "perturbations": 3},
}


def _scenario(algorithm: dict, fuse: bool | str) -> dict:
    return tiny_scenario(
        task={"dataset": {"name": "digits", "max_train": 600}, "model": {"name": "cnn", "cut": "block1", "width": 4}},
        algorithms=[algorithm],
        federation={"num_clients": 8, "clients_per_round": 5, "rounds": 3, "batch_size": 16, "eval_every": 1},
        runtime={"backend": "local", "num_workers": 2, "fuse_clients": fuse},
    )


def _rounds(tmp_path, data: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    engine = Engine(load_scenario(data), progress=False)
    (summary,) = engine.run_all(tmp_path)
    return pd.read_parquet(summary.run_dir / "rounds.parquet"), pd.read_parquet(summary.run_dir / "clients.parquet")


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_a_fused_run_gives_the_per_client_numbers(tmp_path, name):
    fused, fused_clients = _rounds(tmp_path / "fused", _scenario(ALGORITHMS[name], True))
    alone, alone_clients = _rounds(tmp_path / "alone", _scenario(ALGORITHMS[name], False))
    for col in VALUES:
        np.testing.assert_allclose(fused[col], alone[col], rtol=1e-4, atol=1e-5, err_msg=col)
    ledger = [c for c in alone.columns if c.startswith("bytes_")] + EXACT
    pd.testing.assert_frame_equal(fused[ledger], alone[ledger])
    per_client = ["round", "client_id", "worker", "status", "bytes_up", "bytes_down", "finish_s", "samples"]
    pd.testing.assert_frame_equal(fused_clients[per_client], alone_clients[per_client])
    np.testing.assert_allclose(fused_clients["train_loss"], alone_clients["train_loss"], rtol=1e-4, atol=1e-5)


def _role(cls: type, fuse: bool):
    engine = Engine(load_scenario(_scenario(ALGORITHMS["hosfl"], fuse)), progress=False)
    return cls(engine.spec(0, 0))


def _forwards(role) -> list[int]:
    """Counts the forwards of the role's model, with their batch sizes."""
    sizes: list[int] = []
    role.model.register_forward_hook(lambda m, args, kwargs, out: sizes.append(len(out)), with_kwargs=True)
    return sizes


def _hosfl_step(role: HOSFLClient, clients: list[int], seeds: np.ndarray, rnd: int) -> tuple[list, list, list]:
    ups, metas = role.each(HOSFLClient.anchor, [], clients, rnd, 0)
    g = [np.random.default_rng(c).standard_normal(u["a"].shape).astype(np.float32) for c, u in zip(clients, ups)]
    v, _ = role.each_of(HOSFLClient.probe, clients, g, seeds)
    return ups, metas, v


def test_fused_hosfl_runs_one_forward_per_phase_and_direction_with_the_same_anchors_and_scalars():
    clients, seeds = [1, 4, 6], np.array([11, 12, 13], dtype=np.int64)
    fused, alone = _role(HOSFLClient, True), _role(HOSFLClient, False)
    for role in (fused, alone):  # FLOPs are counted at a shape's first forward
        _hosfl_step(role, clients, seeds, 1)
    calls_fused, calls_alone = _forwards(fused), _forwards(alone)
    ups_f, metas_f, v_f = _hosfl_step(fused, clients, seeds, 0)
    ups_a, metas_a, v_a = _hosfl_step(alone, clients, seeds, 0)
    assert calls_fused == [3 * 16] * 4 and calls_alone == [16] * 12  # the anchors, then one forward a direction
    for uf, ua, mf, ma in zip(ups_f, ups_a, metas_f, metas_a):
        np.testing.assert_allclose(uf["a"], ua["a"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(uf["y"], ua["y"])
        assert {k: v for k, v in mf.items() if k != "compute_s"} == {k: v for k, v in ma.items() if k != "compute_s"}
    np.testing.assert_allclose(np.stack(v_f), np.stack(v_a), rtol=1e-4, atol=1e-5)
    assert not fused.pending and not alone.pending


@pytest.mark.parametrize("cls", [SFLZOClient, ZOFLClient])
def test_fused_two_sided_probes_run_one_forward_per_direction_and_sign(cls):
    clients, seeds = [0, 3], np.array([5, 9, 2], dtype=np.int64)
    fused, alone = _role(cls, True), _role(cls, False)
    for role in (fused, alone):
        role.each(cls.probe, [], clients, 2, 0, seeds)
    calls_fused, calls_alone = _forwards(fused), _forwards(alone)
    out_f, metas_f = fused.each(cls.probe, [], clients, 1, 0, seeds)
    out_a, metas_a = alone.each(cls.probe, [], clients, 1, 0, seeds)
    assert calls_fused == [2 * 16] * 6 and calls_alone == [16] * 12
    for f, a, mf, ma in zip(out_f, out_a, metas_f, metas_a):
        if cls is SFLZOClient:
            np.testing.assert_allclose(f["a"], a["a"], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(f, a, rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(mf["loss"], ma["loss"], rtol=1e-5)
        assert mf["flops"] == ma["flops"] and mf["samples"] == ma["samples"]


def test_a_subclass_that_overrides_a_phase_without_its_fused_form_runs_it_client_by_client():
    class Probing(SFLZOClient):
        def probe(self, records: list, client_id: int, rnd: int, step: int, seeds: np.ndarray) -> tuple[dict, dict]:
            return super().probe(records, client_id, rnd, step, seeds)

    role, seeds = _role(Probing, True), np.array([5, 9, 2], dtype=np.int64)
    role.each(Probing.probe, [], [0, 3], 2, 0, seeds)
    calls = _forwards(role)
    role.each(Probing.probe, [], [0, 3], 1, 0, seeds)
    assert calls == [16] * 12


def test_a_batched_server_step_gives_the_per_client_numbers(tmp_path):
    data = _scenario(ALGORITHMS["hosfl"], False)
    alone, alone_clients = _rounds(tmp_path / "alone", data)
    data["runtime"]["fuse_server"] = True  # the CNN's server part has no BatchNorm
    batched, batched_clients = _rounds(tmp_path / "batched", data)
    for col in VALUES:
        np.testing.assert_allclose(batched[col], alone[col], rtol=1e-4, atol=1e-5, err_msg=col)
    ledger = [c for c in alone.columns if c.startswith("bytes_")] + EXACT
    pd.testing.assert_frame_equal(batched[ledger], alone[ledger])
    np.testing.assert_allclose(batched_clients["train_loss"], alone_clients["train_loss"], rtol=1e-4, atol=1e-5)


def test_a_batched_server_step_is_refused_for_a_server_part_with_batchnorm_in_train_mode():
    data = _scenario(ALGORITHMS["hosfl"], False)
    data["task"]["model"] = {"name": "resnet18", "cut": "layer1", "width": 8}
    spec = Engine(load_scenario(data), progress=False).spec(0, 0)
    HOSFLServer(spec)  # per client: fine
    with pytest.raises(ConfigError, match="runtime.fuse_server"):
        HOSFLServer(dataclasses.replace(spec, fuse_server=True))


def test_auto_fuses_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [fusing(s, cpu) for s in ("auto", True, False)] == [False, True, False]
    assert [fusing(s, cuda) for s in ("auto", True, False)] == [True, True, False]


def test_batchnorm_in_train_mode_is_refused_in_one_line():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ConfigError, match="runtime.fuse_clients"):
        check_batch_independent(net)
    check_batch_independent(net.eval())  # running statistics: each row on its own
