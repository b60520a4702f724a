"""Parameter sweeps: a grid of scenario overrides x seeds x algorithms, each run one Ray task.

A sweep file (see scenarios/sweeps/):

    base: noniid                          # a scenario name in scenarios/, or a YAML path
    overrides: {federation.rounds: 60}    # dotted keys applied to every run
    seeds: [0, 1]                         # replaces the base scenario's seeds
    grid:                                 # dotted keys -> lists of values (their product)
      task.partition.alpha: [0.1, 1.0]
      algorithms[0].perturbations: [1, 5]
    cpus_per_run: 1                       # Ray CPUs each run reserves (default: runtime.torch_threads)

`grid` may also be a list of such mappings: the union of their products, so that a key can vary
for one algorithm only. Under the key `algorithms` each value is one algorithm (or a list of them)
that replaces the scenario's list. Keys apply shallowest first, so `algorithms[0].mu` edits the
algorithm the grid point chose. Each (grid point, seed, algorithm) is one run.

Why each run is a Ray task on the in-process backend, not a set of actors: one run's roles take
turns (the driver waits on the server, then on the clients), so on the in-process backend a run
keeps about `torch_threads` cores busy. A task that reserves that many CPUs lets Ray pack as many
runs as the cluster has cores and start the next one as soon as one ends; a run of actors would
pay ~1 s and ~170 MB per actor and spread one run's sequential work over several reserved slots.
Both backends give the same numbers, so the choice changes throughput, not results. The price: a
run uses no GPU (the in-process backend runs on the CPU).

A run writes straight into the sweep directory when its node sees that directory (this machine,
or a shared filesystem); otherwise it writes to a scratch directory and its files come back to
the driver through the object store when it ends.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hosfl_sim.config import ConfigError, Scenario, load_scenario, to_dict
from hosfl_sim.config.identity import run_hash
from hosfl_sim.config.load import SCENARIO_DIR, apply_override, load_raw, load_yaml_file, resolve_path
from hosfl_sim.config.schema import directory_name

INDEX = "sweep_index.parquet"
SWEEP_JSON = "sweep.json"
TOKEN = ".sweep_token"  # a run whose node reads the same token sees the sweep directory
DONE = ("completed", "diverged")  # a run that ended on its own: rerunning it gives the same numbers
_SPEC_KEYS = ("name", "description", "base", "overrides", "seeds", "grid", "cpus_per_run")
# Index columns beside the varied keys; the final values come from each run's last round.
_FINAL_COLUMNS = (
    "rounds",
    "test_acc",
    "best_test_acc",
    "test_loss",
    "train_loss",
    "samples_seen",
    "bytes_total",
    "sim_time_s",
)
_FINAL_COLUMNS += ("wall_time_s",)
_EVALUATED = ("test_acc", "best_test_acc", "test_loss")  # taken from the last evaluated round, the rest the last
_RUN_COLUMNS = ("path", "status", "algorithm", "seed", "config_sha256", "host", "error")


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

    @property
    def algorithm(self) -> str:
        return self.scenario.algorithms[self.index].display_name


@dataclass
class SweepResult:
    dir: Path
    index: pd.DataFrame  # the sweep index, one row per run
    ran: list[str]  # paths of the runs this invocation ran
    skipped: list[str]  # paths of the runs found complete (--resume)

    @property
    def failed(self) -> list[str]:
        return self.index.loc[self.index["status"] == "failed", "path"].tolist()


# ----------------------------------------------------------------------------- the sweep file


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
    for i, g in enumerate(grid):
        if not isinstance(g, dict):
            raise ConfigError(f"sweep.grid[{i}]", g, "a mapping of dotted keys to lists of values")
        for key, values in g.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep.grid.{key}", values, "a non-empty list of values")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("sweep.overrides", overrides, "a mapping of dotted keys to values")
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds):
        raise ConfigError("sweep.seeds", seeds, "a non-empty list of integers")
    cpus = data.get("cpus_per_run")
    if cpus is not None and (not isinstance(cpus, (int, float)) or cpus <= 0):
        raise ConfigError("sweep.cpus_per_run", cpus, "a number > 0")
    return SweepSpec(
        name=str(data.get("name") or path.stem),
        base=base,
        description=str(data.get("description") or ""),
        overrides=overrides,
        seeds=seeds,
        grid=grid,
        cpus_per_run=cpus,
    )


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
                runs.append(PlannedRun(path, scenario, i, seed, overrides, sha, float(cpus)))
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


# ----------------------------------------------------------------------------- one run (a Ray task)


def _run_task(
    scenario: dict, index: int, seed: int, run_dir: str, overrides: dict, token_file: str, token: str
) -> Iterator[tuple[str, Any]]:
    """Yields ("started", host), then ("finished", {status, error, files}). Never raises for a run's
    own failure: the error is part of the result, so the sweep carries on. The scenario travels as
    a plain mapping and is checked again here, where the node's own copy of the package runs it."""
    yield "started", socket.gethostname()  # the node it runs on, for the index
    from hosfl_sim.runtime.engine import Engine

    try:
        shared = Path(token_file).read_text() == token
    except OSError:
        shared = False
    target = Path(run_dir) if shared else Path(tempfile.mkdtemp(prefix="hosfl-run-"))
    status, error = "failed", None
    try:
        engine = Engine(load_scenario(scenario), progress=False)
        status = engine.run_one(index, seed, target, overrides).status
    except Exception:
        error = traceback.format_exc()
    files = None
    if not shared:  # this node cannot see the sweep directory: send the files back
        files = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
        shutil.rmtree(target, ignore_errors=True)
    yield "finished", {"status": status, "error": error, "files": files}


