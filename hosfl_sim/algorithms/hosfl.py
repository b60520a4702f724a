"""HO-SFL: first-order server, zeroth-order client on a frozen linear surrogate, P-scalar aggregation.

One local step, for the K sampled clients (all use the same P seeds):
  client  a = f_c(theta_c; x)                              -> a, y up          (no graph)
  server  loss(f_s(a), y), backward; one optimizer step   -> g = dl/da down
  client  v_p = <f_c(theta_c + mu u_p; x) - a, g>, p=1..P  -> v up             (P forwards)
  server  v_bar = mean_k v                                 -> (seeds, v_bar) down to everyone
  every replica: theta_c <- opt(theta_c, (1 / (P mu)) sum_p v_bar_p u_p)

Routing: one actor call per worker per phase (`anchors`, `probes`: each worker serves its clients of
the round in turn) and two server calls (`train_step`, `update_client`), so a step costs 2W + 2 calls
whatever K is. The driver submits the step up to the probes before it reads anything (actors hand
each other the futures), then charges the ledger and the clock message by message in client order.
The average of the scalars is the server's control logic, run by the driver (as a Flower strategy
aggregates in the server app), so the probes' scalars take one hop, not two. Under a policy that can
drop clients at a barrier (deadline, over-commit) the server step waits for the barrier's verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import ClientRecord, SeedBasedAlgorithm
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.replay import mean_scalars
from hosfl_sim.algorithms.roles import ServerRole
from hosfl_sim.algorithms.routing import by_worker, in_client_order, make_plan, planned, serve_each
from hosfl_sim.algorithms.state import bookkeeping
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_wire
from hosfl_sim.algorithms.zo_client import ZOClient, prepare_zo_module
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, CutGrad, Labels, Scalars
from hosfl_sim.zo import ZOUpdater, make_optimizer


class HOSFLClient(ZOClient):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.pending: dict[int, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}

    @torch.no_grad()
    def anchor(self, records: list, client_id: int, rnd: int, step: int) -> tuple[dict, dict]:
        with self.work(client_id) as t:
            self.sync(records)
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            a = self.forward_at(x)  # (B, ...) smashed data
            self.pending[client_id] = (x, a)
            upload = {"a": to_wire(a), "side": self.side_inputs(feats), "y": labels}
        meta = {
            "act": Activations.of(upload["a"], upload["side"]),
            "grad": CutGrad.of(upload["a"]),  # g has a's shape and dtype
            "labels": Labels.of(labels),
            "samples": len(labels),
            "compute_s": t.seconds,
            "flops": self.forward_flops(x),
        }
        return upload, meta

    @torch.no_grad()
    def probe(self, client_id: int, seeds: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, dict]:
        with self.work(client_id) as t:
            x, a = self.pending.pop(client_id)
            g_t = from_wire(g, self.device, a.dtype).flatten()
            v = np.empty(len(seeds), dtype=np.float32)
            mu = self.spec.algorithm.mu
            for i, out in enumerate(self.probe_outputs(x, seeds, mu)):
                # in place on the probe's own output: no extra activation-sized buffer
                v[i] = float(torch.dot(out.sub_(a).flatten(), g_t))
        return v, {"compute_s": t.seconds}

    def anchors(self, records: list, client_ids: list[int], rnd: int, step: int) -> tuple[list, list]:
        """`anchor` for each client of this worker, in order (the first one applies the missed records)."""
        return serve_each(self.anchor, records, client_ids, rnd, step)

    def probes(self, client_ids: list[int], seeds: np.ndarray, grads: list[np.ndarray]) -> tuple[list, list]:
        """`probe` for each client of this worker, in order, with its cut gradient."""
        out = [self.probe(c, seeds, g) for c, g in zip(client_ids, grads)]
        return [v for v, _ in out], [meta for _, meta in out]


class HOSFLServer(ServerRole):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        _, client_params = prepare_zo_module(self.client)
        self.client_updater = ZOUpdater(client_params, cfg.client_optimizer, cfg.distribution)
        self.server.train()
        self.params = [p for p in self.server.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg.server_optimizer)

    def train_step(self, plan: list[tuple[int, int]], *groups: list[dict]) -> list:
        """First-order step on the activations `groups[g][j]` for (g, j) in `plan` (the kept clients, in
        client order); returns, per group, the cut gradients of its planned uploads, then the losses and FLOPs."""
        uploads = planned(plan, groups)
        cfg, k = self.spec.algorithm, len(uploads)
        weight = 1.0 / k if cfg.cut_grad_scale == "1/K" else 1.0  # each loss's weight in the backward
        self.optimizer.zero_grad(set_to_none=True)
        grads, losses, flops = [], [], 0
        for up in uploads:
            a = from_wire(up["a"], self.device, self.spec.dtype).requires_grad_(True)
            y = tensor(up["y"], self.device)
            flops += 3 * self.forward_flops(a, up["side"])  # forward + backward (~2x forward)
            loss = self.loss(self.server_forward(a, up["side"]), y)
            loss.backward(torch.full_like(loss, weight))
            grads.append(to_wire(a.grad))  # weight x dl_k/da_k, same shape and dtype as a
            losses.append(loss.item())
        # the parameter gradient is now weight x sum_k dl_k/dtheta: scale it to (1/K or 1/K^2) x the sum
        divisor = k if cfg.server_grad_scale == "1/K^2" else 1
        divisor *= 1 if cfg.cut_grad_scale == "1/K" else k
        for p in self.params:
            if p.grad is not None and divisor != 1.0:
                p.grad.div_(divisor)
        self.optimizer.step()
        per_group: list[list[np.ndarray]] = [[] for _ in groups]
        for (g, _), grad in zip(plan, grads):
            per_group[g].append(grad)
        return [*per_group, {"losses": losses, "flops": flops}]

    @bookkeeping
    def record_flops(self) -> int:
        """FLOPs a client spends applying one (seeds, v_bar) record to its replica."""
        return self.client_updater.flops(self.spec.algorithm.perturbations)

    def update_client(self, seeds: np.ndarray, v_bar: np.ndarray) -> None:
        """The broadcast (seeds, v_bar) applied to the server's copy of the client part, as every replica applies it."""
        self.client_updater.apply(seeds, v_bar, self.spec.algorithm.mu)


