"""FSL-SAGE as the paper's vision code runs it: per-client auxiliary models that live from round to round and
are aligned by the server at the start of each round. (`fsl_sage` is the other reading: one linear aux head,
refit by the client after each alignment step and averaged with the client parts.)

State that outlives a round: the global client part; one server part with one optimizer for the whole run,
stepped by every client in turn; and per virtual client, held where the alignment runs (the server): its aux
model (a ResNet stage: two BasicBlocks C -> 2C, the first with stride 2, pooling, a linear classifier), the
aux's Adam state, and a buffer of the last `aux_buffer_samples` (activation, label) pairs it uploaded.

One round, the sampled clients one after another as the reference's loop runs them:
  server  align each sampled client's aux, from the server part as the round starts (eval mode): targets
          t = d CE_mean(f_s(A), Y) / dA over the whole buffer (A, Y) at once; then `aux_passes` epochs over the
          buffer in shuffled batches of `aux_batch`: Adam on sum((d CE_mean(aux(a_b), y_b) / d a_b - t_b)^2)
  server -> client   the global client part and the client's aux model                      model_down
  client  local_steps or local_epochs steps: a = f_c(x); at steps 0, align_every, 2 align_every, ... (a, y)
          go up (act_up, labels_up); every step descends d CE(aux(a), y) / da (the server's gradient never comes
          back); the aux is in train mode, so only its BatchNorm statistics move
  server  per upload, in order: one optimizer step of the server part on CE(f_s(a), y); (a, y) into the buffer
  client -> server   the client part and the aux model                                      model_up
  server  FedAvg of the client parts by partition size; the aux models are kept, never averaged
As in the reference, the server part stays in eval mode throughout (its BatchNorm statistics never move).
Synchronous rounds only: a client dropped mid-round would leave half of its uploads in the server's steps.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, RoundResult
from hosfl_sim.algorithms.fsl_sage import estimated_grad
from hosfl_sim.algorithms.registry import register
from hosfl_sim.algorithms.sfl import SFLServer, SplitClient, load_numpy, to_numpy
from hosfl_sim.algorithms.state import bookkeeping
from hosfl_sim.algorithms.task import TaskSpec, from_wire, local_steps_for, sample_batch, tensor, to_tensors, to_wire
from hosfl_sim.comm.channel import Channel
from hosfl_sim.comm.messages import Activations, Labels, Weights
from hosfl_sim.config import ConfigError
from hosfl_sim.models import SplitModel
from hosfl_sim.models.resnet import BasicBlock

AUX_TAG, ALIGN_TAG = 19, 23  # mixed with the run seed: the aux models' initial weights, the alignment shuffles


class ResidualAux(nn.Module):
    """The reference's aux: a ResNet stage after the cut, then pooling and a classifier. (B, C, H, W) -> logits."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.stage = nn.Sequential(BasicBlock(channels, 2 * channels, 2), BasicBlock(2 * channels, 2 * channels, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stage(a)), 1))  # (B, num_classes)


def cut_channels(spec: TaskSpec, client: nn.Module, input_keys: tuple[str, ...]) -> int:
    """Channels of the activation at the cut (one forward in eval mode: BatchNorm statistics stay put)."""
    feats = {k: v[:1] for k, v in spec.train.features.items() if k in input_keys}
    modes = {m: m.training for m in client.modules()}
    client.eval()
    try:
        with torch.no_grad():
            a = client(**to_tensors(feats, next(client.parameters()).device))  # (1, C, H, W): one activation
    finally:
        for m, mode in modes.items():
            m.training = mode
    if a.ndim != 4:
        raise ValueError(f"fsl_sage_persistent needs image activations (B, C, H, W) at the cut; got {tuple(a.shape)}")
    return int(a.shape[1])


