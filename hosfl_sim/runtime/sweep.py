"""Parameter sweeps: a grid of scenario overrides x seeds x algorithms, each run one Ray task.

The sweep file and the runs it makes: `runtime.sweep_plan`; the index of those runs (sweep_index.parquet)
and reading a sweep back: `runtime.sweep_index`. This module runs the plan.

Why each run is a Ray task on the in-process backend, not a set of actors: one run's roles take
turns (the driver waits on the server, then on the clients), so on the in-process backend a run
keeps about `torch_threads` cores busy. A task that reserves that many CPUs lets Ray pack as many
runs as the cluster has cores and start the next one as soon as one ends; a run of actors would
pay ~1 s and ~170 MB per actor and spread one run's sequential work over several reserved slots.
Both backends give the same numbers, so the choice changes throughput, not results. A run that
reserves GPUs (`gpus_per_run`, fractional: Ray packs several runs on one GPU) runs on the one Ray gave
it; a run that reserves none stays on the CPU (runtime/device.py).

A run writes straight into the sweep directory when its node sees that directory (this machine,
or a shared filesystem); otherwise it writes to a scratch directory and its files come back to
the driver through the object store when it ends.
"""

from __future__ import annotations

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

from hosfl_sim.config import ConfigError, load_scenario, to_dict
from hosfl_sim.runtime.checkpoint import FILE as CHECKPOINT
from hosfl_sim.runtime.checks import check_output_dir
from hosfl_sim.runtime.sweep_index import check_sweep_dir, final_metrics, index_row, is_complete, write_index
from hosfl_sim.runtime.sweep_plan import PlannedRun, SweepSpec, load_sweep_spec, plan_sweep
from hosfl_sim.runtime.sweep_stop import POLL_S, SweepStop, cancel_at_once, stop_requested, watch_stop

SWEEP_JSON = "sweep.json"
TOKEN = ".sweep_token"  # a run whose node reads the same token sees the sweep directory


@dataclass
class SweepResult:
    dir: Path
    index: pd.DataFrame  # the sweep index, one row per run
    ran: list[str]  # paths of the runs this invocation ran
    skipped: list[str]  # paths of the runs found complete (--resume)

    @property
    def failed(self) -> list[str]:
        return self.index.loc[self.index["status"] == "failed", "path"].tolist()

    @property
    def interrupted(self) -> list[str]:  # stopped by Ctrl-C: `--resume` continues them
        return self.index.loc[self.index["status"] == "interrupted", "path"].tolist()


# ----------------------------------------------------------------------------- one run (a Ray task)


def _run_task(
    scenario: dict, index: int, seed: int, run_dir: str, overrides: dict, token_file: str, token: str,
    resume: bool = False, given: dict[str, bytes] | None = None,
) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """Yields ("started", host), then ("finished", {status, error, files}). Never raises for a run's
    own failure: the error is part of the result, so the sweep carries on. The scenario travels as
    a plain mapping and is checked again here, where the node's own copy of the package runs it. `resume`: go on
    from the run's checkpoint (`given`: its files, for a node that cannot see them); a stop: sweep_stop.py."""
    yield "started", socket.gethostname()  # the node it runs on, for the index
    from hosfl_sim.runtime.backends import make_backend
    from hosfl_sim.runtime.engine import Engine

    if stop_requested(token):  # stopped while this run was queued: it stays as it was
        yield "finished", {"status": "interrupted", "error": None, "files": None}
        return
    try:
        shared = Path(token_file).read_text() == token
    except OSError:
        shared = False
    target = Path(run_dir) if shared else Path(tempfile.mkdtemp(prefix="hosfl-run-"))
    for name, data in (given or {}).items() if not shared else ():
        (target / name).write_bytes(data)
    status, error = "failed", None
    try:
        sc = load_scenario(scenario)
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else None  # the GPUs Ray gave this task: none, some
        engine = Engine(sc, make_backend(sc, gpu_ids))  # no terminal in a task: a progress line every 30 s
        with watch_stop(engine, token):
            status = engine.run_one(index, seed, target, overrides, resume=resume).status
    except Exception:
        error = traceback.format_exc()
    files = None
    if not shared:  # this node cannot see the sweep directory: send the files back
        files = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
        shutil.rmtree(target, ignore_errors=True)
    yield "finished", {"status": status, "error": error, "files": files}


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
    check_sweep_dir(out, resume)
    check_output_dir(out)
    skipped = [r.path for r in runs if resume and is_complete(out / r.path, r.config_sha256)]
    todo = [r for r in runs if r.path not in skipped]
    address = address if address is not None else runs[0].scenario.runtime.address
    started_ray = _connect(address, todo) if todo else False  # a bad resource request fails before any write
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / SWEEP_JSON).write_text(json.dumps(spec.__dict__, indent=2, default=str))
        rows = {r.path: index_row(r) for r in runs}
        for p in skipped:
            rows[p]["status"] = json.loads((out / p / "manifest.json").read_text())["status"]
            rows[p].update(final_metrics(out / p))
        index = write_index(out, list(rows.values()))
        log(f"sweep {spec.name}: {len(runs)} runs, {len(skipped)} complete already, {len(todo)} to run; {out}")
        if todo:
            _schedule(todo, out, rows, log, resume)
            index = write_index(out, list(rows.values()))
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
    gpus = ray.cluster_resources().get("GPU", 0)
    need = max(r.num_gpus for r in todo)
    if need > gpus and address is None:
        if started:
            ray.shutdown()
        raise ConfigError("sweep.gpus_per_run", need, f"at most the {gpus:g} GPUs of this Ray instance")
    return started


