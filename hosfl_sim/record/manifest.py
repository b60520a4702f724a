"""What a run was: resolved config, its hash, versions, commit, seeds, host."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from hosfl_sim.config import ConfigError, Scenario, config_hash, to_dict

_PACKAGES = ("hosfl_sim", "torch", "ray", "numpy", "pandas", "pyarrow", "transformers", "peft", "datasets")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # the manifest must never fail a run
        pass
    return info


def build_manifest(
    scenario: Scenario, algorithm_index: int, seed: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    algo = scenario.algorithms[algorithm_index]
    return {
        "scenario_name": scenario.name,
        "scenario": to_dict(scenario),
        "config_sha256": config_hash(scenario),
        "algorithm": algo.display_name,
        "algorithm_name": algo.name,
        "algorithm_index": algorithm_index,
        "model": scenario.task.model.name,
        "seed": seed,
        "overrides": overrides or {},
        "status": "running",
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": host_info(),
        "started": now(),
        "finished": None,
    }


# what every reader of a manifest relies on, and its type
_REQUIRED = {"scenario": dict, "algorithm": str, "algorithm_index": int, "seed": int, "status": str}


def read_manifest(run_dir: str | Path, field: str = "--resume", complete: bool = False) -> dict[str, Any]:
    """A run's manifest.json; one that is unreadable, not JSON or (`complete`) lacks what a run records is a
    one-line ConfigError naming `field` and the file (a hand-edited or truncated manifest is never half-used)."""
    path = Path(run_dir) / "manifest.json"
    expected = "a manifest.json written by hosfl-sim"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(field, str(path), f"{expected}, readable ({type(e).__name__})") from None
    except ValueError as e:
        raise ConfigError(field, str(path), f"{expected}, valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(field, str(path), f"{expected}: a JSON object (it holds a {type(data).__name__})")
    required = _REQUIRED.items() if complete else ()
    wrong = [k for k, tp in required if not isinstance(data.get(k), tp) or isinstance(data.get(k), bool)]
    if wrong:
        raise ConfigError(field, str(path), f"{expected}, with {', '.join(wrong)} (missing or of another type)")
    return data