@register
class HOSFL(SeedBasedAlgorithm):
    name = "hosfl"
    summary = (
        "HO-SFL: client zeroth-order (P forward probes on <g, f_c>, no backprop), server first-order; "
        "up: activations, labels, P scalars; down: cut gradients, P seeds + P scalars (replayed when stale)"
    )
    client_role = HOSFLClient
    server_role = HOSFLServer
    options = frozenset(
        {
            "client_optimizer",
            "server_optimizer",
            "perturbations",
            "mu",
            "distribution",
            "probe",
            "cut_grad_scale",
            "server_grad_scale",
        }
    )
    supports_policies = True
    pending_update: Any = None  # the last update_client call, read with the next step's server step

    def local_step(
        self,
        rnd: int,
        step: int,
        active: list[int],
        worker: dict[int, int],
        records: dict[int, ClientRecord],
        losses: list[float],
        backend: Backend,
        channel: Channel,
    ) -> list[int]:
        """One local step of the `active` clients; returns those still active (a barrier may drop some).
        Appends the server's per-client losses to `losses` and accumulates into `records`."""
        clock = channel.clock
        seeds, active = self.open_step(rnd, step, active, channel)
        if not active:
            return active
        groups = by_worker(active, worker)
        anchor = {
            w: backend.client(w, self.client_role.anchors, self.log.for_worker(w), cs, rnd, step, num_returns=2)
            for w, cs in groups.items()
        }

        def submit(kept: list[int]) -> tuple[Any, dict]:  # the server's step, then the probes it unblocks
            out = backend.server(
                self.server_role.train_step,
                make_plan(kept, groups),
                *[anchor[w][0] for w in groups],
                num_returns=len(groups) + 1,
            )
            grads = dict(zip(groups, out))
            cs = by_worker(kept, worker)
            return out[-1], {
                w: backend.client(w, self.client_role.probes, c, seeds, grads[w], num_returns=2) for w, c in cs.items()
            }

        def charge() -> dict[int, dict]:
            metas = in_client_order(groups, backend.get([anchor[w][1] for w in groups]))
            self.charge_uploads(active, metas, records, channel)
            return metas

        # The whole step goes out before anything is read, unless the barrier can drop clients (then the
        # server steps only on those it keeps); the accounting follows in message order either way.
        active, sent, metas = self.around_barrier(clock, active, backend, worker, submit, charge)
        if not active:
            return active
        server_meta, probe = sent
        kept = by_worker(active, worker)

        # (with the previous step's update of the server's client copy, so an error there is raised)
        server_meta, _ = backend.get([server_meta, self.pending_update])
        self.charge_server_step(active, metas, server_meta, records, losses, channel)
        probed = backend.get([probe[w] for w in kept])
        scalars = in_client_order(kept, [vs for vs, _ in probed])
        self.charge_probes(active, metas, in_client_order(kept, [ms for _, ms in probed]), scalars, records, channel)
        active = self.kept_at_barrier(clock, active, backend, worker)
        if not active:
            return active
        # The server's aggregation: the average happens here, in its control logic, so the scalars go straight
        # to it (no extra hop through the server actor); its copy of the client part takes the step without
        # being waited for (calls to it run in order, so before anything that reads that copy).
        v_bar = mean_scalars([scalars[c] for c in active])
        self.pending_update = backend.later(backend.server(self.server_role.update_client, seeds, v_bar))
        self.broadcast(seeds, v_bar, active, metas, records, channel)
        return active

    # The accounting of a step, message by message (shared with the benchmark routings of bench/proposals.py):
    def charge_server_step(
        self, active: list[int], metas: dict, server_meta: dict, records: dict, losses: list[float], channel: Channel
    ) -> None:
        """The server's step on the clock; each client's cut gradient down and its loss."""
        channel.clock.server_batch(active, server_meta["flops"])
        for cid, loss in zip(active, server_meta["losses"]):
            channel.down(cid, metas[cid]["grad"])
            records[cid].train_loss = loss
        losses.extend(server_meta["losses"])

    def charge_probes(
        self, active: list[int], metas: dict, probe_metas: dict, scalars: dict, records: dict, channel: Channel
    ) -> None:
        """Each client's P probe forwards on the clock, its P scalars up, its measured compute."""
        p = self.cfg.perturbations
        for cid in active:
            channel.clock.client_compute(cid, p * metas[cid]["flops"])
            channel.up(cid, Scalars.of(scalars[cid]))
            records[cid].compute_s += probe_metas[cid]["compute_s"]

    def broadcast(
        self, seeds: np.ndarray, v_bar: np.ndarray, active: list[int], metas: dict, records: dict, channel: Channel
    ) -> None:
        """(seeds, v_bar) down to the step's clients, and into the log; their samples reached the model."""
        for cid in active:
            records[cid].samples += metas[cid]["samples"]
        self.close_step(seeds, v_bar, active, channel)
