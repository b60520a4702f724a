"""DSL-Aux: split learning decoupled by an auxiliary network (decoupled greedy learning, Belilovsky et al., ICML
2020, applied to split learning): sequential split learning in which no gradient crosses the cut.

One client part with its aux head (a linear map of the flattened activation, FSL-SAGE's `build_aux`) and one
server part; the sampled clients take turns with them, in sampling order, as in vanilla split learning. A turn:
the client part and aux head come down to the client (model_down), then for each local step
  client  a = f_c(theta_c; x) with graph; local loss CE(h(phi; a), y); backward through h and f_c; one step of
          both (`client_optimizer`)                                        -> a (detached), y up
  server  loss(f_s(a), y), backward, one server step; nothing goes back    (act_up, labels_up; grad_down = 0)
and finally the client part and aux head go up (model_up); the server keeps them and relays them to the next client.

How it differs from the methods next to it:
- vanilla_sl takes the same turns but its client waits for the server's cut gradient every step; here the client
  never waits (nothing comes down within a turn), so a turn is as long as the client's own work;
- local_loss_sl trains on the same local loss but with the sampled clients in parallel, each on its own copy,
  FedAvg'd at the round's end; here there is one client part, trained by one client at a time, and no average.

Simulated clock: a turn starts when the previous turn's part has reached the server (or would have: a client the
policy drops still takes its turn; the relay costs nothing and does not wait for the server's queue); per step
the client's forward, aux head and backward (3x the forward of both), then activations and labels up; then the
weights up. The server works through the uploads first come, first served, each from its arrival; the round ends
once the last part is in and the queue is worked off.

Interpretations (decoupled greedy learning is not a split-learning protocol; these choices make it one):
- the turns, the handover through the server, the fresh client optimizers each turn and the round policies are
  vanilla_sl's: a client that fails or misses the deadline hands nothing over (the next client starts from the last
  part handed over), under over-commit the first K handovers are kept;
- the server learns only from the uploads of the clients that hand over (as local_loss_sl: it knows from the
  device profiles whose part will not count, and discards their activations), first come, first served; a round's
  samples and training loss are those of the clients kept;
- the aux head travels with the client part (it is the client's; the next client goes on training it);
- train_loss is the server's loss on the uploads (the joined model's; the aux head's local loss is not reported).
"""

from __future__ import annotations

import numpy as np

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.cse_fsl import CSEFSLClient, CSEFSLServer, serve_queue
from hosfl_sim.algorithms.local_loss_sl import LocalLossSL
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import load_numpy, split_steps
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Weights


class DSLAuxClient(CSEFSLClient):
    """The client whose turn it is: CSE-FSL's local-loss step; `take_over` begins from the part handed over."""

    def take_over(self, client_id: int, part: dict[str, dict[str, np.ndarray]]) -> None:
        self.begin(client_id, part["client"], part["aux"])


class DSLAuxServer(CSEFSLServer):
    """The one server part (CSEFSLServer.step per upload) and the last client part and aux head handed over."""

    def part(self) -> tuple[dict[str, dict[str, np.ndarray]], Weights]:
        (client, size), (aux, aux_size) = self.global_client(), self.global_aux()
        return {"client": client, "aux": aux}, size + aux_size

    def accept(self, part: dict[str, dict[str, np.ndarray]]) -> None:
        """A client's part and aux head, handed over: the next client (or the test) starts from them."""
        load_numpy(self.client, part["client"])
        load_numpy(self.aux, part["aux"])


@register
class DSLAux(Algorithm):
    name = "dsl_aux"
    summary = (
        "DSL-Aux: sequential split learning decoupled by an aux head: first-order clients on a local loss, one at a "
        "time, server first-order on the uploads, no FedAvg; up: activations, labels, client + aux weights; "
        "down: client + aux weights (no cut gradient)"
    )
    client_role = DSLAuxClient
    server_role = DSLAuxServer
    options = frozenset({"client_optimizer", "server_optimizer"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        part, size = backend.server(DSLAuxServer.part, num_returns=2)
        weights = backend.get(size)  # every part handed over has these keys and shapes
        quota = clock.quota  # over-commit: the first `quota` handovers are kept
        deadline = clock.cfg.deadline_s if clock.cfg.policy == "deadline" else None
        handed: list[int] = []
        turned: list[int] = []  # the clients that took their turn (did not fail)
        losses: list[float] = []  # the server's, on the uploads of the clients that handed over
        ready = 0.0  # when the server holds the part to relay
        for cid in (int(c) for c in clients):
            clock.record(cid).t = ready
            if not self.send_model([cid], channel, weights):
                continue  # failed mid-round: hands nothing over
            turned.append(cid)
            w = worker[cid]
            backend.later(backend.client(w, DSLAuxClient.take_over, cid, part))

            def send(cid: int, step: int, w: int = w) -> tuple:
                return cid, *backend.client(w, DSLAuxClient.step, cid, rnd, step, True, num_returns=2)

            steps = split_steps(self, [cid], send)
            upload = backend.client(w, DSLAuxClient.upload, cid)
            metas = backend.get([[m for *_, m in b] for b in steps])
            arrivals = LocalLossSL.charge_clients(steps, metas, channel, records)
            channel.up(cid, weights)
            ready = clock.record(cid).t  # the next turn starts once this one is over
            if (deadline is None or ready <= deadline) and (quota is None or len(handed) < quota):
                handed.append(cid)  # the server learns from its uploads, keeps its part and relays it
                outs = backend.get([backend.server(DSLAuxServer.step, up) for *_, up in arrivals])
                serve_queue(clock, [(t, step, c, out["flops"]) for (t, step, c, _), out in zip(arrivals, outs)])
                losses += [out["loss"] for out in outs]
                records[cid].train_loss = outs[-1]["loss"]
                backend.later(backend.server(DSLAuxServer.accept, upload))
                part = upload
        kept = self.barrier(clock, turned, backend, worker)
        if kept != handed:
            raise RuntimeError(f"the round policy kept {kept}, the handovers were {handed}")
        clock.server_only(0.0)  # the round ends once the server is through its queue too
        return RoundResult(RoundResult.mean(losses), sum(records[c].samples for c in kept), list(records.values()))
