"""The backend a scenario asks for."""

from __future__ import annotations

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.config import Scenario


def make_backend(scenario: Scenario) -> Backend:
    """The backend the scenario asks for. Ray is imported only when it is used."""
    rt = scenario.runtime
    if rt.backend == "local":
        from hosfl_sim.runtime.local import LocalBackend

        return LocalBackend(rt.num_workers, rt.torch_threads)
    from hosfl_sim.runtime.ray_backend import RayBackend

    return RayBackend(rt)
