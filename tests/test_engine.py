"""End to end on Ray: determinism across reruns and worker counts, replica equality, learning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hosfl_sim.config import load_scenario
from hosfl_sim.record import read_manifest
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

ALGOS = [{"name": "hosfl", "perturbations": 4}, {"name": "sfl"}, {"name": "sfl_zo", "perturbations": 2}]
WALL = ["wall_time_s"]


def _runs(out) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p / "rounds.parquet").drop(columns=WALL) for p in sorted(out.iterdir())}


def _clients(out) -> dict[str, pd.DataFrame]:
    drop = ["wall_compute_s", "worker"]
    return {p.name: pd.read_parquet(p / "clients.parquet").drop(columns=drop) for p in sorted(out.iterdir())}


def test_metrics_identical_across_reruns_worker_counts_and_backends(tmp_path, ray_session):
    fed = {"num_clients": 6, "clients_per_round": 3, "rounds": 3, "batch_size": 16, "eval_every": 1}
    results = {}
    for name, runtime in {
        "ray1": {"backend": "ray", "num_workers": 1},
        "ray2": {"backend": "ray", "num_workers": 2},
        "local": {"backend": "local", "num_workers": 1},
    }.items():
        engine = Engine(load_scenario(tiny_scenario(algorithms=ALGOS, federation=fed, runtime=runtime)), progress=False)
        engine.run_all(tmp_path / name)
        if runtime["backend"] == "ray":
            engine.backend.shutdown()
        results[name] = (_runs(tmp_path / name), _clients(tmp_path / name))
    reference_rounds, reference_clients = results["local"]
    assert len(reference_rounds) == 3
    for name, (rounds, clients) in results.items():
        for run, df in rounds.items():
            pd.testing.assert_frame_equal(df, reference_rounds[run], check_exact=True, obj=f"{name}/{run}")
            pd.testing.assert_frame_equal(clients[run], reference_clients[run], check_exact=True)
    assert reference_rounds["hosfl_seed0"]["test_acc"].notna().all()


def _replica_states(engine: Engine) -> tuple[list[dict], dict]:
    algo, backend = engine.last_algorithm, engine.backend
    algo.sync_workers(backend)
    workers = backend.get([backend.client(w, algo.client_role.client_state) for w in range(backend.num_workers)])
    return workers, backend.get(backend.server(algo.server_role.client_state))


def test_replicas_bit_identical_and_equal_to_single_process(tmp_path, ray_session):
    fed = {"num_clients": 10, "clients_per_round": 3, "rounds": 5, "batch_size": 16, "eval_every": 5}
    algos = [{"name": "hosfl", "perturbations": 3}, {"name": "sfl_zo", "perturbations": 2}]
    ray_sc = tiny_scenario(algorithms=algos, federation=fed, runtime={"num_workers": 3, "backend": "ray"})
    ray_engine = Engine(load_scenario(ray_sc), progress=False)
    local = Engine(load_scenario(tiny_scenario(algorithms=algos, federation=fed)), progress=False)
    for i in range(len(algos)):
        ray_engine.run_one(i, 0, tmp_path / f"ray{i}")
        workers, server = _replica_states(ray_engine)
        local.run_one(i, 0, tmp_path / f"local{i}")
        _, single = _replica_states(local)
        initial = local.spec(i, 0).build_model().client.state_dict()
        moved = False
        for key, value in single.items():
            for w in workers:
                assert np.array_equal(w[key], value), key
            assert np.array_equal(server[key], value), key
            moved |= not np.array_equal(initial[key].numpy(), value)
        assert moved, "the client part never changed"
    ray_engine.backend.shutdown()


@pytest.mark.slow
def test_quickstart_learns_on_ray(tmp_path, ray_session):
    engine = Engine(load_scenario("quickstart", ["federation.rounds=100"]), progress=False)
    engine.run_all(tmp_path)
    acc = {p.name: pd.read_parquet(p / "rounds.parquet")["test_acc"].dropna().iloc[-1] for p in tmp_path.iterdir()}
    assert acc["HO-SFL_seed0"] > 0.85 and acc["SFL_seed0"] > 0.85, acc


def test_hosfl_and_sfl_learn_on_digits(tmp_path):
    """Both reach a meaningful accuracy on digits in 80 rounds of 5 clients x 32 samples."""
    algos = [
        {"name": "hosfl", "label": "HO-SFL", "perturbations": 5},
        {"name": "sfl", "label": "SFL"},
    ]
    fed = {"num_clients": 20, "clients_per_round": 5, "rounds": 80, "batch_size": 32, "eval_every": 40}
    sc = tiny_scenario(algorithms=algos, federation=fed)
    sc["task"]["model"]["width"] = 16
    summaries = Engine(load_scenario(sc), progress=False).run_all(tmp_path)
    acc = {s.algorithm: s.final["test_acc"] for s in summaries}
    assert acc["HO-SFL"] > 0.75 and acc["SFL"] > 0.85, acc
    manifest = read_manifest(summaries[0].run_dir)
    assert manifest["status"] == "completed" and manifest["rounds_completed"] == 80
    assert len(manifest["config_sha256"]) == 64 and manifest["versions"]["torch"].startswith("2.13")
