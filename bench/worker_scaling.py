"""Target 4: rounds per second with 2 client workers versus 1, and what workers cost to start.

The machine has 2 cores shared with other jobs, so W = 1 and W = 2 run side by side in one Ray instance,
alternating run by run; each rate is the median over all their rounds. HO-SFL, K = 10, P = 5, batch 32:
- "client-heavy": the CNN cut after block2 on 1x32x32 images (synthetic);
- "quickstart": the CNN cut after block1 on 8x8 digits;
- "client-heavy, P = 10": the first task at the reference code's default P, so more of a round is probes.
Each first measures in process the clients' share of a round's compute and the 2-worker speed-up it
allows at most (Amdahl: the server's step, all K backward passes between the anchors and the probes,
does not split across workers; measured here: about 82% and 1.70x client-heavy, 89% and 1.80x at P = 10,
50% and 1.33x quickstart).
Each also runs the two routings of bench/proposals.py (which must record hosfl's losses):
`hosfl_per_client` (one actor call per client per phase: HOSFL's routing before it grouped its calls by
worker) and `hosfl_pipelined` (the server's backward per client as its activation arrives, so probes
start while the server works). Also checked: actors start once per backend (not per run, not per
round): their pids stay the same across runs and across the runs of Engine.run_all, and a run's first
round costs about what the others do.

With `--workers 1 2 4 8` it also compares more workers with 1 (each against its Amdahl bound), and with
`--gpu` every actor of every pool asks for an equal share of one GPU (fractional `num_gpus`), for a
machine with a GPU and the cores to match.

    python -m bench.worker_scaling [--quick] [--workers 1 2 4 ...] [--gpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import machine, ratio_line, round_seconds, timed_method
from bench.proposals import register

SKIP = 2
VARIANTS = ("hosfl", "hosfl_per_client", "hosfl_pipelined")

CONFIGS = {
    "client-heavy cnn block2 1x32x32": {
        "dataset": {"name": "synthetic", "synthetic": {"num_samples": 4000, "num_features": 1024, "image_side": 32}},
        "model": {"name": "cnn", "cut": "block2", "width": 16},
    },
    "quickstart cnn block1 digits": {
        "dataset": {"name": "digits"},
        "model": {"name": "cnn", "cut": "block1", "width": 16},
    },
}
CLIENT_HEAVY_P10 = "client-heavy cnn block2 1x32x32, P = 10"  # the same task at the reference code's default P
CONFIGS[CLIENT_HEAVY_P10] = CONFIGS["client-heavy cnn block2 1x32x32"]
PERTURBATIONS = {CLIENT_HEAVY_P10: 10}  # P of each configuration (5, the paper's, unless named here)


def scenario(
    task: dict,
    workers: int,
    rounds: int,
    algorithm: str = "hosfl",
    seeds: list[int] | None = None,
    p: int = 5,
    gpu: float = 0.0,
) -> dict:
    """The bench's scenario; `gpu`: the fraction of one GPU each actor (workers and server) asks for."""
    return {
        "name": "scaling",
        "task": task,
        "algorithms": [{"name": algorithm, "perturbations": p, "mu": 0.001}],
        "federation": {
            "num_clients": 50,
            "clients_per_round": 10,
            "rounds": rounds,
            "batch_size": 32,
            "eval_every": 10**9,
        },
        "seeds": seeds or [0],
        "runtime": {"backend": "ray", "num_workers": workers, "worker_num_gpus": gpu, "server_num_gpus": gpu},
    }


def pids(backend) -> list[int]:
    import ray

    return ray.get([a.pid.remote() for a in [*backend.workers, backend.server_actor]])


def scaling(
    task: dict, rounds: int, reps: int, out: Path, p: int = 5, counts: tuple[int, ...] = (1, 2), gpu: float = 0.0
) -> tuple[dict, dict]:
    """({variant: {W: median rounds/s with W workers}}, facts on start-up, reuse and equal losses)."""
    from hosfl_sim.config import load_scenario
    from hosfl_sim.runtime import Engine
    from hosfl_sim.runtime.ray_backend import RayBackend

    backends, started = {}, {}
    for w in counts:
        t0 = time.perf_counter()
        backends[w] = RayBackend(load_scenario(scenario(task, w, rounds, p=p, gpu=gpu)).runtime)
        started[w] = (pids(backends[w]), time.perf_counter() - t0)  # pids() waits for the actors to be up
    times: dict[tuple[str, int], list[np.ndarray]] = {}
    firsts, losses = [], {}
    try:
        for r in range(reps):
            for variant in VARIANTS:
                for w in counts:
                    sc = load_scenario(scenario(task, w, rounds, variant, p=p, gpu=gpu))
                    summary = Engine(sc, backend=backends[w], progress=False).run_one(0, 0, out / f"{variant}{w}_{r}")
                    times.setdefault((variant, w), []).append(round_seconds(summary.run_dir, SKIP))
                    rows = pd.read_parquet(summary.run_dir / "rounds.parquet")
                    firsts.append(float(rows["wall_time_s"].iloc[0]))  # from the end of the run's setup
                    losses.setdefault(variant, rows["train_loss"].to_numpy())
        reused = all(pids(backends[w]) == started[w][0] for w in counts)
    finally:
        for b in backends.values():
            b.shutdown()
    median = {key: float(np.median(np.concatenate(ts))) for key, ts in times.items()}
    rates = {v: {w: 1.0 / median[v, w] for w in counts} for v in VARIANTS}
    facts = {
        "start_s": {w: started[w][1] for w in counts},
        "reused": reused,
        "runs": len(firsts),
        "first_round_s": float(np.median(firsts)),
        "round_s": float(np.median(np.concatenate([t for ts in times.values() for t in ts]))),
        "same_losses": all(np.array_equal(losses["hosfl"], v) for v in losses.values()),
    }
    return rates, facts


