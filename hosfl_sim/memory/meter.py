"""Measured peak memory of a block of work, in the process that runs it.

    meter = MemoryMeter("cpu")            # or "cuda", or enabled=False to switch sampling off
    with meter.measure() as m:
        role.probe(...)
    m.peak_bytes, m.retained_bytes, m.seconds, m.overhead_s

What is measured:
- CUDA: the caching allocator's own counters. `peak_bytes` = max_memory_allocated during the block
  minus memory_allocated at entry; `absolute_peak_bytes` = max_memory_allocated (everything live on
  the device, the static part included). Exact, and nearly free.
- CPU: torch has no CPU allocator statistics, so the block runs under the PyTorch profiler with
  `profile_memory=True`, which reports every allocation and free of torch's CPU allocator (ptr,
  bytes) in order. The running total of the blocks allocated inside the block, and of the frees of
  those blocks, is exact; its maximum is `peak_bytes`. A free of a block that existed before the
  block started is not reported by the profiler (or is reported with a stale size), so it is ignored:
  `peak_bytes` is then an upper bound on the true rise above entry, exact when the block frees
  nothing older than itself. `measure(after=m)` also counts frees of the blocks that measurement `m`
  left allocated (a backward freeing the graph its measured forward built). Memory that does not
  come from torch's allocator (NumPy arrays, Python objects) is not counted; nor are allocations on
  threads that do not carry the profiler's thread-local state.
  The profiler records every op as well, which slows the block down (see `slowdown`); the time spent
  starting, stopping and reading it is reported per measurement as `overhead_s`.

One measurement at a time per process: the CPU profiler cannot nest, and resetting the CUDA peak
inside an outer block would corrupt it, so a nested `measure()` raises.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

_active = False  # one measurement at a time per process


@dataclass
class Measurement:
    """The memory of one measured block. Byte fields are None when the block was not measured
    (meter disabled): seconds are always timed."""

    device: str
    peak_bytes: int | None = None  # most bytes allocated inside the block that were live at once
    retained_bytes: int | None = None  # net bytes the block left allocated (negative if it freed more)
    entry_bytes: int | None = None  # CUDA: allocated at entry (None on the CPU: not observable)
    absolute_peak_bytes: int | None = None  # CUDA: max allocated during the block, entry included
    seconds: float = 0.0  # wall time of the block, measurement included
    overhead_s: float = 0.0  # time spent starting, stopping and reading the meter (outside the work)
    events: int = 0  # CPU: allocation and free events read
    live: dict[int, int] = field(default_factory=dict, repr=False)  # CPU: ptr -> bytes left allocated

    @property
    def measured(self) -> bool:
        return self.peak_bytes is not None

    def columns(self, prefix: str = "mem_") -> dict[str, Any]:
        """Flat, Parquet-friendly fields (None where not measured)."""
        return {
            f"{prefix}peak_bytes": self.peak_bytes,
            f"{prefix}retained_bytes": self.retained_bytes,
            f"{prefix}absolute_peak_bytes": self.absolute_peak_bytes,
            f"{prefix}seconds": self.seconds,
            f"{prefix}overhead_s": self.overhead_s,
        }


def chain(*measurements: Measurement) -> Measurement:
    """The measurement of blocks run one after the other: peak = max_i (retained before i + peak_i).

    Exact on CUDA. On the CPU it is exact when each block after the first was measured with
    `after=` its predecessor (or frees nothing its predecessors left), an upper bound otherwise."""
    if not measurements:
        raise ValueError("chain() needs at least one measurement")
    first = measurements[0]
    out = Measurement(first.device, entry_bytes=first.entry_bytes)
    out.seconds = sum(m.seconds for m in measurements)
    out.overhead_s = sum(m.overhead_s for m in measurements)
    out.events = sum(m.events for m in measurements)
    if not all(m.measured for m in measurements):
        return out
    held, peak = 0, 0
    for m in measurements:
        assert m.peak_bytes is not None and m.retained_bytes is not None  # measured: both are set
        peak = max(peak, held + m.peak_bytes)
        held += m.retained_bytes
    out.peak_bytes, out.retained_bytes = peak, held
    if first.entry_bytes is not None:
        out.absolute_peak_bytes = first.entry_bytes + peak
    out.live = dict(measurements[-1].live)
    return out


class MemoryMeter:
    """Measures blocks of work on one device in this process.

    `measure()` yields a `Measurement` that is filled in when the block exits. With `enabled=False`
    (meter-wide, or per call) the block only gets timed: nothing is hooked, nothing slows down.
    Callers must not nest measurements (it raises) and must run the measured work on this thread.
    The meter keeps running totals of how many blocks it measured and what measuring cost
    (`overhead()`); for the slowdown inside a block, see `slowdown`.
    """

    def __init__(self, device: str | torch.device = "cpu", enabled: bool = True):
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"memory can be measured on cpu or cuda, not {self.device}")
        self.enabled = enabled
        self.count = 0
        self.measured_s = 0.0
        self.overhead_s = 0.0

    @contextmanager
    def measure(self, enabled: bool | None = None, after: Measurement | None = None) -> Iterator[Measurement]:
        """Measure the block. `enabled` overrides the meter's switch for this call; `after` (CPU)
        counts frees of the blocks that measurement left allocated."""
        global _active
        m = Measurement(str(self.device))
        on = self.enabled if enabled is None else enabled
        if not on:
            start = time.perf_counter()
            yield m
            m.seconds = time.perf_counter() - start
            return
        if _active:
            raise RuntimeError("memory measurements cannot nest: one block at a time per process")
        _active = True
        try:
            t0 = time.perf_counter()
            session = _CudaSession(self.device) if self.device.type == "cuda" else _CpuSession()
            t1 = time.perf_counter()
            try:
                yield m
            finally:
                session.sync()
                t2 = time.perf_counter()
                session.stop(m, after)
                t3 = time.perf_counter()
        finally:
            _active = False
        m.seconds = t2 - t1
        m.overhead_s = (t1 - t0) + (t3 - t2)
        self.count += 1
        self.measured_s += m.seconds
        self.overhead_s += m.overhead_s

    def overhead(self) -> dict[str, float]:
        """What measuring has cost so far: blocks measured, their wall seconds, and the seconds spent
        starting, stopping and reading the meter around them."""
        return {"measurements": self.count, "measured_s": self.measured_s, "overhead_s": self.overhead_s}


class _CudaSession:
    def __init__(self, device: torch.device):
        self.device = device
        torch.cuda.synchronize(device)
        self.entry = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    def sync(self) -> None:  # the block's kernels are part of its time
        torch.cuda.synchronize(self.device)

    def stop(self, m: Measurement, after: Measurement | None) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        m.entry_bytes = self.entry
        m.absolute_peak_bytes = peak
        m.peak_bytes = peak - self.entry
        m.retained_bytes = torch.cuda.memory_allocated(self.device) - self.entry


class _CpuSession:
    """The profiler's memory events, through its low-level entry points (torch is pinned): the public
    `torch.profiler.profile` also turns every op event into Python objects on exit, which we never read."""

    def __init__(self):
        from torch._C._profiler import _ExperimentalConfig
        from torch.autograd import (
            ProfilerActivity,
            ProfilerConfig,
            ProfilerState,
            _enable_profiler,
            _prepare_profiler,
            _profiler_enabled,
        )

        if _profiler_enabled():
            raise RuntimeError("a PyTorch profiler is already running; CPU memory cannot be measured inside it")
        # libkineto prints two lines on stderr per session; level 6 is above all of its messages.
        # Read when kineto first starts, so set it before that; a user's own setting wins.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False, _ExperimentalConfig())
        activities = {ProfilerActivity.CPU}
        _prepare_profiler(config, activities)
        _enable_profiler(config, activities)

    def sync(self) -> None:
        pass

    def stop(self, m: Measurement, after: Measurement | None) -> None:
        from torch._C._profiler import _EventType, _ExtraFields_Allocation
        from torch.autograd import _disable_profiler

        result = _disable_profiler()
        events = []
        stack = list(result.experimental_event_tree())
        while stack:  # allocations hang under the op that made them
            node = stack.pop()
            f = node.extra_fields
            if node.tag == _EventType.Allocation and isinstance(f, _ExtraFields_Allocation) and f.device.type == "cpu":
                events.append((node.start_time_ns, f.alloc_size, f.ptr))
            stack.extend(node.children)
        events.sort(key=lambda e: e[0])
        known = dict(after.live) if after is not None else {}
        live: dict[int, int] = {}
        total = peak = 0
        for _, size, ptr in events:
            if size > 0:
                live[ptr] = size
                known.pop(ptr, None)  # the address was free again, so an older block there is gone
                total += size
                peak = max(peak, total)
            elif ptr in live:
                total -= live.pop(ptr)
            elif ptr in known:
                total -= known.pop(ptr)
            # else: a block older than this measurement, its size unknown: ignored (see module docstring)
        m.peak_bytes, m.retained_bytes, m.events = peak, total, len(events)
        m.live = {**known, **live}


def slowdown(fn: Callable[[], Any], meter: MemoryMeter, repeats: int = 5) -> dict[str, float]:
    """How much measuring slows `fn` down: median seconds of `repeats` plain calls and of `repeats`
    measured calls (after one warm-up call of each), their ratio, and the median overhead_s."""
    plain, measured, overhead = [], [], []
    for i in range(repeats + 1):
        t = time.perf_counter()
        fn()
        if i:
            plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with meter.measure(enabled=True) as m:
            fn()
        if i:
            measured.append(time.perf_counter() - t)
            overhead.append(m.overhead_s)
    p, q = statistics.median(plain), statistics.median(measured)
    ratio = q / p if p > 0 else math.nan
    return {"plain_s": p, "measured_s": q, "ratio": ratio, "overhead_s": statistics.median(overhead)}
