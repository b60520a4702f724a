"""The two roles of an algorithm, built once per run where they live (no Ray here):
- a ClientRole, inside every client worker; it holds ONE replica of the client part and does the work
  of whichever virtual client a call names;
- a ServerRole, inside the server; it holds the server part, its own copy of the client part (for
  evaluation and for syncing replacements) and the test split.
The driver calls a role's methods through a `Backend`, naming the method itself (`HOSFLClient.anchors`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hosfl_sim.algorithms.routing import serve_each
from hosfl_sim.algorithms.state import Measured, RoleState, bookkeeping
from hosfl_sim.algorithms.task import TaskSpec, count_flops, shape_key, tensor, to_tensors, to_wire
from hosfl_sim.memory import static_bytes
from hosfl_sim.zo import make_optimizer


class Role(RoleState, Measured):
    """What both roles share: a call names the method itself, so a reader and a type checker can follow it."""

    def invoke(self, method: Callable[..., Any], *args: Any) -> Any:
        """`method(self, *args)`, once checked to be what this role's class has under that name: a call that
        names a base class's method which this role overrides would silently run the wrong code."""
        own = getattr(type(self), method.__name__, None)
        if own is not method and getattr(own, "__code__", None) != getattr(method, "__code__", False):
            raise TypeError(
                f"{type(self).__name__} has another {method.__name__} than {method.__qualname__}: "
                "name the method through the role's own class"
            )
        return method(self, *args)


class ClientRole(Role):
    """Base of the per-worker state. Subclasses add the methods their algorithm calls.

    Workers hold nothing the server cannot rebuild: a client part that starts each round from the
    server's copy, or a replica that the algorithm's ReplayLog brings up to date. So a checkpoint does
    not save workers, and after a restore or a worker's death every worker is rebuilt fresh.
    """

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self.split = spec.build_model()
        self._init_measuring(self.device)

    def state(self) -> dict[str, Any]:
        """Nothing: a worker's replica is rebuilt from the server (its copy, or the replay log)."""
        return {}

    def static_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose state a client keeps (predicted before its first step)."""
        params = [p for p in self.split.client.parameters() if p.requires_grad]
        return make_optimizer(params, self.spec.algorithm.client_optimizer) if params else None

    def static_memory(self) -> int:
        """Exact bytes a client holds between steps: client part, gradients if first-order, optimizer state."""
        module = self.split.client
        first_order = any(p.requires_grad for p in module.parameters())
        return static_bytes(module, self.static_optimizer(), grads=first_order)["total"]

    def side_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: inputs[k] for k in self.split.side_keys}

    def client_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return to_tensors({k: inputs[k] for k in self.split.input_keys}, self.device)

    def forward_flops(self, inputs: dict[str, torch.Tensor]) -> int:
        """FLOPs of one client-part forward on a batch of this shape (counted once per shape)."""
        cache = self.__dict__.setdefault("_flops", {})
        key = shape_key(inputs)
        if key not in cache:
            cache[key] = count_flops(self.split.client, **inputs)
        return cache[key]

    def each(self, method: Callable[..., tuple[Any, Any]], records: list, client_ids: list[int], *args: Any) -> tuple:
        """One worker's phase: `method(self, records, client, *args)` for each of its clients in turn, the records its
        replica missed applied by the first; returns (their uploads, their metadata), one per client."""
        return serve_each(partial(method, self), records, client_ids, *args)

    def each_of(self, method: Callable[..., tuple[Any, Any]], client_ids: list[int], values: list, *args: Any) -> tuple:
        """One worker's phase with a value per client: `method(self, client, value, *args)` for each in turn;
        returns (their results, their metadata), one per client."""
        out = [method(self, c, v, *args) for c, v in zip(client_ids, values)]
        return [r for r, _ in out], [meta for _, meta in out]

    def forget(self, client_id: int) -> None:  # noqa: B027  (a no-op for roles that keep nothing per client)
        """Drop what a client left pending (it was dropped from the round)."""


class ServerRole(Role):
    """Base of the server state: the server part, a copy of the client part, the test split."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self.split = spec.build_model()
        self.client = self.split.client.to(self.device)
        self.server = self.split.server.to(self.device)
        self._init_measuring(self.device)

    def invoke(self, method: Callable[..., Any], *args: Any) -> Any:
        """Every server call is one block of server work, except bookkeeping (evaluation, state, stats)."""
        if getattr(method, "bookkeeping", False):
            return super().invoke(method, *args)
        with self.work(None):
            return super().invoke(method, *args)

    def state(self) -> dict[str, Any]:
        """Both parts; a subclass adds its optimizers, updaters and other models."""
        return {"client": self.client, "server": self.server}

    def static_memory(self) -> int:
        """Parameters and buffers the server holds (both parts), its gradients and optimizer state."""
        opt = getattr(self, "optimizer", None)
        total = static_bytes(self.server, opt if isinstance(opt, torch.optim.Optimizer) else None, grads=True)
        return total["total"] + static_bytes(self.client)["total"]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def server_forward(self, a: torch.Tensor, side: dict[str, np.ndarray]) -> torch.Tensor:
        return self.server(a, **to_tensors(side, self.device))

    def forward_flops(self, a: torch.Tensor, side: dict[str, np.ndarray]) -> int:
        """FLOPs of one server-part forward on an activation of this shape (counted once per shape)."""
        cache = self.__dict__.setdefault("_flops", {})
        key = (tuple(a.shape), *((k, v.shape) for k, v in sorted(side.items())))
        if key not in cache:
            cache[key] = count_flops(self.server, a.detach(), **to_tensors(side, self.device))
        return cache[key]

    @bookkeeping
    @torch.no_grad()
    def evaluate(self, batch_size: int = 512) -> dict[str, float]:
        """Loss and accuracy of the joined model on the test split."""
        modes = (self.client.training, self.server.training)
        self.client.eval()
        self.server.eval()
        test = self.spec.test
        total_loss, correct = 0.0, 0
        for start in range(0, len(test), batch_size):
            idx = np.arange(start, min(start + batch_size, len(test)))
            feats, labels = test.batch(idx)
            y = tensor(labels, self.device)
            a = self.client(**to_tensors({k: feats[k] for k in self.split.input_keys}, self.device))
            logits = self.server_forward(a, {k: feats[k] for k in self.split.side_keys})
            total_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        self.client.train(modes[0])
        self.server.train(modes[1])
        return {"test_loss": total_loss / len(test), "test_acc": correct / len(test)}

    @bookkeeping
    def client_state(self) -> dict[str, np.ndarray]:
        return {k: to_wire(v).copy() for k, v in self.client.state_dict().items()}
