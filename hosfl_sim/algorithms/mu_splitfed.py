"""MU-SplitFed (Liang et al., NeurIPS 2025): zeroth-order on both sides, tau server steps per client step.

SplitFed-V1 layout (a client copy and a server copy per sampled client, both averaged at the end of the round),
trained with two-sided, one-direction zeroth-order estimates on both sides. Per round, for the K sampled clients:
  fed server  -> client k     global client part                              model_down (client k)
  fed server  -> main server  one copy of the global server part per client  model_down (SERVER_LINK)
  per local step, for each client k (u: one direction from the client's own seed, which never travels):
    client k  a = f_c(theta_c; x), a+ = f_c(theta_c + mu u; x), a- = f_c(theta_c - mu u; x)
                                                        -> a, a+, a-, y up   act_up (three activations), labels_up
    server    copy k takes tau zeroth-order steps on the fixed anchor a, one direction v_t each:
                theta_s <- opt(theta_s, (l(f_s(theta_s + mu v_t; a)) - l(f_s(theta_s - mu v_t; a))) / (2 mu) v_t)
              then, with the updated copy, s = (l(f_s(theta_s; a+)) - l(f_s(theta_s; a-))) / 2
                                                        -> s down            scalar_down (one float32)
    client k  theta_c <- opt(theta_c, s / mu * u)        (u regenerated from the seed)
  client k    -> fed server   theta_c,k                                       model_up (client k)
  main server -> fed server   theta_s,k                                       model_up (SERVER_LINK)
  fed server  theta <- theta + eta_g * mean_k (theta_k - theta), on both sides (unweighted mean)

So per client per local step: three activations up, one scalar down. The server-side exchange is charged as
SplitFed-V1 charges it (see splitfed_v1.py). Nothing builds an autograd graph on either side; BatchNorm is frozen
on both (probes must not move running statistics). Optimizer state starts afresh each round.
tau is `server_steps`, eta_g is `global_lr`. Reference settings: mu = 0.005, client SGD lr 0.005, server SGD
lr 0.01 (set them in the scenario), server_steps = 2, global_lr = 0.3 (the defaults). `perturbations` is
ignored: the method uses one direction per step.

Simulated clock, per local step and client: three client forwards, the activations and labels up, the copy's
2 tau + 2 forwards on the one main server (first come, first served), the scalar down (the client's update does
no forward). Then the client part up; the fed server waits (the round policy acts there) and averages only the
clients it kept; the others' copies are discarded. A round's samples and training loss are the kept clients'.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.sfl import average_into, charge_split_steps, load_numpy, split_steps, to_numpy
from hosfl_sim.algorithms.splitfed_v1 import SERVER_LINK, begin_copies_round
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_tensors, to_wire
from hosfl_sim.algorithms.zo_client import prepare_zo_module
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, Labels, Scalars, Weights
from hosfl_sim.config import AlgorithmConfig, OptimizerConfig
from hosfl_sim.zo import ZOUpdater, derive_seeds
from hosfl_sim.zo.probe import Prober

CLIENT_SIDE, SERVER_SIDE = 0, 1  # seed streams: 2 * client_id + side


class ZOCopy:
    """One client's copy of a zeroth-order-trained part: the module, its trainable parameters in order, an updater."""

    def __init__(
        self,
        base: nn.Module,
        names: list[str],
        state: dict[str, np.ndarray] | None,
        opt_cfg: OptimizerConfig,
        cfg: AlgorithmConfig,
    ):
        self.module = copy.deepcopy(base)
        if state is not None:
            load_numpy(self.module, state)
        own = dict(self.module.named_parameters())
        self.named = {n: own[n] for n in names}
        self.updater = ZOUpdater(list(self.named.values()), opt_cfg, cfg.distribution)
        self.prober = Prober(self.module, names, list(self.named.values()), cfg.distribution, cfg.probe)

    def forward_at(self, cfg: AlgorithmConfig, seed: int | None, scale: float, *args, **kwargs) -> torch.Tensor:
        """module(theta + scale * u_seed; ...); the plain forward when `seed` is None (zo/probe.py)."""
        return self.prober.at(seed, scale, *args, **kwargs)

    def state(self) -> dict[str, np.ndarray]:
        return to_numpy(self.named)


