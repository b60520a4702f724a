"""Seed-and-scalar replay: how clients of a shared, seed-updated model stay in sync.

The server keeps every (seeds, scalars) record. A virtual client that missed records downloads
and replays them before it works again (DeComFL's lazy catch-up); the ledger is charged for
that download per virtual client. Workers are the physical side of the same idea: a worker's
replica applies the records it has not seen yet when it is next used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Scalars, Seeds


def mean_scalars(scalars: list[np.ndarray]) -> np.ndarray:
    """The server's average of the clients' P scalars, as it is broadcast (float32, summed in float64)."""
    return np.mean(np.stack(scalars).astype(np.float64), axis=0).astype(np.float32)


@dataclass(frozen=True)
class Record:
    seeds: np.ndarray  # uint64 (P,)
    scalars: np.ndarray  # float32 (P,)


@dataclass
class ReplayMark:
    """A log's length at a round's start and the old positions of the clients moved since (in order)."""

    records: int
    undo: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


class ReplayLog:
    """The server's record list plus who has applied how much of it.

    `client_seen` is one int32 per virtual client, so N = 100,000 costs 400 kB. Within a round the log only
    grows: records are appended and positions move (`catch_up`, `mark_seen`, `for_worker`), so `mark()` at a
    round's start and `rollback(mark)` undo the round in O(records and clients it touched), not O(log).
    """

    def __init__(self, num_clients: int, num_workers: int):
        self.records: list[Record] = []
        self.client_seen = np.zeros(num_clients, dtype=np.int32)
        self.worker_seen = np.zeros(num_workers, dtype=np.int64)
        self._mark: ReplayMark | None = None

    def _move(self, client_ids: np.ndarray | int) -> None:
        """Set clients' positions to the end of the log, keeping their old ones for a rollback."""
        ids = np.array(client_ids, dtype=np.int64, ndmin=1)
        if self._mark is not None:
            self._mark.undo.append((ids, self.client_seen[ids]))
        self.client_seen[ids] = len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def append(self, seeds: np.ndarray, scalars: np.ndarray) -> None:
        record = Record(np.asarray(seeds, np.uint64), np.asarray(scalars, np.float32))
        if self.records and (record.seeds.shape, record.scalars.shape) != self._shape():
            raise ValueError(f"a record of shape {record.seeds.shape} in a log of {self._shape()[0]}")
        self.records.append(record)

    def _shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.records[0].seeds.shape, self.records[0].scalars.shape

    def for_worker(self, worker: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Records the worker's replica still has to apply; marks them applied."""
        start = int(self.worker_seen[worker])
        self.worker_seen[worker] = len(self.records)
        return [(r.seeds, r.scalars) for r in self.records[start:]]

    def catch_up(self, channel: Channel, client_id: int) -> int:
        """Charge the download of the records a virtual client missed (one message per category; every record
        of a log has one size); returns how many records it replays."""
        seen, end = int(self.client_seen[client_id]), len(self.records)
        if end > seen:
            last = self.records[-1]
            channel.down(client_id, Seeds.of(last.seeds).times(end - seen))
            channel.down(client_id, Scalars.of(last.scalars).times(end - seen))
        self._move(client_id)
        return end - seen

    def mark_seen(self, client_ids: np.ndarray) -> None:
        self._move(np.asarray(client_ids))

    def mark(self) -> ReplayMark:
        """The log as it stands (a round's start), for `rollback`. Only the latest mark can be rolled back to."""
        self._mark = ReplayMark(len(self.records))
        return self._mark

    def rollback(self, mark: ReplayMark) -> None:
        """Back to `mark`, as `load_state_dict` of the state then would: the records appended since are dropped,
        client positions restored, and every worker counts as fresh. The mark stays: a rollback can repeat."""
        if mark is not self._mark:
            raise ValueError("only the latest mark of a replay log can be rolled back to")
        del self.records[mark.records :]
        for ids, old in reversed(mark.undo):
            self.client_seen[ids] = old
        mark.undo.clear()
        self.worker_seen[:] = 0

    def state_dict(self) -> dict:
        """Records and client positions. Worker positions are not state: they describe live processes."""
        return {
            "seeds": np.stack([r.seeds for r in self.records]) if self.records else np.zeros((0, 0), np.uint64),
            "scalars": np.stack([r.scalars for r in self.records]) if self.records else np.zeros((0, 0), np.float32),
            "client_seen": self.client_seen.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore records and client positions; every worker counts as fresh and replays from the start.
        Marks taken before are void."""
        self.records = [
            Record(np.array(s, np.uint64), np.array(v, np.float32)) for s, v in zip(state["seeds"], state["scalars"])
        ]
        self.client_seen = np.asarray(state["client_seen"], dtype=np.int32).copy()
        self.worker_seen[:] = 0
        self._mark = None
