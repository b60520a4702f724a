"""A run's identity: its directory's name, and the hash of what decides its numbers, computed from a resolved
scenario as a dict (`to_dict`, or a run manifest's `scenario`). The engine checks a resume against the hash,
sweeps skip runs by it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hosfl_sim.config.schema import Scenario, directory_name

_NOT_HASHED = ("name", "description", "output_dir", "runtime", "seeds", "algorithms")  # no effect on numbers


def run_hash(scenario: dict[str, Any], index: int, seed: int) -> str:
    """sha256 of what decides a run's numbers: the resolved scenario (minus runtime and names),
    the algorithm at `index` and the seed. Computable again from a run's manifest."""
    kept = {k: v for k, v in scenario.items() if k not in _NOT_HASHED}
    text = json.dumps({**kept, "algorithm": scenario["algorithms"][index], "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_label(scenario: Scenario, index: int, seed: int) -> str:
    """The run directory's name of (algorithm `index`, seed)."""
    return f"{directory_name(scenario.algorithms[index].display_name)}_seed{seed}"
