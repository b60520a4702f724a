"""Target 3: flat in N. Round time and memory as the federation grows from 1,000 to 100,000 virtual clients.

HO-SFL on the CNN (cut after block1, width 16, P = 5), K = 10 clients a round, 2 client workers on Ray,
over the synthetic source: 200,000 samples x 64 features (150,000 training rows, test capped at 2,000),
so that each of 100,000 clients holds at least one row. Batches are of 1 row at every N (a client of the
largest federation holds only 1 or 2), so every N does the same work a round. Round times: one backend
serves two runs per N, in the order 1k 10k 100k 100k 10k 1k (a drift of the shared machine's load hits
every N alike); memory: each N once more in a fresh process with its own Ray instance, for clean
numbers. Reported per N: median round time (run_round and the engine's round), resident memory (RSS,
via psutil) of the driver, of the role actors (client workers + server) and of Ray's own processes
(raylet, GCS, idle workers), with the unique set size (USS: without pages shared with other processes,
such as torch's libraries and the object store's read-only dataset), and the exact bytes of what the
driver keeps per virtual client.

    python -m bench.scale_clients [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

from bench.common import machine, ratio_line, round_seconds, timed_method

GIB, MIB = 2**30, 2**20
SKIP = 3


def scenario(num_clients: int, rounds: int, samples: int) -> dict:
    dataset = {"name": "synthetic", "synthetic": {"num_samples": samples, "num_features": 64}, "max_test": 2000}
    return {
        "name": f"scale_{num_clients}",
        "task": {"dataset": dataset, "model": {"name": "cnn", "cut": "block1", "width": 16}},
        "algorithms": [{"name": "hosfl", "perturbations": 5, "mu": 0.001}],
        "federation": {
            "num_clients": num_clients,
            "clients_per_round": 10,
            "rounds": rounds,
            "batch_size": 1,
            "eval_every": 10**9,
        },
        "seeds": [0],
        "runtime": {"backend": "ray", "num_workers": 2},
    }


def memory(backend) -> dict[str, list[int]]:
    """{group: [RSS bytes, USS bytes]} for the driver, the role actors and every other Ray process."""
    import ray

    driver = psutil.Process()
    roles = set(ray.get([a.pid.remote() for a in [*backend.workers, backend.server_actor]]))
    groups: dict[str, list[psutil.Process]] = {"driver": [driver], "role actors": [], "ray system": []}
    for p in driver.children(recursive=True):
        groups["role actors" if p.pid in roles else "ray system"].append(p)
    out = {}
    for name, procs in groups.items():
        rss = uss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, uss = rss + info.rss, uss + info.uss
        out[name] = [rss, uss]
    return out


def per_client_bytes(engine, algorithm, num_clients: int) -> int:
    """Bytes of the driver's arrays that grow with N: partition offsets, device profiles, the
    availability phases and the replay log's per-client position."""
    from hosfl_sim.system import Availability, build_profiles

    sc = engine.scenario
    arrays = [engine.spec(0, 0).partition.offsets, algorithm.log.client_seen]
    profiles = build_profiles(sc.system, num_clients, 0)
    arrays += [v for v in vars(profiles).values() if isinstance(v, np.ndarray)]
    arrays += [Availability(sc.system.availability, num_clients, 0).phase]
    return sum(a.nbytes for a in arrays)


def one(num_clients: int, rounds: int, samples: int) -> dict:
    """Run one N in this (fresh) process; returns its memory numbers."""
    from hosfl_sim.config import load_scenario
    from hosfl_sim.runtime import Engine
    from hosfl_sim.runtime.ray_backend import RayBackend

    sc = load_scenario(scenario(num_clients, rounds, samples))
    backend = RayBackend(sc.runtime)
    try:
        engine = Engine(sc, backend=backend, progress=False)
        data = sum(a.nbytes for d in (engine.data.train, engine.data.test) for a in (*d.features.values(), d.labels))
        with tempfile.TemporaryDirectory() as tmp:
            engine.run_one(0, 0, Path(tmp) / "run")
        return {
            "n": num_clients,
            "memory": memory(backend),
            "data_bytes": data,
            "state_bytes": per_client_bytes(engine, engine.last_algorithm, num_clients),
        }
    finally:
        backend.shutdown()