def initial_aux(spec: TaskSpec, channels: int, client_id: int) -> ResidualAux:
    """Client `client_id`'s aux model as it starts (its weights drawn from the run seed and the client)."""
    seed = int(np.random.SeedSequence([spec.seed, AUX_TAG, client_id]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResidualAux(channels, spec.num_classes).to(spec.device)


def wire_state(aux: nn.Module) -> dict[str, np.ndarray]:
    """What of an aux model travels: its parameters and BatchNorm statistics (not the step counters, which BatchNorm
    with a fixed momentum never reads)."""
    return to_numpy({k: v for k, v in aux.state_dict().items() if not k.endswith("num_batches_tracked")})


def align_order(spec: TaskSpec, rnd: int, client_id: int) -> torch.Generator:
    """The generator of one alignment's shuffles (one permutation per pass)."""
    seed = int(np.random.SeedSequence([spec.seed, ALIGN_TAG, rnd, client_id]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


class FSLSAGEPersistentClient(SplitClient):
    """SFL's client plus, per virtual client in flight, the aux model it received this round."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.aux_base = initial_aux(spec, cut_channels(spec, self.base, self.split.input_keys), 0)  # weights come down
        self.aux: dict[int, nn.Module] = {}

    def begin(self, client_id: int, global_state: dict[str, np.ndarray], aux_state: dict[str, np.ndarray]) -> None:
        self.start_copy(client_id, global_state)
        aux = copy.deepcopy(self.aux_base)
        load_numpy(aux, aux_state)
        self.aux[client_id] = aux.train()

    def train(self, client_id: int, rnd: int) -> tuple[list[dict], dict]:
        """Every local step on the aux model's gradient; the activations and labels of every `align_every`-th step
        are returned, to go up to the server."""
        cfg, fed = self.spec.algorithm, self.spec.federation
        steps = local_steps_for(cfg, len(self.spec.partition.client_indices(client_id)), fed.batch_size)
        uploads, losses, samples, flops = [], [], 0, 0
        with self.work(client_id) as t:
            model, opt = self.local[client_id]
            aux = self.aux[client_id]
            for step in range(steps):
                feats, labels = sample_batch(self.spec, client_id, rnd, step)
                x, y = self.client_inputs(feats), tensor(labels, self.device)
                opt.zero_grad(set_to_none=True)
                a = model(**x)  # (B, C, H, W) with graph
                if step % cfg.align_every == 0:
                    uploads.append({"a": to_wire(a), "y": labels})
                g_hat, loss = estimated_grad(aux, a, y)
                a.backward(g_hat.to(a.dtype))
                opt.step()
                losses.append(float(loss.detach()))
                samples += len(labels)
                flops += 3 * self.forward_flops(x)  # forward, backward ~ 2x (the aux's share is not counted)
        meta = {
            "act": [Activations.of(u["a"]) for u in uploads],
            "labels": [Labels.of(u["y"]) for u in uploads],
            "samples": samples,
            "loss": losses[-1] if losses else float("nan"),
            "compute_s": t.seconds,
            "flops": flops,
        }
        return uploads, meta

    def upload(self, client_id: int) -> dict[str, dict[str, np.ndarray]]:
        aux = self.aux.pop(client_id)
        return {"client": self.take_copy(client_id), "aux": wire_state(aux)}


class FSLSAGEPersistentServer(SFLServer):
    """The global parts, the one server optimizer, and every client's aux state (model, Adam state, buffer)."""

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.server.eval()  # as the reference: the server part's BatchNorm statistics never move
        self.aux_states: dict[int, dict] = {}  # client id -> {"model", "opt", "a", "y"}: outlives rounds
        self.channels = cut_channels(spec, self.client, self.split.input_keys)

    # The aux states are part of the role's state (checkpoints, a round's rollback), beside its modules.
    def state_dicts(self) -> dict:
        return {**super().state_dicts(), "aux_clients": self.aux_states}

    @bookkeeping
    def load_state_dict(self, state: dict) -> None:
        attrs = dict(state["attrs"])
        self.aux_states = attrs.pop("aux_clients")
        super().load_state_dict({**state, "attrs": attrs})

    def align(self, client_id: int, rnd: int) -> tuple[dict[str, np.ndarray], dict]:
        """Align the client's aux model to the server part's cut gradients on its buffer; return the aux model."""
        cfg = self.spec.algorithm
        aux = initial_aux(self.spec, self.channels, client_id)
        opt = torch.optim.Adam(aux.parameters(), lr=cfg.aux_lr)
        state = self.aux_states.get(client_id)
        a, y = torch.empty(0, device=self.device), torch.empty(0, dtype=torch.long, device=self.device)
        if state is not None:  # not its first round: its aux, its Adam state, its buffer
            aux.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            a, y = state["a"].to(self.device), state["y"].to(self.device)
        aux.train()
        if len(y):
            target = self.cut_gradients(a, y)  # (N, C, H, W)
            order = align_order(self.spec, rnd, client_id)
            for _ in range(cfg.aux_passes):
                for idx in torch.randperm(len(y), generator=order).split(cfg.aux_batch):
                    g_hat, _ = estimated_grad(aux, a[idx], y[idx], create_graph=True)
                    opt.zero_grad(set_to_none=True)
                    F.mse_loss(g_hat, target[idx], reduction="sum").backward()
                    opt.step()
        self.aux_states[client_id] = {"model": aux.state_dict(), "opt": opt.state_dict(), "a": a, "y": y}
        sent = wire_state(aux)
        return sent, {"aux": Weights.of(sent), "buffered": len(y)}

    def cut_gradients(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d CE_mean(f_s(A), Y) / dA over the whole buffer in one batch, the server part as it stands."""
        a = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(self.server(a), y), a)
        return g

    def steps(self, client_id: int, uploads: list[dict]) -> dict:
        """One optimizer step of the server part per upload, in order; each (a, y) joins the client's buffer."""
        cfg, state = self.spec.algorithm, self.aux_states[client_id]
        losses, flops = [], 0
        for up in uploads:
            a, y = from_wire(up["a"], self.device, self.spec.dtype), tensor(up["y"], self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.server(a), y)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            flops += 3 * self.forward_flops(a, {})
            keep = cfg.aux_buffer_samples  # the newest samples
            state["a"] = (torch.cat([state["a"], a]) if len(state["y"]) else a)[-keep:]
            state["y"] = torch.cat([state["y"], y])[-keep:]
        return {"losses": losses, "flops": flops}

    def finish(self, weights: np.ndarray, client_ids: list[int], *uploads: dict) -> None:
        """FedAvg of the client parts; each client's aux model (its moved BatchNorm statistics) kept as its own."""
        if uploads:
            self.fedavg(weights, *[u["client"] for u in uploads])
        for cid, up in zip(client_ids, uploads):
            model = self.aux_states[cid]["model"]
            sent = {k: from_wire(v, self.device, model[k].dtype) for k, v in up["aux"].items()}
            self.aux_states[cid]["model"] = {**model, **sent}


@register
class FSLSAGEPersistent(Algorithm):
    name = "fsl_sage_persistent"
    summary = (
        "FSL-SAGE as the paper's code: first-order clients on per-client aux models aligned by the server each "
        "round, server steps every align_every steps; up: activations and labels at those steps, client + aux "
        "weights; down: client + aux weights (no cut gradient)"
    )
    client_role = FSLSAGEPersistentClient
    server_role = FSLSAGEPersistentServer
    options = frozenset(
        {
            "client_optimizer",
            "server_optimizer",
            "align_every",
            "aux_passes",
            "aux_lr",
            "aux_buffer_samples",
            "aux_batch",
        }
    )
    supports_epochs = True

    @classmethod
    def check_task(cls, spec: TaskSpec, split: SplitModel, index: int) -> None:
        """The aux model is a ResNet stage: the cut must give image activations (B, C, H, W)."""
        try:
            cut_channels(spec, split.client, split.input_keys)
        except ValueError as e:
            raise ConfigError(f"algorithms[{index}].name", cls.name, f"a vision task ({e})") from None

    def run_round(self, rnd: int, clients: np.ndarray, backend: Backend, channel: Channel) -> RoundResult:
        clock = channel.clock
        worker, records = self.assign(clients)
        active = [int(c) for c in clients]
        global_state, size = backend.server(self.server_role.global_client, num_returns=2)
        aligned = {
            c: backend.server(self.server_role.align, c, rnd, num_returns=2) for c in active
        }  # before any server step
        trained = {}
        for c in active:
            backend.later(backend.client(worker[c], self.client_role.begin, c, global_state, aligned[c][0]))
            trained[c] = backend.client(worker[c], self.client_role.train, c, rnd, num_returns=2)
        served = {c: backend.server(self.server_role.steps, c, trained[c][0]) for c in active}  # client after client
        uploads = {c: backend.client(worker[c], self.client_role.upload, c) for c in active}
        client_part, metas = backend.get([size, {c: [aligned[c][1], trained[c][1], served[c]] for c in active}])
        losses = []
        for c in active:
            align, m, srv = metas[c]
            channel.down(c, client_part + align["aux"])
            clock.client_compute(c, m["flops"])
            for act, lab in zip(m["act"], m["labels"]):
                channel.up(c, act)
                channel.up(c, lab)
            clock.server_compute(c, srv["flops"])
            channel.up(c, client_part + align["aux"])
            r = records[c]
            r.compute_s, r.samples, r.train_loss = m["compute_s"], m["samples"], m["loss"]
            losses.extend(srv["losses"])
        weights = self.client_sizes[np.array(active, dtype=np.int64)]
        backend.get(backend.server(self.server_role.finish, weights, active, *[uploads[c] for c in active]))
        return RoundResult(RoundResult.mean(losses), sum(r.samples for r in records.values()), list(records.values()))
