"""SFL-ZO: MeZO inside split learning; zeroth-order on both sides, two-sided differences.

Direction p spans both parts: u_p = (u_c from client seed p, u_s from server seed p), drawn from
two streams so each side regenerates only its own half. Per local step:
  client  a_p+ = f_c(theta_c + mu u_c,p; x), a_p- = f_c(theta_c - mu u_c,p; x)   -> 2P activations, y up
  server  s_p = (l(f_s(theta_s + mu u_s,p; a_p+)) - l(f_s(theta_s - mu u_s,p; a_p-))) / 2
  server  s_bar = mean_k s; updates theta_s        -> (seeds, s_bar) down to everyone
  every client replica: theta_c <- opt(theta_c, (1 / (P mu)) sum_p s_bar_p u_c,p)
The per-client differences are averaged before they go down, so, as in HO-SFL, all clients keep
one shared client part (replayed from records when stale) and no weight vector moves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.fused import concat, fusable, rows, shares
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.replay import mean_scalars
from hosfl_sim.algorithms.roles import ClientRole
from hosfl_sim.algorithms.routing import make_plan, planned
from hosfl_sim.algorithms.seed_round import ReplicaServer, SeedBasedAlgorithm, Step
from hosfl_sim.algorithms.task import TaskSpec, from_wire, sample_batch, tensor, to_tensors, to_wire
from hosfl_sim.algorithms.zo_client import ZOClient, prepare_zo_module
from hosfl_sim.comm.messages import Activations, Labels
from hosfl_sim.zo import ZOUpdater, derive_seeds
from hosfl_sim.zo.probe import Prober

SERVER_STREAM = 1  # seeds of the server half of each direction


class SFLZOClient(ZOClient):
    fused_phases = {"probe": "fused_probes"}  # runtime.fuse_clients (fused.py)

    @torch.no_grad()
    def probe(self, records: list, client_id: int, rnd: int, step: int, seeds: np.ndarray) -> tuple[dict, dict]:
        with self.work(client_id) as t:
            self.sync(records)
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x = self.client_inputs(feats)
            mu = self.spec.algorithm.mu
            acts = [to_wire(self.forward_at(x, int(s), sign * mu)) for s in seeds for sign in (1.0, -1.0)]
            upload, meta = self.upload(acts, x, feats, labels)
        return upload, {**meta, "compute_s": t.seconds}

    def upload(self, acts: list[np.ndarray], x: dict, feats: dict, labels: np.ndarray) -> tuple[dict, dict]:
        """A client's 2P activations (in the order of `acts`), side inputs and labels, with their metadata."""
        upload = {"a": np.stack(acts), "side": self.side_inputs(feats), "y": labels}  # (2P, B, ...)
        meta = {
            "act": Activations.of(upload["a"], [upload["side"]] * len(acts)),  # each probe with its side
            "labels": Labels.of(labels),
            "samples": len(labels),
            "flops": len(acts) * self.forward_flops(x),
        }
        return upload, meta

    @torch.no_grad()
    def fused_probes(
        self, records: list, client_ids: list[int], rnd: int, step: int, seeds: np.ndarray
    ) -> tuple[list, list]:
        """`probe` for each of a worker's clients, each direction and sign one forward on their batches (fused.py)."""
        drawn = [sample_batch(self.spec, c, rnd, step) for c in client_ids]
        xs = [self.client_inputs(feats) for feats, _ in drawn]
        if not fusable(xs):
            return ClientRole.each(self, SFLZOClient.probe, records, client_ids, rnd, step, seeds)
        with self.work(client_ids[0]) as t:
            self.sync(records)
            x, mu = concat(xs), self.spec.algorithm.mu
            acts: list[list[np.ndarray]] = [[] for _ in client_ids]
            for s in seeds:
                for sign in (1.0, -1.0):
                    for k, a in enumerate(self.forward_at(x, int(s), sign * mu).split(rows(xs))):
                        acts[k].append(to_wire(a))
            out = [self.upload(a, xk, *d) for a, xk, d in zip(acts, xs, drawn)]
        seconds = shares(t.seconds, rows(xs))
        return [up for up, _ in out], [{**meta, "compute_s": s} for (_, meta), s in zip(out, seconds)]


