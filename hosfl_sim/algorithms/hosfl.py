"""HO-SFL: first-order server, zeroth-order client on a frozen linear surrogate, P-scalar aggregation.

One local step, for the K sampled clients (all use the same P seeds):
  client  a = f_c(theta_c; x)                              -> a, y up          (no graph)
  server  loss(f_s(a), y), backward; one optimizer step   -> g = dl/da down
  client  v_p = <f_c(theta_c + mu u_p; x) - a, g>, p=1..P  -> v up             (P forwards)
  server  v_bar = mean_k v                                 -> (seeds, v_bar) down to everyone
  every replica: theta_c <- opt(theta_c, (1 / (P mu)) sum_p v_bar_p u_p)
The driver averages, as the server's control logic (routing and barriers: seed_round.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hosfl_sim.algorithms.fused import check_batch_independent, concat, fusable, rows, shares
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.replay import mean_scalars
from hosfl_sim.algorithms.roles import ClientRole
from hosfl_sim.algorithms.routing import by_group, by_worker, in_client_order, make_plan, planned
from hosfl_sim.algorithms.seed_round import ReplicaServer, SeedBasedAlgorithm, Step
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_tensors, to_wire
from hosfl_sim.algorithms.zo_client import ZOClient, prepare_zo_module
from hosfl_sim.comm.messages import Activations, CutGrad, Labels, Scalars
from hosfl_sim.zo import ZOUpdater, make_optimizer


class HOSFLClient(ZOClient):
    fused_phases = {"anchor": "fused_anchors", "probe": "fused_probes"}  # runtime.fuse_clients (fused.py)

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.pending: dict[int, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}  # (x, a) until its probes

    def forget(self, client_id: int) -> None:
        self.pending.pop(client_id, None)

    @torch.no_grad()
    def anchor(self, records: list, client_id: int, rnd: int, step: int) -> tuple[dict, dict]:
        """a = f_c(theta_c; x) on the client's batch, up with y (after the records its replica missed)."""
        with self.work(client_id) as t:
            self.sync(records)
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            a = self.forward_at(x)  # (B, ...) smashed data
            up, meta = self.upload(client_id, x, a, feats, labels)
        return up, {**meta, "compute_s": t.seconds}

    def upload(self, client_id: int, x: dict, a: torch.Tensor, feats: dict, labels: np.ndarray) -> tuple[dict, dict]:
        """A client's anchor kept for its probes, and its upload (a, side inputs, y) with its metadata."""
        self.pending[client_id] = (x, a)
        up = {"a": to_wire(a), "side": self.side_inputs(feats), "y": labels}
        meta = {"act": Activations.of(up["a"], up["side"]), "grad": CutGrad.of(up["a"]), "labels": Labels.of(labels)}
        return up, {**meta, "samples": len(labels), "flops": self.forward_flops(x)}

    @torch.no_grad()
    def fused_anchors(self, records: list, client_ids: list[int], rnd: int, step: int) -> tuple[list, list]:
        """`anchor` for each of a worker's clients, as one forward on their batches (fused.py)."""
        drawn = [sample_batch(self.spec, c, rnd, step) for c in client_ids]
        xs = [self.client_inputs(feats) for feats, _ in drawn]
        if not fusable(xs):
            return ClientRole.each(self, HOSFLClient.anchor, records, client_ids, rnd, step)
        with self.work(client_ids[0]) as t:
            self.sync(records)
            acts = self.forward_at(concat(xs)).split(rows(xs))
            out = [self.upload(c, x, a, *d) for c, x, a, d in zip(client_ids, xs, acts, drawn)]
        seconds = shares(t.seconds, rows(xs))
        return [up for up, _ in out], [{**meta, "compute_s": s} for (_, meta), s in zip(out, seconds)]

    @torch.no_grad()
    def probe(self, client_id: int, g: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, dict]:
        """v_p = <f_c(theta_c + mu u_p; x) - a, g> for the P seeds."""
        with self.work(client_id) as t:
            x, a = self.pending.pop(client_id)
            g_t = from_wire(g, self.device, a.dtype).flatten()
            v = np.empty(len(seeds), dtype=np.float32)
            for i, out in enumerate(self.probe_outputs(x, seeds, self.spec.algorithm.mu)):
                v[i] = float(torch.dot(out.sub_(a).flatten(), g_t))  # in place: no extra activation buffer
        return v, {"compute_s": t.seconds}

    @torch.no_grad()
    def fused_probes(self, client_ids: list[int], gs: list[np.ndarray], seeds: np.ndarray) -> tuple[list, list]:
        """`probe` for each of a worker's clients, each direction one forward on their batches; each client's v
        from its own rows (fused.py)."""
        xs = [self.pending[c][0] for c in client_ids]
        if not fusable(xs):
            return ClientRole.each_of(self, HOSFLClient.probe, client_ids, gs, seeds)
        with self.work(client_ids[0]) as t:
            a = torch.cat([self.pending.pop(c)[1] for c in client_ids])
            g_t = [from_wire(g, self.device, a.dtype).flatten() for g in gs]
            v = torch.empty(len(client_ids), len(seeds), device=self.device)  # read back once: no sync per probe
            for i, out in enumerate(self.probe_outputs(concat(xs), seeds, self.spec.algorithm.mu)):
                for k, d in enumerate(out.sub_(a).split(rows(xs))):
                    v[k, i] = torch.dot(d.flatten(), g_t[k])
            vs = list(v.cpu().numpy())
        return vs, [{"compute_s": s} for s in shares(t.seconds, rows(xs))]


