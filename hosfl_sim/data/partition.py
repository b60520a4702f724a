"""Which training rows each virtual client holds: IID, Dirichlet label skew (plain or rebalanced), or shards.

Every scheme is vectorized (no Python loop over clients or samples) and owns its generator,
so 60,000 rows over 10,000 clients take milliseconds and the same seed gives the same partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hosfl_sim.config import ConfigError, PartitionConfig


@dataclass(frozen=True)
class Partition:
    """Which training indices each virtual client holds. Stored flat (indices + offsets) so that a
    federation of 100,000 clients costs bytes, not Python objects.

    Client i holds `indices[offsets[i]:offsets[i + 1]]`. Every training row belongs to exactly one
    client and every client holds at least one row. `client_indices` returns a view: do not write to it.
    """

    indices: np.ndarray  # int64, all clients' indices concatenated
    offsets: np.ndarray  # int64 (num_clients + 1,)

    def __post_init__(self):
        o = self.offsets
        if o.ndim != 1 or len(o) < 2 or o[0] != 0 or o[-1] != len(self.indices) or np.any(np.diff(o) < 0):
            raise ValueError("offsets must rise from 0 to len(indices), one more entry than clients")

    @classmethod
    def from_assignment(cls, client_of: np.ndarray, num_clients: int) -> Partition:
        """The partition giving row j to client `client_of[j]`; each client keeps its rows in index order."""
        indices = np.argsort(client_of, kind="stable").astype(np.int64)
        offsets = np.zeros(num_clients + 1, dtype=np.int64)
        np.cumsum(np.bincount(client_of, minlength=num_clients), out=offsets[1:])
        return cls(indices, offsets)

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    def client_indices(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_clients:
            raise IndexError(f"client {i} out of range [0, {self.num_clients})")
        return self.indices[self.offsets[i] : self.offsets[i + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def label_histogram(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """(num_clients, num_classes) counts of each client's labels."""
        client = np.repeat(np.arange(self.num_clients, dtype=np.int64), self.sizes())
        flat = client * num_classes + labels[self.indices]
        return np.bincount(flat, minlength=self.num_clients * num_classes).reshape(self.num_clients, num_classes)


