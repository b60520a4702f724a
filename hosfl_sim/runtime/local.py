"""The in-process backend: every role in this process, calls run at once, in call order.

Same contract as the Ray backend, so an algorithm gives the same numbers on both; used by
tests, debugging (`runtime.backend=local`) and as the baseline of the overhead benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm
from hosfl_sim.algorithms.task import TaskSpec
from hosfl_sim.runtime.allocator import keep_freed_memory
from hosfl_sim.runtime.device import describe, place, require


def _split(out: Any, num_returns: int) -> Any:
    if num_returns == 1:
        return out
    out = list(out)
    if len(out) != num_returns:
        raise RuntimeError(f"a role method returned {len(out)} values, {num_returns} expected")
    return out


class LocalBackend(Backend):
    """Roles as plain objects in this process, on `device` (`runtime.device`, which make_backend passes; built
    directly, the CPU, as before there was a choice); `gpu_ids`: the GPUs Ray gave this process when it is a Ray
    task (device.py). Nothing here can die on its own, so it never raises WorkerLost."""

    can_lose_workers = False

    def __init__(
        self,
        num_workers: int,
        torch_threads: int | None = None,
        device: str = "cpu",
        gpu_ids: Sequence[object] | None = None,
    ):
        super().__init__()
        self.num_workers = num_workers
        self.placement = place(device, gpu_ids)
        require(device, [self.placement])
        keep_freed_memory()  # as the Ray actors do: the same allocator behaviour on both backends
        if torch_threads:
            torch.set_num_threads(torch_threads)  # the Ray actors use the same count: same kernels
        self.workers: list[Any] = []
        self.server_role: Any = None
        self._setup: tuple[type[Algorithm], TaskSpec] | None = None

    def setup(self, algorithm: type[Algorithm], spec: TaskSpec) -> dict[str, str]:
        spec = dataclasses.replace(spec, device=self.placement.device)
        self._setup = (algorithm, spec)
        self.workers = [algorithm.client_role(spec) for _ in range(self.num_workers)]
        self.server_role = algorithm.server_role(spec)
        return describe(self.placement, [self.placement])

    def reset_workers(self, dead: list[int]) -> None:
        """Every worker rebuilt fresh (the contract of the Ray backend after a worker died)."""
        assert self._setup is not None, "reset_workers before setup"
        algorithm, spec = self._setup
        self.workers = [algorithm.client_role(spec) for _ in range(self.num_workers)]

    def client(self, worker: int, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        return _split(self.workers[worker].invoke(method, *args), num_returns)

    def server(self, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        return _split(self.server_role.invoke(method, *args), num_returns)

    def get(self, futures: Any) -> Any:
        return futures

    def shutdown(self) -> None:
        self.workers, self.server_role = [], None
