"""Local-loss split learning (Han et al., "Accelerating Federated Learning with Split Learning on Locally
Generated Losses", ICML 2021 workshop on federated learning): clients never wait for the server.

Beside its client part, every client carries a small auxiliary head h(phi; a) -> logits (FSL-SAGE's `build_aux`:
one linear map of the flattened activation, F*C + C parameters). Per local step, on each client:
  client  a = f_c(theta_c; x) with graph; local loss CE(h(phi; a), y); backward through h and f_c; one client
          step of both (`client_optimizer`)                                    -> a (detached), y up
  server  loss(f_s(a), y), backward, one server step; nothing goes back        (act_up, labels_up; grad_down = 0)
The server holds one server part and takes one step per upload, in the order the uploads reach it. Round start
and end as SFL, for the client part and the aux head together: both down to each client (model_down), both up
after the last step (model_up), FedAvg'd by partition size over the clients kept. A client keeps nothing
between rounds (its copies and optimizers start afresh from the global weights). The roles are CSE-FSL's
(`cse_fsl`, every step an upload); this driver differs from CSE-FSL's with upload_every = 1 only where a round
drops clients or its clients' uploads arrive out of step order (below), and gives its numbers otherwise.

Simulated clock, per client: the weights down; per step its forward, the aux head's forward and backward and
its own backward (3x the forward of both), then activations and labels up, and straight on to the next step
(no reply); then the weights up, where the server waits (the round policy acts there). The one server works
through the kept clients' uploads first come, first served, each from when it arrives or the server is free;
nobody waits for it, but the round ends only once it is through them and the kept clients' weights are in.

Interpretations where the paper leaves a detail open:
- the aux head is one linear map of the flattened cut activation (the paper's auxiliary networks are small and
  model-specific), float32 as FSL-SAGE's, stepped with the client part by a second optimizer of the same
  `client_optimizer` settings (the same as one joint optimizer: both are per-parameter); fresh every round;
- the server takes one step per upload (one server model, no per-client copies), in arrival order (ties: the
  earlier step, then the client's place in the round's sample): its numbers follow the order the clock serves;
- the server learns only from the uploads of the clients the round keeps: a dropped client's activations are
  discarded with its weights (the server knows from the device profiles who will not make it, as the deadline
  policy does), so a round's samples and losses are exactly the kept clients'; the server starts on them once
  the round's clients are known, which changes the simulated clock (computed from arrivals) not at all;
- train_loss is the server's loss on the kept clients' uploads (the joined model's; the aux head's local loss
  is not reported); a dropped client's is NaN;
- with `local_epochs`, each client makes ceil(partition size / batch) x epochs steps, as SFL.
"""

from __future__ import annotations

import numpy as np

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, ClientRecord, RoundResult
from hosfl_sim.algorithms.cse_fsl import CSEFSLClient, CSEFSLServer, serve_queue
from hosfl_sim.algorithms.fsl_sage import begin_with_aux
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import split_steps
from hosfl_sim.comm.channel import Channel


@register
class LocalLossSL(Algorithm):
    name = "local_loss_sl"
    summary = (
        "Local-loss split learning: first-order clients trained on an aux head's local loss, first-order server "
        "on the uploads; up: activations, labels, client + aux weights; down: client + aux weights, no gradient"
    )
    client_role = CSEFSLClient  # CSE-FSL's roles: its client's step with every step an upload, its server's step
    server_role = CSEFSLServer
    options = frozenset({"client_optimizer", "server_optimizer"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        active, models = begin_with_aux(CSEFSLServer, CSEFSLClient.begin, clients, worker, backend, channel)

        def send(cid: int, step: int) -> tuple:
            return cid, *backend.client(worker[cid], CSEFSLClient.step, cid, rnd, step, True, num_returns=2)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], CSEFSLClient.upload, c) for c in active}
        metas = backend.get([[meta for _, _, meta in batch] for batch in steps])
        arrivals = self.charge_clients(steps, metas, channel, records)
        for cid in active:
            channel.up(cid, models)
        kept = self.barrier(clock, active, backend, worker)
        # the kept clients' uploads, first come first served (ties: step, then the client's place in the sample)
        place, kept_set = {int(c): i for i, c in enumerate(clients)}, set(kept)
        queue = sorted((r for r in arrivals if r[2] in kept_set), key=lambda r: (r[0], r[1], place[r[2]]))
        learnt = [backend.server(CSEFSLServer.step, up) for _, _, _, up in queue]
        sizes = self.client_sizes[np.array(kept, dtype=np.int64)]
        outs = backend.get([*learnt, backend.server(CSEFSLServer.finish, sizes, *[uploads[c] for c in kept])])[:-1]
        serve_queue(clock, [(t, step, cid, out["flops"]) for (t, step, cid, _), out in zip(queue, outs)])
        clock.server_only(0.0)  # the round ends once the server is through its queue too
        for (_, _, cid, _), out in zip(queue, outs):
            records[cid].train_loss = out["loss"]  # the last of its uploads the server learnt from
        loss = RoundResult.mean([out["loss"] for out in outs])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))

    @staticmethod
    def charge_clients(
        steps: list[list[tuple]], metas: list[list[dict]], channel: Channel, records: dict[int, ClientRecord]
    ) -> list[tuple]:
        """Each client's steps on the clock and the ledger: compute, activations and labels up, no wait. Returns
        (arrival time at the server, step, client, upload future) per upload."""
        arrivals = []
        for step, (batch, batch_metas) in enumerate(zip(steps, metas)):
            for (cid, up, _), m in zip(batch, batch_metas):
                channel.clock.client_compute(cid, m["flops"])
                channel.up(cid, m["act"])
                channel.up(cid, m["labels"])
                arrivals.append((channel.clock.record(cid).t, step, cid, up))
                records[cid].compute_s += m["compute_s"]
                records[cid].samples += m["samples"]
        return arrivals
