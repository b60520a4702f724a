"""The recorder's cost per round does not grow with the run.

Rows shaped like the engine's (a rounds row of 25 columns, K = 10 clients rows of 17; test metrics every
10th round, memory every 50th, None otherwise) are logged as fast as the recorder takes them, 2,010
rounds. The cost of a round is `Recorder.log_round`'s wall time (it writes to disk, so CPU time would
miss part of it), the median of the 11 rounds around round 10 and around round 2,000; the ratio of the
two is the target (about 1). Also printed: what one rewrite of the files costs at those rounds (what
`position()` at a checkpoint and `finish()` pay, and what a throttled rewrite costs, at most once every
`Recorder.flush_every_s`), and the mean over the run. Logged this fast, the run lasts under 2 s, so no
throttled rewrite comes due after the first round's: the flush line is the part a slower run amortizes.

    python -m bench.recorder [--rounds N] [--reps R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine, ratio_line
from hosfl_sim.record import Recorder

K = 10
CATEGORIES = ("act_up", "grad_down", "labels_up", "scalar_up", "scalar_down", "seed_down", "model_up", "model_down")


def rows(rnd: int) -> tuple[dict, list[dict]]:
    base = {"algorithm": "HO-SFL", "seed": 0, "round": rnd}
    measured, evaluated = rnd % 50 == 0, rnd % 10 == 0
    row = {
        **base,
        "train_loss": 2.3 / rnd,
        "test_loss": 2.0 / rnd if evaluated else None,
        "test_acc": 1 - 1 / rnd if evaluated else None,
        "wall_time_s": 0.05 * rnd,
        "sim_time_s": 0.13 * rnd,
        "round_duration_s": 0.13,
        "num_sampled": K,
        "num_completed": K,
        "num_dropped": 0,
        "samples_seen": 32 * K * rnd,
        **{f"bytes_{c}": 1000 * rnd for c in CATEGORIES},
        "bytes_total": 8000 * rnd,
        "client_peak_mem_bytes": 330_000 if measured else None,
        "server_peak_mem_bytes": 990_000 if measured else None,
        "memory_overhead_s": 0.01 if measured else None,
    }
    clients = [
        {**base, "client_id": (7 * rnd + i) % 100, "worker": i % 2, "status": "completed", "tier": "default",
         "bytes_up": 33044, "bytes_down": 32828, "compute_s": 3.5e-4, "comm_s": 0.138, "finish_s": 0.139,
         "wall_compute_s": 0.002 + 1e-6 * i, "samples": 32, "train_loss": 2.3 / rnd + 1e-3 * i,
         "peak_mem_bytes": 330_000 if measured else None, "static_mem_bytes": 120_000 if measured else None}
        for i in range(K)
    ]  # fmt: skip
    return row, clients


def run(out: Path, rounds: int, at: tuple[int, ...]) -> tuple[list[float], dict[int, float]]:
    """(log_round seconds of every round, {round: seconds of one flush right after it})."""
    rec = Recorder(out, {"name": "bench"})
    seconds, flush = [], {}
    for rnd in range(1, rounds + 1):
        row, clients = rows(rnd)
        if rnd in at:  # a flush with one round to write (a round logged since the last one)
            rec.flush()
            rec.rounds.append(row)
            rec.clients.extend(clients)
            t0 = time.perf_counter()
            rec.flush()
            flush[rnd] = time.perf_counter() - t0
            seconds.append(float("nan"))
            continue
        t0 = time.perf_counter()
        rec.log_round(row, clients)
        seconds.append(time.perf_counter() - t0)
    rec.finish("completed")
    return seconds, flush


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    early, late = 10, args.rounds
    print(f"recorder, K = {K}, {args.rounds} rounds, {args.reps} runs; {machine()}")
    typical: dict[int, list[float]] = {early: [], late: []}
    flushes: dict[int, list[float]] = {early: [], late: []}
    means = []
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, flush = run(Path(tmp) / "run", late + 10, (early + 6, late + 6))
        for n in (early, late):
            typical[n].append(statistics.median(seconds[n - 6 : n + 5]))  # rounds n-5 .. n+5
        flushes[early].append(flush[early + 6])
        flushes[late].append(flush[late + 6])
        means.append(statistics.fmean(s for s in seconds if s == s))
    at_early, at_late = statistics.median(typical[early]), statistics.median(typical[late])
    print(f"log_round at round {early}: {1e6 * at_early:.1f} us; at round {late}: {1e6 * at_late:.1f} us")
    f_early, f_late = statistics.median(flushes[early]), statistics.median(flushes[late])
    print(f"one flush at round {early}: {1e3 * f_early:.2f} ms; at round {late}: {1e3 * f_late:.2f} ms")
    every = Recorder.flush_every_s
    if every > 0:
        print(
            f"  flushes come at most every {every:g} s: at round {late}, {100 * f_late / every:.2f}% of the wall time"
        )
    print(f"mean log_round over the run, flushes included: {1e6 * statistics.median(means):.1f} us")
    ratio = at_late / at_early
    detail = f"{1e6 * at_late:.1f} us / {1e6 * at_early:.1f} us"
    print(ratio_line(f"recorder round {late} / round {early}", ratio, "< 1.5", ratio < 1.5, detail))


if __name__ == "__main__":
    main()
