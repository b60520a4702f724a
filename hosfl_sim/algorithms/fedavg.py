"""FedAvg: first-order federated averaging of the WHOLE model (client part + server part), no split.

Per round, for each of the K sampled clients:
  server  global joined weights w                          -> w down (model_down)
  client  local_steps mini-batches: forward, loss, backward, client-optimizer step (fresh optimizer)
  client  its weights w_k                                  -> w_k up (model_up)
  server  w <- sum_k n_k w_k / sum_k n_k  (n_k: partition sizes)
Nothing else crosses the network: no activations, no cut gradients, no labels.
The server keeps the global weights in its own client/server parts, so `evaluate` is the base one.

Simulated clock: weights down, local_steps x (forward + backward ~ 3 x the whole model's forward FLOPs) on
the client, weights up; the server waits for the uploads (the round policy acts there) and averages only the
clients it kept. The averaging itself is not clocked (as no algorithm's aggregation is). A round's samples
and training loss are those of the kept clients, the only work the global model sees.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.sfl import average_into, load_numpy, shared_state, to_numpy
from hosfl_sim.algorithms.task import TaskSpec, count_flops, local_steps_for, sample_batch, tensor, to_tensors
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Weights
from hosfl_sim.models import JoinedModel
from hosfl_sim.zo import make_optimizer


class JoinedRole(Protocol):
    """A role that holds the joined model (client part + server part) as `model`."""

    @property
    def model(self) -> nn.Module: ...


def whole_model_flops(role: JoinedRole, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward of `role.model` (client part + server part joined) on a batch of this shape,
    counted once per shape."""
    cache = role.__dict__.setdefault("_model_flops", {})
    key = tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items()))
    if key not in cache:
        cache[key] = count_flops(role.model, **inputs)
    return cache[key]


class FedAvgClient(ClientRole):
    """One replica of the joined model; `train` overwrites it with the global weights (and starts a fresh
    optimizer) first, so any worker can serve any virtual client and nothing of one client's training
    leaks into the next."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.model = JoinedModel(self.split).to(self.device)

    def train(self, client_id: int, rnd: int, global_state: dict[str, np.ndarray]) -> tuple[dict, dict]:
        with self.work(client_id) as t:
            model = self.model
            load_numpy(model, global_state)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = make_optimizer(params, self.spec.algorithm.client_optimizer)
            losses, samples, flops = [], 0, 0
            fed = self.spec.federation
            steps = local_steps_for(
                self.spec.algorithm, len(self.spec.partition.client_indices(client_id)), fed.batch_size
            )
            for step in range(steps):
                feats, labels = sample_batch(self.spec, client_id, rnd, step)
                x = to_tensors(feats, self.device)
                logits = model(**x)  # (B, num_classes)
                loss = torch.nn.functional.cross_entropy(logits, tensor(labels, self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                samples += len(labels)
                flops += 3 * whole_model_flops(self, x)  # backward ~ 2x forward
            state = to_numpy(shared_state(model))
        return state, {"losses": losses, "samples": samples, "compute_s": t.seconds, "flops": flops}


class FedAvgServer(ServerRole):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.model = JoinedModel(self.split)  # the same modules as self.client / self.server

    def state(self) -> dict[str, Any]:
        return {**super().state(), "model": self.model}

    def global_state(self) -> tuple[dict[str, np.ndarray], Weights]:
        state = to_numpy(shared_state(self.model))
        return state, Weights.of(state)

    def fedavg(self, weights: np.ndarray, *states: dict[str, np.ndarray]) -> None:
        average_into(self.model, list(states), weights)


@register
class FedAvg(Algorithm):
    name = "fedavg"
    summary = (
        "FedAvg: first-order, whole model trained on the client (no split), size-weighted averaging; "
        "up: whole-model weights; down: global whole-model weights (nothing else)"
    )
    client_role = FedAvgClient
    server_role = FedAvgServer
    options = frozenset({"client_optimizer"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        global_state, size = backend.server(self.server_role.global_state, num_returns=2)
        weights = backend.get(size)  # uploads have the same keys, shapes and dtypes
        active = self.send_model(clients, channel, weights)
        results = {
            c: backend.client(worker[c], self.client_role.train, c, rnd, global_state, num_returns=2) for c in active
        }
        metas = dict(zip(active, backend.get([results[c][1] for c in active])))
        for cid in active:
            m, r = metas[cid], records[cid]
            clock.client_compute(cid, m["flops"])
            channel.up(cid, weights)
            r.compute_s, r.samples, r.train_loss = m["compute_s"], m["samples"], m["losses"][-1]
        kept = self.barrier(clock, active, backend, worker)
        if kept:
            sizes = self.client_sizes[np.array(kept)]
            backend.get(backend.server(self.server_role.fedavg, sizes, *[results[c][0] for c in kept]))
        losses = [v for c in kept for v in metas[c]["losses"]]
        return RoundResult(RoundResult.mean(losses), sum(metas[c]["samples"] for c in kept), list(records.values()))
