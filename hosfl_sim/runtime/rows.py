"""The rows a round adds to rounds.parquet and clients.parquet, from what the round left behind."""

from __future__ import annotations

from typing import Any

import numpy as np

from hosfl_sim.algorithms.base import RoundResult
from hosfl_sim.comm import Ledger
from hosfl_sim.system import FAILED, RoundClock
from hosfl_sim.system.profiles import DeviceProfiles


def client_rows(
    base: dict[str, Any], clients: np.ndarray, result: RoundResult, failed: dict[int, int], clock: RoundClock,
    ledger: Ledger, profiles: DeviceProfiles, memory: dict[int | None, dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    """clients.parquet rows of one round, in sampling order: those that ran, then as `failed` those whose
    worker died (nothing of theirs was used)."""
    rows = []
    for r in result.clients:
        up, down = ledger.client_round_bytes(r.client_id)
        t, mem = clock.record(r.client_id), memory.get(r.client_id, {})
        rows.append({**base, "client_id": r.client_id, "worker": r.worker, "status": t.status,
            "tier": profiles.tier_of(r.client_id), "bytes_up": up, "bytes_down": down, "compute_s": t.compute_s,
            "comm_s": t.comm_s, "finish_s": t.t, "wall_compute_s": r.compute_s, "samples": r.samples,
            "train_loss": r.train_loss, "peak_mem_bytes": mem.get("peak_mem_bytes"),
            "static_mem_bytes": mem.get("static_mem_bytes")})  # fmt: skip
    for cid, worker in failed.items():
        rows.append({**base, "client_id": cid, "worker": worker, "status": FAILED, "tier": profiles.tier_of(cid),
            "bytes_up": 0, "bytes_down": 0, "compute_s": 0.0, "comm_s": 0.0, "finish_s": 0.0, "wall_compute_s": 0.0,
            "samples": 0, "train_loss": float("nan"), "peak_mem_bytes": None, "static_mem_bytes": None})  # fmt: skip
    order = {int(c): i for i, c in enumerate(clients)}
    return sorted(rows, key=lambda row: order.get(int(row["client_id"]), len(order)))


def round_row(
    base: dict[str, Any], result: RoundResult, clients: np.ndarray, completed: int, times: dict[str, Any],
    samples_seen: int, ledger: Ledger, memory: dict[int | None, dict[str, Any]], measuring: bool,
) -> dict[str, Any]:  # fmt: skip
    """The rounds.parquet row of a round, its evaluation columns empty (`times`: best_test_acc so far and the
    wall, simulated and round times, in that order)."""
    client_peaks = [m["peak_mem_bytes"] for c, m in memory.items() if c is not None]
    return {
        **base,
        "train_loss": result.train_loss,
        "test_loss": None,
        "test_acc": None,
        **times,
        "num_sampled": len(clients),
        "num_completed": completed,
        "num_dropped": len(clients) - completed,
        "samples_seen": samples_seen,
        **ledger.columns(),
        "client_peak_mem_bytes": max(client_peaks, default=None),
        "server_peak_mem_bytes": memory.get(None, {}).get("peak_mem_bytes"),
        "memory_overhead_s": sum(m["overhead_s"] for m in memory.values()) if measuring else None,
    }
