"""The task every role builds its state from, and the mini-batch a virtual client draws at (round, step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hosfl_sim.config import AlgorithmConfig, FederationConfig, ModelConfig
from hosfl_sim.data import ArrayDataset, Partition
from hosfl_sim.models import SplitModel, build_split_model


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
    fuse_clients: bool | str = "auto"  # runtime.fuse_clients; each client role resolves "auto" on its device
    fuse_server: bool = False  # runtime.fuse_server

    def build_model(self) -> SplitModel:
        sample = {k: v[:1] for k, v in self.train.features.items()}
        return build_split_model(self.model, sample, self.num_classes, self.seed)

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point dtype (`task.model.dtype`): what its parameters and activations are in."""
        return getattr(torch, self.model.dtype)


def tensor(array: np.ndarray, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor from a received array (object-store arrays are read-only: copy those)."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, dtype)


def to_wire(t: torch.Tensor) -> np.ndarray:
    """A tensor as it travels between roles: a numpy array of its values, 4 bytes each for float32. numpy has no
    bfloat16, so a bfloat16 tensor travels as its raw bits, a uint16 array (2 bytes a value, as on a real wire;
    the ledger prices arrays by itemsize). Shares memory with a CPU tensor: copy it if the tensor will change."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_wire(array: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The tensor `to_wire` sent, in `dtype` (the receiver's: its model's dtype, or the parameter it loads into).
    A uint16 array is bfloat16 bits (no other tensor travels as uint16), read back bit-exactly."""
    if array.dtype == np.uint16:
        bits = tensor(array.view(np.int16), device, torch.int16)
        return bits.view(torch.bfloat16).to(dtype)
    return tensor(array, device, dtype)


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


def shape_key(tensors: dict[str, torch.Tensor]) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in sorted(tensors.items()))
