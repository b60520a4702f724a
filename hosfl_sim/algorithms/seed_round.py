"""The seed-and-scalar round (HO-SFL, SFL-ZO, ZO-FL): every client's model is one replica updated only from
(seeds, averaged scalars) records, which the algorithm's ReplayLog keeps for clients that were away.

A round is `local_steps` steps. `run_round` opens each (the records a returning client missed, then the step's
seeds; clients that fail mid-round drop out) and hands a `Step` to the algorithm's `local_step`, which sends its
phases and ends with `close_step` (the record down to the clients kept, applied on their replicas, logged).

Routing: one actor call per worker per phase (`to_workers`: each worker serves its clients of the round in
turn, so a phase costs W calls whatever K is). Under sync every phase goes out before anything is read
(actors hand each other the futures); under a policy that can drop clients at a barrier (deadline,
over-commit) the server's phase waits for the barrier's verdict (`around_barrier`). The ledger and the clock
are charged afterwards, message by message in client order.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, ClientRecord, RoundResult
from hosfl_sim.algorithms.replay import ReplayLog
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.routing import by_worker, in_client_order, keep_all
from hosfl_sim.algorithms.state import bookkeeping
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Message, Scalars, Seeds
from hosfl_sim.system.clock import RoundClock
from hosfl_sim.zo import ZOUpdater, derive_seeds


@dataclass(frozen=True)
class Step:
    """One local step as `local_step` sees it; `records` and `losses` accumulate the round's results."""

    round: int
    index: int
    seeds: np.ndarray
    worker: dict[int, int]  # client -> the worker that serves it this round
    calls: Backend
    channel: Channel
    records: dict[int, ClientRecord]
    losses: list[float]

    @property
    def clock(self) -> RoundClock:
        return self.channel.clock


class ReplicaClient(ClientRole):
    """A client whose state is one replica updated only from (seeds, scalars) records, in order."""

    def sync(self, records: list[tuple[np.ndarray, np.ndarray]]) -> object:
        """Apply the records its replica has yet to apply (each exactly once, in order)."""
        raise NotImplementedError


class ReplicaServer(ServerRole):
    """A server that keeps its own replica of what the clients update from the records (`client_updater`)."""

    client_updater: ZOUpdater

    @bookkeeping
    def record_flops(self) -> int:
        """FLOPs a client spends applying one record to its replica."""
        return self.client_updater.flops(self.spec.algorithm.perturbations)