# Where runs find pretrained weights and datasets, and the token for gated ones: the driver's settings travel with
# every run, so a node of a cluster reads the same cache (on a shared filesystem) with the same rights.
HUB_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")


def hub_environment() -> dict[str, str]:
    return {k: os.environ[k] for k in HUB_VARIABLES if k in os.environ}


def _submit(todo: list[PlannedRun], out: Path, token: str, resume: bool) -> dict[Any, PlannedRun]:
    """One streaming Ray task per run (each from an empty run directory, or on `resume` from its checkpoint where
    it has one): its stream -> the run."""
    import ray

    task = ray.remote(num_returns="streaming")(_run_task)
    env = hub_environment()
    options = {"runtime_env": {"env_vars": env}} if env else {}
    pending: dict[Any, PlannedRun] = {}
    for r in todo:
        again = resume and (out / r.path / CHECKPOINT).is_file()  # interrupted: it goes on from its checkpoint
        if not again:
            shutil.rmtree(out / r.path, ignore_errors=True)  # a rerun starts from an empty directory
        given = {p.name: p.read_bytes() for p in (out / r.path).iterdir() if p.is_file()} if again else None
        gen = task.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus, name=f"sweep:{r.path}", **options).remote(
            to_dict(r.scenario), r.index, r.seed, str(out / r.path), r.overrides, str(out / TOKEN), token, again, given
        )
        pending[gen] = r
    return pending


@dataclass
class _Tally:
    """The runs as the driver sees them: it keeps their index rows (and the index on disk) up to date."""

    out: Path
    rows: dict
    total: int
    log: Callable[[str], None]
    running: set[str] = field(default_factory=set)
    done: int = 0
    failed: int = 0
    interrupted: int = 0
    start: float = field(default_factory=time.perf_counter)

    def started(self, r: PlannedRun, host: str) -> None:
        self.running.add(r.path)
        self.rows[r.path].update(status="running", host=host)

    def finish(self, r: PlannedRun, status: str, error: str | None, files: dict | None) -> None:
        """A run ended: its files (those sent back) in its directory, its row final, the index written."""
        run_dir = self.out / r.path
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (p for p in run_dir.iterdir() if files is not None and p.is_file() and p.name not in files):
            stale.unlink()  # sent back: the run's files are those it ended with (a resumed run's checkpoint is gone)
        for name, data in (files or {}).items():
            (run_dir / (name + ".tmp")).write_bytes(data)
            os.replace(run_dir / (name + ".tmp"), run_dir / name)
        if error:
            (run_dir / "error.txt").write_text(error)
            self.log(f"  failed: {r.path}: {error.strip().splitlines()[-1]}")
        self.running.discard(r.path)
        if status in ("failed", "interrupted"):
            setattr(self, status, getattr(self, status) + 1)
        else:
            self.done += 1
        self.rows[r.path] = {**self.rows[r.path], "status": status, **final_metrics(run_dir), "error": error}
        write_index(self.out, list(self.rows.values()))

    def report(self) -> None:
        ended = self.done + self.failed + self.interrupted
        queued = self.total - ended - len(self.running)
        stopped = f", interrupted {self.interrupted}" if self.interrupted else ""
        self.log(
            f"  [{ended}/{self.total}] done {self.done}, "
            f"running {len(self.running)}, failed {self.failed}{stopped}, queued {queued}"
            f"  ({time.perf_counter() - self.start:.0f} s)"
        )


def _advance(gen: Any, r: PlannedRun, tally: _Tally) -> bool:
    """Read the next item of a run's stream; True when the run has started and its stream goes on."""
    import ray

    try:
        kind, payload = ray.get(next(gen))
    except Exception as e:  # the task itself died (worker crash, out of memory, ...)
        tally.finish(r, "failed", f"{type(e).__name__}: {e}", None)
        return False
    if kind == "started":
        tally.started(r, payload)
        return True
    tally.finish(r, payload["status"], payload["error"], payload["files"])
    return False


def _schedule(todo: list[PlannedRun], out: Path, rows: dict, log: Callable[[str], None], resume: bool) -> None:
    import ray

    have = ray.cluster_resources()
    token = uuid.uuid4().hex
    (out / TOKEN).write_text(token)
    pending = _submit(todo, out, token, resume)
    per_run = f"{todo[0].num_cpus:g} CPU(s)" + (f" and {todo[0].num_gpus:g} GPU(s)" if todo[0].num_gpus else "")
    cluster = f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs"
    log(f"  {len(todo)} tasks on a Ray cluster of {cluster}, {per_run} per run")
    tally = _Tally(out, rows, len(todo), log)
    try:
        with SweepStop(token, log) as stop:  # Ctrl-C: the runs stop after their round (sweep_stop.py)
            waiting = list(pending)
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1, timeout=POLL_S)  # wakes to pass a stop on
                stop.send()
                for gen in ready:
                    if _advance(gen, pending[gen], tally):
                        waiting.append(gen)
                    tally.report()
    except BaseException as e:
        cancel_at_once(pending, out, rows)
        if not isinstance(e, KeyboardInterrupt):  # a second Ctrl-C: the runs are cancelled, the sweep returns
            raise
    finally:
        (out / TOKEN).unlink(missing_ok=True)
