"""What every algorithm is made of, and the small interface it drives the runtime through.

An algorithm is three plain-torch pieces:
- a ClientRole, built once per run inside every client worker; it holds ONE replica of the
  client part and does the work of whichever virtual client a call names;
- a ServerRole, built once per run inside the server; it holds the server part, its own copy
  of the client part (for evaluation and for syncing replacements) and the test split;
- the Algorithm itself, which runs on the driver (the server's control plane): it samples
  nothing, stores no tensors, and only routes futures between roles through a `Backend`,
  charging the ledger for each message as it would cross the network.
No Ray here: `runtime` provides a Ray backend and an in-process one with the same contract.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.replay import ReplayLog
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.task import TaskSpec, local_steps_for
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Message
from hosfl_sim.config import AlgorithmConfig, FederationConfig
from hosfl_sim.models import SplitModel
from hosfl_sim.system.clock import RoundClock

# What every algorithm reads of its section (the engine reads these too).
COMMON_FIELDS = frozenset({"name", "label", "local_steps", "local_epochs"})


@dataclass
class ClientRecord:
    client_id: int
    worker: int
    compute_s: float = 0.0
    samples: int = 0
    train_loss: float = float("nan")


@dataclass
class RoundResult:
    train_loss: float  # NaN when no client completed the round
    samples: int
    clients: list[ClientRecord] = field(default_factory=list)

    @staticmethod
    def mean(losses: list[float]) -> float:
        return float(np.mean(losses)) if losses else float("nan")


# ----------------------------------------------------------------------------- the algorithm


class Algorithm(ABC):
    """Driver-side logic of one method. Subclasses set the roles and write `run_round`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what is zeroth-order, what is first-order, what crosses the network
    client_role: ClassVar[type[ClientRole]]
    server_role: ClassVar[type[ServerRole]]
    # Whether run_round reports compute and barriers to `channel.clock`, so the deadline and
    # over-commit policies can act on it. Others still get communication time (the ledger feeds it).
    supports_policies: ClassVar[bool] = False
    # Whether it runs `local_epochs` (per client: ceil(partition size / batch) x epochs mini-batches a round).
    supports_epochs: ClassVar[bool] = False
    # The fields of its `algorithms[i]` section it reads besides the common ones (COMMON_FIELDS); the others
    # cannot be set on it (`unread_fields`), so a setting meant for another method is never silently ignored.
    options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, cfg: AlgorithmConfig, federation: FederationConfig, seed: int, num_workers: int, client_sizes: np.ndarray
    ):
        self.cfg = cfg
        self.federation = federation
        self.seed = seed
        self.num_workers = num_workers
        self.client_sizes = np.asarray(client_sizes)  # training samples per virtual client

    def state_dict(self) -> dict[str, Any]:
        """Driver-side state, generic over attributes: every ReplayLog and numpy Generator the algorithm holds."""
        out: dict[str, Any] = {}
        for name, v in sorted(vars(self).items()):
            if isinstance(v, ReplayLog):
                out[name] = v.state_dict()
            elif isinstance(v, np.random.Generator):
                out[name] = v.bit_generator.state
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore driver state; the workers are taken to be fresh (the ReplayLogs replay from the start)."""
        own = self.state_dict()
        if set(own) != set(state):
            raise ValueError(f"{type(self).__name__}: state holds {sorted(state)}, the algorithm {sorted(own)}")
        for name, value in state.items():
            target = getattr(self, name)
            if isinstance(target, ReplayLog):
                target.load_state_dict(value)
            else:
                target.bit_generator.state = value

    def round_mark(self) -> dict[str, Any]:
        """The driver state at a round's start, for `rollback`: as `state_dict` would save it, except that a
        ReplayLog gives a mark (its length; it then keeps the old positions of the clients the round moves), so
        the cost is O(clients in the round), not O(rounds run). A subclass that saves more in `state_dict` must
        keep it here too (a deep copy will do)."""
        out: dict[str, Any] = {}
        for name, v in sorted(vars(self).items()):
            if isinstance(v, ReplayLog):
                out[name] = v.mark()
            elif isinstance(v, np.random.Generator):
                out[name] = copy.deepcopy(v.bit_generator.state)
        return out

    def rollback(self, mark: dict[str, Any]) -> None:
        """Back to the state at `round_mark` (the latest one), as `load_state_dict` of the state then would:
        the workers are taken to be fresh. Can be repeated with the same mark."""
        for name, value in mark.items():
            target = getattr(self, name)
            if isinstance(target, ReplayLog):
                target.rollback(value)
            else:
                target.bit_generator.state = copy.deepcopy(value)

    @classmethod
    def unread_fields(cls, cfg: AlgorithmConfig) -> list[str]:
        """The fields of `cfg` set away from their default that this algorithm does not read."""
        read = COMMON_FIELDS | cls.options
        defaults = {name: f.get_default(call_default_factory=True) for name, f in type(cfg).model_fields.items()}
        return [name for name, d in defaults.items() if name not in read and getattr(cfg, name) != d]

    @classmethod  # noqa: B027  (a no-op: most algorithms run any task)
    def check_task(cls, spec: TaskSpec, split: SplitModel, index: int) -> None:
        """Raise ConfigError (naming `algorithms[index]`) for a task this algorithm cannot run; called by the
        engine's validation, before anything is written. Most algorithms run any task."""

    def steps_of(self, client_id: int) -> int:
        """Mini-batches the client processes this round (see `local_steps_for`)."""
        return local_steps_for(self.cfg, self.client_sizes[client_id], self.federation.batch_size)

    def worker_of(self, position: int) -> int:
        """Which worker serves the client at this position in the round's sample."""
        return position % self.num_workers

    def assign(self, clients: np.ndarray) -> tuple[dict[int, int], dict[int, ClientRecord]]:
        """The round's clients: the worker that serves each (`worker_of`), and an empty record each."""
        worker = {int(c): self.worker_of(i) for i, c in enumerate(clients)}
        return worker, {c: ClientRecord(c, w) for c, w in worker.items()}

    @staticmethod
    def send_model(clients: np.ndarray | list[int], channel: Channel, model: Message) -> list[int]:
        """The global model down to every sampled client; those that fail mid-round drop out once they have it."""
        active = [int(c) for c in clients]
        for cid in active:
            channel.down(cid, model)
        return channel.clock.drop_failed(active)

    @abstractmethod
    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        """Run one round for the sampled `clients`, every message through `channel`."""

    def barrier(self, clock: RoundClock, active: list[int], backend: Backend, worker: dict[int, int]) -> list[int]:
        """The server waits for `active`: the round policy keeps some; the others' pending work is dropped."""
        kept = clock.barrier(active)
        for cid in set(active) - set(kept):
            backend.later(backend.client(worker[cid], self.client_role.forget, cid))
        return kept

    def sync_workers(self, backend: Backend) -> None:  # noqa: B027  (a no-op for stateless clients)
        """Bring every worker's replica up to date (used before comparing replicas)."""
