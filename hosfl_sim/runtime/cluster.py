"""Checks of a Ray cluster that a run needs, made before anything is written: an address that answers, and
the resources the run's actors ask for. Without them Ray retries an address forever and waits silently for
resources a cluster does not have."""

from __future__ import annotations

import socket

from hosfl_sim.config import ConfigError, RuntimeConfig

CONNECT_TIMEOUT_S = 5.0


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
