"""Clients fused, workers sharing a GPU, and our HO-SFL against a reference-style loop (the paper's CIFAR setting).

HO-SFL on ResNet-18 (ImageNet stem, cut after layer2, width 64, client BatchNorm frozen), K = 10 of 100 clients,
P = 5, mu = 1e-3, batch 32, AdamW as the paper; random CIFAR-shaped data (3x32x32) generated here into an npz file
(timing does not depend on pixel values). Every number is a ratio of two things measured side by side in this run,
run after run alternating; round times are medians over rounds after warm-up (rounds.parquet's wall clock).
1. fused ÷ per-client: a round with `runtime.fuse_clients` true ÷ one with false; the local backend, one worker
   serving all K clients, on CUDA when present, else the CPU (`--threads` torch threads; `--quick`: K = 4, batch 16).
2. W workers sharing one GPU ÷ one worker: samples per second with W = 1, 2, 4, 8 Ray workers, each holding 1/W of
   the GPU the server leaves (the server holds 0.1), fusion as `auto` picks it; GPU only ("skipped: no CUDA").
3. ours ÷ the reference: our rounds per second ÷ those of a reference-style loop written here (the authors'
   algorithm as ../shared/REFERENCE.md has it: one process, one device, clients one after another, plain torch
   on the same model), and the wall time of the full 160,000-sample run (500 rounds and 51 evaluations of the
   10,000 test images) extrapolated from the measured rounds and one measured evaluation. On the CPU each of our
   configurations (`CPU_CONFIGS`) is compared, the best named, against the loop at 1 and at 2 torch threads,
   whichever is faster; on CUDA ours is the local backend, fusion on.

4. server batched ÷ per-client: the quickstart CNN's rounds with `runtime.fuse_server` (and with the clients fused
   too) ÷ per-client rounds.

    python -m bench.fused_round [--quick | --full] [--parts 1 2 3 4] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import cnn_scenario, machine, median, ratio_line, round_seconds, timed_method

SKIP = 2  # warm-up rounds left out of each run's median
FULL_SAMPLES, TEST_SIZE, EVAL_EVERY = 160_000, 10_000, 10  # the paper's CIFAR-10 run
MODEL: dict[str, Any] = {"name": "resnet18_imagenet", "cut": "layer2", "width": 64, "freeze_bn_affine": True}
ADAMW = {"name": "adamw", "lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.0001}
LOCAL, RAY = {"backend": "local", "num_workers": 1}, {"backend": "ray", "num_workers": 2, "torch_threads": 1}
CPU_CONFIGS = {  # our configurations on a 2-core CPU (part 3)
    "local 1 worker x 1 thread": {**LOCAL, "torch_threads": 1, "fuse_clients": False},
    "local 1 worker x 2 threads": {**LOCAL, "torch_threads": 2, "fuse_clients": False},
    "local 1 worker x 2 threads, fused": {**LOCAL, "torch_threads": 2, "fuse_clients": True},
    "ray 2 workers x 1 thread, fused": {**RAY, "fuse_clients": True},
}


def write_data(path: Path, num_train: int, num_test: int) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_train": rng.standard_normal((num_train, 3, 32, 32), dtype=np.float32),
        "y_train": rng.integers(0, 10, num_train),
        "x_test": rng.standard_normal((num_test, 3, 32, 32), dtype=np.float32),
        "y_test": rng.integers(0, 10, num_test),
    }
    np.savez(path, **arrays)
    return path


def scenario(data: Path, k: int, batch: int, rounds: int, runtime: dict) -> dict:
    algorithm = {"name": "hosfl", "perturbations": 5, "mu": 0.001, "cut_grad_scale": "1/K"}
    algorithm |= {"server_grad_scale": "1/K^2", "client_optimizer": ADAMW, "server_optimizer": ADAMW}
    federation = {"num_clients": 100, "clients_per_round": k, "rounds": rounds, "batch_size": batch}
    return {
        "name": "fused_round",
        "task": {"dataset": {"name": "npz", "path": str(data), "normalize": "none"}, "model": MODEL},
        "algorithms": [algorithm],
        "federation": {**federation, "eval_every": 10**9},  # evaluated once, at the end
        "seeds": [0],
        "runtime": {"device": "auto", **runtime},
    }


def our_rounds(sc: dict, out: Path) -> tuple[np.ndarray, float]:
    """Wall seconds of each round after warm-up, and of the evaluation at the end (on the npz's test split)."""
    from hosfl_sim.algorithms.hosfl import HOSFLServer
    from hosfl_sim.config import load_scenario
    from hosfl_sim.runtime import Engine

    engine = Engine(load_scenario(sc), progress=False)
    try:
        if sc["runtime"]["backend"] != "local":
            engine.run_one(0, 0, out)
            return round_seconds(out, skip=SKIP), float("nan")
        with timed_method(HOSFLServer, "evaluate") as evals:  # the server is in this process
            engine.run_one(0, 0, out)
    finally:
        engine.close()
    return round_seconds(out, skip=SKIP), evals[-1]


def fused_vs_per_client(data: Path, args: argparse.Namespace, out: Path) -> list[str]:
    k, batch, rounds, reps = (4, 16, 5, 1) if args.quick else (10, 32, 8, 2)
    tasks = {  # name: the scenario at a runtime
        "resnet18 layer2 3x32x32": lambda runtime: scenario(data, k, batch, rounds, runtime),
        "cnn block1 digits (quickstart)": lambda runtime: cnn_scenario("quickstart", 20, k, 4 * rounds, **runtime),
    }
    where = "CUDA" if torch.cuda.is_available() else f"CPU, {args.threads} torch threads"
    lines: list[str] = []
    for name, make in tasks.items():
        times: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(reps):
            for fuse in (False, True):
                runtime = {"backend": "local", "num_workers": 1, "torch_threads": args.threads, "fuse_clients": fuse}
                sc = make(runtime)
                secs, _ = our_rounds(sc, out / f"{len(lines)}_fuse{fuse}_{rep}")
                times[fuse] += list(secs)
        fused, alone = median(times[True]), median(times[False])
        batch_of = sc["federation"]["batch_size"]
        detail = f"{1e3 * fused:.1f} vs {1e3 * alone:.1f} ms a round ({where}; K = {k}, P = 5, batch {batch_of})"
        target = "<= 0.3" if torch.cuda.is_available() else "(GPU)"
        lines.append(
            ratio_line(f"fused / per-client round, {name}", fused / alone, target, fused / alone <= 0.3, detail)
        )
    return lines


def workers_sharing_a_gpu(data: Path, args: argparse.Namespace, out: Path) -> list[str]:
    if not torch.cuda.is_available():
        return ["  workers sharing one GPU: skipped: no CUDA"]
    k, batch, rounds = (10, 32, 6)
    rates: dict[int, float] = {}
    for w in (1, 2, 4, 8):
        runtime = {"backend": "ray", "num_workers": w, "worker_num_gpus": 0.9 / w, "server_num_gpus": 0.1}
        secs, _ = our_rounds(scenario(data, k, batch, rounds, runtime), out / f"workers{w}")
        rates[w] = k * batch / median(list(secs))
    lines = []
    for w in (2, 4, 8):
        r = rates[w] / rates[1]
        detail = f"{rates[w]:.0f} vs {rates[1]:.0f} samples/s (each worker 1/{w} of 0.9 GPU)"
        lines.append(ratio_line(f"throughput {w} workers / 1 worker, one GPU", r, ">= 1", r >= 1, detail))
    return lines


class ReferenceLoop:
    """The authors' HO-SFL round in plain torch, one process, one device, clients one after another: each client's
    anchor, the server's forward and backward (loss weight 1/K), the client's P probes (in-place +mu u_p, forward,
    -mu u_p; v_p = sum((f - a) * g)); then the server's gradient / K and its AdamW step, and the client's AdamW step
    on sum_p mean_k(v_p) u_p / (P mu). The same model and data as ours."""

    def __init__(self, data: Path, k: int, batch: int, device: str, p: int = 5, mu: float = 1e-3):
        from hosfl_sim.config import ModelConfig
        from hosfl_sim.models import build_split_model, freeze_batchnorm

        arrays = np.load(data)
        self.x, self.y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
        split = build_split_model(ModelConfig(**MODEL), {"x": arrays["x_train"][:1]}, 10, 0)
        self.client, self.server = split.client.to(device), split.server.to(device)
        freeze_batchnorm(self.client)
        self.client.eval()
        self.server.train()
        self.params: list[torch.Tensor] = [q for q in self.client.parameters() if q.requires_grad]
        for q in self.client.parameters():
            q.requires_grad_(False)
        adamw: dict[str, Any] = {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 1e-4}
        self.client_opt = torch.optim.AdamW(self.params, **adamw)
        self.server_opt = torch.optim.AdamW(self.server.parameters(), **adamw)
        self.parts = np.array_split(np.random.default_rng(0).permutation(len(self.y)), 100)
        self.rng, self.k, self.batch, self.device, self.p, self.mu = np.random.default_rng(1), k, batch, device, p, mu

    def direction(self, seed: int) -> list[torch.Tensor]:
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return [torch.randn(q.shape, generator=gen, device=self.device) for q in self.params]

    def round(self) -> None:
        clients = self.rng.choice(len(self.parts), self.k, replace=False)
        seeds = self.rng.integers(0, 2**31 - 1, self.p)
        self.server_opt.zero_grad(set_to_none=True)
        v = torch.zeros(self.k, self.p, device=self.device)
        for i, c in enumerate(clients):
            idx = torch.from_numpy(self.rng.choice(self.parts[c], self.batch, replace=False))
            x, y = self.x[idx].to(self.device), self.y[idx].to(self.device)
            with torch.no_grad():
                a = self.client(x=x)
            cut = a.detach().requires_grad_(True)
            (F.cross_entropy(self.server(cut), y) / self.k).backward()
            assert cut.grad is not None
            with torch.no_grad():
                for j, seed in enumerate(seeds):
                    u = self.direction(seed)
                    torch._foreach_add_(self.params, u, alpha=self.mu)
                    out = self.client(x=x)
                    torch._foreach_add_(self.params, u, alpha=-self.mu)
                    v[i, j] = ((out - a) * cut.grad).sum()
        for q in self.server.parameters():
            if q.grad is not None:
                q.grad.div_(self.k)
        self.server_opt.step()
        v_bar = v.mean(0).tolist()
        with torch.no_grad():
            grads = [torch.zeros_like(q) for q in self.params]
            for j, seed in enumerate(seeds):
                torch._foreach_add_(grads, self.direction(seed), alpha=v_bar[j] / (self.p * self.mu))
            for param, grad in zip(self.params, grads):
                param.grad = grad
        self.client_opt.step()

    def seconds(self, rounds: int) -> list[float]:
        """Wall seconds of each round after warm-up."""
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            self.round()
            if self.device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return out[SKIP:]


def ours_vs_reference(data: Path, args: argparse.Namespace, out: Path) -> list[str]:
    k, batch, rounds, reps = (4, 16, 5, 1) if args.quick else (10, 32, 8, 2)
    cuda = torch.cuda.is_available()
    local_fused = {"backend": "local", "num_workers": 1, "fuse_clients": True}
    configs = {"local 1 worker, fused": local_fused} if cuda else CPU_CONFIGS
    ref = ReferenceLoop(data, k, batch, "cuda" if cuda else "cpu")
    ref_threads = [args.threads] if cuda else sorted({1, os.cpu_count() or 1})  # the loop at its best on the CPU
    times: dict[str, list[float]] = {**{f"ref{t}": [] for t in ref_threads}, **{name: [] for name in configs}}
    evals: list[float] = []
    for rep in range(reps):
        for t in ref_threads:
            torch.set_num_threads(t)  # the local backend sets this process's threads to its config's
            times[f"ref{t}"] += ref.seconds(rounds)
        for i, (name, runtime) in enumerate(configs.items()):
            secs, ev = our_rounds(scenario(data, k, batch, rounds, runtime), out / f"ours{i}_{rep}")
            times[name] += list(secs)
            evals += [ev] if np.isfinite(ev) else []
    ref_s = min(median(times[f"ref{t}"]) for t in ref_threads)
    where = "CUDA" if cuda else "CPU"
    each = ", ".join(f"{1e3 * median(times[f'ref{t}']):.0f} ms at {t} threads" for t in ref_threads)
    lines = [f"  reference loop ({where}): {each}; the faster is the reference"]
    best = min(configs, key=lambda name: median(times[name]))
    for name in configs:
        r = ref_s / median(times[name])
        mark = " (best)" if name == best and len(configs) > 1 else ""
        detail = f"{1e3 * median(times[name]):.0f} ms a round{mark}"
        lines.append(ratio_line(f"ours / reference rounds/s [{name}]", r, ">= 3" if cuda else "(GPU)", r >= 3, detail))
    rounds_full = FULL_SAMPLES // (10 * 32)  # the paper's K and batch, whatever this run measured
    eval_s = median(evals) * TEST_SIZE / args.test_size if evals else float("nan")
    scale = (10 * 32) / (k * batch)  # a quick run's rounds are smaller: scaled by samples
    ours_full = rounds_full * median(times[best]) * scale + (rounds_full // EVAL_EVERY + 1) * eval_s
    lines.append(
        f"  full 160,000-sample run [{best}]: {ours_full / 60:.1f} min extrapolated ({rounds_full} rounds of "
        f"{median(times[best]) * scale:.2f} s, {rounds_full // EVAL_EVERY + 1} evaluations of {eval_s:.1f} s); "
        f"the reference loop's rounds alone: {rounds_full * ref_s * scale / 60:.1f} min"
    )
    return lines


def server_batched(data: Path, args: argparse.Namespace, out: Path) -> list[str]:
    """The quickstart CNN (its server part has no BatchNorm): rounds with `runtime.fuse_server`, alone and with
    the clients fused, / per-client rounds; one worker, `--threads` torch threads."""
    variants = {"server batched": (False, True), "clients fused + server batched": (True, True)}
    runtime = {"backend": "local", "num_workers": 1, "torch_threads": args.threads}
    times: dict[tuple[bool, bool], list[float]] = {(False, False): [], **{v: [] for v in variants.values()}}
    for rep in range(3):
        for fc, fs in times:
            sc = cnn_scenario("quickstart", 20, 10, 30, **runtime, fuse_clients=fc, fuse_server=fs)
            times[fc, fs] += list(our_rounds(sc, out / f"{fc}{fs}{rep}")[0])
    alone = median(times[False, False])
    lines = []
    for name, v in variants.items():
        r = median(times[v]) / alone
        detail = f"{1e3 * median(times[v]):.1f} vs {1e3 * alone:.1f} ms a round (K = 10, P = 5, batch 32)"
        lines.append(ratio_line(f"{name} / per-client, cnn block1 digits", r, "< 1", r < 1, detail))
    return lines


PARTS = {1: fused_vs_per_client, 2: workers_sharing_a_gpu, 3: ours_vs_reference, 4: server_batched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 4, batch 16, fewer rounds (the default on a CPU)")
    ap.add_argument("--full", action="store_true", help="the paper's K = 10 and batch 32 (the default on CUDA)")
    ap.add_argument("--parts", type=int, nargs="*", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of part 1's worker (runtime.torch_threads)")
    ap.add_argument("--test-size", type=int, default=1000, help="test images generated (evaluation scaled to 10,000)")
    args = ap.parse_args()
    args.quick = args.quick or not (args.full or torch.cuda.is_available())
    print(f"# fused rounds, {machine()}; ResNet-18 cut after layer2 on random 3x32x32 data")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "cifar_shaped.npz", 4000, args.test_size)
        for part in args.parts:
            for line in PARTS[part](data, args, Path(tmp) / f"part{part}"):
                print(line, flush=True)


if __name__ == "__main__":
    main()
