"""Clients fused (`runtime.fuse_clients`): the clients a worker serves in a phase as ONE batched forward.

The seed-and-scalar clients (HO-SFL, SFL-ZO, ZO-FL) of a worker all hold the same replica and, within a step, probe
the same seeds: the K anchors of a step and the K forwards of each probe direction are one model on K batches, so a
worker concatenates its clients' batches, runs each forward once and splits the output by client. Each client's
scalars are computed from its own rows, exactly as on its own; the ledger, the clock and the records stay per
client, and the perturbation seeds are the step's, as without fusion.

Exactness: these clients run their part in eval mode with BatchNorm frozen (`prepare_zo_module`), so every output
row depends on its own input row only, and fused = per-client up to float rounding (a kernel may block a bigger
batch differently). A part with BatchNorm in train mode would normalise over the fused batch: it is refused with a
ConfigError. Inputs that cannot be concatenated (other trailing shapes or dtypes) are served client by client.

Measured wall time of a fused block is shared out by rows; a measured memory peak is the block's, charged to the
worker's first client. `auto` fuses on CUDA only. On this project's CPU fusion measured faster too (README,
bench/fused_round.py: a worker draws each direction once, not once per client), but the CPU default stays the
per-client path, which keeps per-client memory peaks and the exact numbers the golden files pin.

`runtime.fuse_server` batches HO-SFL's server step the same way (HOSFLServer.batched_backward), off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hosfl_sim.algorithms.roles import ClientRole
from hosfl_sim.config import ConfigError

Inputs = dict[str, torch.Tensor]


def fusing(setting: bool | str, device: torch.device) -> bool:
    """Whether `runtime.fuse_clients` fuses on `device` ("auto": on CUDA, where it is measured faster)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def check_batch_independent(module: nn.Module, field: str = "runtime.fuse_clients") -> None:
    """Refuse a module whose output rows depend on the other rows of the batch (BatchNorm in train mode), or whose
    random draws depend on the batch's shape (dropout in train mode)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if any(isinstance(m, kinds) and m.training and getattr(m, "p", 1.0) > 0 for m in module.modules()):
        raise ConfigError(field, True, "false for a model with BatchNorm or dropout in train mode")


def fusable(inputs: Sequence[Inputs]) -> bool:
    """Whether these batches concatenate: two or more, same keys, same dtypes and trailing shapes."""
    if len(inputs) < 2:
        return False
    first = inputs[0]
    return all(
        x.keys() == first.keys()
        and all(x[k].dtype == v.dtype and x[k].shape[1:] == v.shape[1:] for k, v in first.items())
        for x in inputs[1:]
    )


def concat(inputs: Sequence[Inputs]) -> Inputs:
    """The batches as one, in order along dim 0."""
    return {k: torch.cat([x[k] for x in inputs]) for k in inputs[0]}


def rows(inputs: Sequence[Inputs]) -> list[int]:
    """Each batch's number of rows."""
    return [len(next(iter(x.values()))) for x in inputs]


def shares(seconds: float, sizes: list[int]) -> list[float]:
    """A fused block's seconds shared out by rows."""
    total = sum(sizes)
    return [seconds * n / total for n in sizes]


class FusedClient(ClientRole):
    """A client role whose phases (`each`, `each_of`) may run fused: `fused_phases` maps a per-client method's name
    to the role's method that serves a worker's clients at once (same arguments as `each` / `each_of` pass on, same
    returns). The driver names the per-client method either way; fusion is the worker's choice."""

    fused_phases: ClassVar[dict[str, str]] = {}
    model: nn.Module  # what the fused forwards run

    def fused(self, method: Callable[..., Any], client_ids: list[int]) -> Callable[..., tuple] | None:
        """The fused form of `method` where fusion is on and there is more than one client, else None. A subclass
        that overrides `method` without its own fused form runs it client by client."""
        name = self.fused_phases.get(method.__name__)
        if name is None or len(client_ids) < 2 or not fusing(self.spec.fuse_clients, self.device):
            return None
        fused = getattr(self, name)
        if fused.__qualname__.split(".")[0] != method.__qualname__.split(".")[0]:  # defined by different classes
            return None
        check_batch_independent(self.model)
        return fused

    def each(self, method: Callable[..., tuple[Any, Any]], records: list, client_ids: list[int], *args: Any) -> tuple:
        fused = self.fused(method, client_ids)
        return fused(records, client_ids, *args) if fused else super().each(method, records, client_ids, *args)

    def each_of(self, method: Callable[..., tuple[Any, Any]], client_ids: list[int], values: list, *args: Any) -> tuple:
        fused = self.fused(method, client_ids)
        return fused(client_ids, values, *args) if fused else super().each_of(method, client_ids, values, *args)
