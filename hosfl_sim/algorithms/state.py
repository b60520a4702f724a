"""What both roles share: work accounting (wall time, memory) and their state (checkpoints, snapshots, NaN checks)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from hosfl_sim.memory import Measurement, MemoryMeter

F = TypeVar("F", bound=Callable[..., Any])


def bookkeeping(method: F) -> F:
    """Marks a role method as bookkeeping, not the algorithm's work: the server does not measure its calls."""
    method.bookkeeping = True  # type: ignore[attr-defined]
    return method


class Measured:
    """Work accounting shared by both roles: wall seconds always, memory when the engine asks.

    `work(client_id)` wraps a block of one client's work. Blocks of one client in one round are
    chained: its peak is max over blocks of (bytes its earlier blocks left allocated + the block's
    own peak). `pop_stats()` hands the round's numbers to the engine and starts afresh.
    """

    def _init_measuring(self, device: torch.device) -> None:
        self.meter = MemoryMeter(device if device.type in ("cpu", "cuda") else "cpu")
        self.measuring = False
        self.in_work = False
        self.stats: dict[int | None, dict[str, float]] = {}

    @bookkeeping
    def set_measuring(self, on: bool) -> None:
        self.measuring = bool(on)

    @contextmanager
    def work(self, client_id: int | None = None) -> Iterator[Measurement]:
        outer = not self.in_work  # an inner block is part of the outer one: timed only
        self.in_work = True
        try:
            with self.meter.measure(enabled=self.measuring and outer) as m:
                yield m
        finally:
            self.in_work = not outer
        if not outer:
            return
        s = self.stats.setdefault(client_id, {"peak": 0, "retained": 0, "overhead_s": 0.0})
        if m.peak_bytes is not None and m.retained_bytes is not None:  # measured: both are set
            s["peak"] = max(s["peak"], s["retained"] + m.peak_bytes)
            s["retained"] += m.retained_bytes
            s["overhead_s"] += m.overhead_s

    @bookkeeping
    def pop_stats(self) -> dict:
        """{client_id: {peak_mem_bytes, static_mem_bytes, overhead_s}} for the blocks measured since the last call."""
        static = self.static_memory() if self.measuring else None
        out = {
            cid: {"peak_mem_bytes": static + s["peak"], "static_mem_bytes": static, "overhead_s": s["overhead_s"]}
            for cid, s in self.stats.items()
            if static is not None
        }
        self.stats = {}
        return out

    def static_memory(self) -> int:  # pragma: no cover - each role says what it holds
        raise NotImplementedError


def _cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def _cpu_copy(tree: Any, memo: dict) -> Any:
    """A deep copy of a state tree whose tensors are new CPU tensors (one copy from any device, where
    copy.deepcopy would copy on the device first). Tensors that are one view in `tree` (shared modules) stay
    one tensor in the copy."""
    if isinstance(tree, torch.Tensor):
        key = (tree.data_ptr(), tree.device, tree.dtype, tuple(tree.shape), tree.stride())
        if key not in memo:
            memo[key] = tree.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(tree, dict):
        return {k: _cpu_copy(v, memo) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu_copy(v, memo) for v in tree)
    return copy.deepcopy(tree)


class RoleState:
    """A role's state: what its `state()` declares (modules, optimizers, ZO updaters: anything with a state_dict),
    plus its process's torch RNG. Per-round objects (a client's copy in flight, the server copies of SplitFed-V1)
    are gone between rounds and not part of it. Modules that share tensors are saved under each name; torch.save
    stores the shared storage once.
    """

    stats: dict[int | None, dict[str, float]]  # the work measured since the last pop (Measured's)

    def state(self) -> dict[str, Any]:
        """{name: object with state_dict / load_state_dict} of everything in this role that outlives a round."""
        raise NotImplementedError(f"{type(self).__name__} declares no state()")

    def state_dicts(self) -> dict[str, Any]:
        """The declared objects' state dicts (a role with state of another kind adds it here)."""
        return {name: v.state_dict() for name, v in self.state().items()}

    @bookkeeping
    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain values; it may share tensors with the live role (as torch's state_dict does)."""
        return {"attrs": _cpu(self.state_dicts()), "torch_rng": torch.get_rng_state()}

    @bookkeeping
    def load_state_dict(self, state: dict[str, Any]) -> None:
        attrs = self.state()
        if set(attrs) != set(state["attrs"]):
            raise ValueError(f"{type(self).__name__}: state holds {sorted(state['attrs'])}, the role {sorted(attrs)}")
        for name, value in state["attrs"].items():
            attrs[name].load_state_dict(value)
        torch.set_rng_state(state["torch_rng"])

    @bookkeeping
    def snapshot(self) -> None:
        """Keep a copy of the state in this process (the start of a round, so the round can be run again)."""
        self._snapshot = {"attrs": _cpu_copy(self.state_dicts(), {}), "torch_rng": torch.get_rng_state()}

    @bookkeeping
    def restore(self) -> None:
        """Back to the last snapshot; measurements of the abandoned work are dropped."""
        self.load_state_dict(_cpu_copy(self._snapshot, {}))  # a copy: optimizers may adopt the loaded tensors
        self.stats = {}

    @bookkeeping
    @torch.no_grad()
    def nonfinite(self) -> str | None:
        """The first floating parameter or buffer holding a NaN or Inf (`attribute.name`), or None."""
        named = [
            (f"{name}.{key}", t)
            for name, v in self.state().items()
            if isinstance(v, nn.Module)
            for key, t in itertools.chain(v.named_parameters(), v.named_buffers())
            if t.is_floating_point()
        ]
        # A NaN or Inf makes a tensor's sum non-finite, so finite sums clear every tensor with one check per
        # device; a sum that overflowed, or a real NaN/Inf, is looked at tensor by tensor.
        sums: dict[torch.device, list[torch.Tensor]] = {}
        for _, t in named:
            sums.setdefault(t.device, []).append(t.sum(dtype=torch.float32))
        if all(bool(torch.isfinite(torch.stack(s)).all()) for s in sums.values()):
            return None
        return next((key for key, t in named if not bool(torch.isfinite(t).all())), None)

    @bookkeeping
    def end_round(self, snapshot: bool) -> str | None:
        """A round's end in one call: `nonfinite()`, and with `snapshot` a snapshot, which is the next round's
        starting state as long as nothing changes the state before that round (evaluation does not)."""
        bad = self.nonfinite()
        if snapshot:
            self.snapshot()
        return bad
