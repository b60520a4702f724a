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
