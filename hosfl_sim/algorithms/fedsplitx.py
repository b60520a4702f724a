"""FedSplitX (Shin et al., "FedSplitX: Federated Split Learning for Computationally-Constrained Heterogeneous
Clients", 2023): multi-cut split federated learning. Clients of different capabilities cut the one model at
different layers; each cut has its aux head; the server holds the rest of the model for every cut.

The model is cut at the points `cuts` (default: the model's own cut, which makes this local-loss SL with a
layer-wise average): client c cuts at cuts[c % len(cuts)], so a round's clients are spread over the cuts in a
fixed, seed-free way. A client at cut k holds the layers up to k and an aux head for k (a linear map of the
flattened activation, FSL-SAGE's `build_aux`). Per local step, on each client:
  client  a = f_{<=k}(x) with graph; local loss CE(h_k(a), y); backward; one step of both    -> a, y up
  server  loss(f_{>k}(a), y), backward, one step of the server's layers after k; nothing goes back
The server holds one copy of the whole model; its optimizer covers every layer after the shallowest cut, and each
upload steps the layers after its own cut, in the order the uploads reach it. Round start and end as SFL, per cut:
a client gets the global layers up to its cut and its cut's aux head (model_down) and sends them back after its
last step (model_up); sizes differ by cut. The server then averages layer by layer over the kept clients' data:
a layer some kept clients hold becomes the average of their copies, weighted by partition size, and of the
server's copy, weighted by the partition sizes of the kept clients that do not hold it (their data trained it on
the server); layers no kept client holds are the server's as trained. Each cut's aux head is FedAvg'd over the
kept clients at that cut. No gradient ever comes down (grad_down = 0).

Simulated clock: local-loss SL's (local_loss_sl): clients never wait for the server, which serves the kept
clients' uploads first come, first served; the round ends once the weights are in and the queue is worked off.
The server's FLOPs per upload are 3x the forward of the layers after that upload's cut.

Interpretations where the paper leaves a detail open:
- cuts are assigned by client id (c mod the number of cuts), not by measured capability: the simulator's device
  profiles are drawn per seed, and a fixed assignment keeps a client's model size the same across seeds and runs;
  give the cuts from the shallowest to the deepest to spread the clients evenly;
- the aux heads are linear, one per cut, float32, fresh client optimizers each round (as local_loss_sl);
- the server's layers between two cuts learn from the shallower clients' uploads and are averaged with the
  deeper clients' copies as above; the server's optimizer state is kept across rounds for all its layers;
- the server learns only from the uploads of the clients the round keeps (local_loss_sl's reading);
- cuts other than the model's own need a model made of named layers (cnn, resnet): `models.split.recut`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.cse_fsl import CSEFSLClient, CSEFSLServer, serve_queue
from hosfl_sim.algorithms.fsl_sage import build_aux
from hosfl_sim.algorithms.local_loss_sl import LocalLossSL
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import average_into, load_numpy, shared_state, split_steps, to_numpy
from hosfl_sim.algorithms.task import TaskSpec, count_flops, from_wire, shape_key, tensor, to_tensors
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Weights
from hosfl_sim.config import ConfigError
from hosfl_sim.models import SplitModel
from hosfl_sim.models.split import Stage, cut_points, recut
from hosfl_sim.zo import make_optimizer


def cuts_of(spec: TaskSpec) -> list[str]:
    """The run's cut points, in the order clients are assigned to them."""
    return list(spec.algorithm.cuts) or [str(spec.model.cut)]


def split_at(spec: TaskSpec, split: SplitModel, cut: str) -> SplitModel:
    """`split` itself at the model's own cut, else the same layers recut at `cut`."""
    return split if cut == str(spec.model.cut) else recut(split, cut)


