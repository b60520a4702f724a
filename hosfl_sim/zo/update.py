"""Apply a zeroth-order estimate given only (seeds, scalars) to a set of parameters.

The estimate is  g_hat = (1 / (P * mu)) * sum_p  s_p * u_p  with u_p regenerated from seed p.
Every replica that applies the same (seeds, scalars) records in the same order ends up
bit-identical: that is what makes HO-SFL's aggregation dimension-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hosfl_sim.config import OptimizerConfig
from hosfl_sim.zo.perturb import directions


def make_optimizer(params: Sequence[torch.Tensor], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The torch optimizer a config names (foreach off: the same kernels on every device count)."""
    params = list(params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay, foreach=False
        )
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=False)


class ZOUpdater:
    """Owns the optimizer of a set of parameters that are trained from (seeds, scalars) only.

    Plain SGD without momentum applies each direction straight to the weights and never
    allocates a gradient buffer; any other optimizer gets the estimate in `.grad`, steps, and
    drops `.grad` again. Callers must pass the same parameter order on every replica.
    """

    def __init__(self, params: Sequence[torch.Tensor], cfg: OptimizerConfig, distribution: str = "gaussian"):
        self.params = list(params)
        self.cfg = cfg
        self.distribution = distribution
        self.buffer_free = cfg.name == "sgd" and cfg.momentum == 0.0
        self.optimizer = None if self.buffer_free else make_optimizer(self.params, cfg)

    @torch.no_grad()
    def apply(self, seeds: np.ndarray, scalars: np.ndarray, mu: float) -> None:
        coefs = np.asarray(scalars, dtype=np.float64) / (len(seeds) * mu)
        if self.buffer_free:
            lr, wd = self.cfg.lr, self.cfg.weight_decay
            if wd:
                for p in self.params:
                    p.mul_(1.0 - lr * wd)
            for seed, c in zip(seeds, coefs):
                for p, u in zip(self.params, directions(self.params, int(seed), self.distribution)):
                    p.add_(u, alpha=-lr * float(c))
            return
        grads = [torch.zeros_like(p) for p in self.params]
        for p, g in zip(self.params, grads):
            p.grad = g
        for seed, c in zip(seeds, coefs):
            for g, u in zip(grads, directions(self.params, int(seed), self.distribution)):
                g.add_(u, alpha=float(c))
        assert self.optimizer is not None  # every optimizer but buffer-free SGD
        self.optimizer.step()
        for p in self.params:
            p.grad = None

    def flops(self, num_seeds: int) -> int:
        """FLOPs of one `apply` of `num_seeds` directions: a multiply-add per parameter per direction (drawing the
        directions and the optimizer's own arithmetic are not counted)."""
        return 2 * num_seeds * sum(p.numel() for p in self.params)

    def state_dict(self) -> dict:
        return {} if self.optimizer is None else self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None and state:
            self.optimizer.load_state_dict(state)


def estimate(params: Sequence[torch.Tensor], seeds: np.ndarray, scalars: np.ndarray, mu: float, distribution: str):
    """g_hat as explicit tensors (for tests and analysis; the training path never builds it)."""
    out = [torch.zeros_like(p) for p in params]
    for seed, s in zip(seeds, scalars):
        for g, u in zip(out, directions(params, int(seed), distribution)):
            g.add_(u, alpha=float(s) / (len(seeds) * mu))
    return out
