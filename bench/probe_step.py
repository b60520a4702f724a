"""Target 1: an HO-SFL client step near its compute limit.

A step is HOSFLClient.anchor (one forward) + HOSFLClient.probe (P forwards); the ratio is its time over
the time of 1 + P plain no-grad forwards of the same client part on the same batch, run back to back (the
compute limit; one forward alone pays page faults a sequence does not), both in CPU seconds of this
process (the machine is shared; wall time would also count the neighbours' jobs), medians of interleaved
repetitions. One torch thread, like a client worker (runtime.torch_threads = 1). Probe kinds (`algorithm.probe`):
functional (the default), inplace, and batched (vmapped probes through `ZOClient.probe_outputs`).

    python -m bench.probe_step [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from bench.common import interleaved, machine, median, ratio_line, vision_spec
from hosfl_sim.algorithms.hosfl import HOSFLClient
from hosfl_sim.config import AlgorithmConfig, ModelConfig
from hosfl_sim.zo import derive_seeds, directions

P = 5  # the paper's runs
MODELS = {  # name: (model, per-sample input shape, repetitions)
    "cnn digits 1x8x8": (ModelConfig(name="cnn", cut="block1", width=16), (1, 8, 8), 300),
    "cnn 3x32x32": (ModelConfig(name="cnn", cut="block1", width=16), (3, 32, 32), 60),
    "resnet18 layer2 3x32x32": (ModelConfig(name="resnet18", cut="layer2", width=64), (3, 32, 32), 6),
}


KINDS = ("functional", "inplace", "batched")  # algorithm.probe


def bench_model(name: str, quick: bool) -> list[str]:
    model, shape, reps = MODELS[name]
    reps = max(3, reps // 5) if quick else reps
    base = vision_spec(model, shape, AlgorithmConfig(perturbations=P, mu=1e-3))
    clients = {
        k: HOSFLClient(dataclasses.replace(base, algorithm=base.algorithm.model_copy(update={"probe": k})))
        for k in KINDS
    }
    seeds = derive_seeds(0, 1, 0, P)
    first = next(iter(clients.values()))
    x = first.client_inputs(base.train.batch(np.arange(base.federation.batch_size))[0])
    g = np.ones(tuple(first.forward_at(x).shape), np.float32)
    rnd = {k: 0 for k in clients}

    def step(k: str):
        def run():
            rnd[k] += 1
            clients[k].anchor([], 0, rnd[k], 0)
            clients[k].probe(0, g, seeds)

        return run

    def forwards():  # the compute limit: 1 + P plain forwards back to back
        with torch.no_grad():
            for _ in range(1 + P):
                first.model(**x)

    def regenerate():
        for s in seeds:
            for _ in directions(first.params, int(s)):
                pass

    fns = {"forwards": forwards, "regenerate": regenerate, **{k: step(k) for k in clients}}
    t = {k: median(v) for k, v in interleaved(fns, reps, clock=time.process_time).items()}
    d_c = sum(p.numel() for p in first.params)
    lines = [
        f"  {name}: d_c = {d_c:,}, batch {base.federation.batch_size}, P = {P}; one forward "
        f"{1e3 * t['forwards'] / (1 + P):.3f} ms, P directions regenerated {1e3 * t['regenerate']:.3f} ms"
    ]
    for k in clients:
        r = t[k] / t["forwards"]
        lines.append(ratio_line(f"step/(1+P)fwd {name} [{k}]", r, "<= 1.2", r <= 1.2, f"step {1e3 * t[k]:.2f} ms"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# probe step, {machine()}, torch threads 1")
    for name in args.models:
        for line in bench_model(name, args.quick):
            print(line, flush=True)


if __name__ == "__main__":
    main()
