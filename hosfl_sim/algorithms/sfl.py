"""SFL (SplitFed-V2; "SplitLoRA" with LoRA): first-order on both sides, FedAvg of the client parts.

Per round each sampled client downloads the global client part, then for each local step:
  client  a = f_c(theta_c; x) with graph                  -> a, y up
  server  loss, backward, one server step (one server model, clients in turn)  -> g down
  client  backward of g through f_c, one client step
and finally uploads its client part; the server averages them weighted by partition size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, ClientRecord, RoundResult
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_wire
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, CutGrad, Labels, Message, Weights
from hosfl_sim.zo import make_optimizer


def shared_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a client uploads for FedAvg: trainable parameters and BatchNorm statistics."""
    keep = {n for n, p in module.named_parameters() if p.requires_grad}
    for mname, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            prefix = f"{mname}." if mname else ""
            keep |= {f"{prefix}running_mean", f"{prefix}running_var"}
    return {k: v for k, v in module.state_dict().items() if k in keep}


def to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state as it travels (`to_wire`), copied: the module may change after."""
    return {k: to_wire(v).copy() for k, v in state.items()}


def load_numpy(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Arrays as `to_numpy` sends them (or any float array) into `module`, each in its own entry's dtype."""
    with torch.no_grad():
        own = module.state_dict()
        for k, v in state.items():
            own[k].copy_(from_wire(v, own[k].device, own[k].dtype))