class SeedBasedAlgorithm(Algorithm):
    client_role: ClassVar[type[ReplicaClient]]
    server_role: ClassVar[type[ReplicaServer]]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log = ReplayLog(self.federation.num_clients, self.num_workers)
        self._record_flops: int | None = None  # asked of the server at the first round's start

    @property
    def record_flops(self) -> int:
        """A client's FLOPs to apply one record."""
        assert self._record_flops is not None, "run_round asks the server first"
        return self._record_flops

    @abstractmethod
    def local_step(self, s: Step, active: list[int]) -> list[int]:
        """One local step of the `active` clients; returns those it kept (a barrier may drop some)."""

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        if self._record_flops is None:
            self._record_flops = int(backend.get(backend.server(self.server_role.record_flops)))
        worker, records = self.assign(clients)
        active = [int(c) for c in clients]
        losses: list[float] = []
        for step in range(self.cfg.local_steps):
            seeds, active = self.open_step(rnd, step, active, channel)
            if active:
                active = self.local_step(Step(rnd, step, seeds, worker, backend, channel, records, losses), active)
            if not active:
                break
        samples = sum(r.samples for r in records.values())
        return RoundResult(RoundResult.mean(losses), samples, list(records.values()))

    def open_step(self, rnd: int, step: int, active: list[int], channel: Channel) -> tuple[np.ndarray, list[int]]:
        """A step's first messages: at step 0 the records a client missed, then the step's seeds; at step 0 the
        clients that fail mid-round drop out, and the others replay what they missed on their replicas."""
        seeds = derive_seeds(self.seed, rnd, step, self.cfg.perturbations)
        missed = {cid: self.log.catch_up(channel, cid) if step == 0 else 0 for cid in active}
        for cid in active:
            channel.down(cid, Seeds.of(seeds))
        if step == 0:
            active = channel.clock.drop_failed(active)
            for cid in active:
                channel.clock.client_compute(cid, missed[cid] * self.record_flops)
        return seeds, active

    def to_workers(
        self, s: Step, active: list[int], method: Callable[..., Any], *args: Any
    ) -> tuple[dict[int, list[int]], dict[int, Any]]:
        """`method(records, client, *args)` for each client of `active`, one call per worker (`ClientRole.each`),
        with the records its replica has yet to apply; returns the groups and the (uploads, metas) futures."""
        groups = by_worker(active, s.worker)
        each = self.client_role.each
        calls = {
            w: s.calls.client(w, each, method, self.log.for_worker(w), cs, *args, num_returns=2)
            for w, cs in groups.items()
        }
        return groups, calls

    @staticmethod
    def read(s: Step, groups: dict[int, list[int]], calls: dict[int, Any], part: int) -> dict[int, Any]:
        """{client: its value} of return `part` of every worker's call (0: uploads, 1: metas)."""
        return in_client_order(groups, s.calls.get([calls[w][part] for w in groups]))

    def uploads_read(
        self, s: Step, groups: dict[int, list[int]], calls: dict[int, Any], active: list[int]
    ) -> Callable[[], dict[int, dict]]:
        """A barrier's `charge`: read the clients' metadata (the calls' second return), charge it (`uploaded`)."""

        def charge() -> dict[int, dict]:
            metas = self.read(s, groups, calls, 1)
            self.uploaded(s, active, metas)
            return metas

        return charge

    def served(self, s: Step, active: list[int], server: dict, replies: dict[int, Message]) -> None:
        """The server's step on the kept clients (`server`: its FLOPs and one loss per client) on the clock; each
        client's reply down and its loss."""
        s.clock.server_batch(active, server["flops"])
        for cid, loss in zip(active, server["losses"]):
            s.channel.down(cid, replies[cid])
            s.records[cid].train_loss = loss
        s.losses.extend(server["losses"])

    def uploaded(self, s: Step, active: list[int], metas: dict[int, dict]) -> None:
        """Each client's forward on the clock, its activations and labels up, its measured compute."""
        for cid in active:
            m = metas[cid]
            s.clock.client_compute(cid, m["flops"])
            s.channel.up(cid, m["act"])
            s.channel.up(cid, m["labels"])
            s.records[cid].compute_s += m["compute_s"]

    def scalars_up(self, s: Step, active: list[int], flops: dict, scalars: dict, metas: dict) -> None:
        """Each client's forwards (`flops`) on the clock, its scalars up, its measured compute."""
        for cid in active:
            s.clock.client_compute(cid, flops[cid])
            s.channel.up(cid, scalars[cid])
            s.records[cid].compute_s += metas[cid]["compute_s"]

    def close_step(self, s: Step, scalars: np.ndarray, active: list[int], metas: dict[int, dict]) -> None:
        """The step's record (seeds, averaged scalars) down to the clients it kept, applied on their replicas
        (their compute), and into the log; their samples reached the model."""
        for cid in active:
            s.channel.down(cid, Scalars.of(scalars))
            s.clock.client_compute(cid, self.record_flops)
            s.records[cid].samples += metas[cid]["samples"]
        self.log.append(s.seeds, scalars)
        self.log.mark_seen(np.array(active))

    def kept_at_barrier(self, s: Step, active: list[int]) -> list[int]:
        """The step's barrier. Where the clock could not drop anyone (`may_drop`), work may already have gone
        out for every client, so a drop there is an error."""
        if s.clock.may_drop:
            return self.barrier(s.clock, active, s.calls, s.worker)
        keep_all(active, self.barrier(s.clock, active, s.calls, s.worker))
        return active

    def around_barrier(
        self, s: Step, active: list[int], submit: Callable[[list[int]], Any], charge: Callable[[], Any]
    ) -> tuple[list[int], Any, Any]:
        """A server phase and the barrier before it. Where no client can be dropped, `submit(active)` goes out
        before `charge()` reads the clients' messages (the server works meanwhile); otherwise `charge()` runs,
        the barrier keeps some clients and `submit(kept)` goes out for them (if any).
        Returns (kept, what `submit` returned or None, what `charge` returned)."""
        early = not s.clock.may_drop
        sent = submit(active) if early else None
        charged = charge()
        kept = self.kept_at_barrier(s, active)
        if not early and kept:
            sent = submit(kept)
        return kept, sent, charged

    def sync_workers(self, backend: Backend) -> None:
        backend.get([backend.client(w, self.client_role.sync, self.log.for_worker(w)) for w in range(self.num_workers)])
