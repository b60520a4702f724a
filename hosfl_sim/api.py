"""The Python API, for notebooks and other projects: what `hosfl-sim run`, `plot` and `sweep` do, as calls.

import hosfl_sim
res = hosfl_sim.run("noniid", overrides={"federation.rounds": 50})
res.rounds            # pandas: one row per (run, round)
res.summary()         # one row per setting: accuracy, rounds/time/bytes to a target
res.plot()            # every figure, into <out>/figures
hosfl_sim.load_runs("runs/noniid")    # read runs back (any directory holding them)
hosfl_sim.sweep("alpha_p")            # a grid as Ray tasks
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hosfl_sim.config import ConfigError, Scenario, load_scenario
from hosfl_sim.config.load import apply_override, load_raw
from hosfl_sim.config.schema import directory_name
from hosfl_sim.plots.load import RunSet
from hosfl_sim.plots.load import load_runs as _load
from hosfl_sim.plots.table import summary_table

if TYPE_CHECKING:
    from hosfl_sim.runtime.sweep import SweepResult

# torch, Ray and matplotlib are imported by the calls that need them: a scenario or a table needs none


@dataclass(frozen=True)
class Results(RunSet):
    """Runs read from `directory`: `rounds`, `clients` (pandas) and `manifests`, as every plot function takes."""

    directory: Path = Path(".")

    def summary(self, target: float | None = None) -> pd.DataFrame:
        """One row per setting: final accuracy (mean, std), and rounds, simulated time and bytes to `target`."""
        return summary_table(self, target)

    def plot(self, out: str | Path | None = None, formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """Every figure these runs can draw, into `out` (default: <directory>/figures); returns the files."""
        from hosfl_sim.plots.figures import save_all

        return save_all(self, Path(out) if out is not None else self.directory / "figures", formats)


def load_runs(*paths: str | Path) -> Results:
    """Every run found under `paths` (run directories, a scenario's output, sweeps; nested at any depth)."""
    runs = _load(paths)
    return Results(runs.rounds, runs.clients, runs.manifests, directory=Path(paths[0]) if paths else Path("."))


def scenario(name_or_path: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Scenario:
    """A scenario (a name in scenarios/, a YAML path, or a mapping) with `{dotted key: value}` overrides applied;
    a bad field raises ConfigError naming it."""
    raw = copy.deepcopy(dict(name_or_path)) if isinstance(name_or_path, Mapping) else load_raw(str(name_or_path))
    for key, value in (overrides or {}).items():
        apply_override(raw, key, copy.deepcopy(value))
    return load_scenario(raw)


def run(
    name_or_path: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> Results:
    """Run every (algorithm, seed) of a scenario into `out` (default: <output_dir>/<name>/<timestamp>), checked
    first as the CLI checks it; returns the runs. A run that fails raises; its rounds so far stay on disk."""
    from hosfl_sim.runtime.engine import Engine  # torch and Ray: only when a run is asked for

    sc = scenario(name_or_path, overrides)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = Path(out) if out is not None else Path(sc.output_dir) / directory_name(sc.name) / stamp
    if (target / "manifest.json").exists() or any(target.glob("*/manifest.json")):
        raise ConfigError("out", str(target), "a directory without runs")
    engine = Engine(sc, progress=progress)
    try:
        engine.validate()
        summaries = engine.run_all(target)
    finally:
        engine.close()
    failed = [s for s in summaries if s.status == "failed"]
    if failed:  # the others ran; every run's rows are on disk, its manifest says why
        raise RuntimeError(
            f"{len(failed)} run(s) failed, see their manifest.json: {', '.join(str(s.run_dir) for s in failed)}"
        )
    return load_runs(target)


def sweep(
    spec: str | Path, out: str | Path | None = None, address: str | None = None, resume: bool = False
) -> SweepResult:
    """Run a sweep file (a path, or a name in scenarios/sweeps/) as Ray tasks; see `hosfl-sim sweep`."""
    from hosfl_sim.runtime.sweep import run_sweep

    return run_sweep(spec, out, address=address, resume=resume)
