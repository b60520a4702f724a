"""Shared fixtures. Ray starts once per test session (an actor costs ~1 s and ~170 MB)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "4")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        import torch

        # Without CUDA, 2 fake GPUs: runs that reserve GPU fractions get scheduled (and find no CUDA in them).
        gpus = None if torch.cuda.is_available() else 2
        ray.init(num_cpus=4, num_gpus=gpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def tiny_scenario(**overrides) -> dict:
    """A digits scenario small enough for a unit test; override any top-level section."""
    base = {
        "name": "tiny",
        "task": {"dataset": {"name": "digits"}, "model": {"name": "cnn", "cut": "block1", "width": 8}},
        "algorithms": [{"name": "hosfl", "perturbations": 4}],
        "federation": {"num_clients": 8, "clients_per_round": 3, "rounds": 4, "batch_size": 16, "eval_every": 2},
        "seeds": [0],
        "runtime": {"backend": "local", "num_workers": 2},
    }
    base.update(overrides)
    return base
