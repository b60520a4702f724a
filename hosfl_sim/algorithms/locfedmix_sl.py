"""LocFedMix-SL (Oh et al., "LocFedMix-SL: Localize, Federate, and Mix for Improved Scalability, Convergence, and
Latency in Split Learning", WWW 2022): parallel split learning with local losses, FedAvg'd client parts, and
the server's smashed data mixed up across clients (SmashMix).

Localize: beside its client part, every client carries an aux network: FSL-SAGE's linear classifier head
h(phi; a) -> logits (`build_aux`) and a linear decoder r(psi; a) -> x_hat of a small copy of the input (the
InfoPro-style mutual-information regulariser: reconstructing the input from the smashed data keeps I(a; x) high).
Per local step, on each client:
  client  a = f_c(theta_c; x) with graph; local loss CE(h(a), y) + mi_weight * MSE(r(a), pool(x)); backward
          through h, r and f_c; one client step of all three (`client_optimizer`)   -> a (detached), y up
Mix: per local step the server takes the kept clients' uploads of that step together, draws `smashmix` pairs of
them (i != j) and a lambda ~ Beta(mix_alpha, mix_alpha) per pair, and adds the mixed-up batch
a_mix = lambda a_i + (1 - lambda) a_j (manifold mixup) with the loss lambda CE(f_s(a_mix), y_i) +
(1 - lambda) CE(f_s(a_mix), y_j); one server step on the mean loss of the real and the mixed batches.
Federate: round start and end as SFL for the client part and the aux network together: both down (model_down),
both up after the last step (model_up), FedAvg'd by partition size over the clients kept.
Nothing comes down within a round: act_up and labels_up every step, grad_down = 0.

Simulated clock, per client: the weights down; per step its forward, aux network and backward (3x the forward of
all three), activations and labels up, and straight on (no reply); then the weights up, where the server waits
(the round policy acts there). The server's step t starts once the last kept upload of step t has arrived and it
is free (forward + backward of every real and mixed batch: 3x a forward each; the mixing itself is not counted);
nobody waits for it, but the round ends only once it is through its steps and the kept clients' weights are in.

Interpretations where the paper leaves a detail open:
- no cut gradient goes down: the client part learns from its local loss only (LocSplitFed's local parallelism,
  which LocFedMix-SL keeps for its latency; model averaging, not the server's gradient, keeps the client parts
  from drifting apart);
- the aux network is one linear classifier plus one linear decoder (none with mi_weight 0), float32 (the
  paper's is small and model-specific); the decoder reconstructs the input average-pooled to at most 8 x 8
  (images; flat features as they are), so it stays small on large inputs; both travel and are averaged with the
  client part; a text task (token ids) has nothing to reconstruct: there the local loss is the classifier's alone;
- the server learns only from the kept clients' uploads, one step per local step (clients with fewer steps drop
  out of the later ones); mixing pairs and lambdas are drawn from the run seed, the round and the step, so a rerun
  mixes the same way; a step with one upload adds no mixed batch; pairs of different batch sizes are mixed over
  the shorter one;
- train_loss is the server's loss on each client's real uploads (the mixed batches' losses are not reported).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.cse_fsl import CSEFSLClient, CSEFSLServer, head_flops, serve_queue
from hosfl_sim.algorithms.fsl_sage import AUX_SEED_TAG, begin_with_aux, build_aux
from hosfl_sim.algorithms.local_loss_sl import LocalLossSL
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import split_steps
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_tensors, to_wire
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, Labels

MIX_SEED_TAG = 23  # mixed with the run seed, round and step to draw the server's mixing pairs


def reconstruction_target(x: torch.Tensor) -> torch.Tensor:
    """What the decoder reconstructs: images average-pooled to at most 8 x 8, flattened; flat features as they are."""
    if x.dim() == 4:
        x = F.adaptive_avg_pool2d(x.float(), (min(x.shape[2], 8), min(x.shape[3], 8)))
    return x.float().flatten(1)


def build_aux_net(spec: TaskSpec, client: nn.Module, input_keys: tuple[str, ...]) -> nn.ModuleDict:
    """The classifier head (`build_aux`) and, with mi_weight > 0 on image or feature inputs x, the input decoder, both
    from the run seed (alike in every process)."""
    head = build_aux(spec, client, input_keys)
    if spec.algorithm.mi_weight == 0 or input_keys != ("x",):
        return nn.ModuleDict({"head": head})
    (x,) = to_tensors({"x": spec.train.features["x"][:1]}, next(client.parameters()).device).values()
    with torch.no_grad():
        a = client(x=x)
    seed = int(np.random.SeedSequence([spec.seed, AUX_SEED_TAG, 1]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = nn.Sequential(nn.Flatten(), nn.Linear(a[0].numel(), reconstruction_target(x).shape[1]))
    return nn.ModuleDict({"head": head, "decoder": decoder.to(a.device)})


class LocFedMixClient(CSEFSLClient):
    """CSE-FSL's client copies with an aux network (classifier and decoder) in place of the aux head."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.aux_base = build_aux_net(spec, self.base, self.split.input_keys)  # type: ignore[assignment]

    def step(self, client_id: int, rnd: int, step: int, send: bool) -> tuple[dict | None, dict]:
        """One local step on CE + mi_weight * reconstruction; the activations and labels for the server."""
        with self.work(client_id) as t:
            model, opt = self.local[client_id]
            aux, aux_opt = cast(nn.ModuleDict, self.aux[client_id][0]), self.aux[client_id][1]
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            a = model(**x)  # (B, ...) with graph
            loss = ce = F.cross_entropy(aux["head"](a.float()), tensor(labels, self.device))
            if "decoder" in aux:
                mse = F.mse_loss(aux["decoder"](a.float()), reconstruction_target(x["x"]))
                loss = ce + self.spec.algorithm.mi_weight * mse
            opt.zero_grad(set_to_none=True)
            aux_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            aux_opt.step()
            upload = {"a": to_wire(a.detach()), "side": self.side_inputs(feats), "y": labels}
        linear = sum(head_flops(cast(nn.Sequential, m), len(labels)) for m in aux.values())  # head and decoder
        flops = 3 * (self.forward_flops(x) + linear)
        meta: dict[str, Any] = {"loss": float(ce.detach()), "samples": len(labels), "compute_s": t.seconds}
        meta.update(flops=flops, act=Activations.of(upload["a"], upload["side"]), labels=Labels.of(labels))
        return upload, meta


