"""What every algorithm is made of, and the small interface it drives the runtime through.

An algorithm is three plain-torch pieces:
- a ClientRole, built once per run inside every client worker; it holds ONE replica of the
  client part and does the work of whichever virtual client a call names;
- a ServerRole, built once per run inside the server; it holds the server part, its own copy
  of the client part (for evaluation and for syncing replacements) and the test split;
- the Algorithm itself, which runs on the driver (the server's control plane): it samples
  nothing, stores no tensors, and only routes futures between roles through a `Backend`,
  charging the ledger for each message as it would cross the network.
No Ray here: `runtime` provides a Ray backend and an in-process one with the same contract.
"""

from __future__ import annotations

import copy
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hosfl_sim.algorithms.replay import ReplayLog
from hosfl_sim.algorithms.routing import keep_all, may_drop
from hosfl_sim.comm import Ledger
from hosfl_sim.config import AlgorithmConfig, FederationConfig, ModelConfig
from hosfl_sim.data import ArrayDataset, Partition
from hosfl_sim.memory import Measurement, MemoryMeter, static_bytes
from hosfl_sim.models import SplitModel, build_split_model
from hosfl_sim.zo import ZOUpdater, derive_seeds, make_optimizer


class Backend(Protocol):
    """Where roles live. Calls return futures; a future passed as an argument to another call is
    resolved where that call runs (on Ray: actor to actor, never through the driver)."""

    num_workers: int

    def client(self, worker: int, method: str, *args: Any, num_returns: int = 1) -> Any: ...

    def server(self, method: str, *args: Any, num_returns: int = 1) -> Any: ...

    def get(self, futures: Any) -> Any: ...


@dataclass(frozen=True)
class TaskSpec:
    """Everything a role needs to build its state; pickled once per run to every process."""

    model: ModelConfig
    num_classes: int
    train: ArrayDataset
    test: ArrayDataset
    partition: Partition
    algorithm: AlgorithmConfig
    federation: FederationConfig
    seed: int
    device: str = "cpu"

    def build_model(self) -> SplitModel:
        sample = {k: v[:1] for k, v in self.train.features.items()}
        return build_split_model(self.model, sample, self.num_classes, self.seed)


@dataclass
class ClientRecord:
    client_id: int
    worker: int
    compute_s: float = 0.0
    samples: int = 0
    train_loss: float = float("nan")


@dataclass
class RoundResult:
    train_loss: float  # NaN when no client completed the round
    samples: int
    clients: list[ClientRecord] = field(default_factory=list)

    @staticmethod
    def mean(losses: list[float]) -> float:
        return float(np.mean(losses)) if losses else float("nan")


# ----------------------------------------------------------------------------- tensors and batches


