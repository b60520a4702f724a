"""Each algorithm declares the fields of its section it reads (`options`): a real run of every algorithm reads no
other, and a field it does not read cannot be set on it (refused before anything is written)."""

from __future__ import annotations

import dataclasses

import pytest

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.base import COMMON_FIELDS
from hosfl_sim.config import AlgorithmConfig, ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

RESNET = {"dataset": {"name": "digits"}, "model": {"name": "resnet18", "cut": "layer1", "width": 8}}


class Reading:
    """An algorithm section that notes every field read from it (on the driver and in the in-process roles)."""

    def __init__(self, cfg: AlgorithmConfig, seen: set[str]):
        self._cfg, self._seen = cfg, seen

    def __getattr__(self, name: str):
        self._seen.add(name)
        return getattr(self._cfg, name)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_a_run_reads_only_the_fields_its_algorithm_declares(tmp_path, name):
    seen: set[str] = set()

    class Noting(Engine):
        def spec(self, index, seed):
            spec = super().spec(index, seed)
            return dataclasses.replace(spec, algorithm=Reading(spec.algorithm, seen))

    fed = {"num_clients": 6, "clients_per_round": 2, "rounds": 2, "batch_size": 8, "eval_every": 2}
    task = RESNET if name == "fsl_sage_persistent" else tiny_scenario()["task"]
    algos = [{"name": name, "probe": "batched"} if "probe" in ALGORITHMS[name].options else {"name": name}]
    sc = load_scenario(tiny_scenario(algorithms=algos, federation=fed, task=task))
    (summary,) = Noting(sc, progress=False).run_all(tmp_path)
    assert summary.status == "completed"
    fields = set(AlgorithmConfig.model_fields)
    read = {f for f in seen if f in fields}
    assert read - COMMON_FIELDS, "the run read none of its own fields"
    assert read <= COMMON_FIELDS | ALGORITHMS[name].options, sorted(read - COMMON_FIELDS - ALGORITHMS[name].options)


def test_a_field_the_algorithm_does_not_read_is_refused_before_anything_is_written(tmp_path):
    algos = [{"name": "hosfl"}, {"name": "sfl", "perturbations": 8}]
    engine = Engine(load_scenario(tiny_scenario(algorithms=algos)), progress=False)
    with pytest.raises(ConfigError, match=r"algorithms\[1\]\.perturbations.*unset for sfl.*client_optimizer"):
        engine.validate()
    with pytest.raises(ConfigError, match=r"algorithms\[0\]\.perturbations"):  # a run checks its own too
        Engine(load_scenario(tiny_scenario(algorithms=algos[1:])), progress=False).run_all(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the default value, or a field it reads, is fine
    algos = [{"name": "sfl", "perturbations": 5, "server_optimizer": {"lr": 0.01}}, {"name": "hosfl", "mu": 0.01}]
    Engine(load_scenario(tiny_scenario(algorithms=algos)), progress=False).validate()
