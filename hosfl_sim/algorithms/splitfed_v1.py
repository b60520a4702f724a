"""SplitFed-V1: one server-side copy per client, first-order on both sides, both sides FedAvg'd each round.

Per round, for the K sampled clients (FedAvg weights w_k = partition sizes):
  fed server  -> client k     global client part theta_c                      model_down (client k)
  fed server  -> main server  one copy theta_s,k of the global server part    model_down (SERVER_LINK)
  per local step, for each client k:
    client k     a = f_c(theta_c,k; x) with graph                 -> a, y up      act_up, labels_up
    main server  loss(f_s(theta_s,k; a), y), backward, one step on copy k  -> g = dl/da down  grad_down
    client k     backward of g through f_c, one client step
  client k    -> fed server   theta_c,k                                        model_up (client k)
  main server -> fed server   theta_s,k, for every k                           model_up (SERVER_LINK)
  fed server  theta_c = sum_k w_k theta_c,k / sum_k w_k,  theta_s likewise

Accounting of the server-side exchange: the server copies are averaged by the fed server, so each copy's weights
cross the main-server <-> fed-server link twice a round (the global server part down into the copy, the trained
copy up), K copies a round: 2 K d_s values. They are charged under the weight categories (`model_down`,
`model_up`: the same direction as the client parts, towards and away from the aggregator) to the ledger id
`SERVER_LINK`, which is no client: the run totals (`bytes_model_*` in rounds.parquet) include them, while each
client's own link bytes (clients.parquet, the simulated clock) hold only what crosses that client's link.
Optimizer state starts afresh each round on both sides (a copy lives for one round).

Simulated clock, as SFL's: client part down; per local step a client forward, activations and labels up, the
copy's forward + backward on the one main server (requests served first come, first served: one machine holds
all copies), the cut gradient down, the client backward; the client part up. The fed server waits for the
uploads (the round policy acts there) and averages only the clients it kept, on both sides; the copies of the
others are discarded and not uploaded. A round's samples and training loss are the kept clients'.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import (
    SFLClient,
    SFLServer,
    average_into,
    charge_split_steps,
    shared_state,
    split_steps,
    to_numpy,
)
from hosfl_sim.algorithms.task import TaskSpec, from_wire, tensor, to_tensors, to_wire
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import CutGrad, Weights
from hosfl_sim.zo import make_optimizer

if TYPE_CHECKING:
    from hosfl_sim.algorithms.mu_splitfed import MUSplitFed

SERVER_LINK = -1  # ledger id of the main-server <-> fed-server link: in the run totals, on no client's link


def begin_copies_round(
    algorithm: SplitFedV1 | MUSplitFed, clients: np.ndarray, worker: dict[int, int], backend: Backend, channel: Channel
) -> tuple[list[int], Weights, Weights]:
    """A round of a server with one copy per client: the copies made, the global client part sent down (and each
    copy charged on the server link), clients that fail mid-round dropped, the rest begun.
    Returns (the clients that go on, the client part's message, a server copy's message)."""
    active = [int(c) for c in clients]
    global_state, size = backend.server(algorithm.server_role.global_client, num_returns=2)
    client_part, server_copy = backend.get([size, backend.server(algorithm.server_role.begin_copies, *active)])
    for _ in active:
        channel.down(SERVER_LINK, server_copy)  # a copy per client, fed server -> main server
    active = algorithm.send_model(active, channel, client_part)
    for cid in active:
        backend.later(backend.client(worker[cid], algorithm.client_role.begin, cid, global_state))
    return active, client_part, server_copy


class SplitFedV1Server(SFLServer):
    """The global client and server parts plus, during a round, one server copy (with its own optimizer) per
    sampled client. The global server part is never stepped itself: `finish` replaces it by the copies' average.
    Callers must `begin_copies` before `copy_step` and `finish` every round they began."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)  # SFLServer's own optimizer stays unused (it allocates state only when stepped)
        self.copies: dict[int, tuple[nn.Module, torch.optim.Optimizer]] = {}

    def begin_copies(self, *client_ids: int) -> Weights:
        """One copy of the global server part per client; returns one copy as it would travel."""
        for cid in client_ids:
            model = copy.deepcopy(self.server)
            params = [p for p in model.parameters() if p.requires_grad]
            self.copies[cid] = (model, make_optimizer(params, self.spec.algorithm.server_optimizer))
        return Weights.of(to_numpy(shared_state(self.server)))

    def copy_step(self, client_id: int, upload: dict) -> tuple[np.ndarray, dict]:
        model, opt = self.copies[client_id]
        a = from_wire(upload["a"], self.device, self.spec.dtype).requires_grad_(True)  # (B, ...) smashed data
        y = tensor(upload["y"], self.device)
        opt.zero_grad(set_to_none=True)
        loss = self.loss(model(a, **to_tensors(upload["side"], self.device)), y)
        loss.backward()
        opt.step()
        assert a.grad is not None  # the backward reached the activation
        g = to_wire(a.grad)  # dl/da, a's shape
        flops = 3 * self.forward_flops(a, upload["side"])  # the copy has the global part's shapes; backward ~ 2x
        return g, {"loss": loss.item(), "grad": CutGrad.of(g), "flops": flops}

    def finish(self, client_ids: list[int], weights: np.ndarray, *client_states: dict[str, np.ndarray]) -> None:
        """FedAvg both sides over `client_ids` (the kept clients): their client parts (uploaded in that order) and
        their server copies. Every copy of the round is discarded afterwards."""
        if client_ids:
            self.fedavg(weights, *client_states)
            server_states = [to_numpy(shared_state(self.copies[cid][0])) for cid in client_ids]
            average_into(self.server, server_states, weights)
        self.copies.clear()


@register
class SplitFedV1(Algorithm):
    name = "splitfed_v1"
    summary = (
        "SplitFed-V1: first-order on both sides, one server copy per client, both sides FedAvg'd each round; "
        "up: activations, labels, client weights; down: cut gradients, client weights; "
        "server copies' weights charged on the main-server <-> fed-server link"
    )
    client_role = SFLClient
    server_role = SplitFedV1Server
    options = frozenset({"client_optimizer", "server_optimizer"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        active, client_part, server_copy = begin_copies_round(self, clients, worker, backend, channel)

        def send(cid: int, step: int) -> tuple:
            up, meta = backend.client(worker[cid], self.client_role.forward, cid, rnd, step, num_returns=2)
            g, smeta = backend.server(self.server_role.copy_step, cid, up, num_returns=2)
            return cid, meta, smeta, backend.client(worker[cid], self.client_role.backward, cid, g)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], self.client_role.upload, c) for c in active}
        losses = charge_split_steps(backend.get(steps), channel, records, lambda _, srv: srv["grad"], backward=True)
        for cid in active:
            channel.up(cid, client_part)
        kept = self.barrier(clock, active, backend, worker)
        channel.up(SERVER_LINK, server_copy.times(len(kept)))  # only the kept copies travel
        weights = self.client_sizes[np.array(kept, dtype=np.int64)]
        backend.get(backend.server(self.server_role.finish, kept, weights, *[uploads[c] for c in kept]))
        kept_set = set(kept)
        loss = RoundResult.mean([v for c, v in losses if c in kept_set])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))
