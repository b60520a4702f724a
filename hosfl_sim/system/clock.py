"""The simulated clock of one round: pure arithmetic on the scenario, never on the host's speed.

Algorithms feed it in the order messages would happen: the ledger forwards every charged
transfer (`bytes * 8 / bandwidth + latency`), algorithms add compute (`FLOPs / speed`) and
barriers (the server waiting for the sampled clients). A barrier is where the round policy
acts: clients that fail mid-round never arrive; a deadline drops the clients whose message would
arrive after it (the server knows this from the device profiles, as FedScale's deadline does,
and does not wait for them); over-commit keeps the first K to arrive. A dropped client
contributes nothing after that point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hosfl_sim.config.schema import SystemConfig
from hosfl_sim.system.profiles import DeviceProfiles, build_profiles

COMPLETED, STRAGGLER, FAILED = "completed", "straggler_dropped", "failed"


@dataclass
class ClientTime:
    compute_s: float = 0.0
    comm_s: float = 0.0
    t: float = 0.0  # the client's current time since the round started
    status: str = COMPLETED


class RoundClock:
    """Contract: call `transfer`/`client_compute`/`server_compute` in message order per client,
    `barrier` before the server uses the clients' uploads, and only for clients still active."""

    def __init__(
        self,
        clients: np.ndarray,
        profiles: DeviceProfiles,
        cfg: SystemConfig,
        failing: np.ndarray | None = None,
        quota: int | None = None,
    ):
        self.profiles, self.cfg = profiles, cfg
        self.clients = {int(c): ClientTime() for c in clients}
        self.failing = {int(c) for c, f in zip(clients, failing if failing is not None else []) if f}
        self.quota = quota  # over-commit: how many to keep at the first barrier
        self.server_free = 0.0
        self.last_barrier = 0.0

    # ------------------------------------------------------------------ events

    def sends(self, client_id: int, direction: str) -> bool:
        """Whether a message would really be sent: a failing client never uploads."""
        c = self.clients.get(int(client_id))
        if c is None:
            return True  # not a client of this round (e.g. a server-to-server link): not clocked here
        if c.status != COMPLETED:
            return False
        return not (direction == "up" and int(client_id) in self.failing)

    def transfer(self, client_id: int, direction: str, nbytes: int) -> None:
        if int(client_id) not in self.clients:
            return
        c, p = self.clients[int(client_id)], self.profiles
        bps = p.uplink_bps[client_id] if direction == "up" else p.downlink_bps[client_id]
        if self.cfg.server_link_bps is not None:
            bps = min(bps, self.cfg.server_link_bps)
        dt = nbytes * 8.0 / bps + p.latency_s[client_id]
        c.t += dt
        c.comm_s += dt

    def client_compute(self, client_id: int, flops: float) -> None:
        c = self.clients[int(client_id)]
        dt = flops / self.profiles.compute_flops[client_id]
        c.t += dt
        c.compute_s += dt

    def server_compute(self, client_id: int, flops: float) -> None:
        """One client's request on the single server, first come first served."""
        c = self.clients[int(client_id)]
        start = max(c.t, self.server_free)
        self.server_free = start + flops / self.cfg.server_flops
        c.t = self.server_free

    def server_batch(self, clients: list[int], flops: float) -> None:
        """The server works on all `clients` together (after a barrier); they all wait for it."""
        if not clients:
            return
        start = max(max(self.clients[int(c)].t for c in clients), self.server_free)
        self.server_free = start + flops / self.cfg.server_flops
        for c in clients:
            self.clients[int(c)].t = self.server_free

    def server_only(self, flops: float) -> None:
        """Server work with no client in the loop (centralized training): the round lasts until it ends."""
        start = max(self.server_free, self.last_barrier)
        self.server_free = start + flops / self.cfg.server_flops
        self.last_barrier = self.server_free

    # ------------------------------------------------------------------ policy

    def drop_failed(self, clients: list[int]) -> list[int]:
        """Clients that fail mid-round received their first messages, then vanish."""
        for c in clients:
            if int(c) in self.failing:
                self.clients[int(c)].status = FAILED
        return [c for c in clients if int(c) not in self.failing]

    @property
    def may_drop(self) -> bool:
        """Whether the next barrier can keep fewer clients than it is given (a deadline, or an over-commit
        quota not yet applied); under sync it keeps every client still live."""
        return self.quota is not None or self.cfg.policy == "deadline"

    def barrier(self, clients: list[int]) -> list[int]:
        """The server waits for `clients`; returns those it keeps (in the given order)."""
        live = [int(c) for c in clients if self.clients[int(c)].status == COMPLETED]
        order = sorted(live, key=lambda c: (self.clients[c].t, c))
        kept = list(order)
        if self.quota is not None:
            kept, self.quota = order[: self.quota], None
        if self.cfg.policy == "deadline":  # the server knows from the profiles who cannot make it
            deadline = self.cfg.deadline_s
            assert deadline is not None  # the config requires it under the deadline policy
            kept = [c for c in kept if self.clients[c].t <= deadline]
        for c in set(live) - set(kept):
            self.clients[c].status = STRAGGLER
        t = max([self.clients[c].t for c in kept] + [self.last_barrier])
        for c in kept:
            self.clients[c].t = t
        self.last_barrier = t
        keep = set(kept)
        return [c for c in clients if int(c) in keep]

    # ------------------------------------------------------------------ results

    def duration(self) -> float:
        done = [c.t for c in self.clients.values() if c.status == COMPLETED]
        return max(done + [self.last_barrier])

    def record(self, client_id: int) -> ClientTime:
        return self.clients[int(client_id)]


def sync_clock(clients: np.ndarray, num_clients: int) -> RoundClock:
    """A sync round on the default device profiles with nobody failing: for driving an algorithm round by round
    outside the engine (the engine builds each round's clock from the scenario)."""
    cfg = SystemConfig()
    return RoundClock(clients, build_profiles(cfg, num_clients, 0), cfg)
