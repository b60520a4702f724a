"""The backprop-free client shared by the zeroth-order algorithms.

The client part is kept in eval mode with BatchNorm frozen (probes must not move running
statistics), every parameter has `requires_grad=False`, and every forward runs under
`torch.no_grad()`: no autograd graph is ever built on this client.

Its probes are `zo.probe.Prober`'s (functional, inplace or batched: `algorithm.probe`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hosfl_sim.algorithms.fused import FusedClient
from hosfl_sim.algorithms.seed_round import ReplicaClient
from hosfl_sim.algorithms.task import TaskSpec, to_wire
from hosfl_sim.models import freeze_batchnorm, trainable_parameters
from hosfl_sim.zo import ZOUpdater
from hosfl_sim.zo.perturb import SeedList
from hosfl_sim.zo.probe import Prober


def prepare_zo_module(module: torch.nn.Module) -> tuple[list[str], list[torch.nn.Parameter]]:
    """Freeze BN, switch to eval, and return the (names, params) the probes perturb, in order."""
    freeze_batchnorm(module)
    module.eval()
    named = trainable_parameters(module)
    for p in module.parameters():
        p.requires_grad_(False)
    return [n for n, _ in named], [p for _, p in named]


class ZOClient(FusedClient, ReplicaClient):
    """One replica of a seed-updated client part. Records of (seeds, scalars) are applied in
    order through the client optimizer; callers must hand every record exactly once. Its phases may run fused
    (algorithms/fused.py)."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.model = self.split.client.to(self.device)
        self.names, self.params = prepare_zo_module(self.model)
        self.updater = ZOUpdater(self.params, cfg.client_optimizer, cfg.distribution)
        self.prober = Prober(self.model, self.names, self.params, cfg.distribution, cfg.probe)
        self.applied = 0

    def static_optimizer(self) -> torch.optim.Optimizer | None:
        return self.updater.optimizer  # None for plain SGD: no state at all

    def sync(self, records: list[tuple[np.ndarray, np.ndarray]]) -> int:
        for seeds, scalars in records:
            self.updater.apply(seeds, scalars, self.spec.algorithm.mu)
        self.applied += len(records)
        return self.applied

    def forward_at(self, inputs: dict[str, torch.Tensor], seed: int | None = None, scale: float = 0.0) -> torch.Tensor:
        """f_c(theta + scale * u_seed; x); the plain forward when `seed` is None."""
        return self.prober.at(seed, scale, **inputs)

    def probe_outputs(
        self, inputs: dict[str, torch.Tensor], seeds: SeedList, scale: float, batched: bool | None = None
    ) -> Iterator[torch.Tensor]:
        """f_c(theta + scale * u_s; x) for each seed s, in order (zo/probe.py)."""
        return self.prober.outputs(seeds, scale, kwargs=inputs, batched=batched)

    def client_state(self) -> dict[str, np.ndarray]:
        return {k: to_wire(v).copy() for k, v in self.model.state_dict().items()}
