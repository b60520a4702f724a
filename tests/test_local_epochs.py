"""`local_epochs`: the paper's first-order baselines run full passes over each client's partition every round.

The lock-step test is an independent loop written from the authors' SplitFed-V1 pseudo-code (fresh copies of
both sides per client, fresh AdamW, ceil(|D_k| / B) x epochs steps, client BatchNorm in train mode, FedAvg of
both sides weighted by samples): it does not call the project's algorithm code.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hosfl_sim.algorithms.task import epoch_batches, sample_batch
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

N, K, B, ROUNDS, SEED = 6, 3, 16, 3, 0


def _scenario(algorithm: dict, rounds: int = ROUNDS, budget: int | None = None, model: dict | None = None) -> dict:
    return tiny_scenario(
        task={
            "dataset": {"name": "digits", "max_train": 400},
            "partition": {"scheme": "dirichlet", "alpha": 0.5, "min_size": 20},
            "model": model or {"name": "cnn", "cut": "block1", "width": 4},
        },
        algorithms=[algorithm],
        federation={
            "num_clients": N,
            "clients_per_round": K,
            "rounds": rounds,
            "batch_size": B,
            "eval_every": rounds,
            "budget_samples": budget,
        },
    )


def _run(tmp_path, data: dict) -> tuple[Engine, pd.DataFrame, pd.DataFrame]:
    engine = Engine(load_scenario(data), progress=False)
    (summary,) = engine.run_all(tmp_path / "runs")
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    return engine, rounds, pd.read_parquet(summary.run_dir / "clients.parquet")


def test_an_epoch_visits_every_row_of_the_partition_once_in_ceil_n_over_b_batches():
    engine = Engine(load_scenario(_scenario({"name": "sfl", "local_epochs": 2})), progress=False)
    spec = engine.spec(0, SEED)
    sizes = spec.partition.sizes()
    assert len(set(sizes % B)) > 1, "partitions should be uneven for this test"
    for cid in range(N):
        rows = spec.partition.client_indices(cid)
        batches = math.ceil(len(rows) / B)
        assert epoch_batches(len(rows), B) == batches  # no partition here leaves a last batch of one
        for epoch in range(2):
            seen = [sample_batch(spec, cid, 1, epoch * batches + j)[1] for j in range(batches)]
            assert [len(y) for y in seen] == [B] * (batches - 1) + [len(rows) - B * (batches - 1)]
            got = np.sort(np.concatenate(seen))
            np.testing.assert_array_equal(got, np.sort(spec.train.labels[rows]))
        first = sample_batch(spec, cid, 1, 0)[0]["x"]
        assert not np.array_equal(first, sample_batch(spec, cid, 2, 0)[0]["x"])  # each round reshuffles


def test_a_last_batch_of_one_sample_is_skipped_as_the_reference_skips_it():
    assert [epoch_batches(n, 32) for n in (1, 2, 31, 32, 33, 34, 64, 65)] == [0, 1, 1, 1, 1, 2, 2, 2]
    assert epoch_batches(5, 1) == 5  # batches of one are all there is


@pytest.mark.parametrize("name", ["sfl", "splitfed_v1", "fedavg"])
def test_each_client_runs_ceil_n_over_b_times_epochs_steps_on_uneven_partitions(tmp_path, name):
    epochs = 2
    engine, rounds, clients = _run(tmp_path, _scenario({"name": name, "local_epochs": epochs}))
    sizes = engine.spec(0, SEED).partition.sizes()
    assert (clients["samples"].to_numpy() == epochs * sizes[clients["client_id"].to_numpy()]).all()
    per_round = clients.groupby("round")["samples"].sum().cumsum().to_numpy()
    np.testing.assert_array_equal(rounds["samples_seen"].to_numpy(), per_round)


def test_the_budget_stops_after_the_round_that_reaches_it(tmp_path):
    budget = 500
    engine, rounds, clients = _run(tmp_path, _scenario({"name": "splitfed_v1", "local_epochs": 1}, 50, budget))
    cumulative = clients.groupby("round")["samples"].sum().cumsum().to_numpy()
    # as the reference: train a whole round, then stop once the processed samples reach the budget
    assert cumulative[-1] >= budget and (len(cumulative) == 1 or cumulative[-2] < budget)
    assert rounds["round"].iloc[-1] == len(cumulative)


def test_local_epochs_is_refused_where_it_means_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithms\[0\]\.local_epochs: got 1, expected null for hosfl"):
        Engine(load_scenario(_scenario({"name": "hosfl", "local_epochs": 1})), progress=False).validate()
    with pytest.raises(ConfigError, match=r"algorithms\[0\]\.local_steps: got 2, expected 1"):
        load_scenario(_scenario({"name": "sfl", "local_epochs": 1, "local_steps": 2}))


def _shared_keys(module: torch.nn.Module) -> set[str]:
    keys = {n for n, p in module.named_parameters() if p.requires_grad}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            keys |= {f"{name}.running_mean", f"{name}.running_var"}
    return keys


def _fedavg(target: torch.nn.Module, copies: list[torch.nn.Module], weights: list[float]) -> None:
    w = np.asarray(weights, np.float64) / np.sum(weights)
    state = target.state_dict()
    for key in _shared_keys(target):
        mean = sum(wi * c.state_dict()[key].double() for wi, c in zip(w, copies))
        state[key].copy_(mean.to(state[key].dtype))


def test_splitfed_v1_with_local_epochs_matches_an_independent_loop_in_lock_step(tmp_path):
    """Three rounds on a small ResNet (BatchNorm on both sides): same parameters and BN statistics."""
    epochs = 2
    model = {"name": "resnet18_cifar", "cut": "layer1", "width": 4}
    engine, _, clients = _run(tmp_path, _scenario({"name": "splitfed_v1", "local_epochs": epochs}, model=model))
    spec = engine.spec(0, SEED)
    split = spec.build_model()  # the same initial weights as the run's (seeded by the run seed)
    glob_c, glob_s = split.client, split.server
    data, sizes = spec.train, spec.partition.sizes()

    def adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4
        )

    for rnd in range(1, ROUNDS + 1):
        sampled = clients.loc[clients["round"] == rnd, "client_id"].tolist()
        copies_c, copies_s = [], []
        for cid in sampled:
            c, s = copy.deepcopy(glob_c).train(), copy.deepcopy(glob_s).train()
            opt_c, opt_s = adamw(c), adamw(s)
            rows = spec.partition.client_indices(cid)
            for epoch in range(epochs):
                order = np.random.default_rng([SEED, 13, cid, rnd, epoch]).permutation(len(rows))
                for j in range(math.ceil(len(rows) / B)):
                    feats, y = data.batch(np.sort(rows[order[j * B : (j + 1) * B]]))
                    a = c(x=torch.from_numpy(feats["x"]).float())
                    a_in = a.detach().requires_grad_(True)
                    loss = F.cross_entropy(s(a_in), torch.from_numpy(y).long())
                    opt_s.zero_grad()
                    loss.backward()
                    opt_s.step()
                    opt_c.zero_grad()
                    a.backward(a_in.grad)
                    opt_c.step()
            copies_c.append(c)
            copies_s.append(s)
        weights = [float(sizes[cid]) for cid in sampled]
        _fedavg(glob_c, copies_c, weights)
        _fedavg(glob_s, copies_s, weights)

    role = engine.backend.server_role
    for ours, theirs in ((role.client, glob_c), (role.server, glob_s)):
        got, want = ours.state_dict(), theirs.state_dict()
        for key in _shared_keys(theirs):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
