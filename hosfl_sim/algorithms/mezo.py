"""MeZO: centralized zeroth-order training of the joined model, in place, z never stored.

Runs on the server role (the client workers hold nothing); nothing crosses a network, so nothing is
charged. A round processes the same mini-batches, in number and size, as the centralized first-order
reference (`centralized.global_batch`), one MeZO step per mini-batch with P directions:
  for p in 1..P:  w += mu z_p;  l+ = l(w)          (z_p regenerated from seed p by an explicit generator)
                  w -= 2 mu z_p; l- = l(w)
                  w += mu z_p                       (back to w, up to float rounding, as in MeZO)
                  s_p = (l+ - l-) / 2
  w <- opt(w, (1 / (P mu)) sum_p s_p z_p)           (ZOUpdater regenerates each z_p once more)
BatchNorm is frozen and the model kept in eval mode (probes must not move running statistics).
The optimizer is `server_optimizer`. Simulated clock: the round lasts the server's compute, 2P forwards of the
joined model per mini-batch at `system.server_flops` (the update does no forward); no client is in the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hosfl_sim.algorithms.centralized import Centralized, GlobalBatchServer
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.task import TaskSpec
from hosfl_sim.algorithms.zo_client import prepare_zo_module
from hosfl_sim.models import JoinedModel
from hosfl_sim.zo import ZOUpdater, derive_seeds, perturb_


class MeZOServer(GlobalBatchServer):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.model = JoinedModel(self.split)  # the same modules as self.client / self.server
        _, self.params = prepare_zo_module(self.model)
        self.updater = ZOUpdater(self.params, cfg.server_optimizer, cfg.distribution)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "model": self.model, "updater": self.updater}

    @torch.no_grad()
    def loss_at(self, x: dict[str, torch.Tensor], y: torch.Tensor) -> float:
        return float(self.loss(self.model(**x), y))

    @torch.no_grad()
    def step(self, x: dict[str, torch.Tensor], y: torch.Tensor, seeds: np.ndarray) -> float:
        """One MeZO step on (x, y); returns the mean of the probed losses."""
        cfg = self.spec.algorithm
        mu, dist = cfg.mu, cfg.distribution
        s = np.empty(len(seeds), dtype=np.float32)
        losses = []
        for i, seed in enumerate(int(v) for v in seeds):
            perturb_(self.params, seed, mu, dist)
            plus = self.loss_at(x, y)
            perturb_(self.params, seed, -2.0 * mu, dist)
            minus = self.loss_at(x, y)
            perturb_(self.params, seed, mu, dist)
            s[i] = (plus - minus) / 2.0
            losses.append(0.5 * (plus + minus))
        self.updater.apply(seeds, s, mu)
        return float(np.mean(losses))

    def batch_step(self, x: dict[str, torch.Tensor], y: torch.Tensor, round_idx: int, index: int) -> float:
        return self.step(x, y, derive_seeds(self.spec.seed, round_idx, index, self.spec.algorithm.perturbations))

    def forwards_per_step(self) -> float:
        return 2 * self.spec.algorithm.perturbations  # l+ and l- per direction; the update does no forward


@register
class MeZO(Centralized):  # the same round: the server trains on the round's global mini-batches
    name = "mezo"
    summary = (
        "MeZO: centralized zeroth-order (in-place +mu/-2mu/+mu probes, P directions) on the joined model, "
        "run on the server, nothing first-order; nothing crosses a network"
    )
    server_role = MeZOServer
    options = frozenset({"server_optimizer", "perturbations", "mu", "distribution"})
