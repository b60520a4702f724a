"""Target 2, a road not taken: Ray compiled graphs against plain actor calls, on this machine.

A compiled graph (`ray.dag`, `experimental_compile`) replaces the owner round trip of every hop with
shared-memory channels, so it would cut the gaps between an HO-SFL step's phases. It has a price: every
actor of a compiled graph waits for its input by polling. This bench measures both sides with the shape
of an HO-SFL step: 2 workers -> the server (fan-in) -> the same 2 workers (fan-out) -> the driver, each
stage doing a fixed amount of torch work (one thread), plain calls and the compiled graph taking turns:
- the CPU the three actors burn while idle, 2 s without any execution;
- a step's wall time, compiled / plain, for equal stages of about 0, 1.3, 5 and 15 ms of compute, and
  for the quickstart round's shape on 2 workers.
On these synthetic stages the graph wins where hops dominate (stages under about 2 ms) and has gone either
way between runs on stages of 5-15 ms (compiled / plain 0.57-1.37). On HO-SFL's real rounds it lost
(README, Performance: the polling server and driver took the 2 workers' cores, and an execution hung now
and then), so the package keeps plain calls; this bench keeps the measurement.

    python -m bench.ray_channels [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench.common import machine
from hosfl_sim.config import RuntimeConfig
from hosfl_sim.runtime.ray_backend import init_ray

# matmuls of 256 x 256 (about 0.2 ms each here) in (each worker, the server, each worker again): equal stages,
# then the quickstart round's shape on 2 workers (anchors 1.5 ms, server step 12 ms, probes 4.5 ms)
WORK = ((0, 0, 0), (6, 6, 6), (24, 24, 24), (72, 72, 72), (7, 60, 22))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import logging

    import ray
    from ray.dag import InputNode, MultiOutputNode

    logging.getLogger("ray.dag").setLevel(logging.WARNING)

    @ray.remote(num_cpus=0)
    class Stage:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.m = torch.randn(256, 256)

        def run(self, work: tuple[int, int, int], stage: int, *upstream: float) -> float:
            n = work[stage]
            t = time.process_time()
            for _ in range(n):
                self.m @ self.m
            return time.process_time() - t

        def cpu(self) -> float:
            return sum(os.times()[:2])

    reps = 8 if args.quick else 25
    init_ray(RuntimeConfig())  # as the package starts Ray: quiet, with a per-instance token
    print(f"# plain actor calls vs a compiled graph, {machine()}; 2 workers -> server -> 2 workers, {reps} steps")
    workers, server = [Stage.remote(), Stage.remote()], Stage.remote()
    actors = [*workers, server]
    ray.get([a.run.remote((1, 1, 1), 0) for a in actors])

    def plain(work: tuple[int, int, int]) -> list:
        first = [w.run.remote(work, 0) for w in workers]
        mid = server.run.remote(work, 1, *first)
        return ray.get([*first, mid, *[w.run.remote(work, 2, mid) for w in workers]])

    with InputNode() as work:
        first = [w.run.bind(work, 0) for w in workers]
        mid = server.run.bind(work, 1, *first)
        dag = MultiOutputNode([*first, mid, *[w.run.bind(work, 2, mid) for w in workers]])
    compiled = dag.experimental_compile()
    try:
        ray.get(compiled.execute((1, 1, 1)))
        before = ray.get([a.cpu.remote() for a in actors])
        time.sleep(2.0)
        after = ray.get([a.cpu.remote() for a in actors])
        idle = [(b - a) / 2.0 for a, b in zip(before, after)]
        print(f"  idle actors of a compiled graph use {', '.join(f'{100 * x:.0f}%' for x in idle)} of a core each")
        for work in WORK:
            runs = {"plain": plain, "compiled": lambda k: ray.get(compiled.execute(k))}
            times: dict[str, list[float]] = {k: [] for k in runs}
            stage: list[list[float]] = []
            for _ in range(reps):
                for name, fn in runs.items():
                    t = time.perf_counter()
                    out = fn(work)
                    times[name].append(time.perf_counter() - t)
                    stage.append(out)
            p, c = (float(np.median(times[k])) for k in ("plain", "compiled"))
            cpu = " / ".join(f"{1e3 * x:.1f}" for x in np.median(stage, axis=0)[[0, 2, 3]])
            print(
                f"  stages of {cpu} ms CPU: compiled / plain step {c / p:.2f} "
                f"({'compiled' if c < p else 'plain'} faster; compiled {1e3 * c:.1f} ms, plain {1e3 * p:.1f} ms)"
            )
    finally:
        compiled.teardown()
        ray.shutdown()


if __name__ == "__main__":
    main()
