"""The one probe: a module's output at theta + scale * u_seed, for every zeroth-order method here.

How a probe perturbs the parameters (`algorithm.probe`):
- "functional": theta + scale * u is written over the parameters from a saved copy of theta, which is copied
  back after the forward: theta returns bit-exact; costs one copy of the weights. (The numbers of
  `torch.func.functional_call` on `perturbed_copies`, without its per-call cost.)
- "inplace": MeZO's p += scale * u, forward, p -= scale * u: no copy at all, but theta drifts by rounding.
- "batched": the probes go through one `torch.func.vmap`ped forward, up to PROBE_CHUNK at a time (one copy of the
  weights per probe of a chunk); a module vmap cannot batch falls back to "functional", with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from hosfl_sim.zo.perturb import SeedList, perturb_, set_perturbed_, stacked_perturbations

log = logging.getLogger(__name__)

PROBE_CHUNK = 8  # most probes one vmapped forward evaluates ("batched")


class Prober:
    """Forwards of `module` with its `params` (named `names`, in order) perturbed along seeded directions."""

    def __init__(
        self, module: nn.Module, names: list[str], params: Sequence[torch.Tensor], distribution: str, kind: str
    ):
        self.module, self.names, self.params = module, names, params
        self.distribution, self.kind = distribution, kind
        self.vmap_ok = True

    @torch.no_grad()
    def at(self, seed: int | None, scale: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """module(theta + scale * u_seed; *args, **kwargs); the plain forward when `seed` is None."""
        if seed is None:
            return self.module(*args, **kwargs)
        return next(self.outputs([seed], scale, args, kwargs, batched=False))

    @torch.no_grad()
    def outputs(
        self,
        seeds: SeedList,
        scale: float,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        batched: bool | None = None,
    ) -> Iterator[torch.Tensor]:
        """The output at theta + scale * u_s for each seed s, in order (`batched` overrides whether to vmap).
        Outputs are the caller's to modify; whenever the caller holds control the parameters are theta
        (bit-exact, except under "inplace")."""
        kwargs = kwargs or {}
        if batched is None:
            batched = self.kind == "batched"
        if batched and self.vmap_ok:
            yield from self._batched(seeds, scale, args, kwargs)
        elif self.kind == "inplace":
            for seed in seeds:
                perturb_(self.params, int(seed), scale, self.distribution)
                out = self.module(*args, **kwargs)
                perturb_(self.params, int(seed), -scale, self.distribution)
                yield out
        else:
            theta = [p.clone() for p in self.params]
            for seed in seeds:
                try:
                    set_perturbed_(self.params, theta, int(seed), scale, self.distribution)
                    out = self.module(*args, **kwargs)
                finally:
                    for p, t in zip(self.params, theta):
                        p.copy_(t)
                yield out

    def _batched(self, seeds: SeedList, scale: float, args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
        named = dict(zip(self.names, self.params))

        def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.module, params, args=args, kwargs=kwargs)

        for start in range(0, len(seeds), PROBE_CHUNK):
            chunk = seeds[start : start + PROBE_CHUNK]
            stacked = stacked_perturbations(named, chunk, scale, self.distribution)
            try:
                outs = vmap(forward)(stacked)  # (chunk, B, ...)
            except Exception as e:  # a model vmap cannot batch (data-dependent control flow, ...)
                log.warning("batched probes unavailable for this module (%s); probing sequentially", e)
                self.vmap_ok = False
                yield from self.outputs(seeds[start:], scale, args, kwargs, batched=False)
                return
            del stacked
            yield from outs.unbind(0)
