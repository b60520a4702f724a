"""Where roles live: the contract every backend keeps (`runtime` has a Ray one and an in-process one).

A call names the role method itself (`backend.client(w, HOSFLClient.anchors, ...)`), never a string, and
returns a future; a future passed as an argument to another call is resolved where that call runs (on Ray:
actor to actor, never through the driver). Calls to one role run in the order they are made.
A call whose result nobody needs is still `later`-ed: the engine reads those with the round's end, so an
error in one is raised, never lost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hosfl_sim.algorithms.base import Algorithm
    from hosfl_sim.algorithms.task import TaskSpec


class Backend(ABC):
    num_workers: int
    can_lose_workers: bool = False  # whether `get` may raise WorkerLost (a worker died)

    def __init__(self) -> None:
        self._later: list[Any] = []

    @abstractmethod
    def setup(self, algorithm: type[Algorithm], spec: TaskSpec) -> dict[str, str]:
        """Build the algorithm's roles: one client role per worker, one server role. Returns what the run's
        manifest records of where they run (`device`, and `device_note` where a GPU given went unused)."""

    @abstractmethod
    def reset_workers(self, dead: list[int]) -> None:
        """Replace the `dead` workers, then rebuild every worker's role fresh."""

    @abstractmethod
    def client(self, worker: int, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        """`method(role, *args)` on worker `worker`'s client role; a future (or `num_returns` of them)."""

    @abstractmethod
    def server(self, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        """`method(role, *args)` on the server role; a future (or `num_returns` of them)."""

    @abstractmethod
    def get(self, futures: Any) -> Any:
        """The values of any nesting of lists, tuples and dicts of futures."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the roles' processes; the backend is not used again."""

    def later(self, future: Any) -> Any:
        """A call nobody reads now: read with the round's end (`take_later`), so its error is not lost."""
        self._later.append(future)
        return future

    def take_later(self) -> list[Any]:
        """The futures `later`-ed since the last call, to be read."""
        out, self._later = self._later, []
        return out
