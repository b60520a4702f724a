"""The round's network: every message between a client and the server goes through here.

The ledger prices a message, the round's clock times it on the client's link, and the round policy
(the clock's failures) decides whether it is sent at all: a client that failed mid-round sends
nothing more. Algorithms hold a channel, never the ledger or the clock's transfer arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hosfl_sim.comm.ledger import DOWN, UP, Ledger
from hosfl_sim.comm.messages import Message

if TYPE_CHECKING:
    from hosfl_sim.system.clock import RoundClock


class Channel:
    def __init__(self, ledger: Ledger, clock: RoundClock):
        self.ledger = ledger
        self.clock = clock  # the round's simulated clock and policy (compute, barriers) for the algorithm

    def up(self, client_id: int, message: Message) -> int:
        """`client_id` sends `message` to the server; returns the bytes charged (0 if it failed)."""
        return self._send(client_id, UP, message)

    def down(self, client_id: int, message: Message) -> int:
        """The server sends `message` to `client_id`; returns the bytes charged (0 if it failed)."""
        return self._send(client_id, DOWN, message)

    def _send(self, client_id: int, direction: str, message: Message) -> int:
        if not self.clock.sends(client_id, direction):
            return 0  # a client that failed mid-round sends nothing more
        nbytes = self.ledger.charge(client_id, direction, message)
        self.clock.transfer(client_id, direction, nbytes)
        return nbytes
