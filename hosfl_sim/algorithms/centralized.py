"""Centralized first-order training of the joined model: the single-machine reference curve.

Nothing crosses a network, so nothing is charged. The work runs on the server role; the client
workers hold nothing. A round processes exactly the samples the split algorithms process in one
round (for each local step and each sampled client, min(batch_size, that client's partition size)),
but as mini-batches drawn uniformly from the WHOLE training set, one server-optimizer step per
mini-batch:
  server  for j in 1..K * local_steps:  (x, y) ~ train set;  loss, backward, step
Why this is the fair upper bound on samples_seen: it sees the same number of samples at the
clients' batch size and takes at least as many optimizer steps as any split method (SFL's server
takes one step per client batch, its clients one averaged step per local step), with no client
drift, no stale model and no partition skew (under non-IID partitions it still samples IID).
Simulated clock: the round lasts the server's compute, forward + backward (~ 3 x the joined model's forward
FLOPs) per mini-batch at `system.server_flops`; no client is in the loop, so no round policy applies.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.fedavg import whole_model_flops
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.roles import ClientRole, ServerRole
from hosfl_sim.algorithms.task import TaskSpec, tensor, to_tensors
from hosfl_sim.comm.channel import Channel
from hosfl_sim.models import JoinedModel
from hosfl_sim.zo import make_optimizer


def global_batch(spec: TaskSpec, round_idx: int, index: int, size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mini-batch `index` of a round, drawn without replacement from the whole training set: a pure
    function of the run seed (its own stream, apart from `sample_batch`'s)."""
    n = len(spec.train)
    rng = np.random.default_rng([spec.seed, 13, round_idx, index])
    return spec.train.batch(np.sort(rng.choice(n, size=min(size, n), replace=False)))


def round_batch_sizes(alg: Algorithm, clients: np.ndarray) -> list[int]:
    """The batch sizes the sampled clients of a split algorithm would process this round, in order."""
    per_step = [int(min(alg.federation.batch_size, alg.client_sizes[c])) for c in clients]
    return per_step * alg.cfg.local_steps


class IdleClient(ClientRole):
    """The centralized baselines never call a worker: build nothing there."""

    def __init__(self, spec: TaskSpec):  # no super().__init__: no model replica on the workers
        self.spec = spec
        self.device = torch.device(spec.device)
        self._init_measuring(self.device)  # measured like any role: it holds nothing and does no work

    def static_memory(self) -> int:
        return 0


class GlobalBatchServer(ServerRole):
    """A server that trains the joined model itself on the round's global mini-batches (`global_batch`)."""

    model: JoinedModel  # the same modules as self.client / self.server (set by each subclass)

    def batch_step(self, x: dict[str, torch.Tensor], y: torch.Tensor, round_idx: int, index: int) -> float:
        """One step on mini-batch `index` of the round; returns its loss."""
        raise NotImplementedError

    def forwards_per_step(self) -> float:
        """A step's FLOPs in forwards of the joined model on its batch."""
        raise NotImplementedError

    def train_round(self, round_idx: int, batch_sizes: list[int]) -> dict:
        with self.work(None) as t:
            losses, sizes, example = [], [], {}  # and one batch of each size, to count FLOPs on
            for j, size in enumerate(batch_sizes):
                feats, labels = global_batch(self.spec, round_idx, j, size)
                x = to_tensors(feats, self.device)
                losses.append(self.batch_step(x, tensor(labels, self.device), round_idx, j))
                sizes.append(len(labels))
                example[len(labels)] = x
        flops = sum(self.forwards_per_step() * whole_model_flops(self, example[n]) for n in sizes)
        return {"loss": float(np.mean(losses)), "compute_s": t.seconds, "flops": flops}


class CentralizedServer(GlobalBatchServer):
    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.model = JoinedModel(self.split)  # the same modules as self.client / self.server
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, spec.algorithm.server_optimizer)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "model": self.model, "optimizer": self.optimizer}

    def batch_step(self, x: dict[str, torch.Tensor], y: torch.Tensor, round_idx: int, index: int) -> float:
        loss = self.loss(self.model(**x), y)  # logits (B, num_classes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def forwards_per_step(self) -> float:
        return 3  # backward ~ 2x forward


@register
class Centralized(Algorithm):
    name = "centralized"
    summary = (
        "Centralized first-order reference: joined model trained on the server with server_optimizer, "
        "IID batches of the whole train set, as many samples per round as the split methods; nothing crosses a network"
    )
    client_role = IdleClient
    server_role: ClassVar[type[GlobalBatchServer]] = CentralizedServer
    options = frozenset({"server_optimizer"})

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        sizes = round_batch_sizes(self, clients)
        meta = backend.get(backend.server(self.server_role.train_round, rnd, sizes))
        channel.clock.server_only(meta["flops"])
        return RoundResult(meta["loss"], sum(sizes), [])
