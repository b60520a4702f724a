"""Data files that cannot make a dataset are refused in one line naming task.dataset.path or label_column, before
anything runs: empty, header-only or corrupt tables, labels that are not whole numbers, and labels so large the
output layer could not be allocated."""

from __future__ import annotations

import numpy as np
import pytest

from hosfl_sim.config import ConfigError
from hosfl_sim.config.schema import DatasetConfig
from hosfl_sim.data import load_dataset


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.csv", b"", "No columns to parse"),
        ("header.csv", b"a,b,label\n", "corresponds to no data"),
        ("broken.parquet", b"PAR1 not a parquet file", "Parquet magic bytes"),
    ],
)
def test_an_unreadable_table_is_refused_naming_the_path(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_dataset(DatasetConfig(name="files", path=str(path)))
    assert e.value.path == "task.dataset.path" and says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("labels", "value", "expected"),
    [
        (np.full(10, 0.5), 0.5, "whole-number class labels"),
        (np.array([0.0] * 9 + [np.nan]), "nan", "whole-number class labels"),
        (np.arange(10) * 10**12, 9 * 10**12, "class labels below 100,000"),
    ],
)
def test_labels_no_classifier_can_have_are_refused(tmp_path, labels, value, expected):
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.zeros((10, 4)), y_train=labels, x_test=np.zeros((5, 4)), y_test=np.zeros(5, int))
    with pytest.raises(ConfigError) as e:
        load_dataset(DatasetConfig(name="npz", path=str(path)))
    assert e.value.path == "task.dataset.label_column" and expected in e.value.expected
    assert str(e.value.value) == str(value)


@pytest.mark.parametrize(
    ("section", "content", "expected"),
    [
        ("trace", "", "a readable CSV or Parquet file (No columns to parse"),
        ("trace", "client_id,compute_flops\n0,fast\n", "numbers in the compute_flops column"),
        ("trace", "client_id,compute_flops\n0,\n", "finite numbers in the compute_flops column"),
        ("trace", "client_id,uplink_bps\n0.5,1e6\n", "whole numbers in the client_id column"),
        ("availability", "client_id,round,available\n0,1,maybe\n", "available as true/false or 1/0"),
        ("availability", "client_id,round,available\n0,1,0\n99,2,0\n", "client ids in [0, 8)"),
        ("availability", "client_id,round\n0,1\n", "(missing: available)"),
    ],
)
def test_a_trace_file_that_cannot_be_read_as_one_is_refused_naming_its_field(tmp_path, section, content, expected):
    from hosfl_sim.config import load_scenario
    from hosfl_sim.system import Availability, build_profiles
    from tests.conftest import tiny_scenario

    path = tmp_path / "trace.csv"
    path.write_text(content)
    system = {"trace": str(path)} if section == "trace" else {"availability": {"trace": str(path)}}
    sc = load_scenario(tiny_scenario(system=system, federation={"num_clients": 8, "clients_per_round": 3}))
    with pytest.raises(ConfigError) as e:
        build_profiles(sc.system, 8, 0)
        Availability(sc.system.availability, 8, 0)
    field = "system.trace" if section == "trace" else "system.availability.trace"
    assert e.value.path == field and expected in e.value.expected, e.value


def test_a_dataset_too_large_for_memory_is_refused_naming_it():
    from hosfl_sim.config.schema import SyntheticConfig

    cfg = DatasetConfig(name="synthetic", synthetic=SyntheticConfig(num_features=10**12))
    with pytest.raises(ConfigError) as e:
        load_dataset(cfg)
    assert e.value.path == "task.dataset" and "a dataset this machine can hold in memory" in e.value.expected


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("task.dataset.max_length=100000", "task.dataset.max_length", "at most 512, the longest input the model"),
        ("task.dataset.max_length=100000000", "task.dataset.max_length", "a positive integer of at most 131072"),
        ("task.model.lora_r=100000", "task.model.lora_r", "at most 384, the smallest dimension of the layers"),
    ],
)
def test_text_inputs_and_adapters_no_model_can_take_are_refused_before_anything_is_written(
    tmp_path, capsys, override, field, expected
):
    from hosfl_sim.cli import main

    args = ["run", "sst2_minilm", "runtime.backend=local", "task.dataset.max_train=32", "task.dataset.max_test=16"]
    assert main([*args, override, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(f"error: {field}: got") and expected in err[0], err
    assert not (tmp_path / "out").exists()