def client_share(task: dict, rounds: int, out: Path, p: int = 5) -> float:
    """The clients' share of a round's compute, measured in process: the clients' anchors and probes split
    across workers, the server's step does not."""
    from hosfl_sim.algorithms.hosfl import HOSFLClient, HOSFLServer
    from hosfl_sim.config import load_scenario
    from hosfl_sim.runtime import Engine
    from hosfl_sim.runtime.local import LocalBackend

    sc = load_scenario(scenario(task, 1, rounds, p=p))
    with (
        timed_method(HOSFLClient, "each") as anchors,  # one worker: a call is every client's anchor
        timed_method(HOSFLClient, "each_of") as probes,  # and every client's probes
        timed_method(HOSFLServer, "train_step") as steps,
    ):
        Engine(sc, backend=LocalBackend(1, 1), progress=False).run_one(0, 0, out / "amdahl")
    client = float(np.median(anchors[SKIP:]) + np.median(probes[SKIP:]))
    return client / (client + float(np.median(steps[SKIP:])))


def bound(share: float, workers: int) -> float:
    """Amdahl: the most W workers can speed a round up over 1 when only the clients' share splits."""
    return 1.0 / ((1.0 - share) + share / workers)


def run_all_reuse(out: Path) -> tuple[bool, int, float]:
    """Engine.run_all over 2 seeds x 2 algorithms on one backend: (same actor pids throughout, runs, setup s)."""
    from hosfl_sim.config import load_scenario
    from hosfl_sim.runtime import Engine

    sc = scenario(CONFIGS["quickstart cnn block1 digits"], 2, 3, seeds=[0, 1])
    sc["algorithms"] = [{"name": "hosfl", "perturbations": 5}, {"name": "sfl"}]
    engine = Engine(load_scenario(sc), progress=False)  # the backend the scenario names, as the CLI builds it
    try:
        before = pids(engine.backend)
        with timed_method(type(engine.backend), "setup") as setups:
            runs = engine.run_all(out / "run_all")
        return pids(engine.backend) == before, len(runs), float(np.median(setups))
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts to compare (with 1)")
    ap.add_argument("--gpu", action="store_true", help="every actor asks for an equal share of one GPU")
    args = ap.parse_args()
    counts = tuple(sorted({1, *args.workers}))
    rounds, reps = (6, 1) if args.quick else (8, 2)
    import ray
    import torch

    from hosfl_sim.config import RuntimeConfig
    from hosfl_sim.runtime.ray_backend import init_ray

    register()
    # One instance for every pool: logical CPUs for all their workers and servers (the machine has what it has).
    actors = sum(counts) + len(counts)
    init_ray(RuntimeConfig(num_workers=actors - 1))
    gpu = 0.0
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device here")
        gpu = 1.0 / actors  # every pool's actors at once on one GPU
    where = f"{actors} actors sharing one GPU ({gpu:.3f} each)" if gpu else "CPU actors"
    print(
        f"# worker scaling, {machine()}; K = 10, P = 5 unless named, batch 32, {rounds} rounds x {reps} per run; "
        f"workers {', '.join(map(str, counts))}; {where}"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.configs:
                p, out = PERTURBATIONS.get(name, 5), Path(tmp) / name.replace(" ", "_").replace(",", "")
                share = client_share(CONFIGS[name], rounds, out, p)
                bounds = ", ".join(f"{w} workers <= {bound(share, w):.2f}x" for w in counts[1:])
                print(f"  {name}: clients do {100 * share:.0f}% of a round's compute (in process, CPU): {bounds}")
                rates, facts = scaling(CONFIGS[name], rounds, reps, out, p, counts, gpu)
                for variant, rate in rates.items():
                    for w in counts[1:]:
                        r = rate[w] / rate[1]
                        detail = f"{rate[1]:.2f} vs {rate[w]:.2f} rounds/s"
                        if w == 2:  # the target; more workers: printed against their Amdahl bound
                            print(ratio_line(f"2 workers / 1, {name}, {variant}", r, ">= 1.6", r >= 1.6, detail))
                        else:
                            print(f"  {w} workers / 1, {name}, {variant}: {r:.3f} ({detail})")
                s = facts["start_s"]
                first, median = 1e3 * facts["first_round_s"], 1e3 * facts["round_s"]
                starts = ", ".join(f"{s[w]:.1f} s ({w} + server)" for w in counts)
                print(
                    f"  actors start once per backend: {starts}; "
                    f"same pids after {facts['runs']} runs: {facts['reused']}; a run's first round {first:.0f} ms vs "
                    f"median round {median:.0f} ms; the proposals record hosfl's losses: {facts['same_losses']}"
                )
            same, runs, setup = run_all_reuse(Path(tmp))
            print(
                f"  Engine.run_all, 2 algorithms x 2 seeds: {runs} runs on one backend, same actor pids: {same}; "
                f"role setup {1e3 * setup:.0f} ms per run (median)"
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
