"""Bad scenario input fails with one line naming the field, the value and what was expected."""

from __future__ import annotations

import pytest

from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

BAD = [
    ({"federation": {"num_clients": 4, "clients_per_round": 5}}, "federation.clients_per_round"),
    ({"federation": {"rounds": "ten"}}, "federation.rounds"),
    ({"federation": {"roundz": 10}}, "federation.roundz"),
    ({"algorithms": [{"name": "hosfl", "perturbations": 0}]}, "algorithms[0].perturbations"),
    ({"algorithms": [{"name": "hosfl", "mu": -1.0}]}, "algorithms[0].mu"),
    ({"algorithms": [{"name": "hosfl", "client_optimizer": {"name": "lion"}}]}, "algorithms[0].client_optimizer.name"),
    ({"algorithms": [{"name": "hosfl"}, {"name": "hosfl"}]}, "algorithms"),
    ({"task": {"partition": {"scheme": "dirichlet", "alpha": 0}}}, "task.partition.alpha"),
    ({"seeds": 3}, "seeds"),
    ({"runtime": {"num_workers": 0}}, "runtime.num_workers"),
]


@pytest.mark.parametrize(("patch", "field"), BAD)
def test_invalid_values_name_their_field(patch, field):
    with pytest.raises(ConfigError) as err:
        load_scenario(tiny_scenario(**patch))
    assert err.value.path == field
    assert "\n" not in str(err.value) and "expected" in str(err.value)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"task": {"dataset": {"name": "imagenet22k"}}}, "task.dataset.name"),
        ({"task": {"model": {"name": "cnn", "cut": "block9"}}}, "task.model.cut"),
        ({"algorithms": [{"name": "sgd_magic"}]}, "algorithms[0].name"),
    ],
)
def test_unknown_names_fail_when_the_run_starts(tmp_path, patch, field):
    engine = Engine(load_scenario(tiny_scenario(**patch)), progress=False)
    with pytest.raises(ConfigError) as err:
        engine.run_all(tmp_path)
    assert err.value.path == field


def test_overrides_reach_nested_fields_and_lists():
    sc = load_scenario(
        tiny_scenario(),
        ["federation.rounds=7", "algorithms[0].mu=0.01", "task.partition.scheme=dirichlet", "seeds=[1,2]"],
    )
    assert sc.federation.rounds == 7 and sc.algorithms[0].mu == 0.01
    assert sc.task.partition.scheme == "dirichlet" and sc.seeds == [1, 2]


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("federation:\n  clients_per_round: 50\n  num_clients: 10\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "federation.clients_per_round" in err and "50" in err
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("federation: [1, 2\n")
    assert main(["run", str(malformed)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_an_override_key_with_stray_brackets_is_refused():
    with pytest.raises(ConfigError) as e:
        load_scenario("quickstart", ["algorithms[0]].mu=1"])
    assert e.value.path == "algorithms[0]].mu" and "a dotted key" in e.value.expected
    assert load_scenario("quickstart", ["algorithms[0].mu=0.5"]).algorithms[0].mu == 0.5


def test_a_scenario_path_that_is_no_regular_file_is_refused_without_being_opened(tmp_path):
    import os

    (tmp_path / "folder.yaml").mkdir()
    os.mkfifo(tmp_path / "pipe.yaml")  # opening it would block forever
    for name in ("folder.yaml", "pipe.yaml"):
        with pytest.raises(ConfigError) as e:
            load_scenario(str(tmp_path / name))
        assert e.value.path == "scenario" and "a regular YAML file" in e.value.expected