def tensor(array: np.ndarray, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor from a received array (object-store arrays are read-only: copy those)."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, dtype)


def to_tensors(features: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: tensor(v, device, torch.long if v.dtype.kind in "iub" else torch.float32) for k, v in features.items()}


def epoch_batches(partition_size: int, batch_size: int) -> int:
    """Mini-batches in one pass over a partition: ceil(size / batch), the last one possibly smaller, except that
    a last batch of one sample is left out, as the paper's code skips it (BatchNorm cannot train on one sample)."""
    n = int(partition_size)
    return -(-n // batch_size) - (1 if batch_size > 1 and n % batch_size == 1 else 0)


def local_steps_for(cfg: AlgorithmConfig, partition_size: int, batch_size: int) -> int:
    """Mini-batches a sampled client processes in one round: `local_steps`, or with `local_epochs` full passes
    over its partition, `epoch_batches` each."""
    if cfg.local_epochs is None:
        return cfg.local_steps
    return epoch_batches(partition_size, batch_size) * cfg.local_epochs


def sample_batch(spec: TaskSpec, client_id: int, round_idx: int, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The mini-batch of one virtual client at (round, step): a pure function of the run seed,
    so any worker draws the same one. With `local_epochs`, step j of an epoch is the j-th slice of that
    epoch's shuffle of the partition (every row once per epoch); otherwise a batch drawn afresh each step."""
    idx = spec.partition.client_indices(client_id)
    size = spec.federation.batch_size
    if spec.algorithm.local_epochs is not None:
        epoch, j = divmod(step, epoch_batches(len(idx), size))
        order = np.random.default_rng([spec.seed, 13, client_id, round_idx, epoch]).permutation(len(idx))
        return spec.train.batch(np.sort(idx[order[j * size : (j + 1) * size]]))
    rng = np.random.default_rng([spec.seed, 7, client_id, round_idx, step])
    size = min(size, len(idx))
    return spec.train.batch(np.sort(idx[rng.choice(len(idx), size=size, replace=False)]))


def nbytes(tree: Any) -> int:
    """Bytes of the arrays in a (nested) payload as it would travel."""
    if isinstance(tree, np.ndarray):
        return int(tree.nbytes)
    if isinstance(tree, dict):
        return sum(nbytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(nbytes(v) for v in tree)
    return 0


def count_flops(module: torch.nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one forward (matmuls and convolutions), in eval mode so BN statistics stay put."""
    from torch.utils.flop_counter import FlopCounterMode

    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(counter.get_total_flops())


def _shape_key(tensors: dict[str, torch.Tensor]) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in sorted(tensors.items()))


# ----------------------------------------------------------------------------- roles


class Measured:
    """Work accounting shared by both roles: wall seconds always, memory when the engine asks.

    `work(client_id)` wraps a block of one client's work. Blocks of one client in one round are
    chained: its peak is max over blocks of (bytes its earlier blocks left allocated + the block's
    own peak). `pop_stats()` hands the round's numbers to the engine and starts afresh.
    """

    def _init_measuring(self, device: torch.device) -> None:
        self.meter = MemoryMeter(device if device.type in ("cpu", "cuda") else "cpu")
        self.measuring = False
        self.in_work = False
        self.stats: dict[int | None, dict[str, float]] = {}

    def set_measuring(self, on: bool) -> None:
        self.measuring = bool(on)

    @contextmanager
    def work(self, client_id: int | None = None) -> Iterator[Measurement]:
        outer = not self.in_work  # an inner block is part of the outer one: timed only
        self.in_work = True
        try:
            with self.meter.measure(enabled=self.measuring and outer) as m:
                yield m
        finally:
            self.in_work = not outer
        if not outer:
            return
        s = self.stats.setdefault(client_id, {"peak": 0, "retained": 0, "overhead_s": 0.0})
        if m.measured:
            s["peak"] = max(s["peak"], s["retained"] + m.peak_bytes)
            s["retained"] += m.retained_bytes
            s["overhead_s"] += m.overhead_s

    def pop_stats(self) -> dict:
        """{client_id: {peak_mem_bytes, static_mem_bytes, overhead_s}} for the blocks measured since the last call."""
        static = self.static_memory() if self.measuring else None
        out = {
            cid: {"peak_mem_bytes": static + s["peak"], "static_mem_bytes": static, "overhead_s": s["overhead_s"]}
            for cid, s in self.stats.items()
            if static is not None
        }
        self.stats = {}
        return out

    def static_memory(self) -> int:  # pragma: no cover - each role says what it holds
        raise NotImplementedError


def _state_attrs(obj: object) -> dict[str, Any]:
    """The attributes that hold training state, by name: modules, optimizers and ZO updaters."""
    kinds = (nn.Module, torch.optim.Optimizer, ZOUpdater)
    return {name: v for name, v in sorted(vars(obj).items()) if isinstance(v, kinds)}


def _cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def _cpu_copy(tree: Any, memo: dict) -> Any:
    """A deep copy of a state tree whose tensors are new CPU tensors (one copy from any device, where
    copy.deepcopy would copy on the device first). Tensors that are one view in `tree` (shared modules) stay
    one tensor in the copy."""
    if isinstance(tree, torch.Tensor):
        key = (tree.data_ptr(), tree.device, tree.dtype, tuple(tree.shape), tree.stride())
        if key not in memo:
            memo[key] = tree.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(tree, dict):
        return {k: _cpu_copy(v, memo) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu_copy(v, memo) for v in tree)
    return copy.deepcopy(tree)


class RoleState:
    """A role's state, generic over its attributes: every nn.Module, torch.optim.Optimizer and ZOUpdater the
    role holds directly, plus its process's torch RNG. Containers of per-round objects (a client's copy in
    flight, the server copies of SplitFed-V1) are empty between rounds and not part of it, so a role must
    keep anything that outlives a round in such an attribute. Modules that share tensors are saved under
    each name; torch.save stores the shared storage once.
    """

    def _attr_states(self) -> dict[str, Any]:
        return {name: v.state_dict() for name, v in _state_attrs(self).items()}

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain values; it may share tensors with the live role (as torch's state_dict does)."""
        return {"attrs": _cpu(self._attr_states()), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        attrs = _state_attrs(self)
        if set(attrs) != set(state["attrs"]):
            raise ValueError(f"{type(self).__name__}: state holds {sorted(state['attrs'])}, the role {sorted(attrs)}")
        for name, value in state["attrs"].items():
            attrs[name].load_state_dict(value)
        torch.set_rng_state(state["torch_rng"])

    def snapshot(self) -> None:
        """Keep a copy of the state in this process (the start of a round, so the round can be run again)."""
        self._snapshot = {"attrs": _cpu_copy(self._attr_states(), {}), "torch_rng": torch.get_rng_state()}

    def restore(self) -> None:
        """Back to the last snapshot; measurements of the abandoned work are dropped."""
        self.load_state_dict(_cpu_copy(self._snapshot, {}))  # a copy: optimizers may adopt the loaded tensors
        self.__dict__["stats"] = {}

    @torch.no_grad()
    def nonfinite(self) -> str | None:
        """The first floating parameter or buffer holding a NaN or Inf (`attribute.name`), or None."""
        named = [
            (f"{name}.{key}", t)
            for name, v in _state_attrs(self).items()
            if isinstance(v, nn.Module)
            for key, t in itertools.chain(v.named_parameters(), v.named_buffers())
            if t.is_floating_point()
        ]
        # A NaN or Inf makes a tensor's sum non-finite, so finite sums clear every tensor with one check per
        # device; a sum that overflowed, or a real NaN/Inf, is looked at tensor by tensor.
        sums: dict[torch.device, list[torch.Tensor]] = {}
        for _, t in named:
            sums.setdefault(t.device, []).append(t.sum(dtype=torch.float32))
        if all(bool(torch.isfinite(torch.stack(s)).all()) for s in sums.values()):
            return None
        return next((key for key, t in named if not bool(torch.isfinite(t).all())), None)

    def end_round(self, snapshot: bool) -> str | None:
        """A round's end in one call: `nonfinite()`, and with `snapshot` a snapshot, which is the next round's
        starting state as long as nothing changes the state before that round (evaluation does not)."""
        bad = self.nonfinite()
        if snapshot:
            self.snapshot()
        return bad


class ClientRole(RoleState, Measured):
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

    def invoke(self, method: str, *args: Any) -> Any:
        return getattr(self, method)(*args)

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
        key = _shape_key(inputs)
        if key not in cache:
            cache[key] = count_flops(self.split.client, **inputs)
        return cache[key]

    def forget(self, client_id: int) -> None:
        """Drop what a client left pending (it was dropped from the round)."""
        for name in ("pending", "local"):
            getattr(self, name, {}).pop(client_id, None)


# Calls that are bookkeeping, not server work: not measured.
_UNMEASURED = ("evaluate", "client_state", "pop_stats", "set_measuring")
_UNMEASURED += ("state_dict", "load_state_dict", "snapshot", "restore", "nonfinite", "end_round")


class ServerRole(RoleState, Measured):
    """Base of the server state: the server part, a copy of the client part, the test split."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self.split = spec.build_model()
        self.client = self.split.client.to(self.device)
        self.server = self.split.server.to(self.device)
        self._init_measuring(self.device)

    def invoke(self, method: str, *args: Any) -> Any:
        """Every server call is one block of server work (evaluation excluded)."""
        if method in _UNMEASURED:
            return getattr(self, method)(*args)
        with self.work(None):
            return getattr(self, method)(*args)

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

    def client_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.client.state_dict().items()}


# ----------------------------------------------------------------------------- the algorithm


class Algorithm(ABC):
    """Driver-side logic of one method. Subclasses set the roles and write `run_round`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what is zeroth-order, what is first-order, what crosses the network
    client_role: ClassVar[type[ClientRole]]
    server_role: ClassVar[type[ServerRole]]
    # Whether run_round reports compute and barriers to `ledger.clock`, so the deadline and
    # over-commit policies can act on it. Others still get communication time (the ledger feeds it).
    supports_policies: ClassVar[bool] = False
    # Whether it runs `local_epochs` (per client: ceil(partition size / batch) x epochs mini-batches a round).
    supports_epochs: ClassVar[bool] = False

    def __init__(
        self, cfg: AlgorithmConfig, federation: FederationConfig, seed: int, num_workers: int, client_sizes: np.ndarray
    ):
        self.cfg = cfg
        self.federation = federation
        self.seed = seed
        self.num_workers = num_workers
        self.client_sizes = np.asarray(client_sizes)  # training samples per virtual client

    def state_dict(self) -> dict[str, Any]:
        """Driver-side state, generic over attributes: every ReplayLog and numpy Generator the algorithm holds."""
        out: dict[str, Any] = {}
        for name, v in sorted(vars(self).items()):
            if isinstance(v, ReplayLog):
                out[name] = v.state_dict()
            elif isinstance(v, np.random.Generator):
                out[name] = v.bit_generator.state
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore driver state; the workers are taken to be fresh (the ReplayLogs replay from the start)."""
        own = self.state_dict()
        if set(own) != set(state):
            raise ValueError(f"{type(self).__name__}: state holds {sorted(state)}, the algorithm {sorted(own)}")
        for name, value in state.items():
            target = getattr(self, name)
            if isinstance(target, ReplayLog):
                target.load_state_dict(value)
            else:
                target.bit_generator.state = value

    def round_mark(self) -> dict[str, Any]:
        """The driver state at a round's start, for `rollback`: as `state_dict` would save it, except that a
        ReplayLog gives a mark (its length; it then keeps the old positions of the clients the round moves), so
        the cost is O(clients in the round), not O(rounds run). A subclass that saves more in `state_dict` must
        keep it here too (a deep copy will do)."""
        out: dict[str, Any] = {}
        for name, v in sorted(vars(self).items()):
            if isinstance(v, ReplayLog):
                out[name] = v.mark()
            elif isinstance(v, np.random.Generator):
                out[name] = copy.deepcopy(v.bit_generator.state)
        return out

    def rollback(self, mark: dict[str, Any]) -> None:
        """Back to the state at `round_mark` (the latest one), as `load_state_dict` of the state then would:
        the workers are taken to be fresh. Can be repeated with the same mark."""
        for name, value in mark.items():
            target = getattr(self, name)
            if isinstance(target, ReplayLog):
                target.rollback(value)
            else:
                target.bit_generator.state = copy.deepcopy(value)

    def unread(self) -> list:
        """Futures of calls this algorithm sent and has not read yet; the engine reads them with the round's
        end, so an error in one is raised even after the run's last round."""
        return []

    @classmethod  # noqa: B027  (a no-op: most algorithms run any task)
    def check_task(cls, spec: TaskSpec, split: SplitModel, index: int) -> None:
        """Raise ConfigError (naming `algorithms[index]`) for a task this algorithm cannot run; called by the
        engine's validation, before anything is written. Most algorithms run any task."""

    def steps_of(self, client_id: int) -> int:
        """Mini-batches the client processes this round (see `local_steps_for`)."""
        return local_steps_for(self.cfg, self.client_sizes[client_id], self.federation.batch_size)

    def worker_of(self, position: int) -> int:
        """Which worker serves the client at this position in the round's sample."""
        return position % self.num_workers

    @abstractmethod
    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, ledger: Ledger) -> RoundResult:
        """Run one round for the sampled `clients`, charging `ledger` for every message."""

    @staticmethod
    def barrier(clock: Any, active: list[int], backend: Backend, worker: dict[int, int]) -> list[int]:
        """The server waits for `active`: the round policy keeps some; the others' pending work is dropped."""
        if clock is None:
            return active
        kept = clock.barrier(active)
        for cid in set(active) - set(kept):
            backend.client(worker[cid], "forget", cid)
        return kept

    def sync_workers(self, backend: Backend) -> None:  # noqa: B027  (a no-op for stateless clients)
        """Bring every worker's replica up to date (used before comparing replicas)."""


class SeedBasedAlgorithm(Algorithm):
    """An algorithm whose clients share one model updated only from (seeds, scalars) records.

    It owns the replay log; `open_step` sends a local step's first messages (the replay of missed
    records at step 0, then the step's seeds) and lets clients that fail mid-round drop out.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log = ReplayLog(self.federation.num_clients, self.num_workers)

    def open_step(self, rnd: int, step: int, active: list[int], ledger: Ledger) -> tuple[np.ndarray, list[int]]:
        seeds = derive_seeds(self.seed, rnd, step, self.cfg.perturbations)
        for cid in active:
            if step == 0:
                self.log.catch_up(ledger, cid)
            ledger.charge("seed_down", cid, seeds)
        if ledger.clock is not None and step == 0:
            active = ledger.clock.drop_failed(active)
        return seeds, active

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, ledger: Ledger) -> RoundResult:
        worker = {int(c): self.worker_of(i) for i, c in enumerate(clients)}
        records = {c: ClientRecord(c, w) for c, w in worker.items()}
        active, losses = [int(c) for c in clients], []
        for step in range(self.cfg.local_steps):
            active = self.local_step(rnd, step, active, worker, records, losses, backend, ledger)
            if not active:
                break
        samples = sum(r.samples for r in records.values())
        return RoundResult(RoundResult.mean(losses), samples, list(records.values()))

    @abstractmethod
    def local_step(
        self,
        rnd: int,
        step: int,
        active: list[int],
        worker: dict[int, int],
        records: dict[int, ClientRecord],
        losses: list[float],
        backend: Backend,
        ledger: Ledger,
    ) -> list[int]:
        """One local step of the `active` clients; returns those still active (a barrier may drop some).
        Appends the step's training losses to `losses` and accumulates into `records`."""

    def charge_uploads(self, active: list[int], metas: dict[int, dict], records: dict, ledger: Ledger) -> None:
        """Each client's forward on the clock, its activations and labels on the ledger, its measured compute."""
        for cid in active:
            m = metas[cid]
            if ledger.clock is not None:
                ledger.clock.client_compute(cid, m["flops"])
            ledger.charge("act_up", cid, m["act_bytes"])
            ledger.charge("labels_up", cid, m["label_bytes"])
            records[cid].compute_s += m["compute_s"]

    def kept_at_barrier(self, clock: Any, active: list[int], backend: Backend, worker: dict[int, int]) -> list[int]:
        """The step's barrier. Where the clock could not drop anyone (`may_drop`), work may already have gone
        out for every client, so a drop there is an error."""
        if may_drop(clock):
            return self.barrier(clock, active, backend, worker)
        keep_all(active, self.barrier(clock, active, backend, worker))
        return active

    def around_barrier(
        self,
        clock: Any,
        active: list[int],
        backend: Backend,
        worker: dict[int, int],
        submit: Callable[[list[int]], Any],
        charge: Callable[[], Any],
    ) -> tuple[list[int], Any, Any]:
        """A server phase and the barrier before it. Where no client can be dropped, `submit(active)` goes out
        before `charge()` reads the clients' messages (the server works meanwhile); otherwise `charge()` runs,
        the barrier keeps some clients and `submit(kept)` goes out for them (if any).
        Returns (kept, what `submit` returned or None, what `charge` returned)."""
        early = not may_drop(clock)
        sent = submit(active) if early else None
        charged = charge()
        kept = self.kept_at_barrier(clock, active, backend, worker)
        if not early and kept:
            sent = submit(kept)
        return kept, sent, charged

    def sync_workers(self, backend: Backend) -> None:
        backend.get([backend.client(w, "sync", self.log.for_worker(w)) for w in range(self.num_workers)])
