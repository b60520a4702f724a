"""A new algorithm is one file: examples/frozen_client.py (the README's worked example), defined inside the test,
runs on the in-process backend and on Ray with two workers to the same numbers, with the ledger's closed form;
and another installed package can add an algorithm through the `hosfl_sim.algorithms` entry-point group."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from hosfl_sim.algorithms import ALGORITHMS, get_algorithm, registry
from hosfl_sim.algorithms.task import to_tensors
from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario
from tests.golden.make_golden import VOLATILE

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "frozen_client.py"


@pytest.fixture
def frozen_client():
    """The example's classes, defined here (not importable by workers: Ray ships them by value)."""
    namespace = {"__name__": "frozen_client_example"}
    exec(compile(EXAMPLE.read_text(), str(EXAMPLE), "exec"), namespace)
    yield namespace
    ALGORITHMS.pop("frozen_client", None)


def _run(tmp_path: Path, backend: str) -> tuple[pd.DataFrame, pd.DataFrame, Engine]:
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "batch_size": 16, "eval_every": 3}
    algos = [{"name": "frozen_client", "local_steps": 2}]
    sc = load_scenario(tiny_scenario(algorithms=algos, federation=fed, runtime={"backend": backend, "num_workers": 2}))
    engine = Engine(sc, progress=False)
    try:
        (summary,) = engine.run_all(tmp_path / backend)
    finally:
        engine.close()
    assert summary.status == "completed"
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    clients = pd.read_parquet(summary.run_dir / "clients.parquet")
    drop = lambda df: df.drop(columns=[c for c in VOLATILE if c in df])  # noqa: E731
    return drop(rounds), drop(clients), engine


def test_an_algorithm_in_one_file_runs_on_both_backends_to_the_same_numbers(frozen_client, tmp_path, ray_session):
    local_rounds, local_clients, engine = _run(tmp_path, "local")
    ray_rounds, ray_clients, _ = _run(tmp_path, "ray")
    pd.testing.assert_frame_equal(ray_rounds, local_rounds, check_exact=True)
    pd.testing.assert_frame_equal(ray_clients, local_clients, check_exact=True)

    # the ledger's closed form: per round, K clients x 2 steps x B samples of float32 activations and int64 labels
    spec = engine.spec(0, 0)
    split = spec.build_model()
    x = to_tensors({k: v[:1] for k, v in spec.train.features.items() if k in split.input_keys}, "cpu")
    act_values = split.client(**x).numel()
    final = local_rounds.iloc[-1]
    assert final["bytes_act_up"] == 3 * 3 * 2 * 16 * act_values * 4
    assert final["bytes_labels_up"] == 3 * 3 * 2 * 16 * 8
    assert final["bytes_total"] == final["bytes_act_up"] + final["bytes_labels_up"]  # nothing else crosses
    assert local_rounds["train_loss"].notna().all() and 0 <= final["test_acc"] <= 1
    assert (local_clients["samples"] == 2 * 16).all()


def test_a_registered_algorithm_is_listed_and_named_in_errors(frozen_client, capsys):
    assert main(["list", "--algorithms"]) == 0
    assert re.search(r"^frozen_client\s+Frozen client part", capsys.readouterr().out, re.M)
    with pytest.raises(ConfigError, match="frozen_client"):
        get_algorithm("frozen_clients", "algorithms[0].name")
    with pytest.raises(ValueError, match="taken"):
        registry.register(type("Other", (frozen_client["FrozenClientSL"],), {}))  # a second class under the name


def test_another_package_adds_an_algorithm_through_its_entry_point(tmp_path, monkeypatch):
    """An installed distribution (here a dist-info folder on sys.path) names the example's class in the group."""
    (tmp_path / "frozen_plugin.py").write_text(EXAMPLE.read_text())
    info = tmp_path / "frozen_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: frozen-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hosfl_sim.algorithms]\nfrozen_client = frozen_plugin:FrozenClientSL\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        cls = get_algorithm("frozen_client", "algorithms[0].name")
        assert cls.__module__ == "frozen_plugin" and ALGORITHMS["frozen_client"] is cls
    finally:
        ALGORITHMS.pop("frozen_client", None)


def test_the_readme_shows_the_example_as_it_is():
    readme = (ROOT / "README.md").read_text()
    assert EXAMPLE.read_text().strip() in readme