def round_times(clients: list[int], rounds: int, samples: int) -> dict[int, tuple[float, float]]:
    """{N: (median run_round s, median engine round s)}: one backend for every run, after a warm-up run,
    N in the order A B C C B A so that a drift of the machine's load hits every N alike."""
    from hosfl_sim.algorithms.hosfl import HOSFL
    from hosfl_sim.config import load_scenario
    from hosfl_sim.runtime import Engine
    from hosfl_sim.runtime.ray_backend import RayBackend

    backend = RayBackend(load_scenario(scenario(clients[0], rounds, samples)).runtime)
    times: dict[int, list] = {n: [] for n in clients}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            warm_up = Engine(load_scenario(scenario(clients[0], 5, samples)), backend=backend, progress=False)
            warm_up.run_one(0, 0, Path(tmp) / "warm_up")
            for i, n in enumerate([*clients, *reversed(clients)]):
                engine = Engine(load_scenario(scenario(n, rounds, samples)), backend=backend, progress=False)
                with timed_method(HOSFL, "run_round") as seconds:
                    summary = engine.run_one(0, 0, Path(tmp) / f"run{i}")
                times[n].append((seconds[SKIP:-1], round_seconds(summary.run_dir, SKIP)))
    finally:
        backend.shutdown()
    return {n: tuple(float(np.median(np.concatenate([t[k] for t in ts]))) for k in range(2)) for n, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one N, print JSON
    args = ap.parse_args()
    rounds = 8 if args.quick else 15
    if args.one:
        print("RESULT " + json.dumps(one(args.one, 4, args.samples)), flush=True)
        return
    print(
        f"# scale in N, {machine()}; HO-SFL cnn, synthetic {args.samples:,} x 64, K = 10, batch 1, 2 workers; "
        f"round times: {rounds} rounds x 2 runs per N on one backend; memory: one fresh process per N"
    )
    rows = []
    for n in args.clients:
        cmd = [sys.executable, "-m", "bench.scale_clients", "--one", str(n), "--samples", str(args.samples)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"N = {n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
    times = round_times(args.clients, rounds, args.samples)
    for r in rows:
        n, (t_round, t_engine) = r["n"], times[r["n"]]
        mem = ", ".join(f"{k} {v[0] / MIB:.0f} MB (USS {v[1] / MIB:.0f})" for k, v in r["memory"].items())
        print(
            f"  N = {n:>7,}: run_round {1e3 * t_round:.1f} ms, engine round {1e3 * t_engine:.1f} ms; {mem}; "
            f"dataset {r['data_bytes'] / MIB:.0f} MB; per-client driver arrays {r['state_bytes'] / MIB:.2f} MB "
            f"({r['state_bytes'] / n:.0f} B/client)"
        )
    first, last = rows[0], rows[-1]
    for k, key in enumerate(("run_round", "engine round")):
        r = times[last["n"]][k] / times[first["n"]][k]
        print(ratio_line(f"{key} N={last['n']:,} / N={first['n']:,}", r, "~1", r <= 1.15))
    m = last["memory"]
    total = (m["driver"][0] + m["role actors"][0]) / GIB
    print(ratio_line(f"GiB driver + role actors (RSS), N={last['n']:,}", total, "<= 4", total <= 4))
    everything = sum(v[0] for v in m.values()) / GIB
    print(ratio_line(f"GiB all processes incl. Ray's (RSS), N={last['n']:,}", everything, "<= 4", everything <= 4))
    for group in ("driver", "role actors"):
        grow = (last["memory"][group][1] - first["memory"][group][1]) / MIB
        print(f"  USS of {group}: {grow:+.1f} MB from N={first['n']:,} to N={last['n']:,}")


if __name__ == "__main__":
    main()
