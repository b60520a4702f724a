"""The sweep file and its plan: every run a sweep makes, each scenario built and checked before any runs.

A sweep file (see scenarios/sweeps/):

    base: noniid                          # a scenario name in scenarios/, or a YAML path
    overrides: {federation.rounds: 60}    # dotted keys applied to every run
    seeds: [0, 1]                         # replaces the base scenario's seeds
    grid:                                 # dotted keys -> lists of values (their product)
      task.partition.alpha: [0.1, 1.0]
      algorithms[0].perturbations: [1, 5]
    cpus_per_run: 1                       # Ray CPUs each run reserves (default: runtime.torch_threads)
    gpus_per_run: 0.25                    # Ray GPUs each run reserves (default 0); fractional: runs share a GPU

`grid` may also be a list of such mappings: the union of their products, so that a key can vary
for one algorithm only. Under the key `algorithms` each value is one algorithm (or a list of them)
that replaces the scenario's list. Keys apply shallowest first, so `algorithms[0].mu` edits the
algorithm the grid point chose. Each (grid point, seed, algorithm) is one run.

A run given a GPU runs on it (runtime.device auto or cuda); a run given none runs on the CPU, even where the node
has GPUs (they are other runs'). `runtime.device: cuda` needs gpus_per_run > 0.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hosfl_sim.config import ConfigError, Scenario, load_scenario, to_dict
from hosfl_sim.config.identity import run_hash
from hosfl_sim.config.load import SCENARIO_DIR, apply_override, load_raw, load_yaml_file, resolve_path
from hosfl_sim.config.schema import directory_name

MAX_GRID_POINTS = 10_000
_SPEC_KEYS = ("name", "description", "base", "overrides", "seeds", "grid", "cpus_per_run", "gpus_per_run")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file. `grid` is always a list of mappings (dotted key -> list of values)."""

    name: str
    base: str
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    grid: list[dict[str, list]] = field(default_factory=lambda: [{}])
    cpus_per_run: float | None = None
    gpus_per_run: float = 0.0
    folder_keys: list[str] | None = None  # the varied keys that name a grid point's folder (None: all of them)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: `scenario` (base + overrides + grid point, in-process backend) with
    algorithm `index` and `seed`, written to `<sweep dir>/<path>`. `overrides` holds the grid
    values that vary across the sweep (recorded in the manifest, shown in plot labels)."""

    path: str
    scenario: Scenario
    index: int
    seed: int
    overrides: dict[str, Any]
    config_sha256: str
    num_cpus: float
    num_gpus: float = 0.0

    @property
    def algorithm(self) -> str:
        return self.scenario.algorithms[self.index].display_name


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep YAML file (a path, or a name in scenarios/sweeps/). The base scenario
    is resolved next to the file, then as a path from the working directory, then as a name in scenarios/."""
    path = Path(path)
    if not path.exists() and (SCENARIO_DIR / "sweeps" / f"{path}.yaml").exists():
        path = SCENARIO_DIR / "sweeps" / f"{path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in (SCENARIO_DIR / "sweeps").glob("*.yaml")))
        raise ConfigError("sweep", str(path), f"a sweep YAML file or one of: {known}")
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), data, "a mapping at the top level")
    for key in data:
        if key not in _SPEC_KEYS:
            raise ConfigError(f"sweep.{key}", data[key], f"a known key ({', '.join(_SPEC_KEYS)})")
    if "base" not in data:
        raise ConfigError("sweep.base", None, "the base scenario: a name in scenarios/ or a YAML path")
    base = str(data["base"])
    beside = path.parent / base
    base = str(beside) if beside.suffix in (".yaml", ".yml") and beside.exists() else str(resolve_path(base))
    grid = data.get("grid") or [{}]
    grid = [grid] if isinstance(grid, dict) else grid
    if not isinstance(grid, list):
        raise ConfigError("sweep.grid", grid, "a mapping of dotted keys to lists of values, or a list of them")
    for i, g in enumerate(grid):
        if not isinstance(g, dict):
            raise ConfigError(f"sweep.grid[{i}]", g, "a mapping of dotted keys to lists of values")
        for key, values in g.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep.grid.{key}", values, "a non-empty list of values")
    size = sum(math.prod(len(v) for v in g.values()) for g in grid)
    if size > MAX_GRID_POINTS:  # each point is a scenario built and checked, then runs per seed and algorithm
        raise ConfigError("sweep.grid", f"{size:,} points", f"at most {MAX_GRID_POINTS:,} grid points")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("sweep.overrides", overrides, "a mapping of dotted keys to values")
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds):
        raise ConfigError("sweep.seeds", seeds, "a non-empty list of integers")
    cpus = data.get("cpus_per_run")
    if cpus is not None and (not isinstance(cpus, (int, float)) or cpus <= 0):
        raise ConfigError("sweep.cpus_per_run", cpus, "a number > 0")
    gpus = check_gpus_per_run(data.get("gpus_per_run", 0))
    return SweepSpec(
        name=directory_name(str(data.get("name") or path.stem)),  # it names the sweep's folder
        base=base,
        description=str(data.get("description") or ""),
        overrides=overrides,
        seeds=seeds,
        grid=grid,
        cpus_per_run=cpus,
        gpus_per_run=float(gpus),
    )


