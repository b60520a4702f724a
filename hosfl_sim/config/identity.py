"""A run's identity: its directory's name, and the hash of what decides its numbers, computed from a resolved
scenario as a dict (`to_dict`, or a run manifest's `scenario`). The engine checks a resume against the hash,
sweeps skip runs by it.

Fields at their default value are left out of the hash, so a field added in a later version (with a default that
keeps the old behaviour) leaves the identity of earlier runs as it was: they still resume, and sweeps still skip
them when complete."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from hosfl_sim.config.schema import AlgorithmConfig, Scenario, directory_name

_NOT_HASHED = ("name", "description", "output_dir", "runtime", "seeds", "algorithms")  # no effect on numbers


def run_hash(scenario: dict[str, Any], index: int, seed: int) -> str:
    """sha256 of what decides a run's numbers: the resolved scenario (minus runtime and names), the algorithm at
    `index` and the seed, each without the fields at their default. Computable again from a run's manifest."""
    scenario_defaults, algorithm_defaults = _defaults()
    kept = {k: v for k, v in scenario.items() if k not in _NOT_HASHED}
    algorithm = without_defaults(scenario["algorithms"][index], algorithm_defaults)
    identity = {**without_defaults(kept, scenario_defaults), "algorithm": algorithm, "seed": seed}
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def without_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`values` without the entries equal to `defaults`', mappings pruned level by level (lists compare whole)."""
    out = {}
    for key, value in values.items():
        default = defaults.get(key, _MISSING)
        if value == default:
            continue
        if isinstance(value, dict) and isinstance(default, dict):
            value = without_defaults(value, default)
        out[key] = value
    return out


_MISSING = object()


@functools.cache
def _defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    return Scenario().model_dump(), AlgorithmConfig().model_dump()


def run_label(scenario: Scenario, index: int, seed: int) -> str:
    """The run directory's name of (algorithm `index`, seed)."""
    return f"{directory_name(scenario.algorithms[index].display_name)}_seed{seed}"