# ----------------------------------------------------------------------------- the index


def _final_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's last round, with test metrics from its last evaluated round."""
    path = run_dir / "rounds.parquet"
    if not path.exists():
        return {}
    r = pd.read_parquet(path).sort_values("round")
    if r.empty:
        return {}
    last = r.iloc[-1]
    out: dict[str, Any] = {"rounds": int(last["round"])}
    for col in _EVALUATED:
        if col in r and r[col].notna().any():
            out[col] = float(r[col].dropna().iloc[-1])
    for col in (c for c in _FINAL_COLUMNS if c != "rounds" and c not in _EVALUATED):
        if col in r and pd.notna(last[col]):
            out[col] = last[col].item() if hasattr(last[col], "item") else last[col]
    return out


def _row(run: PlannedRun) -> dict[str, Any]:
    varied = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in run.overrides.items()}
    return {"path": run.path, "status": "pending", "algorithm": run.algorithm, "seed": run.seed, **varied,
            "config_sha256": run.config_sha256, "host": None, "error": None}  # fmt: skip


def _write_index(out: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df = df[[c for c in df.columns if c not in ("host", "error")] + ["host", "error"]]  # long text last
    for col in df.columns:  # one type per column, as Parquet wants (a grid may mix 1 and "a")
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if df[col].dtype == object and len(kinds - {str}) and len(kinds) > 1:
            df[col] = [None if v is None else str(v) for v in df[col]]
    tmp = out / (INDEX + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out / INDEX)
    return df


def is_complete(run_dir: Path, sha: str) -> bool:
    """A run that ended on its own, from exactly this configuration."""
    try:
        m = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if m.get("status") not in DONE or not (run_dir / "rounds.parquet").exists():
        return False
    return run_hash(m["scenario"], m["algorithm_index"], m["seed"]) == sha


def varied_keys(index: pd.DataFrame) -> list[str]:
    """The columns of a sweep index that hold grid values (the dotted keys that vary)."""
    return [c for c in index.columns if c not in _RUN_COLUMNS and c not in _FINAL_COLUMNS]


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """Every recorded round of every run of a sweep, with the run's index columns (path, status,
    the varied keys, config_sha256) alongside. Per-run final values: read sweep_index.parquet."""
    sweep_dir = Path(sweep_dir)
    index = pd.read_parquet(sweep_dir / INDEX)
    keep = ["path", "status", *varied_keys(index), "config_sha256"]
    frames = []
    for row in index[keep].itertuples(index=False):
        path = sweep_dir / row.path / "rounds.parquet"
        if path.exists():
            frames.append(pd.read_parquet(path).assign(**dict(zip(keep, row))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["round", *keep])


# ----------------------------------------------------------------------------- the driver


def run_sweep(
    sweep: str | Path | SweepSpec,
    out_dir: str | Path | None = None,
    address: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run every run of a sweep as Ray tasks, rewriting the sweep index as runs finish.

    `address`: an existing Ray cluster ("auto", "ray://host:10001"); None takes the base scenario's
    runtime.address, and where that is null too, starts or joins a local instance sized to this
    machine. `resume`: keep the runs already complete with the same configuration hash and run the
    rest; without it the directory must not hold a sweep yet.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep_spec(sweep)
    runs = plan_sweep(spec)
    out = (Path(out_dir) if out_dir else Path(runs[0].scenario.output_dir) / "sweeps" / spec.name).absolute()
    if not resume and ((out / INDEX).exists() or (out / SWEEP_JSON).exists()):
        raise ConfigError("--out", str(out), "a directory without a sweep (pass --resume to continue this one)")
    skipped = [r.path for r in runs if resume and is_complete(out / r.path, r.config_sha256)]
    todo = [r for r in runs if r.path not in skipped]
    address = address if address is not None else runs[0].scenario.runtime.address
    started_ray = _connect(address, todo) if todo else False  # a bad resource request fails before any write
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / SWEEP_JSON).write_text(json.dumps(spec.__dict__, indent=2, default=str))
        rows = {r.path: _row(r) for r in runs}
        for p in skipped:
            rows[p]["status"] = json.loads((out / p / "manifest.json").read_text())["status"]
            rows[p].update(_final_metrics(out / p))
        index = _write_index(out, list(rows.values()))
        log(f"sweep {spec.name}: {len(runs)} runs, {len(skipped)} complete already, {len(todo)} to run; {out}")
        if todo:
            _schedule(todo, out, rows, log)
            index = _write_index(out, list(rows.values()))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return SweepResult(out, index, [r.path for r in todo], skipped)


def _connect(address: str | None, todo: list[PlannedRun]) -> bool:
    """Start or join Ray and check that every run fits on it; True when this call started Ray."""
    import ray

    from hosfl_sim.config import RuntimeConfig
    from hosfl_sim.runtime.ray_backend import init_ray

    started = not ray.is_initialized()
    # Runs are tasks, not actors: a local instance gets exactly this machine's cores.
    init_ray(RuntimeConfig(address=address, num_workers=1, worker_num_cpus=0.0, server_num_cpus=0.0))
    cpus = ray.cluster_resources().get("CPU", 0)
    need = max(r.num_cpus for r in todo)
    if need > cpus and address is None:  # Ray would wait forever (on a cluster, an autoscaler may add nodes)
        if started:
            ray.shutdown()
        raise ConfigError("sweep.cpus_per_run", need, f"at most the {cpus:g} CPUs of this Ray instance")
    return started


# Where runs find pretrained weights and datasets, and the token for gated ones: the driver's settings travel with
# every run, so a node of a cluster reads the same cache (on a shared filesystem) with the same rights.
HUB_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")


def hub_environment() -> dict[str, str]:
    return {k: os.environ[k] for k in HUB_VARIABLES if k in os.environ}


def _schedule(todo: list[PlannedRun], out: Path, rows: dict, log: Callable[[str], None]) -> None:
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    task = ray.remote(num_returns="streaming")(_run_task)
    token = uuid.uuid4().hex
    (out / TOKEN).write_text(token)
    pending: dict[Any, PlannedRun] = {}
    env = hub_environment()
    options = {"runtime_env": {"env_vars": env}} if env else {}
    for r in todo:
        shutil.rmtree(out / r.path, ignore_errors=True)  # a rerun starts from an empty directory
        gen = task.options(num_cpus=r.num_cpus, name=f"sweep:{r.path}", **options).remote(
            to_dict(r.scenario), r.index, r.seed, str(out / r.path), r.overrides, str(out / TOKEN), token
        )
        pending[gen] = r
    log(f"  {len(todo)} tasks on a Ray cluster of {cpus:g} CPUs, {todo[0].num_cpus:g} CPU(s) per run")
    running: set[str] = set()
    counts = {"done": 0, "failed": 0}
    start = time.perf_counter()

    def finish(r: PlannedRun, status: str, error: str | None, files: dict | None) -> None:
        run_dir = out / r.path
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, data in (files or {}).items():
            (run_dir / (name + ".tmp")).write_bytes(data)
            os.replace(run_dir / (name + ".tmp"), run_dir / name)
        if error:
            (run_dir / "error.txt").write_text(error)
            log(f"  failed: {r.path}: {error.strip().splitlines()[-1]}")
        running.discard(r.path)
        counts["failed" if status == "failed" else "done"] += 1
        rows[r.path] = {**rows[r.path], "status": status, **_final_metrics(run_dir), "error": error}
        _write_index(out, list(rows.values()))

    try:
        waiting = list(pending)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for gen in ready:
                r = pending[gen]
                try:
                    kind, payload = ray.get(next(gen))
                except Exception as e:  # the task itself died (worker crash, out of memory, ...)
                    finish(r, "failed", f"{type(e).__name__}: {e}", None)
                else:
                    if kind == "started":
                        running.add(r.path)
                        rows[r.path].update(status="running", host=payload)
                        waiting.append(gen)
                    else:
                        finish(r, payload["status"], payload["error"], payload["files"])
                queued = len(todo) - counts["done"] - counts["failed"] - len(running)
                log(
                    f"  [{counts['done'] + counts['failed']}/{len(todo)}] done {counts['done']}, "
                    f"running {len(running)}, failed {counts['failed']}, queued {queued}"
                    f"  ({time.perf_counter() - start:.0f} s)"
                )
    except BaseException:
        for gen, r in pending.items():
            if rows[r.path]["status"] in ("pending", "running"):
                rows[r.path]["status"] = "interrupted"
                try:
                    ray.cancel(gen, force=True)
                except Exception:  # already finished or gone
                    pass
        _write_index(out, list(rows.values()))
        raise
    finally:
        (out / TOKEN).unlink(missing_ok=True)
