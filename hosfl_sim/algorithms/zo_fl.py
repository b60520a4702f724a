"""Zeroth-order FL with seed + scalar communication, in the manner of DeComFL: whole model on the client.

Every client holds the whole model (client part + server part joined); all replicas stay identical
because they only ever apply the same (seeds, scalars) records. One local step, for the K sampled
clients (all use the same P seeds):
  server  P seeds                                               -> seeds down
  client  s_p = (l(w + mu u_p; x, y) - l(w - mu u_p; x, y)) / 2  -> s in R^P up   (2P forwards)
  server  s_bar = mean_k s                                      -> s_bar down
  every replica (server's included): w <- opt(w, (1 / (P mu)) sum_p s_bar_p u_p)
The difference is two-sided (central), DeComFL's default estimator. A client that missed rounds
downloads and replays their (seeds, s_bar) records before it works again (charged to seed_down and
scalar_down). No weight vector, activation, gradient or label ever crosses the network.

`local_steps > 1` runs that many such exchanges per round, each on the next mini-batch, as HO-SFL
does; DeComFL's variant (local ZO steps, then revert and apply the averaged records) coincides with
this at `local_steps = 1`. Every replica trains with `client_optimizer`; `server_optimizer` is unused.

Simulated clock, per local step: seeds down, 2P whole-model forwards on the client, scalars up; the server
waits for them (the round policy acts there), averages only the clients it kept and sends s_bar to those.
A client dropped at a step does no further step this round; it catches up by replay when next sampled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hosfl_sim.algorithms.fedavg import whole_model_flops
from hosfl_sim.algorithms.fused import FusedClient, concat, fusable, rows, shares
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.replay import mean_scalars
from hosfl_sim.algorithms.roles import ClientRole
from hosfl_sim.algorithms.routing import make_plan, planned
from hosfl_sim.algorithms.seed_round import ReplicaClient, ReplicaServer, SeedBasedAlgorithm, Step
from hosfl_sim.algorithms.task import TaskSpec, sample_batch, tensor, to_tensors
from hosfl_sim.algorithms.zo_client import prepare_zo_module
from hosfl_sim.comm.messages import Scalars
from hosfl_sim.models import JoinedModel
from hosfl_sim.zo import ZOUpdater
from hosfl_sim.zo.probe import Prober


class ZOFLClient(FusedClient, ReplicaClient):
    """One replica of the seed-updated whole model (BatchNorm frozen, eval mode, no autograd graph).
    Callers must hand every record exactly once, in order. Its probes may run fused (fused.py)."""

    fused_phases = {"probe": "fused_probes"}  # runtime.fuse_clients

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.model = JoinedModel(self.split).to(self.device)
        self.names, self.params = prepare_zo_module(self.model)
        self.updater = ZOUpdater(self.params, cfg.client_optimizer, cfg.distribution)
        self.prober = Prober(self.model, self.names, self.params, cfg.distribution, cfg.probe)

    def sync(self, records: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for seeds, scalars in records:
            self.updater.apply(seeds, scalars, self.spec.algorithm.mu)

    def loss_at(self, inputs: dict[str, torch.Tensor], y: torch.Tensor, seed: int, scale: float) -> float:
        """l(w + scale * u_seed; x, y)."""
        return float(F.cross_entropy(self.prober.at(seed, scale, **inputs), y))

    @torch.no_grad()
    def probe(self, records: list, client_id: int, rnd: int, step: int, seeds: np.ndarray) -> tuple[np.ndarray, dict]:
        with self.work(client_id) as t:
            self.sync(records)
            feats, labels = sample_batch(self.spec, client_id, rnd, step)
            x, y = to_tensors(feats, self.device), tensor(labels, self.device)
            mu = self.spec.algorithm.mu
            pairs = [(self.loss_at(x, y, int(seed), mu), self.loss_at(x, y, int(seed), -mu)) for seed in seeds]
        return self.scalars(pairs, x, len(labels), t.seconds)

    def scalars(
        self, pairs: list[tuple[float, float]], x: dict, samples: int, seconds: float
    ) -> tuple[np.ndarray, dict]:
        """A client's P differences s_p = (l+ - l-) / 2 from its (l+, l-) pairs, with their metadata."""
        s = np.array([(plus - minus) / 2.0 for plus, minus in pairs], dtype=np.float32)
        loss = float(np.mean([0.5 * (plus + minus) for plus, minus in pairs]))
        meta = {"loss": loss, "samples": samples, "compute_s": seconds, "scalars": Scalars.of(s)}
        return s, {**meta, "flops": 2 * len(pairs) * whole_model_flops(self, x)}

    @torch.no_grad()
    def fused_probes(
        self, records: list, client_ids: list[int], rnd: int, step: int, seeds: np.ndarray
    ) -> tuple[list, list]:
        """`probe` for each of a worker's clients, each direction and sign one forward on their batches; each
        client's losses from its own rows (fused.py)."""
        drawn = [sample_batch(self.spec, c, rnd, step) for c in client_ids]
        xs = [to_tensors(feats, self.device) for feats, _ in drawn]
        if not fusable(xs):
            return ClientRole.each(self, ZOFLClient.probe, records, client_ids, rnd, step, seeds)
        with self.work(client_ids[0]) as t:
            self.sync(records)
            x, ys, mu = concat(xs), [tensor(labels, self.device) for _, labels in drawn], self.spec.algorithm.mu
            losses = torch.empty(len(seeds), 2, len(client_ids), device=self.device)  # read back once
            for i, seed in enumerate(seeds):
                for j, sign in enumerate((1.0, -1.0)):
                    for k, logits in enumerate(self.prober.at(int(seed), sign * mu, **x).split(rows(xs))):
                        losses[i, j, k] = F.cross_entropy(logits, ys[k])
            pairs = losses.cpu().double().numpy()
        seconds = shares(t.seconds, rows(xs))
        out = [
            self.scalars(list(map(tuple, pairs[:, :, k])), xk, len(y), s)
            for k, (xk, y, s) in enumerate(zip(xs, ys, seconds))
        ]
        return [s for s, _ in out], [meta for _, meta in out]


