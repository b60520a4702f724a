"""Vanilla split learning (Gupta and Raskar, 2018; Vepakomma et al., 2018): one client part, one server part,
both first-order; the sampled clients take turns with them, in sampling order. No FedAvg.

A client's turn: the client part (as the last client handed it over) comes down to it from the server, then for
each local step:
  client  a = f_c(theta_c; x) with graph                               -> a, y up     act_up, labels_up
  server  loss(f_s(a), y), backward, one server step                   -> g down      grad_down
  client  backward of g through f_c, one client step
and finally it sends its client part up (model_up), which the server keeps and sends down to the next client
(model_down). Per round and client that is SFL's ledger; the difference is the clock, where the clients are
strictly sequential: client k+1's turn starts only once client k's part has reached the server.

Interpretations (the papers leave these open):
- The handover goes through the server, as in the centralized variant of split learning (Vepakomma et al.): the
  client part up to the server, then down to the next client; peer-to-peer handover is not modelled. The server
  keeps the last part handed over: it is what the test evaluates, what a checkpoint saves, and what the first
  client of the next round starts from.
- Only the weights (trainable parameters and BatchNorm statistics, as SFL uploads them) travel: every turn starts
  a fresh client optimizer, as SFL's clients do each round.
- The server part is stepped at every step of every turn, as in SFL, including the steps of a client whose part is
  then not handed over (its server steps have already happened).
- Round policies act on the handover. A client that fails mid-round gets the part, then vanishes; one whose part
  would reach the server after the deadline is dropped (the server knows it from the device profiles, as for every
  algorithm); under over-commit the first K handovers are kept (the first K clients that do not fail, in a chain).
  A client dropped in any of these ways hands nothing over: the next client starts from the last part that was
  handed over (the server's copy), as soon as the server is done with the dropped client's steps (it does not wait
  for a part that will not count). Every sampled client that has not failed takes its turn, as every sampled SFL
  client works until its barrier; the round's one barrier, at its end, records who was kept, and it must agree
  with the handovers (checked).
- local_epochs as in SFL: each turn is ceil(partition size / batch) x local_epochs steps.

Simulated clock, per turn: the server's relay (no compute) once it holds the last part and is free, the part down,
per step the client forward, activations and labels up, the server's forward + backward (3x a forward), the cut
gradient down, the client backward (2x its forward), then the part up. A round's samples and training loss are
those of the clients kept.
"""

from __future__ import annotations

import numpy as np

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import SFLClient, SFLServer, charge_split_steps, load_numpy, split_steps
from hosfl_sim.comm.channel import Channel


class VanillaSLClient(SFLClient):
    """The client whose turn it is: `begin` loads the part handed over, `upload` hands its part back."""


class VanillaSLServer(SFLServer):
    """The one server part (SFLServer.train_step) and the last client part handed over (`accept`)."""

    def accept(self, state: dict[str, np.ndarray]) -> None:
        """A client's part, handed over: the next client (or the test) starts from it."""
        load_numpy(self.client, state)


@register
class VanillaSL(Algorithm):
    name = "vanilla_sl"
    summary = (
        "Vanilla split learning: first-order on both sides, one client part passed from client to client in turn "
        "through the server, no FedAvg; up: activations, labels, client weights; down: cut gradients, client weights"
    )
    client_role = VanillaSLClient
    server_role = VanillaSLServer
    options = frozenset({"client_optimizer", "server_optimizer"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        state, size = backend.server(VanillaSLServer.global_client, num_returns=2)
        weights = backend.get(size)  # every part handed over has these keys and shapes
        quota = clock.quota  # over-commit: the first `quota` handovers are kept
        deadline = clock.cfg.deadline_s if clock.cfg.policy == "deadline" else None
        handed: list[int] = []
        turned: list[int] = []  # the clients that took their turn (did not fail)
        losses: list[tuple[int, float]] = []
        for cid in (int(c) for c in clients):
            clock.server_compute(cid, 0)  # the relay: once the server holds the last part and is free
            if not self.send_model([cid], channel, weights):
                continue  # failed mid-round: hands nothing over
            turned.append(cid)
            w = worker[cid]
            backend.later(backend.client(w, VanillaSLClient.begin, cid, state))

            def send(cid: int, step: int, w: int = w) -> tuple:
                up, meta = backend.client(w, VanillaSLClient.forward, cid, rnd, step, num_returns=2)
                g, smeta = backend.server(VanillaSLServer.train_step, up, num_returns=2)
                return cid, meta, smeta, backend.client(w, VanillaSLClient.backward, cid, g)

            steps = split_steps(self, [cid], send)
            upload = backend.client(w, VanillaSLClient.upload, cid)
            losses += charge_split_steps(backend.get(steps), channel, records, lambda m, _: m["grad"], backward=True)
            channel.up(cid, weights)
            on_time = deadline is None or clock.record(cid).t <= deadline
            if on_time and (quota is None or len(handed) < quota):
                handed.append(cid)
                backend.later(backend.server(VanillaSLServer.accept, upload))
                state = upload  # relayed by the server to the next client
                clock.server_compute(cid, 0)  # the server holds the part from its arrival
        kept = self.barrier(clock, turned, backend, worker)
        if kept != handed:
            raise RuntimeError(f"the round policy kept {kept}, the handovers were {handed}")
        loss = RoundResult.mean([v for c, v in losses if c in set(kept)])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))
