"""Client memory: measured peaks (`MemoryMeter`) and exact static bytes (`static_bytes`). The paper's four
modes side by side use these from above the library (`hosfl_sim.memory_modes`: it builds models and runs roles)."""

from hosfl_sim.memory.meter import Measurement, MemoryMeter, chain, slowdown
from hosfl_sim.memory.static import optimizer_state_bytes, static_bytes, tensor_bytes

__all__ = ["Measurement", "MemoryMeter", "chain", "optimizer_state_bytes", "slowdown", "static_bytes", "tensor_bytes"]
