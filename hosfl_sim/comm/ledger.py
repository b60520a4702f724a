"""The ledger: every byte that would cross a network, under one named category.

Algorithms send typed messages (`comm.messages`) through the round's channel; the ledger is the one
place that turns a message into bytes, as it would travel (numpy itemsize: float32 activations
4 B/value, int64 labels and uint64 seeds 8 B each, float32 scalars 4 B). Nothing else in the
simulator computes bytes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from hosfl_sim.comm.messages import Message

UP, DOWN = "up", "down"
# category -> direction, as seen from the client
CATEGORIES: dict[str, str] = {
    "act_up": UP,  # smashed data (and the side inputs that travel with it)
    "grad_down": DOWN,  # cut-layer gradients
    "labels_up": UP,
    "scalar_up": UP,  # zeroth-order scalars sent by a client
    "scalar_down": DOWN,  # scalars sent to a client: broadcasts, loss differences, replay
    "seed_down": DOWN,
    "model_up": UP,  # any weight vector
    "model_down": DOWN,
}


@dataclass(frozen=True)
class Transfer:
    round: int
    client_id: int
    category: str
    nbytes: int


class Ledger:
    """Append-only record of transfers for one run. Cumulative totals per category, and the
    per-client totals of the current round for `clients.parquet`."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self._round_client: dict[int, dict[str, int]] = defaultdict(lambda: {UP: 0, DOWN: 0})
        self.round = 0

    def start_round(self, round_idx: int) -> None:
        self.round = round_idx
        self._round_client.clear()

    @staticmethod
    def price(message: Message) -> int:
        """Bytes of a message as it would travel: its arrays' sizes times their itemsize, times its copies."""
        per_copy = sum(
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in message.arrays
        )
        return per_copy * message.copies

    def charge(self, client_id: int, direction: str, message: Message) -> int:
        """Charge a message sent `direction` (UP: client to server) on `client_id`'s link; returns its bytes."""
        category = f"{message.kind}_{direction}"
        if CATEGORIES.get(category) != direction:
            raise KeyError(f"unknown ledger category {category!r}; known: {', '.join(CATEGORIES)}")
        nbytes = self.price(message)
        if nbytes < 0:
            raise ValueError(f"negative transfer of {nbytes} bytes")
        self.totals[category] += nbytes
        self._round_client[int(client_id)][direction] += nbytes
        return nbytes

    def client_round_bytes(self, client_id: int) -> tuple[int, int]:
        """(bytes up, bytes down) charged to a client in the current round."""
        d = self._round_client.get(int(client_id), {UP: 0, DOWN: 0})
        return d[UP], d[DOWN]

    def total(self) -> int:
        return sum(self.totals.values())

    def columns(self) -> dict[str, int]:
        """Cumulative `bytes_<category>` columns plus `bytes_total`."""
        cols = {f"bytes_{c}": v for c, v in self.totals.items()}
        cols["bytes_total"] = self.total()
        return cols

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals = dict(state["totals"])
        self.round = int(state["round"])
