"""A new algorithm in one file: split learning with a frozen client part (the server-only baseline).

Clients only run the forward of their part and send activations and labels; the server trains its part
first-order on the K uploads of a step. Nothing is sent back, and the client part never changes.
Import this module (or name it in an entry point) and scenarios can say `algorithms: [{name: frozen_client}]`.
"""

import numpy as np
import torch

from hosfl_sim.algorithms import Algorithm, Backend, RoundResult, register
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.task import TaskSpec, sample_batch, tensor
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, Labels
from hosfl_sim.zo import make_optimizer


class FrozenClient(ClientRole):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.client = self.split.client.to(self.device).eval()  # eval: BatchNorm statistics stay frozen too

    @torch.no_grad()
    def forward(self, client_id: int, rnd: int, step: int) -> tuple[dict, dict]:
        with self.work(client_id) as t:
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            a = self.client(**x).cpu().numpy()
            up = {"a": a, "side": self.side_inputs(feats), "y": labels}
        meta = {"act": Activations.of(up["a"], up["side"]), "labels": Labels.of(labels), "samples": len(labels)}
        return up, {**meta, "compute_s": t.seconds, "flops": self.forward_flops(x)}


class HeadServer(ServerRole):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.optimizer = make_optimizer(list(self.server.parameters()), spec.algorithm.server_optimizer)

    def state(self) -> dict:  # what outlives a round: checkpoints, and a rerun after a worker died, restore it
        return {**super().state(), "optimizer": self.optimizer}

    def train_step(self, *uploads: dict) -> dict:
        """One first-order step on the mean loss of the uploads."""
        self.optimizer.zero_grad(set_to_none=True)
        losses, flops = [], 0
        for up in uploads:
            a = tensor(up["a"], self.device)
            loss = self.loss(self.server_forward(a, up["side"]), tensor(up["y"], self.device))
            (loss / len(uploads)).backward()
            losses.append(loss.item())
            flops += 3 * self.forward_flops(a, up["side"])  # forward + backward (~2x forward)
        self.optimizer.step()
        return {"losses": losses, "flops": flops}


@register
class FrozenClientSL(Algorithm):
    name = "frozen_client"
    summary = "Frozen client part, server trained first-order; up: activations, labels; down: nothing"
    client_role = FrozenClient
    server_role = HeadServer
    options = frozenset({"server_optimizer"})  # the fields of its section it reads, besides the common ones

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        worker, records = self.assign(clients)
        losses: list[float] = []
        for step in range(self.cfg.local_steps):
            sent = {c: backend.client(w, FrozenClient.forward, c, rnd, step, num_returns=2) for c, w in worker.items()}
            step_done = backend.server(HeadServer.train_step, *[up for up, _ in sent.values()])
            for c, meta in zip(sent, backend.get([meta for _, meta in sent.values()])):
                channel.clock.client_compute(c, meta["flops"])
                channel.up(c, meta["act"])
                channel.up(c, meta["labels"])
                records[c].samples += meta["samples"]
                records[c].compute_s += meta["compute_s"]
            out = backend.get(step_done)
            channel.clock.server_batch(list(worker), out["flops"])
            for c, loss in zip(sent, out["losses"]):
                records[c].train_loss = loss
            losses += out["losses"]
        return RoundResult(RoundResult.mean(losses), sum(r.samples for r in records.values()), list(records.values()))
