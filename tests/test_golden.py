"""Refactors keep the numbers: every algorithm's rounds.parquet and clients.parquet on small runs with churn,
deadline drops, mid-round failures and over-commit equal the committed golden files exactly (host-dependent
columns aside). A change that alters numbers on purpose regenerates them (`python -m tests.golden.make_golden`)
in its own commit that says why."""

from __future__ import annotations

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from tests.golden.make_golden import HERE, SYSTEMS, run


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_runs_match_their_golden_files(tmp_path, system):
    runs = run(system, tmp_path)
    assert runs, "no algorithm ran"
    for label, (rounds, clients) in runs.items():
        for kind, got in (("rounds", rounds), ("clients", clients)):
            want = pd.read_parquet(HERE / f"{label}.{kind}.parquet")
            assert_frame_equal(got, want, check_exact=True, obj=f"{label}.{kind}")


# The Ray backend with two workers, on the conditions that move numbers most: deadline drops and mid-round failures.
RAY_ALGORITHMS = ["hosfl", "sfl", "sfl_zo", "splitfed_v1", "fsl_sage"]


def test_the_ray_backend_with_two_workers_matches_the_same_golden_files(tmp_path, ray_session):
    runs = run("deadline", tmp_path, backend="ray", only=RAY_ALGORITHMS)
    assert sorted(runs) == sorted(f"deadline_{name}" for name in RAY_ALGORITHMS)
    for label, (rounds, clients) in runs.items():
        for kind, got in (("rounds", rounds), ("clients", clients)):
            want = pd.read_parquet(HERE / f"{label}.{kind}.parquet")
            assert_frame_equal(got, want, check_exact=True, obj=f"ray {label}.{kind}")
