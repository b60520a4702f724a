"""SFL-ZO as the paper's code runs it ("ZO-SFL" in its language table): SplitFed-V1 with zeroth-order steps.

Each sampled client trains its own copy of the client part and the server its own copy of the server part
(fresh AdamW on both, every round), for `local_steps` or `local_epochs`; then both sides are FedAvg'd by
partition size, as SplitFed-V1. One local step, with P directions (u_p on the client, v_p on the server, each
from its own seed stream; seeds never travel):
  client  a_p+ = f_c(theta_c + mu u_p; x), a_p- = f_c(theta_c - mu u_p; x), p = 1..P   -> 2P activations, y up
  server  l_p+ = l(f_s(theta_s + mu v_p; a_p+), y), l_p- = l(f_s(theta_s - mu v_p; a_p-), y)
          s_p = (l_p+ - l_p-) / 2; theta_s <- opt(theta_s, sum_p s_p v_p / (P mu))   -> s (P floats) down
  client  theta_c <- opt(theta_c, sum_p s_p u_p / (P mu))
That is the joint two-sided estimate ((l+ - l-) / (2 mu P)) (u, v) of the authors' runner, with the perturbation
spanning both sides. Nothing builds an autograd graph; BatchNorm is frozen on both sides (probes must not move
running statistics). `sfl_zo` is the other shape: one shared client model, averaged loss differences.

Ledger and clock as MU-SplitFed's (this module subclasses it): per step 2P activations up with the labels, P
scalars down; the client part and the server copies travel as SplitFed-V1's do.
"""

from __future__ import annotations

import numpy as np
import torch

from hosfl_sim.algorithms.mu_splitfed import CLIENT_SIDE, SERVER_SIDE, MUSplitFed, MUSplitFedClient, MUSplitFedServer
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_tensors, to_wire
from hosfl_sim.comm.messages import Activations, Labels, Scalars
from hosfl_sim.zo import derive_seeds


class SFLZOV1Client(MUSplitFedClient):
    """MU-SplitFed's client with P directions a step: a client's P seeds wait in `seeds_of` for its update."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.seeds_of: dict[int, np.ndarray] = {}

    def forget(self, client_id: int) -> None:
        super().forget(client_id)
        self.seeds_of.pop(client_id, None)

    @torch.no_grad()
    def probe(self, client_id: int, rnd: int, step: int) -> tuple[dict, dict]:
        cfg = self.spec.algorithm
        with self.work(client_id) as t:
            part = self.local[client_id]
            seeds = derive_seeds(self.spec.seed, rnd, step, cfg.perturbations, stream=2 * client_id + CLIENT_SIDE)
            self.seeds_of[client_id] = seeds
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            outs = [part.forward_at(cfg, int(s), sign * cfg.mu, **x) for s in seeds for sign in (1, -1)]
            acts = np.stack([to_wire(v) for v in outs])  # (2P, B, ...): a_1+, a_1-, a_2+, ...
            upload = {"a": acts, "side": self.side_inputs(feats), "y": labels}
        meta = {
            "act": Activations.of(upload["a"], [upload["side"]] * len(outs)),
            "labels": Labels.of(labels),
            "samples": len(labels),
            "compute_s": t.seconds,
            "flops": len(outs) * self.forward_flops(x),
        }
        return upload, meta

    def update(self, client_id: int, s: np.ndarray) -> dict:
        with self.work(client_id) as t:
            seeds = self.seeds_of.pop(client_id)
            self.local[client_id].updater.apply(seeds, s, self.spec.algorithm.mu)
        return {"compute_s": t.seconds}


class SFLZOV1Server(MUSplitFedServer):
    @torch.no_grad()
    def step(self, client_id: int, rnd: int, step: int, upload: dict) -> tuple[np.ndarray, dict]:
        """The P loss differences on copy k, its step, and the differences for the client (P float32)."""
        cfg = self.spec.algorithm
        part = self.copies[client_id]
        acts = [from_wire(a, self.device, self.spec.dtype) for a in upload["a"]]  # 2P x (B, ...)
        y = tensor(upload["y"], self.device)
        side = to_tensors(upload["side"], self.device)
        seeds = derive_seeds(self.spec.seed, rnd, step, cfg.perturbations, stream=2 * client_id + SERVER_SIDE)
        losses = [
            float(self.loss(part.forward_at(cfg, int(seed), sign * cfg.mu, a, **side), y))
            for seed, pair in zip(seeds, zip(acts[0::2], acts[1::2]))
            for sign, a in zip((1, -1), pair)
        ]
        s = np.array([(lp - lm) / 2.0 for lp, lm in zip(losses[0::2], losses[1::2])], np.float32)
        part.updater.apply(seeds, s, cfg.mu)
        flops = len(acts) * self.forward_flops(acts[0], upload["side"])
        return s, {"loss": float(np.mean(losses)), "scalars": Scalars.of(s), "flops": flops}


@register
class SFLZOV1(MUSplitFed):
    name = "sfl_zo_v1"
    summary = (
        "SFL-ZO as the paper's code: SplitFed-V1 copies trained zeroth-order on both sides (joint two-sided "
        "estimate, P directions), local steps or epochs; up: 2P activations per step, labels, client weights; "
        "down: P scalars per step, client weights; server copies charged on the main-server <-> fed-server link"
    )
    client_role = SFLZOV1Client
    server_role = SFLZOV1Server
    options = frozenset({"client_optimizer", "server_optimizer", "perturbations", "mu", "distribution", "probe"})
    supports_policies = True
    supports_epochs = True

    def aggregation(self, kept: list[int]) -> tuple[np.ndarray, float]:
        """SplitFed-V1's FedAvg: weighted by partition size, the average replaces the global parts."""
        return self.client_sizes[np.array(kept, dtype=np.int64)], 1.0
