"""What a scenario asks of an algorithm and of the system, checked before anything is written."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hosfl_sim.algorithms import ALGORITHMS, Algorithm, TaskSpec, get_algorithm
from hosfl_sim.algorithms.task import count_flops, to_tensors
from hosfl_sim.config import ConfigError, Scenario
from hosfl_sim.config.schema import RuntimeConfig, SystemConfig
from hosfl_sim.models import SplitModel
from hosfl_sim.runtime.device import place, require
from hosfl_sim.runtime.trackers import check_trackers
from hosfl_sim.system import Availability, build_profiles
from hosfl_sim.system.profiles import DeviceProfiles


def check_algorithm(scenario: Scenario, index: int, algo_cls: type[Algorithm]) -> None:
    """The scenario asks nothing of the algorithm that it does not do: fields it does not read, round policies,
    local epochs."""
    system, cfg = scenario.system, scenario.algorithms[index]
    for name in algo_cls.unread_fields(cfg):
        reads = ", ".join(sorted(algo_cls.options)) or "none"
        expected = f"unset for {algo_cls.name}, which does not read it (its own fields: {reads})"
        raise ConfigError(f"algorithms[{index}].{name}", getattr(cfg, name), expected)
    epochs = cfg.local_epochs
    if epochs is not None and not algo_cls.supports_epochs:
        takes = ", ".join(sorted(n for n, c in ALGORITHMS.items() if c.supports_epochs))
        expected = f"null for {algo_cls.name} (set local_steps; local_epochs is for {takes})"
        raise ConfigError(f"algorithms[{index}].local_epochs", epochs, expected)
    if algo_cls.supports_policies:
        return
    if system.policy != "sync":
        raise ConfigError("system.policy", system.policy, f"'sync' for {algo_cls.name} (it has no round policies)")
    v = system.availability.mid_round_dropout
    if v > 0:
        raise ConfigError("system.availability.mid_round_dropout", v, f"0 for {algo_cls.name} (no mid-round drops)")


def check_deadline(system: SystemConfig, split: SplitModel, spec: TaskSpec, profiles: DeviceProfiles) -> None:
    """Before the server first waits (where the deadline acts) every client has at least run one forward of
    the client part on its batch and sent one message (one latency). If even the fastest client cannot do
    that in time, no client ever meets the deadline."""
    x = to_tensors({k: v[:1] for k, v in spec.train.features.items() if k in split.input_keys}, "cpu")
    flops = count_flops(split.client, **x)  # one sample; FLOPs grow linearly with the batch
    batch = np.minimum(spec.federation.batch_size, spec.partition.sizes())
    fastest = float(np.min(batch * flops / profiles.compute_flops + profiles.latency_s))
    deadline = system.deadline_s
    assert deadline is not None  # the config requires it under the deadline policy
    if deadline < fastest:
        expected = f"a number >= {fastest:.3g} (the fastest client's forward and one message take that long)"
        raise ConfigError("system.deadline_s", deadline, expected)


def check_device(rt: RuntimeConfig) -> None:
    """`runtime.device` and the GPU reservations fit the backend: on the local backend `cuda` needs a CUDA device
    this process sees (and Ray's reservations mean nothing); on Ray an actor sees a GPU only if it reserves one."""
    if rt.backend == "local":
        for name in ("worker_num_gpus", "server_num_gpus"):
            v = getattr(rt, name)
            if v > 0:
                expected = "0 with runtime.backend 'local' (a Ray reservation; it runs on runtime.device)"
                raise ConfigError(f"runtime.{name}", v, expected)
        require(rt.device, [place(rt.device)])
    elif rt.device == "cuda" and not (rt.worker_num_gpus > 0 and rt.server_num_gpus > 0):
        expected = "auto or cpu, or cuda with runtime.worker_num_gpus and server_num_gpus > 0 (Ray gives none else)"
        raise ConfigError("runtime.device", rt.device, expected)


def check_scenario(sc: Scenario, specs_of_seeds: Callable[[], list[TaskSpec]]) -> None:
    """Runtime combinations, algorithm names and what they support, then the task of every seed (loading it
    checks the dataset, its files and the partitions), the model and its cut (built once), weights, trace files
    and a deadline some client can meet."""
    rt = sc.runtime
    check_trackers(rt.track)
    check_device(rt)
    for i, algo in enumerate(sc.algorithms):
        check_algorithm(sc, i, get_algorithm(algo.name, f"algorithms[{i}].name"))
    specs = specs_of_seeds()
    split = build_checked(specs[0])  # names, cut, weights, heads
    for i, algo in enumerate(sc.algorithms):
        get_algorithm(algo.name).check_task(dataclasses.replace(specs[0], algorithm=algo), split, i)
    for spec in specs:
        profiles = build_profiles(sc.system, sc.federation.num_clients, spec.seed)  # trace files
        Availability(sc.system.availability, sc.federation.num_clients, spec.seed)
        if sc.system.policy == "deadline":
            check_deadline(sc.system, split, spec, profiles)


def build_checked(spec: TaskSpec) -> SplitModel:
    """The run's model, built once; one that cannot be allocated is a config error, not a traceback."""
    try:
        return spec.build_model()
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError
        if not isinstance(e, MemoryError) and "allocate" not in str(e):
            raise
        asked = re.search(r"allocate (\d+) bytes", str(e))
        reason = f"one tensor alone needs {int(asked[1]) / 1e9:,.1f} GB" if asked else str(e).splitlines()[0][:120]
        value = {"name": spec.model.name, "width": spec.model.width}
        raise ConfigError("task.model", value, f"a model this machine can allocate ({reason})") from None


def check_output_dir(out: str | Path, field: str = "--out") -> None:
    """`out` can hold runs: it, or the nearest folder above it that exists, is a writable directory.
    Checked before anything is made, so a read-only or mistyped path fails in one line, not in every run."""
    path = Path(out).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(field, str(out), f"a directory ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "no write permission"
        raise ConfigError(field, str(out), f"a directory this user can write ({existing}: {why})")


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