class FedSplitXClient(CSEFSLClient):
    """CSE-FSL's local-loss step on a client part and aux head of the client's own cut."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.cuts = cuts_of(spec)
        self.parts = [split_at(spec, self.split, cut).client.to(self.device) for cut in self.cuts]
        self.aux_bases = [build_aux(spec, part, self.split.input_keys) for part in self.parts]
        self.cut_of: dict[int, int] = {}
        self.counting = 0  # the cut whose part `forward_flops` counts (the stepping client's)

    def forget(self, client_id: int) -> None:
        super().forget(client_id)
        self.cut_of.pop(client_id, None)

    def begin_at(self, client_id: int, cut: int, parts: list[dict[str, dict[str, np.ndarray]]]) -> None:
        """The client's copies of its cut's global layers and aux head, with fresh optimizers."""
        model, head = copy.deepcopy(self.parts[cut]), copy.deepcopy(self.aux_bases[cut])
        load_numpy(model, parts[cut]["client"])
        load_numpy(head, parts[cut]["aux"])
        model.train()
        opt = self.spec.algorithm.client_optimizer
        self.local[client_id] = (model, make_optimizer([p for p in model.parameters() if p.requires_grad], opt))
        self.aux[client_id] = (head, make_optimizer(list(head.parameters()), opt))
        self.cut_of[client_id] = cut

    def step(self, client_id: int, rnd: int, step: int, send: bool) -> tuple[dict | None, dict]:
        self.counting = self.cut_of[client_id]
        upload, meta = super().step(client_id, rnd, step, send)
        if upload is not None:
            upload["cut"] = self.counting
        return upload, meta

    def forward_flops(self, inputs: dict[str, torch.Tensor]) -> int:
        cache = self.__dict__.setdefault("_cut_flops", {})
        key = (self.counting, shape_key(inputs))
        if key not in cache:
            cache[key] = count_flops(self.parts[self.counting], **inputs)
        return cache[key]

    def upload(self, client_id: int) -> dict[str, Any]:
        return {**super().upload(client_id), "cut": self.cut_of.pop(client_id)}


class FedSplitXServer(CSEFSLServer):
    """The whole model (the layers after each cut shared), an aux head per cut, one optimizer for the server's
    layers (those after the shallowest cut)."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cuts = cuts_of(spec)
        self.parts = [split_at(spec, self.split, cut) for cut in cuts]
        self.aux = nn.ModuleList([build_aux(spec, p.client, self.split.input_keys) for p in self.parts])  # type: ignore[assignment]
        layers = (
            [*self.client.named_children(), *self.server.named_children()] if isinstance(self.client, Stage) else []
        )
        self.whole = Stage(OrderedDict(layers))  # every layer once (state keys as the parts'), for the average
        shallowest = min(self.parts, key=lambda p: len(list(p.client.parameters())))
        params = [p for p in shallowest.server.parameters() if p.requires_grad]
        self.params, self.optimizer = params, make_optimizer(params, spec.algorithm.server_optimizer)

    def global_parts(self) -> tuple[list[dict[str, dict[str, np.ndarray]]], list[Weights]]:
        """Per cut: the global layers up to it and its aux head, and their size as one message."""
        parts = [
            {"client": to_numpy(shared_state(p.client)), "aux": to_numpy(head.state_dict())}
            for p, head in zip(self.parts, self.aux)
        ]
        return parts, [Weights.of(p["client"]) + Weights.of(p["aux"]) for p in parts]

    def step(self, upload: dict) -> dict:
        rest = self.parts[upload["cut"]].server
        a = from_wire(upload["a"], self.device, self.spec.dtype)
        side = to_tensors(upload["side"], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(rest(a, **side), tensor(upload["y"], self.device))
        loss.backward()
        self.optimizer.step()
        cache = self.__dict__.setdefault("_cut_flops", {})
        key = (upload["cut"], tuple(a.shape), *((k, v.shape) for k, v in sorted(upload["side"].items())))
        if key not in cache:
            cache[key] = count_flops(rest, a.detach(), **side)
        return {"loss": loss.item(), "flops": 3 * cache[key]}  # backward ~ 2x forward

    def finish(self, weights: np.ndarray, *uploads: dict) -> None:
        """The layer-wise average over the kept clients' data, and each cut's aux heads FedAvg'd."""
        if not uploads:
            return
        keys = sorted({k for u in uploads for k in u["client"]})
        whole = self.whole if len(self.parts) > 1 else self.client  # one cut: every client holds the same layers
        own = to_numpy({k: v for k, v in whole.state_dict().items() if k in keys})
        average_into(whole, [{k: u["client"].get(k, own[k]) for k in keys} for u in uploads], weights)
        for cut, head in enumerate(self.aux):
            at = [i for i, u in enumerate(uploads) if u["cut"] == cut]
            if at:
                average_into(head, [uploads[i]["aux"] for i in at], np.asarray(weights)[at])


@register
class FedSplitX(Algorithm):
    name = "fedsplitx"
    summary = (
        "FedSplitX: multi-cut split FL, first-order clients cut at different layers (cuts) and trained on their "
        "cut's aux head, server first-order on the rest; up: activations, labels, client + aux weights; "
        "down: client + aux weights of the client's cut (no cut gradient)"
    )
    client_role = FedSplitXClient
    server_role = FedSplitXServer
    options = frozenset({"client_optimizer", "server_optimizer", "cuts"})
    supports_policies = True
    supports_epochs = True

    @classmethod
    def check_task(cls, spec: TaskSpec, split: SplitModel, index: int) -> None:
        points = cut_points(spec.model.name)
        for cut in cuts_of(spec):
            try:
                split_at(spec, split, cut)
            except ValueError as e:
                raise ConfigError(f"algorithms[{index}].cuts", spec.algorithm.cuts, f"cut points ({e})") from None
            if points and cut not in points:
                raise ConfigError(f"algorithms[{index}].cuts", spec.algorithm.cuts, f"cut points among {points}")

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        parts, sizes = backend.server(FedSplitXServer.global_parts, num_returns=2)
        models = backend.get(sizes)
        cut = {int(c): int(c) % len(models) for c in clients}
        for cid in cut:
            channel.down(cid, models[cut[cid]])
        active = clock.drop_failed(list(cut))
        for cid in active:
            backend.later(backend.client(worker[cid], FedSplitXClient.begin_at, cid, cut[cid], parts))

        def send(cid: int, step: int) -> tuple:
            return cid, *backend.client(worker[cid], FedSplitXClient.step, cid, rnd, step, True, num_returns=2)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], FedSplitXClient.upload, c) for c in active}
        metas = backend.get([[meta for _, _, meta in batch] for batch in steps])
        arrivals = LocalLossSL.charge_clients(steps, metas, channel, records)
        for cid in active:
            channel.up(cid, models[cut[cid]])
        kept = self.barrier(clock, active, backend, worker)
        # the kept clients' uploads, first come first served (ties: step, then the client's place in the sample)
        place, kept_set = {int(c): i for i, c in enumerate(clients)}, set(kept)
        queue = sorted((r for r in arrivals if r[2] in kept_set), key=lambda r: (r[0], r[1], place[r[2]]))
        learnt = [backend.server(FedSplitXServer.step, up) for _, _, _, up in queue]
        sizes_kept = self.client_sizes[np.array(kept, dtype=np.int64)]
        finish = backend.server(FedSplitXServer.finish, sizes_kept, *[uploads[c] for c in kept])
        outs = backend.get([*learnt, finish])[:-1]
        serve_queue(clock, [(t, step, cid, out["flops"]) for (t, step, cid, _), out in zip(queue, outs)])
        clock.server_only(0.0)  # the round ends once the server is through its queue too
        for (_, _, cid, _), out in zip(queue, outs):
            records[cid].train_loss = out["loss"]  # the last of its uploads the server learnt from
        loss = RoundResult.mean([out["loss"] for out in outs])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))