class HOSFLServer(ReplicaServer):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.client_updater = ZOUpdater(prepare_zo_module(self.client)[1], cfg.client_optimizer, cfg.distribution)
        self.server.train()
        if spec.fuse_server:  # one batch on the server: its rows must not see each other
            check_batch_independent(self.server, "runtime.fuse_server")
        self.params = [p for p in self.server.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg.server_optimizer)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "client_updater": self.client_updater, "optimizer": self.optimizer}

    def train_step(self, plan: list[tuple[int, int]], *groups: list[dict]) -> list:
        """One step on the kept clients' uploads; returns each group's cut gradients, then losses and FLOPs. Each loss
        has weight `cut_grad_scale` in the backward (g = weight x dl_k/da_k); the step averages (1/K or 1/K^2)."""
        uploads, cfg = planned(plan, groups), self.spec.algorithm
        k, weight = len(uploads), 1.0 / len(uploads) if cfg.cut_grad_scale == "1/K" else 1.0
        self.optimizer.zero_grad(set_to_none=True)
        acts = [from_wire(up["a"], self.device, self.spec.dtype) for up in uploads]
        flops = sum(3 * self.forward_flops(a, up["side"]) for a, up in zip(acts, uploads))  # forward + backward
        fuse = self.spec.fuse_server and fusable(
            [{"a": a, **to_tensors(up["side"], "cpu")} for a, up in zip(acts, uploads)]
        )
        grads, losses = (self.batched_backward if fuse else self.backward_each)(acts, uploads, weight)
        divisor = (k if cfg.server_grad_scale == "1/K^2" else 1) * (1 if cfg.cut_grad_scale == "1/K" else k)
        for p in self.params:
            if p.grad is not None and divisor != 1:
                p.grad.div_(divisor)
        self.optimizer.step()
        return [*by_group(plan, grads, len(groups)), {"losses": losses, "flops": flops}]

    def backward_each(self, acts: list[torch.Tensor], uploads: list[dict], weight: float) -> tuple[list, list]:
        """Each client's loss and backward in turn (weight `weight`): (their cut gradients, their losses)."""
        grads, losses = [], []
        for a, up in zip(acts, uploads):
            a.requires_grad_(True)
            loss = self.loss(self.server_forward(a, up["side"]), tensor(up["y"], self.device))
            loss.backward(torch.full_like(loss, weight))
            assert a.grad is not None  # the backward reached the activation
            grads.append(to_wire(a.grad))
            losses.append(loss.item())
        return grads, losses

    def batched_backward(self, acts: list[torch.Tensor], uploads: list[dict], weight: float) -> tuple[list, list]:
        """`backward_each` as one forward and one backward on the uploads concatenated (`runtime.fuse_server`): the
        backward of sum_k weight x loss_k, each loss on its client's rows, so every gradient is the per-client sum
        up to rounding."""
        a = torch.cat(acts).requires_grad_(True)
        side = {k: np.concatenate([up["side"][k] for up in uploads]) for k in uploads[0]["side"]}
        sizes = [len(x) for x in acts]
        logits = self.server_forward(a, side).split(sizes)
        losses = [self.loss(out, tensor(up["y"], self.device)) for out, up in zip(logits, uploads)]
        (weight * torch.stack(losses).sum()).backward()
        assert a.grad is not None
        return [to_wire(g) for g in a.grad.split(sizes)], [loss.item() for loss in losses]

    def update_client(self, seeds: np.ndarray, v_bar: np.ndarray) -> None:
        """(seeds, v_bar) applied to the server's copy of the client part, as every replica applies it."""
        self.client_updater.apply(seeds, v_bar, self.spec.algorithm.mu)


