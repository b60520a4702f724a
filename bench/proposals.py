"""Routings of an HO-SFL round measured against the package's, not part of the package.

Each changes only which actor calls carry the work: every client's work, the order of the server's
backward passes and the ledger charges are HOSFL's, so the recorded numbers are identical (the benches
check the losses). Sync policy only (a policy that drops clients between phases is not handled here).

- `hosfl_per_client`: the routing HOSFL had before it grouped its calls: an anchor and a probe call per
  client, the server's step and aggregate (the average computed in the server actor), 2K + 2 actor
  calls a step, each phase waited for by the driver before the next is submitted. Kept as the
  reference of what HOSFL's routing saves (2W + 2 calls, the step submitted at once, the average on
  the driver).
- `hosfl_pipelined`: the server's first-order step (all K backward passes) sits between the anchors and
  the probes, so the workers idle while it runs. Splitting it into one `cut_grad` per client (backward
  at the pre-step weights, gradients accumulated) and one `step` lets client k's probes start once its
  own cut gradient is back, while the server works on the next activation. 3K + 2 calls.
"""

from __future__ import annotations

import numpy as np

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.hosfl import HOSFL, HOSFLServer
from hosfl_sim.algorithms.replay import mean_scalars
from hosfl_sim.algorithms.routing import keep_all
from hosfl_sim.algorithms.seed_round import Step
from hosfl_sim.algorithms.task import tensor
from hosfl_sim.comm.messages import Scalars


class FlatServer(HOSFLServer):
    """HOSFLServer's calls with one argument per client (each a group of one)."""

    def train_step_flat(self, *uploads: dict) -> list:
        out = self.train_step([(k, 0) for k in range(len(uploads))], *[[u] for u in uploads])
        return [g for (g,) in out[:-1]] + [out[-1]]

    def aggregate_flat(self, seeds: np.ndarray, *scalars: np.ndarray) -> np.ndarray:
        """The average in the server actor, and its client copy's step (HOSFL averages on the driver)."""
        v_bar = mean_scalars(list(scalars))
        self.update_client(seeds, v_bar)
        return v_bar


class ReferenceHOSFL(HOSFL):
    """What both routings share: per-client anchor calls and HOSFL's accounting in its order (sync policy only:
    every call goes out before a barrier could drop anyone)."""

    def send_anchors(self, s: Step, active: list[int]) -> dict:
        anchor = self.client_role.anchor
        return {
            c: s.calls.client(s.worker[c], anchor, self.log.for_worker(s.worker[c]), c, s.round, s.index, num_returns=2)
            for c in active
        }

    def charge_anchors(self, s: Step, active: list[int], anchors: dict) -> dict:
        metas = dict(zip(active, s.calls.get([anchors[c][1] for c in active])))
        self.uploaded(s, active, metas)
        keep_all(active, self.barrier(s.clock, active, s.calls, s.worker))
        return metas

    def finish_step(self, s: Step, active: list[int], metas: dict, server_meta: object, probes: dict) -> None:
        """From the server's step to the log."""
        self.served(s, active, s.calls.get(server_meta), {c: metas[c]["grad"] for c in active})
        probed = dict(zip(active, s.calls.get([probes[c] for c in active])))
        flops = {c: self.cfg.perturbations * metas[c]["flops"] for c in active}
        scalars = {c: Scalars.of(v) for c, (v, _) in probed.items()}
        self.scalars_up(s, active, flops, scalars, {c: m for c, (_, m) in probed.items()})
        keep_all(active, self.barrier(s.clock, active, s.calls, s.worker))
        v_bar = s.calls.get(s.calls.server(self.server_role.aggregate_flat, s.seeds, *[probes[c][0] for c in active]))
        self.close_step(s, v_bar, active, metas)


class PerClientHOSFL(ReferenceHOSFL):
    name = "hosfl_per_client"
    summary = "HO-SFL with one actor call per client per phase (the routing HOSFL replaced; a benchmark reference)"
    server_role = FlatServer

    def local_step(self, s: Step, active: list[int]) -> list[int]:
        anchors = self.send_anchors(s, active)
        metas = self.charge_anchors(s, active, anchors)
        uploads = [anchors[c][0] for c in active]
        out = s.calls.server(self.server_role.train_step_flat, *uploads, num_returns=len(active) + 1)
        probes = {
            c: s.calls.client(s.worker[c], self.client_role.probe, c, g, s.seeds, num_returns=2)
            for c, g in zip(active, out)
        }
        self.finish_step(s, active, metas, out[-1], probes)
        return active


class PipelinedServer(FlatServer):
    """HOSFLServer.train_step as K `cut_grad` calls and one `step`, with the same operations in the same order."""

    losses: list[float] | None = None

    def cut_grad(self, up: dict) -> np.ndarray:
        if self.losses is None:  # the round's first activation
            self.optimizer.zero_grad(set_to_none=True)
            self.losses, self.flops = [], 0
        a = tensor(up["a"], self.device).requires_grad_(True)
        y = tensor(up["y"], self.device)
        self.flops += 3 * self.forward_flops(a, up["side"])
        loss = self.loss(self.server_forward(a, up["side"]), y)
        loss.backward()
        self.losses.append(loss.item())
        return a.grad.cpu().numpy()

    def step(self) -> dict:
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(len(self.losses))
        self.optimizer.step()
        out = {"losses": self.losses, "flops": self.flops}
        self.losses = None
        return out


class PipelinedHOSFL(ReferenceHOSFL):
    name = "hosfl_pipelined"
    summary = "HO-SFL with the server step split per client (a benchmark of a proposed runtime change)"
    server_role = PipelinedServer

    def local_step(self, s: Step, active: list[int]) -> list[int]:
        anchors = self.send_anchors(s, active)
        grads = {c: s.calls.server(self.server_role.cut_grad, anchors[c][0]) for c in active}  # as each lands
        probes = {
            c: s.calls.client(s.worker[c], self.client_role.probe, c, grads[c], s.seeds, num_returns=2) for c in active
        }
        done = s.calls.server(self.server_role.step)
        metas = self.charge_anchors(s, active, anchors)
        self.finish_step(s, active, metas, done, probes)
        return active


PROPOSALS = {cls.name: cls for cls in (PerClientHOSFL, PipelinedHOSFL)}


def register() -> None:
    """Make the proposals available to Engine runs in this process (the bench's driver)."""
    for name, cls in PROPOSALS.items():
        ALGORITHMS.setdefault(name, cls)