def _grouped_by_label(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices sorted by label, in random order within each label."""
    perm = rng.permutation(len(labels))
    return perm[np.argsort(labels[perm], kind="stable")]


class IidPartitioner:
    """Shuffle the rows, then cut them into runs whose sizes differ by at most one."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, labels: np.ndarray, num_clients: int) -> Partition:
        n = len(labels)
        offsets = (np.arange(num_clients + 1, dtype=np.int64) * n) // num_clients
        return Partition(self.rng.permutation(n).astype(np.int64), offsets)


class DirichletPartitioner:
    """Label skew: the rows of each class go to clients in shares drawn from Dir(alpha, ..., alpha).

    Small alpha gives each client few classes, large alpha approaches IID. Every client must hold
    at least max(min_size, 1) rows: the draw is repeated up to `max_attempts` times; if no draw
    qualifies (many clients with few rows each), the best one is topped up by moving random rows
    from clients above the minimum to those below it.
    """

    max_attempts = 10

    def __init__(self, alpha: float, min_size: int, seed: int):
        self.alpha, self.min_size = alpha, min_size
        self.rng = np.random.default_rng(seed)

    def __call__(self, labels: np.ndarray, num_clients: int) -> Partition:
        _, y = np.unique(labels, return_inverse=True)
        per_class = np.bincount(y)  # (C,)
        need, n = max(self.min_size, 1), len(y)
        if n < need * num_clients:
            raise ConfigError(
                "task.partition.min_size",
                self.min_size,
                f"at most {n // num_clients}: {n} training rows over federation.num_clients={num_clients}",
            )
        best, best_missing = None, None
        for _ in range(self.max_attempts):
            shares = self.rng.dirichlet(np.full(num_clients, self.alpha), size=len(per_class))  # (C, N)
            bounds = np.rint(np.cumsum(shares, axis=1) * per_class[:, None]).astype(np.int64)
            bounds[:, -1] = per_class  # the shares' sum may miss 1 by rounding
            counts = np.diff(bounds, axis=1, prepend=0)  # (C, N) rows of class c that client i gets
            missing = np.maximum(need - counts.sum(axis=0), 0).sum()
            if best is None or missing < best_missing:
                best, best_missing = counts, missing
            if missing == 0:
                break
        assert best is not None  # max_attempts >= 1
        client_of = np.empty(n, dtype=np.int64)
        clients = np.tile(np.arange(num_clients, dtype=np.int64), len(per_class))
        client_of[_grouped_by_label(y, self.rng)] = np.repeat(clients, best.ravel())
        if best_missing:
            self._top_up(client_of, num_clients, need)
        return Partition.from_assignment(client_of, num_clients)

    def _top_up(self, client_of: np.ndarray, num_clients: int, need: int) -> None:
        """Move random rows beyond each client's first `need` to the clients short of `need`, in place."""
        sizes = np.bincount(client_of, minlength=num_clients)
        deficit = np.maximum(need - sizes, 0)
        order = _grouped_by_label(client_of, self.rng)  # rows grouped by client, random within
        rank = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        movable = order[rank >= need]  # a donor keeps `need` rows
        moved = self.rng.choice(movable, size=deficit.sum(), replace=False)
        client_of[moved] = np.repeat(np.arange(num_clients, dtype=np.int64), deficit)


class BalancedDirichletPartitioner:
    """DeComFL's non-IID split, as the paper's language runs use it: each client draws class proportions from
    Dir(alpha * p) (p: the classes' shares of the data), each class is cut among the clients in proportion to
    their draws, then random rows move from clients above their share to clients below it, so that every
    client ends with n // N rows (the n mod N left over go one each to the first clients, where DeComFL
    leaves them out). Label skew survives where the rows moved are few, that is for alpha not too small."""

    def __init__(self, alpha: float, seed: int):
        self.alpha = alpha
        self.rng = np.random.default_rng(seed)

    def __call__(self, labels: np.ndarray, num_clients: int) -> Partition:
        _, y = np.unique(labels, return_inverse=True)
        per_class = np.bincount(y)  # (C,)
        n = len(y)
        props = self.rng.dirichlet(self.alpha * per_class / n, size=num_clients)  # (N, C): a client's mix
        props[:, props.sum(axis=0) == 0] = 1.0  # a class nobody drew (underflow at tiny alpha): cut evenly
        cum = np.cumsum(props, axis=0) / props.sum(axis=0)  # (N, C): each class's cut points over the clients
        bounds = np.floor(cum * per_class).astype(np.int64)
        bounds[-1] = per_class  # the last cut point is the class's end (rounding)
        counts = np.diff(bounds, axis=0, prepend=0).T  # (C, N) rows of class c that client i gets
        client_of = np.empty(n, dtype=np.int64)
        clients = np.tile(np.arange(num_clients, dtype=np.int64), len(per_class))
        client_of[_grouped_by_label(y, self.rng)] = np.repeat(clients, counts.ravel())
        target = n // num_clients + (np.arange(num_clients) < n % num_clients)
        sizes = np.bincount(client_of, minlength=num_clients)
        order = _grouped_by_label(client_of, self.rng)  # rows grouped by client, random within
        rank = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        surplus = order[rank >= target[client_of[order]]]  # each client keeps `target` of its rows
        deficit = np.maximum(target - sizes, 0)
        client_of[self.rng.permutation(surplus)] = np.repeat(np.arange(num_clients, dtype=np.int64), deficit)
        return Partition.from_assignment(client_of, num_clients)


class ShardPartitioner:
    """Sort rows by label, cut them into num_clients * classes_per_client near-equal shards and deal
    each client classes_per_client shards at random (McMahan et al.'s pathological non-IID split).

    A client sees at most classes_per_client classes when shards do not straddle two classes.
    """

    def __init__(self, classes_per_client: int, seed: int):
        self.k = classes_per_client
        self.rng = np.random.default_rng(seed)

    def __call__(self, labels: np.ndarray, num_clients: int) -> Partition:
        n, num_shards = len(labels), num_clients * self.k
        if n < num_shards:
            raise ConfigError(
                "task.partition.classes_per_client",
                self.k,
                f"at most {n // num_clients}, so that each of num_clients * classes_per_client shards holds a row",
            )
        order = _grouped_by_label(labels, self.rng)
        bounds = (np.arange(num_shards + 1, dtype=np.int64) * n) // num_shards
        deal = self.rng.permutation(num_shards)  # client i gets shards deal[i*k : (i+1)*k]
        lengths = np.diff(bounds)[deal]
        out_start = np.concatenate([[0], np.cumsum(lengths)])
        # position in `order` of every output row: its shard's start plus its rank inside the shard
        pos = np.arange(n) - np.repeat(out_start[:-1] - bounds[:-1][deal], lengths)
        return Partition(order[pos].astype(np.int64), out_start[:: self.k].astype(np.int64))


def partition_dataset(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, seed: int) -> Partition:
    """Split the training rows (given by their labels) over `num_clients` clients with `cfg.scheme`."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 1 <= num_clients <= n:
        raise ConfigError("federation.num_clients", num_clients, f"an integer in [1, {n}]: every client needs a row")
    partitioner: Callable[[np.ndarray, int], Partition]
    if cfg.scheme == "iid":
        partitioner = IidPartitioner(seed)
    elif cfg.scheme == "dirichlet":
        partitioner = DirichletPartitioner(cfg.alpha, cfg.min_size, seed)
    elif cfg.scheme == "dirichlet_balanced":
        partitioner = BalancedDirichletPartitioner(cfg.alpha, seed)
    elif cfg.scheme == "shards":
        partitioner = ShardPartitioner(cfg.classes_per_client, seed)
    else:
        raise ConfigError("task.partition.scheme", cfg.scheme, "one of iid, dirichlet, dirichlet_balanced, shards")
    return partitioner(labels, num_clients)
