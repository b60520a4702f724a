"""The Python API a notebook calls: run a scenario with overrides, read its runs back, summarize and plot them."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import hosfl_sim
from hosfl_sim.config import ConfigError
from tests.conftest import tiny_scenario


def test_run_then_read_back_summarize_and_plot(tmp_path):
    algos = [{"name": "hosfl", "perturbations": 2}, {"name": "sfl"}]
    res = hosfl_sim.run(tiny_scenario(algorithms=algos), {"federation.rounds": 3, "seeds": [0, 1]}, tmp_path, False)
    assert isinstance(res, hosfl_sim.Results) and res.directory == tmp_path
    assert len(res) == 4 and sorted(res.settings) == ["hosfl", "sfl"]
    assert res.rounds.groupby("run")["round"].max().tolist() == [3] * 4
    assert set(res.clients["status"]) == {"completed"} and len(res.clients) == 4 * 3 * 3  # K = 3 a round
    again = hosfl_sim.load_runs(tmp_path)
    pd.testing.assert_frame_equal(again.rounds, res.rounds)
    summary = res.summary()
    assert summary["setting"].tolist() == ["hosfl", "sfl"] and (summary["seeds"] == 2).all()
    figures = res.plot()
    assert figures and all(p.exists() and p.parent == tmp_path / "figures" for p in figures)


def test_a_bad_override_names_its_field_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match="federation.rounds"):
        hosfl_sim.run("quickstart", {"federation.rounds": 0}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="an index below 3"):
        hosfl_sim.scenario("quickstart", {"algorithms[5].mu": 0.1})


def test_the_package_and_a_scenario_load_no_torch():
    code = "import sys, hosfl_sim; hosfl_sim.scenario('quickstart'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_run_that_fails_raises_naming_it_after_the_others_ran(tmp_path, monkeypatch):
    from hosfl_sim.runtime.engine import Engine

    real = Engine.run_one

    def run_one(self, index, seed, run_dir, *args, **kwargs):
        if index == 0:
            raise FloatingPointError("overflow")
        return real(self, index, seed, run_dir, *args, **kwargs)

    monkeypatch.setattr(Engine, "run_one", run_one)
    algos = [{"name": "hosfl", "perturbations": 2}, {"name": "sfl"}]
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed.*hosfl_seed0"):
        hosfl_sim.run(tiny_scenario(algorithms=algos), {"federation.rounds": 2}, tmp_path, False)
    assert len(list(tmp_path.glob("sfl_seed0/rounds.parquet"))) == 1  # the other run went on
