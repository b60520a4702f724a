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

# (scenario, overrides) -> run_hash of (algorithm 0, seed 0) and of (the last algorithm, seed 0), as computed by
# the dataclass configs. Adding a field to the hashed sections (task, algorithms, federation, system) changes them.
PINNED = [
    ("quickstart", [], "a839c37218b81f4629fae4572a579b4a16837db94b8f1ad42c46d01eb7ba9d8b",
     "f7eba521a5e63a59252c21b61a235e8c6aecc0d1b21858016604582917a04bf2"),
    ("noniid", [], "d9672eb884098f65fd54404c5cff6197f113ec6db1e15eaa1d6d999e7b113fcf",
     "e7f2568fca0e13c00dc1b21eda5f0d4bd13728baeb79c0d408a075c3077a7194"),
    ("churn", [], "ad41dd9d0694a2136fcdd4c627c95be8f2b0a944bda01b8df79895267fde2d99",
     "20c7bc48764a2ed2ac04d8c32bbd3f6c3a06b80bbbe92fd6e693b6433e75fa29"),
    ("edge", [], "90c761459128652fc68b226965a01eb8620293902457b96449932f88ef913d77",
     "bf98d1fc0ebde517d591f3d6f4b228ca1a7fedc472be7a500c2b449d016293ed"),
    ("stragglers", [], "99caa8379b023b3812abdb7af173867539e6005fdd39ff0f4b4cbb79e330c83f",
     "db01c98623131bcaf2da27835bdc0f78609c5b5c35eea9ea358b74e239a43d26"),
    ("cifar10_resnet18_noniid", [], "89dd824dc1150bf2695fa6565370a3dfbe92be458b5460864e1ac0e3514e3183",
     "b0a80965b87f1492507382074104c81c2729c64afe7a8827214eb793b2959e53"),
    ("sst2_opt125m", [], "83d4894f96c8a43f7aecba1b458b0459aaa4ff772d67bd83bf1cc392629ba5b9",
     "aaed875eaa9605fda78e563a81de047ca30afc183eb0361f8a1bdc8251ee65cd"),
    # integers where numbers are expected become floats, integral floats where integers are expected integers
    (
        "noniid",
        ["algorithms[0].mu=1", "task.partition.alpha=2", "federation.rounds=30.0",
         "system.uplink_bps={kind: uniform, low: 5, high: 10}"],
        "84a4692ef9848d113ba3f391ba9372000ba5f759a41099955482230dc23f3530",
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
