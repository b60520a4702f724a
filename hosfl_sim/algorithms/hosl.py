"""HOSL (Aakriti, Li, Liang, Huang, Li and Yang, "HOSL: Hybrid-Order Split Learning for Memory-Constrained Edge
Training", arXiv 2601.10940): zeroth-order client, first-order server, no auxiliary network.

The client's estimate comes from the server's loss on perturbed activations, so scalars come down (as in SFL-ZO),
while the server trains its part by backprop (as in HO-SFL). Per local step, for the K sampled clients, all with
the round's Q = `perturbations` seeds:
  client  a_0 = f_c(theta_c; x), a_q = f_c(theta_c + mu u_q; x), q = 1..Q  -> Q + 1 activations, y up
  server  s_q = l(f_s(a_q), y) - l(f_s(a_0), y)   (theta_s as it stands, no graph)
          l(f_s(a_0), y) mean over the K clients, backward, one server step (first-order)
  server  s_bar = mean_k s                          -> (seeds, s_bar) down to everyone
  every replica: theta_c <- opt(theta_c, (1 / (Q mu)) sum_q s_bar_q u_q)
As in HO-SFL and SFL-ZO, the K clients keep one shared client part, a replica updated from the (seeds, s_bar)
records (replayed when stale), so no weights move. Routing, barriers and the clock are the seed-and-scalar
round's (seed_round.py).

How it differs from its neighbours here: SFL-ZO perturbs the server part too and steps it by ZO differences
(two-sided, 2Q activations); HO-SFL sends the cut gradient down and has the client form <f_c(theta + mu u) - a, g>
itself (a first-order model of the server's loss). HOSL evaluates the true server loss on the perturbed
activations and steps the server first-order: neither, so it is its own method.

Interpretations where the paper leaves a detail open:
- the paper's split learning pairs one client with the server; with K clients a step, they run in lock step on
  shared seeds and the server averages their differences (= averaging their ZO gradients) and their losses
  (its first-order step is on the mean loss), as the other seed-and-scalar methods here;
- the difference is one-sided (forward difference from the unperturbed activations, which also feed the server's
  first-order step): Q + 1 client forwards a step, not 2Q;
- the Q + 1 losses of the differences are taken with the server part in eval mode (no dropout, BatchNorm on its
  running statistics), so all see one function; its first-order step runs in train mode. The server counts
  3 forwards (forward + backward) plus Q + 1 for the differences;
- the differences use theta_s before the step (the step comes after every kept client's losses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.replay import mean_scalars
from hosfl_sim.algorithms.routing import make_plan, planned
from hosfl_sim.algorithms.seed_round import ReplicaServer, SeedBasedAlgorithm, Step
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_wire
from hosfl_sim.algorithms.zo_client import ZOClient, prepare_zo_module
from hosfl_sim.comm.messages import Activations, Labels
from hosfl_sim.zo import ZOUpdater, make_optimizer


class HOSLClient(ZOClient):
    @torch.no_grad()
    def probe(self, records: list, client_id: int, rnd: int, step: int, seeds: np.ndarray) -> tuple[dict, dict]:
        """a_0 and the Q perturbed activations, up with y (after the records its replica missed)."""
        with self.work(client_id) as t:
            self.sync(records)
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            acts = [to_wire(self.forward_at(x))]
            acts += [to_wire(out) for out in self.probe_outputs(x, seeds, self.spec.algorithm.mu)]
            upload = {"a": np.stack(acts), "side": self.side_inputs(feats), "y": labels}  # (Q + 1, B, ...)
        meta = {
            "act": Activations.of(upload["a"], [upload["side"]] * len(acts)),  # each activation with its side
            "labels": Labels.of(labels),
            "samples": len(labels),
            "compute_s": t.seconds,
            "flops": len(acts) * self.forward_flops(x),
        }
        return upload, meta


class HOSLServer(ReplicaServer):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.client_updater = ZOUpdater(prepare_zo_module(self.client)[1], cfg.client_optimizer, cfg.distribution)
        self.server.train()
        self.params = [p for p in self.server.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg.server_optimizer)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "client_updater": self.client_updater, "optimizer": self.optimizer}

    @torch.no_grad()
    def differences(self, up: dict, y: torch.Tensor) -> np.ndarray:
        """s_q = l(f_s(a_q), y) - l(f_s(a_0), y) with the server part in eval mode."""
        self.server.eval()
        try:
            losses = [float(self.loss(self.server_forward(self.activation(a), up["side"]), y)) for a in up["a"]]
        finally:
            self.server.train()
        return (np.array(losses[1:]) - losses[0]).astype(np.float32)

    def activation(self, a: np.ndarray) -> torch.Tensor:
        return from_wire(a, self.device, self.spec.dtype)

    def train_step(self, plan: list[tuple[int, int]], *groups: list[dict]) -> tuple[list[np.ndarray], dict]:
        """Each planned client's Q differences, then one first-order step on the mean loss of their a_0."""
        uploads = planned(plan, groups)
        self.optimizer.zero_grad(set_to_none=True)
        diffs, losses, flops = [], [], 0
        for up in uploads:
            y, a = tensor(up["y"], self.device), self.activation(up["a"][0])
            diffs.append(self.differences(up, y))
            loss = self.loss(self.server_forward(a, up["side"]), y)
            (loss / len(uploads)).backward()
            losses.append(loss.item())
            flops += (3 + len(up["a"])) * self.forward_flops(a, up["side"])  # step ~ 3 forwards, Q + 1 evaluations
        self.optimizer.step()
        return diffs, {"losses": losses, "flops": flops}

    def aggregate(self, seeds: np.ndarray, diffs: list[np.ndarray]) -> np.ndarray:
        """s_bar, applied to the server's copy of the client part as every replica applies it."""
        s_bar = mean_scalars(diffs)
        self.client_updater.apply(seeds, s_bar, self.spec.algorithm.mu)
        return s_bar


@register
class HOSL(SeedBasedAlgorithm):
    name = "hosl"
    summary = (
        "HOSL: client zeroth-order (Q forward probes, no backprop), server first-order with the loss differences "
        "of the perturbed activations; up: Q + 1 activations per step, labels; down: Q seeds + Q averaged loss "
        "differences (replayed when stale)"
    )
    client_role = HOSLClient
    server_role = HOSLServer
    options = frozenset({"client_optimizer", "server_optimizer", "perturbations", "mu", "distribution", "probe"})
    supports_policies = True

    def local_step(self, s: Step, active: list[int]) -> list[int]:
        groups, calls = self.to_workers(s, active, HOSLClient.probe, s.round, s.index, s.seeds)
        uploads = [calls[w][0] for w in groups]

        def server_step(kept: list[int]) -> tuple[Any, Any]:
            diffs, smeta = s.calls.server(HOSLServer.train_step, make_plan(kept, groups), *uploads, num_returns=2)
            return s.calls.server(HOSLServer.aggregate, s.seeds, diffs), smeta

        active, sent, metas = self.around_barrier(s, active, server_step, self.uploads_read(s, groups, calls, active))
        if not active:
            return active
        s_bar, smeta = s.calls.get(list(sent))
        s.clock.server_batch(active, smeta["flops"])
        for cid, loss in zip(active, smeta["losses"]):
            s.records[cid].train_loss = loss
        s.losses.extend(smeta["losses"])
        self.close_step(s, s_bar, active, metas)
        return active
