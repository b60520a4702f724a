"""Checks of a Ray cluster that a run needs, made before anything is written: an address that answers, and
the resources the run's actors ask for. Without them Ray retries an address forever and waits silently for
resources a cluster does not have."""

from __future__ import annotations

import logging
import socket

from hosfl_sim.config import ConfigError, RuntimeConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
PLACE_TIMEOUT_S = 120.0  # for actors to find a node: an autoscaling cluster may add one meanwhile


def check_address(address: str | None) -> None:
    """`runtime.address` as host:port (or ray://host:port) must accept a connection; `auto` and None are Ray's."""
    if not address or address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("runtime.address", address, "auto, host:port or ray://host:port")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError("runtime.address", address, f"a Ray cluster that answers there ({reason})") from None


def answers(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether host:port accepts a connection (the head's GCS: without it no actor can be started or killed)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def check_resources(cfg: RuntimeConfig, available: dict[str, float]) -> None:
    """The pool and the server fit in the cluster's CPUs (and GPUs, where it has any), or one line with the
    numbers: Ray would otherwise wait for them without a word."""
    cpus = cfg.num_workers * cfg.worker_num_cpus + cfg.server_num_cpus
    if cpus > available.get("CPU", 0.0):
        expected = (
            f"a pool that fits the cluster's {available.get('CPU', 0.0):g} CPUs (the run asks for {cpus:g}: "
            f"{cfg.num_workers} workers x {cfg.worker_num_cpus:g} + {cfg.server_num_cpus:g} for the server)"
        )
        raise ConfigError("runtime.worker_num_cpus", cfg.worker_num_cpus, expected)
    gpus = cfg.num_workers * cfg.worker_num_gpus + cfg.server_num_gpus
    have = available.get("GPU", 0.0)
    if cfg.device == "cuda" and not have:
        raise ConfigError("runtime.device", cfg.device, "auto or cpu: this Ray cluster has no GPU")
    if have and gpus > have:
        expected = f"a pool that fits the cluster's {have:g} GPUs (the run asks for {gpus:g})"
        raise ConfigError("runtime.worker_num_gpus", cfg.worker_num_gpus, expected)


def check_nodes(cfg: RuntimeConfig, node_cpus: list[float]) -> None:
    """Every actor fits on one node: a total that suffices does not, where no node is large enough for a worker
    (Ray places an actor on one node, and waits for one that can hold it without a word)."""
    if not node_cpus:
        return
    w, s = cfg.worker_num_cpus, cfg.server_num_cpus

    def workers_beside_server(at: int) -> int:  # workers that fit with the server on node `at`
        room = [c - (s if i == at else 0.0) for i, c in enumerate(node_cpus)]
        return sum(int(r // w) if w > 0 else cfg.num_workers for r in room) if room[at] >= 0 else -1

    if max(workers_beside_server(i) for i in range(len(node_cpus))) >= cfg.num_workers:
        return
    nodes = " + ".join(f"{c:g}" for c in sorted(node_cpus, reverse=True))
    expected = (
        f"actors that fit the cluster's nodes ({nodes} CPUs): each of {cfg.num_workers} workers asks for {w:g} "
        f"CPUs on one node and the server for {s:g}"
    )
    raise ConfigError("runtime.worker_num_cpus", w, expected)


def wait_placed(pings: list, cfg: RuntimeConfig, free: dict[str, float]) -> None:
    """Wait up to PLACE_TIMEOUT_S for the actors behind `pings` to start (an autoscaling cluster may add a node);
    those still waiting then are refused with the numbers (`free`: the cluster's before they were asked for),
    as Ray would wait for them without end. A warning after 10 s where the cluster had too few CPUs free."""
    import ray

    timeout_s = PLACE_TIMEOUT_S
    asked = cfg.num_workers * cfg.worker_num_cpus + cfg.server_num_cpus
    first = min(timeout_s, 10.0)
    _, waiting = ray.wait(pings, num_returns=len(pings), timeout=first)
    if waiting and timeout_s > first and free.get("CPU", 0.0) < asked:  # else they are only slow to start
        log.warning(
            "%d of %d actors have not started after %g s: the cluster has %g CPUs free, the run asks for %g; "
            "waiting up to %g s", len(waiting), len(pings), first, free.get("CPU", 0.0), asked, timeout_s,
        )  # fmt: skip
    if waiting:
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=timeout_s - first)
    if waiting:
        expected = (
            f"a pool the cluster can place: {len(waiting)} of {len(pings)} actors had not started after "
            f"{timeout_s:g} s (the cluster had {free.get('CPU', 0.0):g} CPUs free, the run asks for {asked:g})"
        )
        raise ConfigError("runtime.worker_num_cpus", cfg.worker_num_cpus, expected)
