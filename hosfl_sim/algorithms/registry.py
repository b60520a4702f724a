"""Algorithms by name: each registers itself (`@register`), and other packages add theirs through the
entry-point group `hosfl_sim.algorithms` (an entry point names an Algorithm subclass or a module that
registers some), loaded the first time a name is looked up.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TypeVar

from hosfl_sim.algorithms.base import Algorithm
from hosfl_sim.config import ConfigError

ENTRY_POINT_GROUP = "hosfl_sim.algorithms"

A = TypeVar("A", bound=type[Algorithm])
ALGORITHMS: dict[str, type[Algorithm]] = {}
_plugins_loaded = False


def register(cls: A) -> A:
    """Class decorator: `cls` can be named in a scenario (`algorithms: [{name: <cls.name>}]`)."""
    for attr in ("name", "summary", "client_role", "server_role"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__qualname__} cannot be registered: it sets no {attr}")
    known = ALGORITHMS.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"algorithm name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    ALGORITHMS[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Register the algorithms other installed packages declare (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        if isinstance(loaded, type) and issubclass(loaded, Algorithm):
            register(loaded)


def get_algorithm(name: str, path: str = "algorithms[].name") -> type[Algorithm]:
    if name not in ALGORITHMS:
        load_plugins()
    if name not in ALGORITHMS:
        raise ConfigError(path, name, "one of " + ", ".join(sorted(ALGORITHMS)))
    return ALGORITHMS[name]
