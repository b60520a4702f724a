"""Routing helpers: one actor call per worker per phase instead of one per client.

A Ray call costs about a millisecond whatever it carries, so a round that makes K calls a phase pays
for K where W would do. Algorithms group the round's clients by worker (`by_worker`), send each
worker one call that serves its clients in turn (`serve_each`), and hand the server the per-worker
lists with a plan (`make_plan`) saying where each kept client's message sits, so the server still works through
the clients in the round's order and the numbers do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def by_worker(active: list[int], worker: dict[int, int]) -> dict[int, list[int]]:
    """{worker: its clients among `active`, in `active`'s order}, workers in increasing order."""
    groups: dict[int, list[int]] = {w: [] for w in sorted({worker[c] for c in active})}
    for c in active:
        groups[worker[c]].append(c)
    return groups


def make_plan(active: list[int], groups: dict[int, list[int]]) -> list[tuple[int, int]]:
    """Where each client of `active` (in order) sits in the per-worker lists a server call receives, as
    (group index, index in the group); `groups` is what the workers were sent, a superset of `active`."""
    where = {c: (g, j) for g, cs in enumerate(groups.values()) for j, c in enumerate(cs)}
    return [where[c] for c in active]


def planned(plan: list[tuple[int, int]], groups: tuple[list, ...]) -> list:
    """The messages `plan` names, in its order (the server side of `make_plan`)."""
    return [groups[g][j] for g, j in plan]


def by_group(plan: list[tuple[int, int]], values: list, num_groups: int) -> list[list]:
    """The values of the planned messages (in plan order) back into per-group lists (the server side)."""
    out: list[list] = [[] for _ in range(num_groups)]
    for (g, _), v in zip(plan, values):
        out[g].append(v)
    return out


def in_client_order(groups: dict[int, list[int]], per_worker: list[list]) -> dict:
    """{client: value} from one list of values per worker (in `groups`' order)."""
    return {c: v for cs, vs in zip(groups.values(), per_worker) for c, v in zip(cs, vs)}


def serve_each(
    fn: Callable[..., tuple[Any, Any]], records: list, client_ids: list[int], *args: Any
) -> tuple[list, list]:
    """A worker's side: `fn(records, client, *args)` for each client in turn, the missed records applied
    by the first; returns (its uploads, its metadata), one per client."""
    out = [fn(records if i == 0 else [], c, *args) for i, c in enumerate(client_ids)]
    return [up for up, _ in out], [meta for _, meta in out]


def keep_all(active: list[int], kept: list[int]) -> None:
    if kept != active:  # may_drop said this barrier keeps everyone
        raise RuntimeError(f"a barrier dropped {sorted(set(active) - set(kept))} where no client could be dropped")
