"""CSE-FSL (Mu and Shen, "Communication and Storage Efficient Federated Split Learning", ICC 2023, arXiv
2302.05599): local-loss split learning with sparse uploads, one server part for all clients.

Besides its client part, every client carries an auxiliary head h(phi; a) -> logits (one linear map of the
flattened activation, as FSL-SAGE's head here: F*C + C parameters). Per round each sampled client downloads the
global client part and aux head (model_down), then for each local step t = 0, 1, ... of the round:
  client  a = f_c(theta_c; x) with graph, loss CE(h(phi; a), y), backward through both, one step of each
          (the client optimizer's settings for both); no gradient ever comes down
  at t % upload_every == 0 only:  (a, y) up (act_up, labels_up), a as this step's forward computed it
  server  per upload, as it arrives: CE(f_s(a), y), backward, one step of the one server part (one queue);
          it keeps no per-client model and sends nothing back
and finally uploads both (model_up); the server FedAvgs the client parts and the aux heads of the clients it
kept, weighted by partition size. So per round and client: ceil(steps / upload_every) uploads, grad_down = 0.

Simulated clock, per client: the weights down; per step its forward, aux head and backward (3x the forward of
both); at an upload step the activations and labels up. The server works through the uploads in the order they
arrive (first come, first served, one server), but no client waits for it: nothing comes back. Then the weights
up; the server waits (the round policy acts there), and the round ends once it has also worked off its queue.
A round's samples and training loss are the kept clients'; train_loss is the server's loss on their uploads.

Interpretations where the paper leaves a detail open:
- upload steps are counted within the round (t = 0 .. steps - 1, so every round's first step uploads); with
  local_epochs, steps is the client's mini-batches that round;
- the aux head is the linear head FSL-SAGE uses here, initialised from the run seed; it and the client part
  are stepped by two optimizers built from `client_optimizer` (equal to one joint one: both are per-parameter);
  each round starts the client's optimizers afresh, as SFL's do;
- the server's steps run in local-step order (clients in sampling order within a step) while the clock serves
  the uploads in arrival order; the two agree whenever the clients are alike;
- a client dropped at the barrier (deadline, over-commit) has already served its uploads to the server part:
  only its weights are left out of the average, as in SFL.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.fsl_sage import FSLSAGEServer, begin_with_aux, build_aux
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import SplitClient, load_numpy, split_steps, to_numpy
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_wire
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, Labels
from hosfl_sim.system.clock import RoundClock
from hosfl_sim.zo import make_optimizer


def head_flops(head: nn.Sequential, batch: int) -> int:
    """FLOPs of the aux head's forward on `batch` activations: its one (B, F) x (F, C) product."""
    linear = head[-1]
    assert isinstance(linear, nn.Linear)  # build_aux's head ends in its one linear map
    return 2 * batch * linear.in_features * linear.out_features


def serve_queue(clock: RoundClock, arrivals: list[tuple[float, int, int, float]]) -> None:
    """The one server works through the uploads (arrival time, step, client, FLOPs) in arrival order; no client
    waits for it (nothing comes back), so each client's own time is left where it was."""
    for arrive, _, cid, flops in sorted(arrivals):
        record = clock.record(cid)
        now, record.t = record.t, arrive
        clock.server_compute(cid, flops)
        record.t = now


