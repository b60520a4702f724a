"""The backprop-free client shared by the zeroth-order algorithms.

The client part is kept in eval mode with BatchNorm frozen (probes must not move running
statistics), every parameter has `requires_grad=False`, and every forward runs under
`torch.no_grad()`: no autograd graph is ever built on this client.

How a probe perturbs the client (`algorithm.probe`):
- "functional": theta + mu u is written over the parameters from a saved copy of theta, which is
  copied back after the forward: theta returns bit-exact; costs one copy of the weights.
  (Same numbers as `torch.func.functional_call` on `perturbed_copies`, without its per-call cost.)
- "inplace": MeZO's p += mu u, forward, p -= mu u: no copy at all, but theta drifts by rounding.
- "batched": the probes of `probe_outputs` go through one `torch.func.vmap`ped forward, up to
  PROBE_CHUNK at a time: that many copies of the weights and of one forward's activations.
  Faster only where per-op overhead dominates (tiny client parts; see README, Performance).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap

from hosfl_sim.algorithms.roles import ClientRole
from hosfl_sim.algorithms.task import TaskSpec, to_wire
from hosfl_sim.models import freeze_batchnorm, trainable_parameters
from hosfl_sim.zo import ZOUpdater, perturb_
from hosfl_sim.zo.perturb import set_perturbed_, stacked_perturbations

log = logging.getLogger(__name__)

PROBE_CHUNK = 8  # most probes one vmapped forward evaluates ("batched")


def prepare_zo_module(module: torch.nn.Module) -> tuple[list[str], list[torch.nn.Parameter]]:
    """Freeze BN, switch to eval, and return the (names, params) the probes perturb, in order."""
    freeze_batchnorm(module)
    module.eval()
    named = trainable_parameters(module)
    for p in module.parameters():
        p.requires_grad_(False)
    return [n for n, _ in named], [p for _, p in named]


class ZOClient(ClientRole):
    """One replica of a seed-updated client part. Records of (seeds, scalars) are applied in
    order through the client optimizer; callers must hand every record exactly once."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.model = self.split.client.to(self.device)
        self.names, self.params = prepare_zo_module(self.model)
        self.updater = ZOUpdater(self.params, cfg.client_optimizer, cfg.distribution)
        self.applied = 0

    def static_optimizer(self) -> torch.optim.Optimizer | None:
        return self.updater.optimizer  # None for plain SGD: no state at all

    def sync(self, records: list[tuple[np.ndarray, np.ndarray]]) -> int:
        for seeds, scalars in records:
            self.updater.apply(seeds, scalars, self.spec.algorithm.mu)
        self.applied += len(records)
        return self.applied

    @torch.no_grad()
    def forward_at(self, inputs: dict[str, torch.Tensor], seed: int | None = None, scale: float = 0.0) -> torch.Tensor:
        """f_c(theta + scale * u_seed; x); the plain forward when `seed` is None."""
        if seed is None:
            return self.model(**inputs)
        return next(self.probe_outputs(inputs, [seed], scale, batched=False))

    @torch.no_grad()
    def probe_outputs(
        self, inputs: dict[str, torch.Tensor], seeds: Sequence[int], scale: float, batched: bool | None = None
    ) -> Iterator[torch.Tensor]:
        """f_c(theta + scale * u_s; x) for each seed s, in order, with the configured probe kind (`batched`
        overrides whether to vmap). Outputs are the caller's to modify; whenever the caller holds control
        the parameters are theta (bit-exact, except under "inplace")."""
        cfg = self.spec.algorithm
        if batched is None:
            batched = cfg.probe == "batched"
        if batched and getattr(self, "_vmap_ok", True):
            yield from self._batched_outputs(inputs, seeds, scale)
        elif cfg.probe == "inplace":
            for seed in seeds:
                perturb_(self.params, int(seed), scale, cfg.distribution)
                out = self.model(**inputs)
                perturb_(self.params, int(seed), -scale, cfg.distribution)
                yield out
        else:
            theta = [p.clone() for p in self.params]
            for seed in seeds:
                try:
                    set_perturbed_(self.params, theta, int(seed), scale, cfg.distribution)
                    out = self.model(**inputs)
                finally:
                    for p, t in zip(self.params, theta):
                        p.copy_(t)
                yield out

    def _batched_outputs(
        self, inputs: dict[str, torch.Tensor], seeds: Sequence[int], scale: float
    ) -> Iterator[torch.Tensor]:
        named = dict(zip(self.names, self.params))

        def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.model, params, args=(), kwargs=inputs)

        for start in range(0, len(seeds), PROBE_CHUNK):
            chunk = seeds[start : start + PROBE_CHUNK]
            stacked = stacked_perturbations(named, chunk, scale, self.spec.algorithm.distribution)
            try:
                outs = vmap(forward)(stacked)  # (chunk, B, ...)
            except Exception as e:  # a model vmap cannot batch (data-dependent control flow, ...)
                log.warning("batched probes unavailable for this client part (%s); probing sequentially", e)
                self._vmap_ok = False
                yield from self.probe_outputs(inputs, seeds[start:], scale, batched=False)
                return
            del stacked
            yield from outs.unbind(0)

    def client_state(self) -> dict[str, np.ndarray]:
        return {k: to_wire(v).copy() for k, v in self.model.state_dict().items()}
