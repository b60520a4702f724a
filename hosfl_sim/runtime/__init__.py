"""Where algorithms run: the engine (driver loop) and its backends. The only layer that imports Ray,
and only inside `ray_backend`, which is imported when a scenario asks for it."""

from hosfl_sim.runtime.backends import make_backend
from hosfl_sim.runtime.engine import Engine
from hosfl_sim.runtime.resume import RunSummary

__all__ = ["Engine", "RunSummary", "make_backend"]
