"""hosfl_sim: a Ray-based simulator of split federated learning with backprop-free clients.

The Python API (`api.py`): `hosfl_sim.run(...)`, `hosfl_sim.load_runs(...)`, `hosfl_sim.sweep(...)`,
`hosfl_sim.scenario(...)`; imported on first use, so `import hosfl_sim` stays light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("hosfl_sim")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"

_API = ("run", "load_runs", "sweep", "scenario", "Results")


def __getattr__(name: str) -> Any:
    if name in _API:
        from hosfl_sim import api

        return getattr(api, name)
    raise AttributeError(f"module 'hosfl_sim' has no attribute {name!r}")


__all__ = ["__version__", *_API]
