"""Which clients can be sampled in a round: a pure function of (scenario, seed, round)."""

from __future__ import annotations

import numpy as np

from hosfl_sim.config.schema import AvailabilityConfig, ConfigError
from hosfl_sim.system.profiles import read_table

# what an `available` cell may hold: booleans, 1/0, or their spellings in a CSV read as text
_FLAGS = {True: True, False: False, "true": True, "false": False, "True": True, "False": False, "1": True, "0": False}


class Availability:
    """Per-round dropout, on/off windows with a random phase per client, and/or a trace of
    (client_id, round, available) rows. All three combine: a client must pass each."""

    def __init__(self, cfg: AvailabilityConfig, num_clients: int, seed: int):
        self.cfg, self.n, self.seed = cfg, num_clients, seed
        self.phase = np.random.default_rng([seed, 29]).integers(0, max(cfg.period, 1), size=num_clients)
        self.trace: dict[int, np.ndarray] = {}
        if cfg.trace:
            field = "system.availability.trace"
            table = read_table(cfg.trace, field, ("round", "available"))
            flags = table["available"].map(_FLAGS.get)
            ids = table["client_id"].to_numpy()
            if flags.isna().any() or (len(ids) and (ids.min() < 0 or ids.max() >= num_clients)):
                bad = "available as true/false or 1/0" if flags.isna().any() else f"client ids in [0, {num_clients})"
                raise ConfigError(field, cfg.trace, bad)
            off = table[~flags.astype(bool)]
            for rnd, group in off.groupby("round"):
                self.trace[int(rnd)] = group["client_id"].to_numpy()

    def available(self, rnd: int) -> np.ndarray:
        """bool (N,): who may be sampled in round `rnd` (1-based)."""
        mask = np.ones(self.n, dtype=bool)
        if self.cfg.dropout > 0:
            mask &= np.random.default_rng([self.seed, 31, rnd]).random(self.n) >= self.cfg.dropout
        if self.cfg.period:
            mask &= (rnd + self.phase) % self.cfg.period < self.cfg.on_rounds
        if rnd in self.trace:
            mask[self.trace[rnd]] = False
        return mask

    def fails_mid_round(self, rnd: int, clients: np.ndarray) -> np.ndarray:
        """bool per sampled client: it starts the round but never delivers its upload."""
        if self.cfg.mid_round_dropout <= 0:
            return np.zeros(len(clients), dtype=bool)
        draws = np.random.default_rng([self.seed, 37, rnd]).random(self.n)
        return draws[clients] < self.cfg.mid_round_dropout