class LocFedMixServer(CSEFSLServer):
    """One server part stepped once per local step on the real and mixed-up uploads of that step."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.aux = build_aux_net(spec, self.client, self.split.input_keys)  # type: ignore[assignment]

    def mix_step(self, rnd: int, step: int, *uploads: dict) -> dict:
        """One step on the mean loss of the uploads and `smashmix` mixed-up pairs of them; each upload's loss."""
        cfg = self.spec.algorithm
        acts = [from_wire(u["a"], self.device, self.spec.dtype) for u in uploads]
        ys = [tensor(u["y"], self.device) for u in uploads]
        self.optimizer.zero_grad(set_to_none=True)
        losses = [self.loss(self.server_forward(a, u["side"]), y) for a, u, y in zip(acts, uploads, ys)]
        flops = sum(3 * self.forward_flops(a, u["side"]) for a, u in zip(acts, uploads))
        terms = list(losses)
        if len(uploads) > 1:
            rng = np.random.default_rng([self.spec.seed, MIX_SEED_TAG, rnd, step])
            for _ in range(cfg.smashmix):
                i, j = rng.choice(len(uploads), size=2, replace=False)
                lam = float(rng.beta(cfg.mix_alpha, cfg.mix_alpha))
                n = min(len(ys[i]), len(ys[j]))
                side = {k: v[:n] for k, v in uploads[i]["side"].items()}
                mixed = lam * acts[i][:n] + (1 - lam) * acts[j][:n]
                logits = self.server_forward(mixed, side)
                terms.append(lam * self.loss(logits, ys[i][:n]) + (1 - lam) * self.loss(logits, ys[j][:n]))
                flops += 3 * self.forward_flops(mixed, side)
        (torch.stack(terms).mean()).backward()
        self.optimizer.step()
        return {"losses": [v.item() for v in losses], "flops": flops}


@register
class LocFedMixSL(Algorithm):
    name = "locfedmix_sl"
    summary = (
        "LocFedMix-SL: first-order clients on an aux network's local loss (classifier + input reconstruction), "
        "server first-order on the uploads plus SmashMix mixups, FedAvg; up: activations, labels every step, client "
        "+ aux weights; down: client + aux weights (no cut gradient)"
    )
    client_role = LocFedMixClient
    server_role = LocFedMixServer
    options = frozenset({"client_optimizer", "server_optimizer", "mi_weight", "smashmix", "mix_alpha"})
    supports_policies = True
    supports_epochs = True

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        active, models = begin_with_aux(LocFedMixServer, LocFedMixClient.begin, clients, worker, backend, channel)

        def send(cid: int, step: int) -> tuple:
            return cid, *backend.client(worker[cid], LocFedMixClient.step, cid, rnd, step, True, num_returns=2)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], LocFedMixClient.upload, c) for c in active}
        metas = backend.get([[meta for _, _, meta in batch] for batch in steps])
        arrivals = LocalLossSL.charge_clients(steps, metas, channel, records)
        for cid in active:
            channel.up(cid, models)
        kept = self.barrier(clock, active, backend, worker)
        kept_set = set(kept)
        by_step: dict[int, list[tuple]] = {}  # the kept clients' uploads per step, in sampling order
        for t, step, cid, up in arrivals:
            if cid in kept_set:
                by_step.setdefault(step, []).append((t, cid, up))
        learnt = [backend.server(LocFedMixServer.mix_step, rnd, s, *[up for *_, up in by_step[s]]) for s in by_step]
        sizes = self.client_sizes[np.array(kept, dtype=np.int64)]
        outs = backend.get([*learnt, backend.server(LocFedMixServer.finish, sizes, *[uploads[c] for c in kept])])[:-1]
        last = {s: max(rows, key=lambda r: r[0]) for s, rows in by_step.items()}  # the step's last arrival
        serve_queue(clock, [(last[s][0], s, last[s][1], out["flops"]) for s, out in zip(by_step, outs)])
        clock.server_only(0.0)  # the round ends once the server is through its steps too
        losses = []
        for s, out in zip(by_step, outs):
            for (_, cid, _), v in zip(by_step[s], out["losses"]):
                records[cid].train_loss = v  # its last upload's
                losses.append(v)
        return RoundResult(RoundResult.mean(losses), sum(records[c].samples for c in kept), list(records.values()))
