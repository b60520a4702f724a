"""The Parquet files every tool reads: pandas, polars and DuckDB get the same rows and numbers."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import polars as pl

from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario


def test_pandas_polars_and_duckdb_read_the_same_numbers(tmp_path):
    (summary,) = Engine(load_scenario(tiny_scenario()), progress=False).run_all(tmp_path)
    for name in ("rounds", "clients"):
        path = summary.run_dir / f"{name}.parquet"
        by_pandas = pd.read_parquet(path)
        by_polars = pl.read_parquet(path)
        by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{path}')").df()
        assert list(by_polars.columns) == list(by_duckdb.columns) == list(by_pandas.columns)
        assert by_polars.height == len(by_duckdb) == len(by_pandas) > 0
        for column in by_pandas.columns:
            want = by_pandas[column].to_numpy()
            for got in (by_polars[column].to_numpy(), by_duckdb[column].to_numpy()):
                if want.dtype.kind in "fiu":
                    np.testing.assert_array_equal(got.astype(float), want.astype(float), err_msg=f"{name}.{column}")
                else:
                    assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in want]
