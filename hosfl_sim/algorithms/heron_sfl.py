"""HERON-SFL (Kou, Chen, Yang and Shen, "Lean Clients, Full Accuracy: Hybrid Zeroth- and First-Order Split
Federated Learning", arXiv 2601.09076): CSE-FSL's round with a backprop-free client.

Every client carries its client part and an auxiliary head h(phi; a) -> logits (FSL-SAGE's `build_aux`: one linear
map of the flattened activation) and trains both on the local loss CE(h(phi; f_c(theta_c; x)), y) from forwards
only. Per round each sampled client downloads the global client part and aux head (model_down), then for each
local step t of the round, with w = (theta_c, phi) and P directions u_p over both, drawn from its own seeds:
  client  a = f_c(theta_c; x), l_0 = CE(h(phi; a), y)                   (no graph: every forward under no_grad)
          s_p = CE(h(w + mu u_p; x), y) - l_0, p = 1..P                  (P perturbed forwards of part and head)
          w <- opt(w, (1 / (P mu)) sum_p s_p u_p)                         (`client_optimizer`, a ZOUpdater)
  at t % upload_every == 0 only:  (a, y) up (act_up, labels_up), a as the unperturbed forward computed it
  server  per upload, as it arrives: CE(f_s(a), y), backward, one step of the one server part; nothing goes back
and finally uploads both (model_up); the server FedAvgs the client parts and aux heads of the clients it kept,
weighted by partition size. So per round and client: ceil(steps / upload_every) uploads, grad_down = 0, and no
seeds or scalars cross the network (the ZO estimate stays on the client). The driver, the server role, the clock
and the round policies are CSE-FSL's (`cse_fsl.CSEFSL`), with this client role.

Interpretations where the paper leaves a detail open:
- the estimator is the paper's one-sided two-point one, (l(w + mu u) - l(w)) / mu per direction, averaged over
  P = `perturbations` directions (its d/mu scale for uniform-sphere directions is the Gaussian 1/mu here;
  `distribution` picks Gaussian or Rademacher); the unperturbed forward gives both l_0 and the smashed data;
- the directions span the client part and the aux head jointly (one vector w), from seeds of (run, round, step,
  client): each client draws its own, as nothing ties the clients' local steps together;
- uploads follow CSE-FSL's schedule (`upload_every`, default 5): HERON-SFL builds on CSE-FSL's sparse uploads;
  with upload_every 1 every step uploads, as in local-loss split learning;
- the client part is prepared as every ZO client here (`prepare_zo_module`: eval mode, BatchNorm frozen, no
  requires_grad); its BatchNorm statistics travel with the weights unchanged;
- each round starts the client's ZO optimizer afresh (plain SGD keeps no state at all), as CSE-FSL's clients do;
- the client's FLOPs per step are its P + 1 forwards of part and head plus the update's multiply-adds.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hosfl_sim.algorithms.cse_fsl import CSEFSL, CSEFSLClient, head_flops
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import load_numpy, shared_state, to_numpy
from hosfl_sim.algorithms.task import TaskSpec, sample_batch, tensor, to_wire
from hosfl_sim.algorithms.zo_client import prepare_zo_module
from hosfl_sim.comm.messages import Activations, Labels
from hosfl_sim.memory import static_bytes
from hosfl_sim.zo import ZOUpdater, derive_seeds, make_optimizer
from hosfl_sim.zo.probe import Prober

CLIENT_SIDE = 0  # stream 2 * client + CLIENT_SIDE: a client's own directions (as SFL-ZO-V1's)


class PartAndHead(nn.Module):
    """The client part then the aux head: the one function whose parameters HERON-SFL's probes perturb."""

    def __init__(self, part: nn.Module, head: nn.Module):
        super().__init__()
        self.part, self.head = part, head

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.part(**inputs).float())  # the head is float32, as FSL-SAGE's


class HERONClient(CSEFSLClient):
    """Per virtual client in flight: its copy of part and head, prepared for forward-only training, and its
    ZO optimizer and prober."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.part_keys = list(shared_state(self.base))  # what FedAvg takes of the client part
        self.zo: dict[int, tuple[PartAndHead, ZOUpdater, Prober]] = {}

    def forget(self, client_id: int) -> None:
        super().forget(client_id)
        self.zo.pop(client_id, None)

    def begin(self, client_id: int, global_state: dict[str, np.ndarray], aux_state: dict[str, np.ndarray]) -> None:
        cfg = self.spec.algorithm
        part, head = copy.deepcopy(self.base), copy.deepcopy(self.aux_base)
        load_numpy(part, global_state)
        load_numpy(head, aux_state)
        joint = PartAndHead(part, head)
        names, params = prepare_zo_module(joint)
        updater = ZOUpdater(params, cfg.client_optimizer, cfg.distribution)
        self.zo[client_id] = (joint, updater, Prober(joint, names, params, cfg.distribution, cfg.probe))

    @torch.no_grad()
    def step(self, client_id: int, rnd: int, step: int, send: bool) -> tuple[dict | None, dict]:
        """One forward-only local step; with `send`, the unperturbed activations and the labels for the server."""
        cfg = self.spec.algorithm
        with self.work(client_id) as t:
            joint, updater, prober = self.zo[client_id]
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x, y = self.client_inputs(feats), tensor(labels, self.device)
            a = joint.part(**x)  # (B, ...) smashed data
            loss = F.cross_entropy(joint.head(a.float()), y)
            seeds = derive_seeds(self.spec.seed, rnd, step, cfg.perturbations, stream=2 * client_id + CLIENT_SIDE)
            s = np.array([float(F.cross_entropy(out, y) - loss) for out in prober.outputs(seeds, cfg.mu, kwargs=x)])
            updater.apply(seeds, s.astype(np.float32), cfg.mu)
            upload = {"a": to_wire(a), "side": self.side_inputs(feats), "y": labels} if send else None
        forwards = (cfg.perturbations + 1) * (self.forward_flops(x) + head_flops(self.aux_base, len(labels)))
        meta: dict[str, Any] = {"loss": float(loss), "samples": len(labels), "compute_s": t.seconds}
        meta["flops"] = forwards + updater.flops(cfg.perturbations)
        if upload is not None:
            meta["act"], meta["labels"] = Activations.of(upload["a"], upload["side"]), Labels.of(labels)
        return upload, meta

    def upload(self, client_id: int) -> dict[str, dict[str, np.ndarray]]:
        joint, _, _ = self.zo.pop(client_id)
        part = joint.part.state_dict()
        return {"client": to_numpy({k: part[k] for k in self.part_keys}), "aux": to_numpy(joint.head.state_dict())}

    def static_memory(self) -> int:
        """Client part and aux head, no gradients, and the ZO optimizer's state (none for plain SGD)."""
        joint = PartAndHead(self.base, self.aux_base)
        params = list(joint.parameters())
        opt_cfg = self.spec.algorithm.client_optimizer
        buffer_free = opt_cfg.name == "sgd" and opt_cfg.momentum == 0.0  # as ZOUpdater decides
        return static_bytes(joint, None if buffer_free else make_optimizer(params, opt_cfg))["total"]


@register
class HERONSFL(CSEFSL):
    name = "heron_sfl"
    summary = (
        "HERON-SFL: client zeroth-order (P forward probes of client part + aux head on a local loss, no backprop), "
        "server first-order per upload; up: activations and labels every upload_every local steps, client + aux "
        "weights; down: client + aux weights (no cut gradient, no seeds or scalars)"
    )
    client_role = HERONClient
    options = CSEFSL.options | {"perturbations", "mu", "distribution", "probe"}
