"""A run's identity: the hash of what decides its numbers, computed from a resolved scenario as a dict
(`to_dict`, or a run manifest's `scenario`). The engine checks a resume against it, sweeps skip runs by it."""

from __future__ import annotations

import hashlib
import json

_NOT_HASHED = ("name", "description", "output_dir", "runtime", "seeds", "algorithms")  # no effect on numbers


def run_hash(scenario: dict, index: int, seed: int) -> str:
    """sha256 of what decides a run's numbers: the resolved scenario (minus runtime and names),
    the algorithm at `index` and the seed. Computable again from a run's manifest."""
    kept = {k: v for k, v in scenario.items() if k not in _NOT_HASHED}
    text = json.dumps({**kept, "algorithm": scenario["algorithms"][index], "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