class SFLZOServer(ReplicaServer):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        _, client_params = prepare_zo_module(self.client)
        self.client_updater = ZOUpdater(client_params, cfg.client_optimizer, cfg.distribution)
        self.names, self.params = prepare_zo_module(self.server)
        self.server_updater = ZOUpdater(self.params, cfg.server_optimizer, cfg.distribution)
        self.prober = Prober(self.server, self.names, self.params, cfg.distribution, "functional")

    def state(self) -> dict[str, Any]:
        return {**super().state(), "client_updater": self.client_updater, "server_updater": self.server_updater}

    @torch.no_grad()
    def differences(
        self, server_seeds: np.ndarray, plan: list[tuple[int, int]], *groups: list[dict]
    ) -> tuple[list[np.ndarray], dict]:
        """Each planned client's P loss differences (server half of each direction), in plan order."""
        cfg = self.spec.algorithm
        uploads = planned(plan, groups)
        diffs, losses, flops = [], [], 0
        for up in uploads:
            y = tensor(up["y"], self.device)
            side = to_tensors(up["side"], self.device)
            s = np.empty(len(server_seeds), dtype=np.float32)
            for i, seed in enumerate(server_seeds):
                pair = []
                for j, sign in enumerate((1.0, -1.0)):
                    a = from_wire(up["a"][2 * i + j], self.device, self.spec.dtype)
                    flops += self.forward_flops(a, up["side"])
                    logits = self.prober.at(int(seed), sign * cfg.mu, a, **side)
                    pair.append(float(self.loss(logits, y)))
                s[i] = (pair[0] - pair[1]) / 2.0
                losses.append(0.5 * (pair[0] + pair[1]))
            diffs.append(s)
        return diffs, {"loss": float(np.mean(losses)), "flops": flops}

    def aggregate(self, client_seeds: np.ndarray, server_seeds: np.ndarray, diffs: list[np.ndarray]) -> np.ndarray:
        s_bar = mean_scalars(diffs)
        mu = self.spec.algorithm.mu
        self.server_updater.apply(server_seeds, s_bar, mu)
        self.client_updater.apply(client_seeds, s_bar, mu)
        return s_bar


@register
class SFLZO(SeedBasedAlgorithm):
    name = "sfl_zo"
    summary = (
        "SFL-ZO: zeroth-order on both sides (two-sided MeZO differences over client and server parameters); "
        "up: 2P activations per step, labels; down: P seeds + P averaged loss differences (replayed when stale)"
    )
    client_role = SFLZOClient
    server_role = SFLZOServer
    options = frozenset({"client_optimizer", "server_optimizer", "perturbations", "mu", "distribution", "probe"})
    supports_policies = True

    def local_step(self, s: Step, active: list[int]) -> list[int]:
        server_seeds = derive_seeds(self.seed, s.round, s.index, self.cfg.perturbations, stream=SERVER_STREAM)
        groups, calls = self.to_workers(s, active, SFLZOClient.probe, s.round, s.index, s.seeds)
        uploads = [calls[w][0] for w in groups]

        def server_step(kept: list[int]) -> tuple[Any, Any]:
            return self.server_step(s.calls, s.seeds, server_seeds, make_plan(kept, groups), uploads)

        active, sent, metas = self.around_barrier(s, active, server_step, self.uploads_read(s, groups, calls, active))
        if not active:
            return active
        s_bar, smeta = s.calls.get(list(sent))
        s.clock.server_batch(active, smeta["flops"])
        for cid in active:
            s.records[cid].train_loss = smeta["loss"]
        s.losses.append(smeta["loss"])
        self.close_step(s, s_bar, active, metas)
        return active

    def server_step(
        self, backend: Backend, seeds: np.ndarray, server_seeds: np.ndarray, plan: list[tuple[int, int]], uploads: list
    ) -> tuple[Any, Any]:
        """The server's loss differences on the planned uploads, then the aggregate: (s_bar, meta) futures."""
        diffs, smeta = backend.server(self.server_role.differences, server_seeds, plan, *uploads, num_returns=2)
        return backend.server(self.server_role.aggregate, seeds, server_seeds, diffs), smeta