def check_gpus_per_run(gpus: Any, field: str = "sweep.gpus_per_run") -> float:
    """A run's GPU share as Ray takes it: a fraction in [0, 1] (runs share a GPU) or whole GPUs."""
    if (
        isinstance(gpus, bool)
        or not isinstance(gpus, (int, float))
        or not 0 <= gpus < float("inf")
        or (gpus > 1 and gpus % 1)
    ):
        raise ConfigError(field, gpus, "a fraction in [0, 1] or a whole number (Ray's rule)")
    return float(gpus)


def grid_points(grid: list[dict[str, list]]) -> list[dict[str, Any]]:
    """Every point of the union of the grids' products, in order, each once."""
    points: list[dict[str, Any]] = []
    for g in grid:
        for values in itertools.product(*g.values()):
            point = dict(zip(g.keys(), values))
            if point not in points:
                points.append(point)
    return points


def _depth(key: str) -> int:
    return len(key.replace("[", ".").split("."))


def _short_names(keys: list[str]) -> dict[str, str]:
    """`task.partition.alpha` -> `alpha`, unless two varied keys end alike."""
    last = {k: k.replace("]", "").replace("[", ".").rsplit(".", 1)[-1] for k in keys}
    taken = list(last.values())
    return {k: (s if taken.count(s) == 1 else directory_name(k)) for k, s in last.items()}


def plan_sweep(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, each scenario built and checked now (a bad key fails before any run)."""
    base = load_raw(spec.base)
    points = grid_points(spec.grid)
    varied = list(dict.fromkeys(k for p in points for k in p if k != "algorithms"))
    short = _short_names(varied)
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    for point in points:
        data = copy.deepcopy(base)
        for key, value in spec.overrides.items():
            apply_override(data, key, copy.deepcopy(value))
        for key in sorted(point, key=_depth):  # stable: `algorithms` before `algorithms[0].mu`
            value = copy.deepcopy(point[key])
            apply_override(data, key, [value] if key == "algorithms" and isinstance(value, dict) else value)
        if spec.seeds is not None:
            data["seeds"] = list(spec.seeds)
        apply_override(data, "runtime.backend", "local")
        try:
            scenario = load_scenario(data)
        except ConfigError as e:
            raise ConfigError(f"sweep point {point}: {e.path}", e.value, e.expected) from None
        if scenario.runtime.device == "cuda" and not spec.gpus_per_run:
            expected = "a number > 0 with runtime.device cuda (a run sees a GPU only if it reserves one)"
            raise ConfigError("sweep.gpus_per_run", spec.gpus_per_run, expected)
        overrides = {k: v for k, v in point.items() if k != "algorithms"}
        named = {k: v for k, v in overrides.items() if spec.folder_keys is None or k in spec.folder_keys}
        folder = "_".join(f"{short[k]}-{_value_text(v)}" for k, v in named.items()) or "default"
        as_dict = to_dict(scenario)
        for seed in scenario.seeds:
            for i, algo in enumerate(scenario.algorithms):
                sha = run_hash(as_dict, i, seed)
                if sha in seen:  # the same run reached through two grids
                    continue
                seen.add(sha)
                path = f"{directory_name(folder)}/{directory_name(algo.display_name)}_seed{seed}"
                cpus = spec.cpus_per_run or scenario.runtime.torch_threads
                runs.append(PlannedRun(path, scenario, i, seed, overrides, sha, float(cpus), spec.gpus_per_run))
    paths = [r.path for r in runs]
    clash = sorted({p for p in paths if paths.count(p) > 1})
    if clash:
        raise ConfigError("sweep.grid", clash, "runs with distinct directories (give the algorithms distinct labels)")
    return runs


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:8]
    return str(v)
