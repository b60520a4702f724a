"""What the benchmarks share: interleaved timing, small synthetic task specs, ratio lines."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hosfl_sim.algorithms.task import TaskSpec
from hosfl_sim.config import AlgorithmConfig, FederationConfig, ModelConfig
from hosfl_sim.data import ArrayDataset
from hosfl_sim.data.partition import IidPartitioner


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), {gpu}, load {load:.1f}"


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds of each call, the functions taking turns, so a noisy neighbour hits them all alike.
    `clock=time.process_time` counts this process's CPU time only (less sensitive to a shared machine,
    for single-process work)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def vision_spec(
    model: ModelConfig,
    shape: tuple[int, ...],
    algorithm: AlgorithmConfig,
    num_samples: int = 512,
    num_clients: int = 16,
    batch_size: int = 32,
) -> TaskSpec:
    """A TaskSpec over random images of `shape` (timing does not depend on the pixel values)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((num_samples, *shape)).astype(np.float32)
    y = rng.integers(0, 10, num_samples).astype(np.int64)
    data = ArrayDataset({"x": x}, y, 10)
    return TaskSpec(
        model=model,
        num_classes=10,
        train=data,
        test=data,
        partition=IidPartitioner(0)(y, num_clients),
        algorithm=algorithm,
        federation=FederationConfig(num_clients=num_clients, clients_per_round=1, batch_size=batch_size),
        seed=0,
    )


def ratio_line(name: str, value: float, target: str, ok: bool, detail: str = "") -> str:
    mark = "ok" if ok else "MISSED"
    return f"RATIO  {name:<44} {value:7.3f}   target {target:<8} {mark:<6} {detail}"


def cnn_scenario(name: str, num_clients: int, clients_per_round: int, rounds: int, **runtime) -> dict:
    """HO-SFL on the quickstart CNN (digits, cut after block1, width 16, P = 5), no evaluation but the last."""
    return {
        "name": name,
        "task": {"dataset": {"name": "digits"}, "model": {"name": "cnn", "cut": "block1", "width": 16}},
        "algorithms": [{"name": "hosfl", "perturbations": 5, "mu": 0.001}],
        "federation": {
            "num_clients": num_clients,
            "clients_per_round": clients_per_round,
            "rounds": rounds,
            "batch_size": 32,
            "eval_every": 10**9,
        },
        "seeds": [0],
        "runtime": runtime,
    }


def round_seconds(run_dir: Path, skip: int = 3) -> np.ndarray:
    """Wall seconds of each round of a run, without the first `skip` (warm-up) and the last (it evaluates)."""
    wall = pd.read_parquet(Path(run_dir) / "rounds.parquet")["wall_time_s"].to_numpy()
    return np.diff(wall)[skip - 1 : -1] if len(wall) > skip + 1 else np.diff(wall)


@contextmanager
def timed_method(cls: type, name: str) -> Iterator[list[float]]:
    """Wall seconds of every call of `cls.name` in this process while the block runs (the driver side:
    e.g. Algorithm.run_round, which waits for the actors it calls)."""
    original = getattr(cls, name)
    seconds: list[float] = []

    @functools.wraps(original)  # under the original's name: roles check the method a call names
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    setattr(cls, name, wrapper)
    try:
        yield seconds
    finally:
        setattr(cls, name, original)