def average_into(
    module: nn.Module, states: list[dict[str, np.ndarray]], weights: np.ndarray, global_lr: float = 1.0
) -> None:
    """theta <- theta + global_lr * (sum_k w_k theta_k / sum_k w_k - theta) for the keys of `states`, in float64,
    stored back in each entry's dtype. With global_lr = 1 this is FedAvg: the weighted mean replaces theta."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    own = module.state_dict()
    out = {}
    for key in states[0]:
        mean = sum(wi * from_wire(s[key], "cpu", torch.float64).numpy() for wi, s in zip(w, states))
        if global_lr != 1.0:
            old = own[key].detach().cpu().to(torch.float64).numpy()
            mean = old + global_lr * (mean - old)
        out[key] = mean
    load_numpy(module, out)


def charge_split_steps(
    steps: list[list[tuple[int, dict, dict, dict]]],
    channel: Channel,
    records: dict[int, ClientRecord],
    reply: Callable[[dict, dict], Message],
    backward: bool,
) -> list[tuple[int, float]]:
    """The messages and clock of split clients served by one main server, message by message.

    `steps[i]` holds the rows (client, its forward's meta, the server's meta, its follow-up's meta) of local
    step i, in submission order (clients with fewer steps drop out of the later ones). Per step: each client's
    forward and upload; the server's work in arrival order (one server, one queue); the reply down
    (`reply(meta, server meta)`) and, with `backward`, the client's backward (~2x its forward).
    Returns (client, loss) per row."""
    losses, clock = [], channel.clock
    for batch in steps:
        for cid, m, _, _ in batch:
            clock.client_compute(cid, m["flops"])
            channel.up(cid, m["act"])
            channel.up(cid, m["labels"])
        for cid, _, srv, _ in sorted(batch, key=lambda row: clock.record(row[0]).t):
            clock.server_compute(cid, srv["flops"])
        for cid, m, srv, after in batch:
            channel.down(cid, reply(m, srv))
            if backward:
                clock.client_compute(cid, 2 * m["flops"])
            r = records[cid]
            r.compute_s += m["compute_s"] + after["compute_s"]
            r.samples += m["samples"]
            r.train_loss = srv["loss"]
            losses.append((cid, srv["loss"]))
    return losses


def split_steps(algorithm: Algorithm, active: list[int], send: Callable[[int, int], tuple]) -> list[list[tuple]]:
    """The local steps of a split round, sent: per step, `send(client, step)` for each client that still has a
    mini-batch (`algorithm.steps_of`), in client order; it returns the row (client, futures...). `backend.get`
    of the result reads every row, the shape `charge_split_steps` takes."""
    count = {cid: algorithm.steps_of(cid) for cid in active}
    return [[send(cid, step) for cid in active if step < count[cid]] for step in range(max(count.values(), default=0))]


class SplitClient(ClientRole):
    """A first-order split client: one local copy of the client part per virtual client in flight this round,
    stepped by the cut gradients it is sent. `start_copy` begins a client's copy and `take_copy` hands back what
    it uploads for FedAvg; an algorithm's `begin` and `upload` wrap them with whatever else travels with them."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.base = self.split.client.to(self.device)
        self.local: dict[int, tuple[nn.Module, torch.optim.Optimizer]] = {}
        self.pending: dict[int, torch.Tensor] = {}

    def forget(self, client_id: int) -> None:
        self.local.pop(client_id, None)
        self.pending.pop(client_id, None)

    def start_copy(self, client_id: int, global_state: dict[str, np.ndarray]) -> None:
        """The client's copy of the global client part, with a fresh client optimizer."""
        model = copy.deepcopy(self.base)
        load_numpy(model, global_state)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.local[client_id] = (model, make_optimizer(params, self.spec.algorithm.client_optimizer))

    def forward(self, client_id: int, rnd: int, step: int) -> tuple[dict, dict]:
        with self.work(client_id) as t:
            model, _ = self.local[client_id]
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            a = model(**self.client_inputs(feats))  # (B, ...) with graph
            self.pending[client_id] = a
            upload = {"a": to_wire(a), "side": self.side_inputs(feats), "y": labels}
        meta = {
            "act": Activations.of(upload["a"], upload["side"]),
            "grad": CutGrad.of(upload["a"]),  # g has a's shape and dtype
            "labels": Labels.of(labels),
            "samples": len(labels),
            "compute_s": t.seconds,
            "flops": self.forward_flops(self.client_inputs(feats)),
        }
        return upload, meta

    def backward(self, client_id: int, g: np.ndarray) -> dict:
        with self.work(client_id) as t:
            model, opt = self.local[client_id]
            a = self.pending.pop(client_id)
            opt.zero_grad(set_to_none=True)
            a.backward(from_wire(g, a.device, a.dtype))
            opt.step()
        return {"compute_s": t.seconds}

    def take_copy(self, client_id: int) -> dict[str, np.ndarray]:
        """The client's copy as FedAvg takes it (`shared_state`); the copy is dropped."""
        model, _ = self.local.pop(client_id)
        return to_numpy(shared_state(model))


class SFLClient(SplitClient):
    """Holds one local copy of the client part per virtual client in flight this round; only the client part
    comes down and goes up."""

    def begin(self, client_id: int, global_state: dict[str, np.ndarray]) -> None:
        self.start_copy(client_id, global_state)

    def upload(self, client_id: int) -> dict[str, np.ndarray]:
        return self.take_copy(client_id)


class SFLServer(ServerRole):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.client.train()
        self.server.train()
        self.params = [p for p in self.server.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, spec.algorithm.server_optimizer)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "optimizer": self.optimizer}

    def global_client(self) -> tuple[dict[str, np.ndarray], Weights]:
        state = to_numpy(shared_state(self.client))
        return state, Weights.of(state)

    def train_step(self, upload: dict) -> tuple[np.ndarray, dict]:
        a = from_wire(upload["a"], self.device, self.spec.dtype).requires_grad_(True)
        y = tensor(upload["y"], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        flops = 3 * self.forward_flops(a, upload["side"])  # forward + backward (~2x forward)
        loss = self.loss(self.server_forward(a, upload["side"]), y)
        loss.backward()
        self.optimizer.step()
        assert a.grad is not None  # the backward reached the activation
        return to_wire(a.grad), {"loss": loss.item(), "flops": flops}

    def fedavg(self, weights: np.ndarray, *states: dict[str, np.ndarray]) -> None:
        average_into(self.client, list(states), weights)


@register
class SFL(Algorithm):
    name = "sfl"
    summary = (
        "SplitFed-V2 / SplitLoRA: first-order on both sides (client backpropagates the cut gradient), "
        "one server model; up: activations, labels, client weights; down: cut gradients, global client weights"
    )
    client_role = SFLClient
    server_role = SFLServer
    options = frozenset({"client_optimizer", "server_optimizer"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        global_state, size = backend.server(self.server_role.global_client, num_returns=2)
        weights = backend.get(size)  # uploads have the same keys and shapes
        active = self.send_model(clients, channel, weights)
        for cid in active:
            backend.later(backend.client(worker[cid], self.client_role.begin, cid, global_state))

        def send(cid: int, step: int) -> tuple:
            up, meta = backend.client(worker[cid], self.client_role.forward, cid, rnd, step, num_returns=2)
            g, smeta = backend.server(self.server_role.train_step, up, num_returns=2)
            return cid, meta, smeta, backend.client(worker[cid], self.client_role.backward, cid, g)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], self.client_role.upload, c) for c in active}
        step_losses = charge_split_steps(backend.get(steps), channel, records, lambda m, _: m["grad"], backward=True)
        for cid in active:
            channel.up(cid, weights)
        kept = self.barrier(clock, active, backend, worker)
        if kept:
            sizes = self.client_sizes[np.array(kept)]
            backend.get(backend.server(self.server_role.fedavg, sizes, *[uploads[c] for c in kept]))
        # a round's samples and loss are those of the clients it kept, as for every algorithm (budget_samples)
        loss = RoundResult.mean([v for c, v in step_losses if c in set(kept)])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))
