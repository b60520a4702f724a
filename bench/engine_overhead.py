"""Target 2: the Ray runtime's overhead over the same algorithm calls made in one process.

HO-SFL on the quickstart CNN (digits, cut after block1), N = 100, K = 10, P = 5. The same scenario runs
on the Ray backend (actors, object store) and on the LocalBackend (every role in this process, calls in
order) with the same number of client workers, so the algorithm issues the same calls. Runs alternate;
each ratio is a median Ray round over a median local round, on two clocks:
- run_round: the algorithm's round (timed on the driver, which waits for every call it makes);
- engine round: the engine loop's whole round (wall_time_s in rounds.parquet), recorder included.
With 1 worker both backends do the same serial work, so the ratio is the runtime's overhead; with 2
(the default) Ray also runs the two workers in parallel. Actors start once, before the first Ray run,
and are reused by every run: start-up is not in the rounds (bench.worker_scaling checks that).
Also measured: `hosfl_per_client` (bench/proposals.py), the same algorithm routed as HOSFL was before it
grouped its calls (one actor call per client per phase instead of one per worker); it must record the
same losses.

    python -m bench.engine_overhead [--quick] [--task NAME]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import cnn_scenario, machine, ratio_line, round_seconds, timed_method
from bench.proposals import PerClientHOSFL, register
from bench.worker_scaling import CONFIGS, PERTURBATIONS
from hosfl_sim.algorithms.hosfl import HOSFL
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.local import LocalBackend

SKIP = 3  # warm-up rounds left out
VARIANTS = {"hosfl": HOSFL, "hosfl_per_client": PerClientHOSFL}


def run(backend, sc: dict, out: Path, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run_round seconds, engine round seconds, train losses) of one run (warm-up and the last round left out
    of the times: the last one evaluates)."""
    sc = {**sc, "algorithms": [{**sc["algorithms"][0], "name": variant}]}
    engine = Engine(load_scenario(sc), backend=backend, progress=False)
    with timed_method(VARIANTS[variant], "run_round") as seconds:
        summary = engine.run_one(0, 0, out)
    losses = pd.read_parquet(summary.run_dir / "rounds.parquet")["train_loss"].to_numpy()
    return np.array(seconds[SKIP:-1]), round_seconds(summary.run_dir, SKIP), losses


def compare(workers: int, rounds: int, reps: int, out: Path, task: dict | None) -> tuple[dict, bool]:
    """({(variant, backend): (median run_round s, median engine round s)}, per-client losses == hosfl losses)."""
    from hosfl_sim.runtime.ray_backend import RayBackend

    sc = cnn_scenario("overhead", 100, 10, rounds, backend="ray", num_workers=workers)
    if task is not None:
        sc["task"] = task
    ray_backend = RayBackend(load_scenario(sc).runtime)
    times: dict[tuple[str, str], list] = {}
    losses: dict[str, np.ndarray] = {}
    try:
        for r in range(reps):
            for variant in VARIANTS:
                for name in ("local", "ray"):
                    backend = LocalBackend(workers, 1) if name == "local" else ray_backend
                    t_round, t_engine, loss = run(backend, sc, out / f"{variant}_{name}_w{workers}_{r}", variant)
                    times.setdefault((variant, name), []).append((t_round, t_engine))
                    losses.setdefault(variant, loss)
    finally:
        ray_backend.shutdown()
    medians = {
        key: tuple(float(np.median(np.concatenate([t[i] for t in ts]))) for i in range(2)) for key, ts in times.items()
    }
    return medians, bool(np.array_equal(losses["hosfl"], losses["hosfl_per_client"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    tasks = [name for name in CONFIGS if name not in PERTURBATIONS]  # this bench runs P = 5
    ap.add_argument("--task", choices=tasks, help="another task (default: the quickstart CNN on digits)")
    args = ap.parse_args()
    register()
    rounds, reps = (12, 1) if args.quick else (15, 4)
    task = CONFIGS[args.task] if args.task else None
    print(
        f"# engine overhead, {machine()}; HO-SFL {args.task or 'quickstart cnn block1 digits'}, N = 100, K = 10, "
        f"P = 5, {rounds} rounds x {reps} per (variant, backend), alternating"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            medians, same = compare(w, rounds, reps, Path(tmp), task)
            for variant in VARIANTS:
                local, remote = medians[variant, "local"], medians[variant, "ray"]
                for i, clock in enumerate(("run_round", "engine round")):
                    r = remote[i] / local[i]
                    detail = f"ray {1e3 * remote[i]:.1f} ms, local {1e3 * local[i]:.1f} ms"
                    name = f"ray/local {clock}, {w} worker(s), {variant}"
                    print(ratio_line(name, r, "<= 1.15", r <= 1.15, detail))
            print(f"  hosfl_per_client records the same train losses as hosfl: {same}")


if __name__ == "__main__":
    main()
