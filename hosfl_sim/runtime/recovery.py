"""A round that survives its client workers dying.

A client worker that dies in a round (a backend that can lose one raises WorkerLost) has the round run again
from its starting state (the server's snapshot, the driver's state, the ledger) with every worker rebuilt fresh
(replicas replay the log) and the dead worker's clients recorded as `failed`. Why a rerun rather than a repair:
algorithms chain futures of several workers and the server, so after a death the server may hold part of the
round (a step on some of the activations); the round's starting state is the one state known to be consistent,
and a rerun needs no code in any algorithm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.comm import Ledger
from hosfl_sim.comm.channel import Channel
from hosfl_sim.runtime.errors import WorkerLost
from hosfl_sim.system import RoundClock

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # runs of one round that lose workers before the run gives up


class RoundMemory:
    """Peak memory of a round's work, measured inside every role: switched on before the round, read after."""

    def __init__(self, backend: Backend, roles: tuple[type[ClientRole], type[ServerRole]]):
        self.backend, self.roles = backend, roles

    def _set(self, on: bool) -> None:
        b, (client, server) = self.backend, self.roles
        b.get(
            [b.client(w, client.set_measuring, on) for w in range(b.num_workers)] + [b.server(server.set_measuring, on)]
        )

    def start(self) -> None:
        self._set(True)

    def collect(self) -> dict[int | None, dict[str, Any]]:
        """{client_id or None (the server): its measured stats}, the highest peak where a client was on two roles."""
        b, (client, server) = self.backend, self.roles
        parts = b.get([b.client(w, client.pop_stats) for w in range(b.num_workers)] + [b.server(server.pop_stats)])
        self._set(False)
        merged: dict[int | None, dict[str, Any]] = {}
        for part in parts:
            for cid, m in part.items():
                old = merged.get(cid)
                merged[cid] = m if old is None or m["peak_mem_bytes"] > old["peak_mem_bytes"] else old
        return merged


def run_round_surviving(
    backend: Backend,
    algorithm: Algorithm,
    rnd: int,
    clients: np.ndarray,
    ledger: Ledger,
    clock_for: Callable[[np.ndarray], RoundClock],
    memory: RoundMemory | None,
) -> tuple[RoundResult, RoundClock, dict[int, int], dict[int | None, dict[str, Any]]]:
    """Run the round; when workers die, run it again from its start without their clients. Returns the result,
    the clock of the attempt that finished, {failed client: its worker} and the measured memory ({} unmeasured).
    The round's start: the ledger's totals, the algorithm's round mark (O(K), no copy of the replay log) and,
    where workers can die, the server's snapshot taken as the previous round ended (or the run was set up)."""
    start_ledger, start_algorithm = ledger.state_dict(), algorithm.round_mark()
    failed: dict[int, int] = {}
    for _ in range(MAX_ATTEMPTS):
        live = np.array([c for c in clients if int(c) not in failed], dtype=clients.dtype)
        clock = clock_for(live)
        ledger.start_round(rnd)
        try:
            if memory is not None:
                memory.start()
            result = RoundResult(float("nan"), 0)
            if len(live):
                result = algorithm.run_round(rnd, live, backend, Channel(ledger, clock))
            stats = memory.collect() if memory is not None else {}
        except WorkerLost as e:
            lost = {int(c): algorithm.worker_of(i) for i, c in enumerate(live) if algorithm.worker_of(i) in e.workers}
            log.warning("round %d: %s; clients %s failed; running the round again", rnd, e, sorted(lost))
            failed.update(lost)
            ledger.load_state_dict(start_ledger)
            algorithm.rollback(start_algorithm)  # the workers count as fresh
            backend.take_later()  # calls of the abandoned attempt
            backend.get(backend.server(algorithm.server_role.restore))
            backend.reset_workers(e.workers)
            continue
        return result, clock, failed, stats
    raise RuntimeError(f"client workers died in {MAX_ATTEMPTS} runs of round {rnd}")