class ZOFLServer(ReplicaServer):
    """Averages the scalars and keeps its own replica of the whole model (for evaluation)."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        cfg = spec.algorithm
        self.model = JoinedModel(self.split)  # the same modules as self.client / self.server
        _, params = prepare_zo_module(self.model)
        self.client_updater = ZOUpdater(params, cfg.client_optimizer, cfg.distribution)  # its own replica

    def state(self) -> dict[str, Any]:
        return {**super().state(), "model": self.model, "client_updater": self.client_updater}

    def aggregate(self, seeds: np.ndarray, plan: list[tuple[int, int]], *groups: list[np.ndarray]) -> np.ndarray:
        """Average the planned clients' scalars (in plan order) and step this replica."""
        s_bar = mean_scalars(planned(plan, groups))
        self.client_updater.apply(seeds, s_bar, self.spec.algorithm.mu)
        return s_bar


@register
class ZOFL(SeedBasedAlgorithm):
    name = "zo_fl"
    summary = (
        "ZO-FL (DeComFL-style): zeroth-order whole model on the client (two-sided, P shared seeds), no split, "
        "nothing first-order; up: P scalars; down: P seeds + P averaged scalars (replayed when stale)"
    )
    client_role = ZOFLClient
    server_role = ZOFLServer
    options = frozenset({"client_optimizer", "perturbations", "mu", "distribution", "probe"})
    supports_policies = True

    def local_step(self, s: Step, active: list[int]) -> list[int]:
        groups, calls = self.to_workers(s, active, ZOFLClient.probe, s.round, s.index, s.seeds)
        scalars = [calls[w][0] for w in groups]

        def aggregate(kept: list[int]) -> Any:
            return s.calls.server(ZOFLServer.aggregate, s.seeds, make_plan(kept, groups), *scalars)

        def probes_read() -> dict[int, dict]:
            metas = self.read(s, groups, calls, 1)
            self.scalars_up(
                s, active, {c: m["flops"] for c, m in metas.items()}, {c: m["scalars"] for c, m in metas.items()}, metas
            )
            return metas

        active, s_bar, metas = self.around_barrier(s, active, aggregate, probes_read)
        if not active:
            return active
        s_bar = s.calls.get(s_bar)
        for cid in active:
            s.records[cid].train_loss = metas[cid]["loss"]
            s.losses.append(metas[cid]["loss"])
        self.close_step(s, s_bar, active, metas)
        return active
