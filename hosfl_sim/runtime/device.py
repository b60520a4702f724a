"""Which device a run's roles use: one rule for the local backend, the Ray backend's actors and a sweep's runs.

`runtime.device`:
- cpu: the CPU, whatever the process was given.
- auto: CUDA when the process was given a GPU and torch sees one, else the CPU. Outside Ray a process is given
  every GPU it sees. A Ray actor or task is given only the GPUs Ray assigned it (`ray.get_gpu_ids()`): Ray
  leaves CUDA_VISIBLE_DEVICES alone for one that reserved none, which would otherwise use GPUs others reserved.
- cuda: as auto, but where a role would land on the CPU it is refused in one line (a ConfigError) instead.
A process that Ray gave a GPU torch cannot see (a CPU-only torch build, or GPU resources declared to Ray on a
machine without one) runs `auto` on the CPU and says so in the run's manifest (`device_note`).

Nothing here imports Ray: callers inside Ray pass the GPU ids they were given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hosfl_sim.config import ConfigError


@dataclass(frozen=True)
class Placement:
    """Where one process's roles run: `device` for tensors ("cpu" or "cuda"), `name` for the manifest
    ("cpu", "cuda:0 (NVIDIA H200)"), and `note`: why a process given a GPU runs on the CPU (None otherwise)."""

    device: str
    name: str
    note: str | None = None


def cuda_missing() -> str:
    """Why torch sees no CUDA device here, in a few words."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "torch sees no CUDA device" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")


def cuda_name() -> str:
    index = torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def place(requested: str, gpu_ids: Sequence[object] | None = None) -> Placement:
    """The placement of a process's roles for `runtime.device` = `requested`. `gpu_ids`: the GPUs Ray gave the
    process (a Ray actor or task); None outside Ray. Never raises: `require` refuses a `cuda` that landed on the CPU."""
    if requested == "cpu":
        return Placement("cpu", "cpu")
    if gpu_ids is not None and len(gpu_ids) == 0:
        why = "Ray gave this process no GPU (reserve one: runtime.worker_num_gpus and server_num_gpus, or gpus_per_run)"
        return Placement("cpu", "cpu", why if requested == "cuda" else None)
    if torch.cuda.is_available():
        return Placement("cuda", cuda_name())
    if gpu_ids:  # a GPU reserved but not usable: say so rather than crash
        why = f"Ray gave this process GPU {', '.join(str(i) for i in gpu_ids)} but {cuda_missing()}"
        return Placement("cpu", "cpu", why if requested == "cuda" else f"{why}: ran on the CPU")
    return Placement("cpu", "cpu", cuda_missing() if requested == "cuda" else None)


def require(requested: str, placements: Sequence[Placement]) -> None:
    """`runtime.device: cuda` where some role would run on the CPU: one line saying why."""
    for p in placements:
        if requested == "cuda" and p.device != "cuda":
            raise ConfigError("runtime.device", requested, f"auto or cpu here: {p.note or cuda_missing()}")


def describe(server: Placement, workers: Sequence[Placement]) -> dict[str, str]:
    """What a run's manifest records of where its roles ran: `device` (one name, or the server's and the
    workers' where they differ) and `device_note` where a process given a GPU ran on the CPU."""
    names = list(dict.fromkeys(w.name for w in workers))
    out = {"device": server.name if names == [server.name] else f"server {server.name}; workers {', '.join(names)}"}
    notes = list(dict.fromkeys(p.note for p in (server, *workers) if p.note))
    if notes:
        out["device_note"] = "; ".join(notes)
    return out
