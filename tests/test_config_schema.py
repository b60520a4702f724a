"""The scenario models keep every run's identity: `to_dict` of a scenario, and so each run's hash (resume checks
it, sweeps skip by it), is what it was before the configs moved to pydantic."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError, Scenario, describe, load_scenario, scenario_schema, to_dict
from hosfl_sim.config.base import ConfigModel
from hosfl_sim.config.identity import run_hash
from hosfl_sim.config.json_schema import SCHEMA_COMMENT, schema_text

# (scenario, overrides) -> run_hash of (algorithm 0, seed 0) and of (the last algorithm, seed 0). Fields at their
# default are not hashed: a new field with a default leaves these as they are; changing what a run is changes them.
PINNED = [
    ("quickstart", [], "e0095e60bd97d9d00c681c6a00a793f7e3de0bc87408f6add1b3935cfcd1f41d",
     "9cb0e276261dd2c787234029cf8ea90c2f66db7d9baf5875c07da46dd1b9ed28"),
    ("noniid", [], "c5aad877a8b80a9a097bbbf188074253dccce804702e511ccb6ad1ec6227ab39",
     "fef36543e296c7820c7810bc17dd06f8ef1c45bdb5563ab1abed127dc194ebc8"),
    ("churn", [], "4b402ce7886acec2d2966012d540cecaa8b9138e50d968d67961777f81d852e9",
     "ee01a9cd1dc9d663a89dc245730e29b518a99c0b9503a92fad100e17f8fb6901"),
    ("edge", [], "2271d5bfb02f70b02d1e7c1c50dbf8cd77382ace24646d08532a89bd3d1474de",
     "187fdb529522948c5007ebc63e7a5c21225308194457896401860580778c5f74"),
    ("stragglers", [], "7a2f7f61879a9493c66f15a2efe04a0d9720cf822e6df63264cfa780ac9cdfe4",
     "2a5ef4937b176df2f6b1f9e1cf4ff3cc44eb21f122bcfdab60ba2bd0525de9c7"),
    ("cifar10_resnet18_noniid", [], "e2f37ef61f1fc4e2742354bf53ade9e0fd34d44de1509d366dfacb53b7612aea",
     "88fc9473eb042fa87069774bc3c68d154dcf1de53ce398d75d9279e5ba89d728"),
    ("sst2_opt125m", [], "9a61efc056063568bd0095e5a30db9eb3006ee5a476a878acfca550eb6eb8e76",
     "e89f8be4ba7c9255f0988ec95b8dab4ffd3864f0edef2379ba0a4ce40645de39"),
    # integers where numbers are expected become floats, integral floats where integers are expected integers
    (
        "noniid",
        ["algorithms[0].mu=1", "task.partition.alpha=2", "federation.rounds=30.0",
         "system.uplink_bps={kind: uniform, low: 5, high: 10}"],
        "8d8e38f9e2689bbe584c571a4f7368331c35c1870a85de55a222789e10f4f45f",
        None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "overrides", "first", "last"), PINNED)
def test_run_hashes_of_shipped_scenarios_are_unchanged(name, overrides, first, last):
    sc = load_scenario(name, overrides)
    d = to_dict(sc)
    why = "a run's identity changed (resume refuses its old runs); a new hashed field does this: re-pin if meant"
    assert run_hash(d, 0, sc.seeds[0]) == first, why
    if last is not None:
        assert run_hash(d, len(sc.algorithms) - 1, sc.seeds[0]) == last, why


# ----------------------------------------------------------------------------- strict types, one-line errors


def _error(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_scenario("quickstart", overrides)
    assert "\n" not in str(e.value)
    return e.value


def test_numbers_take_integers_and_integers_take_integral_numbers():
    sc = load_scenario("quickstart", ["algorithms[0].mu=1", "federation.rounds=30.0", "seeds=[1.0, 2]"])
    assert type(sc.algorithms[0].mu) is float and sc.algorithms[0].mu == 1.0
    assert type(sc.federation.rounds) is int and sc.federation.rounds == 30
    assert sc.seeds == [1, 2] and all(type(s) is int for s in sc.seeds)
    assert sc.task.model.cut == "block1" and load_scenario("quickstart", ["task.model.cut=2"]).task.model.cut == 2


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("federation.rounds='3'", "federation.rounds", "an integer"),  # a string is never a number
        ("federation.rounds=true", "federation.rounds", "an integer"),  # nor is true an integer
        ("algorithms[0].mu=true", "algorithms[0].mu", "a number"),
        ("task.model.freeze_bn_affine=1", "task.model.freeze_bn_affine", "true or false"),  # nor 1 true
        ("algorithms[0].label=3", "algorithms[0].label", "a string or null"),
        ("task.dataset.max_train=x", "task.dataset.max_train", "an integer or null"),
        ("algorithms[0].mu=.nan", "algorithms[0].mu", "a finite number"),
        ("task.model.cut=2.5", "task.model.cut", "a string or an integer"),
        ("algorithms[0].distribution=normal", "algorithms[0].distribution", "one of 'gaussian', 'rademacher'"),
        ("runtime.track=[wandb, tb]", "runtime.track[1]", "one of 'wandb', 'mlflow', 'tensorboard'"),
        ("runtime.track=wandb", "runtime.track", "a list of values from 'wandb', 'mlflow', 'tensorboard'"),
        ("algorithms[0].client_optimizer.betas=[0.9, no]", "algorithms[0].client_optimizer.betas[1]", "a number"),
        ("system.tiers=[{name: a, proportion: x}]", "system.tiers[0].proportion", "a number"),
        ("system=3", "system", "a mapping"),
        ("task.model.config_overrides=[1]", "task.model.config_overrides", "a mapping"),
    ],
)
def test_a_wrong_type_names_its_dotted_field_and_what_it_expects(override, path, expected):
    e = _error([override])
    assert (e.path, e.expected) == (path, expected)


def test_an_unknown_key_is_named_with_the_nearest_known_one():
    e = _error(["algorithms[1].client_optimizer.momentun=0.9"])
    assert e.path == "algorithms[1].client_optimizer.momentun" and e.value == 0.9
    assert e.expected.startswith("a known field (unknown key; did you mean 'momentum'? known: betas, lr, momentum")
    assert "did you mean" not in _error(["zzz=1"]).expected


def test_configs_are_frozen_and_copied_with_updates():
    sc = load_scenario("quickstart")
    with pytest.raises(ValidationError):
        sc.federation.rounds = 3  # type: ignore[misc]
    fed = sc.federation.model_copy(update={"rounds": 3})
    assert (fed.rounds, sc.federation.rounds) == (3, 150) and fed.num_clients == sc.federation.num_clients


# ----------------------------------------------------------------------------- the JSON Schema

SCENARIOS = sorted((Path(__file__).parents[1] / "scenarios").glob("*.yaml"))
SCHEMA_FILE = Path(__file__).parents[1] / "scenarios" / "scenario.schema.json"
BAD = Path(__file__).parent / "bad_scenarios"


def test_the_shipped_schema_is_what_hosfl_sim_schema_prints(capsys):
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == schema_text(), "regenerate it: hosfl-sim schema > scenarios/scenario.schema.json"
    assert SCHEMA_FILE.read_text() == printed, "regenerate it: hosfl-sim schema > scenarios/scenario.schema.json"


def test_every_field_of_every_model_is_in_the_schema_with_its_comment():
    schema = scenario_schema()
    nodes = {"Scenario": schema, **schema["$defs"]}

    def models(cls):
        yield cls
        for f in cls.model_fields.values():
            for tp in (f.annotation, *typing.get_args(f.annotation)):
                if isinstance(tp, type) and issubclass(tp, ConfigModel):
                    yield from models(tp)

    seen = {cls.__name__: cls for cls in models(Scenario)}
    assert set(seen) == set(nodes)
    for name, cls in seen.items():
        assert set(nodes[name]["properties"]) == set(cls.model_fields), name
    props = schema["$defs"]["AlgorithmConfig"]["properties"]
    assert props["perturbations"]["description"] == "P" and props["perturbations"]["type"] == "integer"
    assert props["mu"]["type"] == "number" and set(props["distribution"]["enum"]) == {"gaussian", "rademacher"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_points_at_the_schema_and_validates_against_it(path):
    assert path.read_text().splitlines()[0] == SCHEMA_COMMENT
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    for validator in (jsonschema.Draft7Validator(schema), jsonschema.Draft202012Validator(schema)):
        validator.validate(yaml.safe_load(path.read_text()))
    load_scenario(str(path))  # and the loader agrees


@pytest.mark.parametrize(
    "name", ["unknown_top_key", "unknown_nested_key", "rounds_not_integer", "rounds_bool", "seeds_not_list",
             "perturbations_fraction", "top_level_list"],
)  # fmt: skip
def test_the_schema_refuses_what_the_loader_refuses_by_type(name):
    path = BAD / f"{name}.yaml"
    validator = jsonschema.Draft7Validator(scenario_schema())
    assert not validator.is_valid(yaml.safe_load(path.read_text()))
    with pytest.raises(ConfigError):
        load_scenario(str(path))


def test_a_scenario_described_by_its_first_comment_skips_the_schema_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(f"{SCHEMA_COMMENT}\n# Two rounds of the defaults.\nfederation: {{rounds: 2}}\n")
    assert describe(str(path)) == "Two rounds of the defaults."
    assert load_scenario(str(path)).federation.rounds == 2


def test_a_field_added_with_its_default_leaves_earlier_runs_identities_alone():
    """A manifest written before a field existed lacks it; hashed now, it must match the run as it resolves today."""
    sc = load_scenario("noniid_all", ["system.policy=deadline", "system.deadline_s=5"])
    today = to_dict(sc)
    for index, algorithm in enumerate(today["algorithms"]):
        want = run_hash(today, index, 0)
        for section, fields in (("algorithm", algorithm), ("federation", today["federation"])):
            for name in fields:
                older = {**today, "algorithms": [dict(a) for a in today["algorithms"]]}
                target = older["algorithms"][index] if section == "algorithm" else dict(older["federation"])
                default = Scenario().algorithms[0] if section == "algorithm" else Scenario().federation
                if target[name] != getattr(default, name):
                    continue  # set by the scenario: it belongs to the identity
                del target[name]
                if section == "federation":
                    older["federation"] = target
                assert run_hash(older, index, 0) == want, f"{section}.{name}"
    changed = load_scenario("noniid_all", ["system.policy=deadline", "system.deadline_s=5", "algorithms[0].mu=0.5"])
    assert run_hash(to_dict(changed), 0, 0) != run_hash(today, 0, 0)  # a setting that differs still counts


def test_exponent_numbers_are_numbers_in_files_and_overrides(tmp_path):
    """`1e-3` is a number in YAML 1.2 and every other tool; PyYAML alone (YAML 1.1) reads a string."""
    path = tmp_path / "s.yaml"
    path.write_text("algorithms: [{name: hosfl, mu: 1e-3, client_optimizer: {lr: 5E-4}}]\nfederation: {rounds: 2e1}\n")
    sc = load_scenario(str(path), ["algorithms[0].server_optimizer.lr=1e-2"])
    algo = sc.algorithms[0]
    assert (algo.mu, algo.client_optimizer.lr, algo.server_optimizer.lr) == (0.001, 0.0005, 0.01)
    assert sc.federation.rounds == 20 and isinstance(sc.federation.rounds, int)
    assert load_scenario(str(path), ["algorithms[0].label=1e3x"]).algorithms[0].label == "1e3x"