class MUSplitFedClient(ClientRole):
    """One client-part copy per virtual client in flight this round, trained from its own seeds and the
    scalars the server returns. Callers must `begin` a client before `probe`/`update` and `upload` it once."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.base = self.split.client.to(self.device)
        self.names, _ = prepare_zo_module(self.base)
        self.local: dict[int, ZOCopy] = {}
        self.seed_of: dict[int, int] = {}

    def forget(self, client_id: int) -> None:
        self.local.pop(client_id, None)
        self.seed_of.pop(client_id, None)

    def begin(self, client_id: int, global_state: dict[str, np.ndarray]) -> None:
        cfg = self.spec.algorithm
        self.local[client_id] = ZOCopy(self.base, self.names, global_state, cfg.client_optimizer, cfg)

    @torch.no_grad()
    def probe(self, client_id: int, rnd: int, step: int) -> tuple[dict, dict]:
        cfg = self.spec.algorithm
        with self.work(client_id) as t:
            part = self.local[client_id]
            seed = int(derive_seeds(self.spec.seed, rnd, step, 1, stream=2 * client_id + CLIENT_SIDE)[0])
            self.seed_of[client_id] = seed
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            a = part.forward_at(cfg, None, 0.0, **x)  # (B, ...) anchor for the server's own steps
            a_plus = part.forward_at(cfg, seed, cfg.mu, **x)
            a_minus = part.forward_at(cfg, seed, -cfg.mu, **x)
            acts = np.stack([to_wire(v) for v in (a, a_plus, a_minus)])  # (3, B, ...)
            upload = {"a": acts, "side": self.side_inputs(feats), "y": labels}
        meta = {
            "act": Activations.of(upload["a"], [upload["side"]] * 3),  # (3, B, ...): a, a+, a-, each with its side
            "labels": Labels.of(labels),
            "samples": len(labels),
            "compute_s": t.seconds,
            "flops": 3 * self.forward_flops(x),
        }
        return upload, meta

    def update(self, client_id: int, s: np.ndarray) -> dict:
        with self.work(client_id) as t:
            seed = self.seed_of.pop(client_id)
            self.local[client_id].updater.apply(np.array([seed], np.uint64), s, self.spec.algorithm.mu)
        return {"compute_s": t.seconds}

    def upload(self, client_id: int) -> dict[str, np.ndarray]:
        return self.local.pop(client_id).state()


class MUSplitFedServer(ServerRole):
    """Global parts (BatchNorm frozen on both) plus, during a round, one zeroth-order server copy per client."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.client_names, _ = prepare_zo_module(self.client)
        self.server_names, _ = prepare_zo_module(self.server)
        self.copies: dict[int, ZOCopy] = {}

    def global_client(self) -> tuple[dict[str, np.ndarray], Weights]:
        own = dict(self.client.named_parameters())
        state = to_numpy({n: own[n] for n in self.client_names})
        return state, Weights.of(state)

    def begin_copies(self, *client_ids: int) -> Weights:
        cfg = self.spec.algorithm
        for cid in client_ids:
            self.copies[cid] = ZOCopy(self.server, self.server_names, None, cfg.server_optimizer, cfg)
        return Weights.of(self.copies[client_ids[0]].state())

    @torch.no_grad()
    def step(self, client_id: int, rnd: int, step: int, upload: dict) -> tuple[np.ndarray, dict]:
        """server_steps zeroth-order steps of copy k on the anchor, then the client's loss difference (one float32)."""
        cfg = self.spec.algorithm
        part = self.copies[client_id]
        a0, a_plus, a_minus = (from_wire(a, self.device, self.spec.dtype) for a in upload["a"])  # each (B, ...)
        y = tensor(upload["y"], self.device)
        side = to_tensors(upload["side"], self.device)
        seeds = derive_seeds(self.spec.seed, rnd, step, cfg.server_steps, stream=2 * client_id + SERVER_SIDE)
        for seed in seeds:
            pair = [float(self.loss(part.forward_at(cfg, int(seed), sign * cfg.mu, a0, **side), y)) for sign in (1, -1)]
            part.updater.apply(np.array([seed]), np.array([(pair[0] - pair[1]) / 2.0], np.float32), cfg.mu)
        l_plus = float(self.loss(part.module(a_plus, **side), y))
        l_minus = float(self.loss(part.module(a_minus, **side), y))
        s = np.array([(l_plus - l_minus) / 2.0], np.float32)
        flops = (2 * len(seeds) + 2) * self.forward_flops(a0, upload["side"])
        return s, {"loss": 0.5 * (l_plus + l_minus), "scalars": Scalars.of(s), "flops": flops}

    def finish(
        self, client_ids: list[int], weights: np.ndarray, lr: float, *client_states: dict[str, np.ndarray]
    ) -> None:
        """theta += lr * (weighted mean(theta_k) - theta) on both sides, over `client_ids` (the kept clients);
        every copy of the round is discarded afterwards."""
        if client_ids:
            average_into(self.client, list(client_states), weights, lr)
            average_into(self.server, [self.copies[cid].state() for cid in client_ids], weights, lr)
        self.copies.clear()


@register
class MUSplitFed(Algorithm):
    name = "mu_splitfed"
    summary = (
        "MU-SplitFed: zeroth-order on both sides (one direction, server takes server_steps ZO steps per client "
        "step), copies averaged with a configurable global lr; up: 3 activations per step, labels, client weights; "
        "down: 1 scalar per step, client weights; server copies charged on the main-server <-> fed-server link"
    )
    client_role = MUSplitFedClient
    server_role = MUSplitFedServer
    options = frozenset(
        {"client_optimizer", "server_optimizer", "mu", "distribution", "probe", "server_steps", "global_lr"}
    )
    supports_policies = True

    def aggregation(self, kept: list[int]) -> tuple[np.ndarray, float]:
        """The weights of the kept clients' copies and the global step: MU-SplitFed's unweighted mean, global_lr."""
        return np.ones(len(kept)), self.cfg.global_lr

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        active, client_part, server_copy = begin_copies_round(self, clients, worker, backend, channel)

        def send(cid: int, step: int) -> tuple:
            up, meta = backend.client(worker[cid], self.client_role.probe, cid, rnd, step, num_returns=2)
            s, smeta = backend.server(self.server_role.step, cid, rnd, step, up, num_returns=2)
            return cid, meta, smeta, backend.client(worker[cid], self.client_role.update, cid, s)

        steps = split_steps(self, active, send)
        uploads = {c: backend.client(worker[c], self.client_role.upload, c) for c in active}
        losses = charge_split_steps(backend.get(steps), channel, records, lambda _, srv: srv["scalars"], False)
        for cid in active:
            channel.up(cid, client_part)
        kept = self.barrier(clock, active, backend, worker)
        channel.up(SERVER_LINK, server_copy.times(len(kept)))  # only the kept copies travel
        weights, lr = self.aggregation(kept)
        backend.get(backend.server(self.server_role.finish, kept, weights, lr, *[uploads[c] for c in kept]))
        kept_set = set(kept)
        loss = RoundResult.mean([v for c, v in losses if c in kept_set])
        return RoundResult(loss, sum(records[c].samples for c in kept), list(records.values()))
