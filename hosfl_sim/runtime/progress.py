"""What a run carries from round to round besides the roles and the algorithm, and saves in a checkpoint."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hosfl_sim.comm import Ledger
from hosfl_sim.config import FederationConfig
from hosfl_sim.config.schema import SystemConfig


@dataclass
class RunProgress:
    """What the loop carries from round to round besides the roles and the algorithm."""

    sampler: np.random.Generator
    ledger: Ledger
    samples_seen: int = 0
    sim_time: float = 0.0
    best_acc: float | None = None  # the best test accuracy evaluated so far (the paper's metric)
    wall_before: float = 0.0  # wall seconds of the run before this process took it up
    started: float = field(default_factory=time.perf_counter)

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.bit_generator.state,
            "ledger": self.ledger.state_dict(),
            "samples_seen": self.samples_seen,
            "sim_time": self.sim_time,
            "best_acc": self.best_acc,
            "wall_time_s": self.wall_time(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.bit_generator.state = state["sampler"]
        self.ledger.load_state_dict(state["ledger"])
        self.samples_seen, self.sim_time = int(state["samples_seen"]), float(state["sim_time"])
        self.wall_before = float(state["wall_time_s"])
        self.best_acc = state.get("best_acc")

    def sample(self, available: np.ndarray, fed: FederationConfig, system: SystemConfig) -> np.ndarray:
        """The round's clients: K (ceil(c*K) under over-commit) drawn without replacement among the available."""
        want = fed.clients_per_round
        if system.policy == "overcommit":
            want = math.ceil(system.overcommit * want)
        pool = np.flatnonzero(available)
        if len(pool) == fed.num_clients:  # everyone available: the plain draw
            return np.sort(self.sampler.choice(fed.num_clients, size=min(want, fed.num_clients), replace=False))
        return np.sort(self.sampler.choice(pool, size=min(want, len(pool)), replace=False))

    def evaluated(self, acc: float) -> float:
        """Take in an evaluation's accuracy; returns the best so far."""
        self.best_acc = acc if self.best_acc is None else max(self.best_acc, acc)
        return self.best_acc
