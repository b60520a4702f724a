"""FSL-SAGE (Nair et al., ICML 2025): first-order clients trained from an auxiliary model of the cut gradient.

Beside its client part, every client carries a small auxiliary head h(phi; a) -> logits: one linear map of the
flattened activation (a in R^F -> C classes, F*C + C parameters). Its input gradient
    g_hat(phi; a, y) = d CE(h(phi; a), y) / da          (same shape as a)
stands in for the server's cut gradient g = dl/da. The head is trained on the client only, to imitate real
gradients: min_phi mean_buffer ||g_hat(phi; a, y) - g||^2 (double backprop), `aux_passes` passes of Adam (lr
`aux_lr`) over a buffer of the last `aux_buffer` (a, y, g) triples the client received this round, after each
alignment step; the client steps never move it. A local step is an alignment step when t % align_every == 0,
t = (round - 1) * local_steps + step counting local steps over the run (with local_steps = align_every = 5,
the reference, that is the first step of every round):
  alignment step:
    client  a = f_c(theta_c; x) with graph                        -> a, y up        act_up, labels_up
    server  loss(f_s(a), y), backward, one server step (one server model, clients in turn)  -> g down  grad_down
    client  backward of g through f_c, one client step; (a, y, g) into the buffer; refit phi
  any other step: nothing crosses the network, the server does not step
    client  a = f_c(theta_c; x) with graph; backward of g_hat(phi; a, y) through f_c, one client step
Round start and end as SFL, for the client part and the aux head together (FSL-SAGE averages the auxiliary
models with the client models): both down to each client (model_down), both up after the last step (model_up),
FedAvg'd by partition size. The buffer and the optimizers start empty each round (a virtual client keeps no
state between rounds here; the head's knowledge carries over through the average).
train_loss is the server's loss at this round's alignment steps, the only real losses anyone computes; a round
without one reports the aux head's cross-entropy instead.

Simulated clock, per local step and client: at an alignment step, the client forward, activations and labels up,
the server's forward + backward (one server model: first come, first served), the cut gradient down, then the
client backward and the aux refit; at any other step, the client's forward, aux gradient and backward
(`aux_flops` counts the head's share). Then the weights up; the server waits (the round policy acts there) and
averages only the clients it kept. A round's samples and training loss are the kept clients'.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import SFLServer, SplitClient, average_into, load_numpy, to_numpy
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_tensors
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import CutGrad, Weights

AUX_SEED_TAG = 17  # mixed with the run seed to initialise the aux head


def build_aux(spec: TaskSpec, client: nn.Module, input_keys: tuple[str, ...]) -> nn.Sequential:
    """The aux head for this task's activation shape, initialised from the run seed (the same in every process)."""
    feats = {k: v[:1] for k, v in spec.train.features.items() if k in input_keys}
    with torch.no_grad():
        a = client(**to_tensors(feats, next(client.parameters()).device))  # (1, ...) one activation
    seed = int(np.random.SeedSequence([spec.seed, AUX_SEED_TAG]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Flatten(), nn.Linear(a[0].numel(), spec.num_classes))
    return head.to(a.device)


def estimated_grad(aux: nn.Module, a: torch.Tensor, y: torch.Tensor, create_graph: bool = False):
    """(g_hat, CE): the aux head's gradient of CE(h(a), y) with respect to a, shaped like a."""
    a = a.detach().float().requires_grad_(True)
    loss = F.cross_entropy(aux(a), y)
    (g_hat,) = torch.autograd.grad(loss, a, create_graph=create_graph)
    return g_hat, loss


def aux_flops(aux: nn.Sequential, batch: int, refit: bool) -> int:
    """FLOPs of the aux head's gradient estimate on `batch` activations, counted as FlopCounterMode counts (matmuls,
    2 per multiply-add): the forward and the input gradient, one (B, F) x (F, C) product each; one refit iteration
    adds the backward of the MSE through both, towards phi and towards a: four more. (The head is one linear map,
    so this is exact; FlopCounterMode itself cannot run under autograd.grad.)"""
    linear = aux[-1]
    assert isinstance(linear, nn.Linear)  # build_aux's head ends in its one linear map
    product = 2 * batch * linear.in_features * linear.out_features
    return (6 if refit else 2) * product


class FSLSAGEClient(SplitClient):
    """SFL's client plus, per virtual client in flight, an aux head with its Adam optimizer and buffer."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.aux_base = build_aux(spec, self.base, self.split.input_keys)
        self.aux: dict[int, tuple[nn.Sequential, torch.optim.Optimizer, list]] = {}

    def forget(self, client_id: int) -> None:
        super().forget(client_id)
        self.aux.pop(client_id, None)

    def begin(self, client_id: int, global_state: dict[str, np.ndarray], aux_state: dict[str, np.ndarray]) -> None:
        self.start_copy(client_id, global_state)
        head = copy.deepcopy(self.aux_base)
        load_numpy(head, aux_state)
        self.aux[client_id] = (head, torch.optim.Adam(head.parameters(), lr=self.spec.algorithm.aux_lr), [])

    def align(self, client_id: int, rnd: int, step: int, g: np.ndarray) -> dict:
        """Step the client with the real cut gradient, then refit the aux head on the buffer. The FLOPs returned
        are the refit's (the backward's are twice the forward's, which the driver knows)."""
        cfg = self.spec.algorithm
        with self.work(client_id) as t:
            a = self.pending[client_id].detach()
            self.backward(client_id, g)
            _, labels = sample_batch(self.spec, client_id, rnd, step)
            head, opt, buffer = self.aux[client_id]
            buffer.insert(0, (a, tensor(labels, self.device), from_wire(g, self.device, torch.float32)))
            del buffer[cfg.aux_buffer :]
            for _ in range(cfg.aux_passes):
                for a_i, y_i, g_i in buffer:
                    g_hat, _ = estimated_grad(head, a_i, y_i, create_graph=True)
                    mse = (g_hat - g_i).pow(2).sum()
                    opt.zero_grad(set_to_none=True)
                    mse.backward()
                    opt.step()
        refit = cfg.aux_passes * sum(aux_flops(head, len(y_i), refit=True) for _, y_i, _ in buffer)
        return {"compute_s": t.seconds, "grad": CutGrad.of(g), "aux_mse": float(mse.detach()), "aux_flops": refit}

    def local_step(self, client_id: int, rnd: int, step: int) -> dict:
        """A step on the aux head's estimate of the cut gradient; nothing is sent."""
        with self.work(client_id) as t:
            model, opt = self.local[client_id]
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x, y = self.client_inputs(feats), tensor(labels, self.device)
            a = model(**x)  # (B, ...) with graph
            g_hat, loss = estimated_grad(self.aux[client_id][0], a, y)
            opt.zero_grad(set_to_none=True)
            a.backward(g_hat.to(a.dtype))
            opt.step()
        flops = 3 * self.forward_flops(x) + aux_flops(self.aux_base, len(y), refit=False)  # backward ~ 2x forward
        return {"loss": float(loss.detach()), "samples": len(labels), "compute_s": t.seconds, "flops": flops}

    def upload(self, client_id: int) -> dict[str, dict[str, np.ndarray]]:
        head, _, _ = self.aux.pop(client_id)
        return {"client": self.take_copy(client_id), "aux": to_numpy(head.state_dict())}


class FSLSAGEServer(SFLServer):
    """One server model stepped at alignment steps (SFLServer.train_step), and the global aux head."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.aux = build_aux(spec, self.client, self.split.input_keys)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "aux": self.aux}

    def global_aux(self) -> tuple[dict[str, np.ndarray], Weights]:
        state = to_numpy(self.aux.state_dict())
        return state, Weights.of(state)

    def finish(self, weights: np.ndarray, *uploads: dict) -> None:
        """FedAvg of the client parts and aux heads uploaded (by the kept clients; none: nothing changes)."""
        if uploads:
            self.fedavg(weights, *[u["client"] for u in uploads])
            average_into(self.aux, [u["aux"] for u in uploads], weights)


def begin_with_aux(
    server: type[FSLSAGEServer], begin: Callable[..., None], clients: np.ndarray, worker: dict[int, int],
    backend: Backend, channel: Channel,
) -> tuple[list[int], Weights]:  # fmt: skip
    """A round of clients that train with an aux head: the global client part and aux head down (then mid-round
    failures drop out), each kept client begun on them (`begin`: its role's). Returns the clients that go on and
    the two as one message (what each client sends back up)."""
    global_state, size = backend.server(server.global_client, num_returns=2)
    aux_state, aux_size = backend.server(server.global_aux, num_returns=2)
    client_part, aux_head = backend.get([size, aux_size])
    active = Algorithm.send_model(clients, channel, client_part + aux_head)
    for cid in active:
        backend.later(backend.client(worker[cid], begin, cid, global_state, aux_state))
    return active, client_part + aux_head


@register
class FSLSAGE(Algorithm):
    name = "fsl_sage"
    summary = (
        "FSL-SAGE: first-order on both sides, client steps on an aux head's estimate of the cut gradient, "
        "server steps every align_every local steps; up: activations and labels at alignment steps only, "
        "client + aux weights; down: cut gradients at alignment steps only, client + aux weights"
    )
    client_role = FSLSAGEClient
    server_role = FSLSAGEServer
    options = frozenset({"client_optimizer", "server_optimizer", "align_every", "aux_passes", "aux_lr", "aux_buffer"})
    supports_policies = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        cfg, clock = self.cfg, channel.clock
        worker, records = self.assign(clients)
        active, models = begin_with_aux(FSLSAGEServer, FSLSAGEClient.begin, clients, worker, backend, channel)
        plan = []  # per local step: (aligned, [(client, futures)])
        for step in range(cfg.local_steps):
            aligned = ((rnd - 1) * cfg.local_steps + step) % cfg.align_every == 0
            calls = []
            for cid in active:
                if aligned:
                    up, meta = backend.client(worker[cid], self.client_role.forward, cid, rnd, step, num_returns=2)
                    g, smeta = backend.server(self.server_role.train_step, up, num_returns=2)
                    calls.append(
                        (cid, [meta, smeta, backend.client(worker[cid], self.client_role.align, cid, rnd, step, g)])
                    )
                else:
                    calls.append((cid, [backend.client(worker[cid], self.client_role.local_step, cid, rnd, step)]))
            plan.append((aligned, calls))
        uploads = {c: backend.client(worker[c], self.client_role.upload, c) for c in active}
        metas = backend.get([[f for _, f in calls] for _, calls in plan])
        real, surrogate = [], []  # (client, loss) in step order
        for (aligned, calls), step_metas in zip(plan, metas):
            batch = [(cid, *m) for (cid, _), m in zip(calls, step_metas)]
            if not aligned:
                for cid, m in batch:
                    clock.client_compute(cid, m["flops"])
                    r = records[cid]
                    r.compute_s += m["compute_s"]
                    r.samples += m["samples"]
                    surrogate.append((cid, m["loss"]))
                continue
            for cid, m, _, _ in batch:
                clock.client_compute(cid, m["flops"])
                channel.up(cid, m["act"])
                channel.up(cid, m["labels"])
            for cid, _, s, _ in sorted(batch, key=lambda x: clock.record(x[0]).t):  # one server, arrival order
                clock.server_compute(cid, s["flops"])
            for cid, m, s, a in batch:
                channel.down(cid, a["grad"])
                clock.client_compute(cid, 2 * m["flops"] + a["aux_flops"])  # backward ~ 2x forward, refit
                r = records[cid]
                r.compute_s += m["compute_s"] + a["compute_s"]
                r.samples += m["samples"]
                real.append((cid, s["loss"]))
        for cid in active:
            channel.up(cid, models)
        kept = self.barrier(clock, active, backend, worker)
        weights = self.client_sizes[np.array(kept, dtype=np.int64)]
        backend.get(backend.server(self.server_role.finish, weights, *[uploads[c] for c in kept]))
        for cid, r in records.items():  # the server's loss when the client aligned this round, else the aux head's
            own = [v for c, v in real if c == cid] or [v for c, v in surrogate if c == cid]
            r.train_loss = own[-1] if own else float("nan")
        kept_set = set(kept)
        losses = [v for c, v in real if c in kept_set] or [v for c, v in surrogate if c in kept_set]
        return RoundResult(RoundResult.mean(losses), sum(records[c].samples for c in kept), list(records.values()))