class CSEFSLClient(SplitClient):
    """SFL's client copies plus, per virtual client in flight, an aux head and its optimizer."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.aux_base = build_aux(spec, self.base, self.split.input_keys)
        self.aux: dict[int, tuple[nn.Sequential, torch.optim.Optimizer]] = {}

    def forget(self, client_id: int) -> None:
        super().forget(client_id)
        self.aux.pop(client_id, None)

    def begin(self, client_id: int, global_state: dict[str, np.ndarray], aux_state: dict[str, np.ndarray]) -> None:
        self.start_copy(client_id, global_state)
        head = copy.deepcopy(self.aux_base)
        load_numpy(head, aux_state)
        self.aux[client_id] = (head, make_optimizer(list(head.parameters()), self.spec.algorithm.client_optimizer))

    def step(self, client_id: int, rnd: int, step: int, send: bool) -> tuple[dict | None, dict]:
        """One local-loss step; with `send`, the activations of its forward and the labels for the server."""
        with self.work(client_id) as t:
            model, opt = self.local[client_id]
            head, head_opt = self.aux[client_id]
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            a = model(**x)  # (B, ...) with graph
            loss = F.cross_entropy(head(a.float()), tensor(labels, self.device))
            opt.zero_grad(set_to_none=True)
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            head_opt.step()
            upload = {"a": to_wire(a.detach()), "side": self.side_inputs(feats), "y": labels} if send else None
        flops = 3 * (self.forward_flops(x) + head_flops(head, len(labels)))  # forward + backward (~2x forward)
        meta: dict[str, Any] = {"loss": float(loss.detach()), "samples": len(labels), "compute_s": t.seconds}
        meta["flops"] = flops
        if upload is not None:
            meta["act"], meta["labels"] = Activations.of(upload["a"], upload["side"]), Labels.of(labels)
        return upload, meta

    def upload(self, client_id: int) -> dict[str, dict[str, np.ndarray]]:
        head, _ = self.aux.pop(client_id)
        return {"client": self.take_copy(client_id), "aux": to_numpy(head.state_dict())}


class CSEFSLServer(FSLSAGEServer):
    """One server part stepped once per upload, and the global client part and aux head (FedAvg'd by `finish`)."""

    def step(self, upload: dict) -> dict:
        a = from_wire(upload["a"], self.device, self.spec.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.server_forward(a, upload["side"]), tensor(upload["y"], self.device))
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "flops": 3 * self.forward_flops(a, upload["side"])}  # backward ~ 2x forward


@register
class CSEFSL(Algorithm):
    name = "cse_fsl"
    summary = (
        "CSE-FSL: first-order on both sides, clients step on an aux head's local loss, one server part stepped "
        "per upload; up: activations and labels every upload_every local steps, client + aux weights; "
        "down: client + aux weights (no cut gradient)"
    )
    client_role: ClassVar[type[CSEFSLClient]] = CSEFSLClient  # HERON-SFL runs this round with its ZO client
    server_role = CSEFSLServer
    options = frozenset({"client_optimizer", "server_optimizer", "upload_every"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock, every = channel.clock, self.cfg.upload_every
        worker, records = self.assign(clients)
        role = self.client_role
        active, models = begin_with_aux(CSEFSLServer, role.begin, clients, worker, backend, channel)

        def send(cid: int, step: int) -> tuple:
            up, meta = backend.client(worker[cid], role.step, cid, rnd, step, step % every == 0, num_returns=2)
            return (cid, step, meta, backend.server(CSEFSLServer.step, up)) if step % every == 0 else (cid, step, meta)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], role.upload, c) for c in active}
        arrivals, losses = [], []  # (arrival time, step, client, server FLOPs); (client, server loss)
        for row in (row for batch in backend.get(steps) for row in batch):
            cid, step, meta = row[:3]
            clock.client_compute(cid, meta["flops"])
            r = records[cid]
            r.compute_s += meta["compute_s"]
            r.samples += meta["samples"]
            if len(row) == 4:
                channel.up(cid, meta["act"])
                channel.up(cid, meta["labels"])
                arrivals.append((clock.record(cid).t, step, cid, row[3]["flops"]))
                losses.append((cid, row[3]["loss"]))
                r.train_loss = row[3]["loss"]
        serve_queue(clock, arrivals)
        for cid in active:
            channel.up(cid, models)
        kept = self.barrier(clock, active, backend, worker)
        clock.server_only(0.0)  # the round ends once the server has also worked off its queue
        weights = self.client_sizes[np.array(kept, dtype=np.int64)]
        backend.get(backend.server(CSEFSLServer.finish, weights, *[uploads[c] for c in kept]))
        kept_set = set(kept)
        loss = RoundResult.mean([v for c, v in losses if c in kept_set])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))
