"""The backend a scenario asks for."""

from __future__ import annotations

from collections.abc import Sequence

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.config import Scenario


def make_backend(scenario: Scenario, gpu_ids: Sequence[object] | None = None) -> Backend:
    """The backend the scenario asks for, on `runtime.device` (`gpu_ids`: the GPUs Ray gave this process when it is
    a sweep's Ray task; see device.py). Ray is imported only when it is used."""
    rt = scenario.runtime
    if rt.backend == "local":
        from hosfl_sim.runtime.local import LocalBackend

        return LocalBackend(rt.num_workers, rt.torch_threads, rt.device, gpu_ids)
    from hosfl_sim.runtime.ray_backend import RayBackend

    return RayBackend(rt)