@register
class HOSFL(SeedBasedAlgorithm):
    name = "hosfl"
    summary = (
        "HO-SFL: client zeroth-order (P forward probes on <g, f_c>, no backprop), server first-order; "
        "up: activations, labels, P scalars; down: cut gradients, P seeds + P scalars (replayed when stale)"
    )
    client_role, server_role = HOSFLClient, HOSFLServer
    options = frozenset({"client_optimizer", "server_optimizer", "perturbations", "mu", "distribution", "probe"})
    options |= {"cut_grad_scale", "server_grad_scale"}
    supports_policies = True
    pending_update: Any = None  # the last update_client call, read with the next step's server step

    def local_step(self, s: Step, active: list[int]) -> list[int]:
        groups, anchors = self.to_workers(s, active, HOSFLClient.anchor, s.round, s.index)

        def server_step(kept: list[int]) -> tuple[Any, dict]:  # the server's step, then the probes it unblocks
            uploads = [anchors[w][0] for w in groups]
            out = s.calls.server(HOSFLServer.train_step, make_plan(kept, groups), *uploads, num_returns=len(groups) + 1)
            grads = dict(zip(groups, out))
            probes = {w: s.calls.client(w, HOSFLClient.each_of, HOSFLClient.probe, cs, grads[w], s.seeds, num_returns=2)
                      for w, cs in by_worker(kept, s.worker).items()}  # fmt: skip
            return out[-1], probes

        active, sent, metas = self.around_barrier(s, active, server_step, self.uploads_read(s, groups, anchors, active))
        if not active:
            return active
        (server, probes), kept = sent, by_worker(active, s.worker)
        server, _ = s.calls.get([server, self.pending_update])  # (the previous update too: its error is raised)
        self.served(s, active, server, {c: metas[c]["grad"] for c in active})  # each client's cut gradient down
        probed = s.calls.get([probes[w] for w in kept])
        v = in_client_order(kept, [vs for vs, _ in probed])
        flops = {c: self.cfg.perturbations * metas[c]["flops"] for c in active}  # P probe forwards
        scalars = {c: Scalars.of(v[c]) for c in active}
        self.scalars_up(s, active, flops, scalars, in_client_order(kept, [ms for _, ms in probed]))
        active = self.kept_at_barrier(s, active)
        if active:
            v_bar = mean_scalars([v[c] for c in active])
            self.pending_update = s.calls.later(s.calls.server(HOSFLServer.update_client, s.seeds, v_bar))
            self.close_step(s, v_bar, active, metas)
        return active
