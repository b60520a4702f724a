"""Checkpoints: what a run needs to go on as if it had never stopped, in one file that loads without pickle.

`checkpoint.pt` in the run directory, replaced atomically every `runtime.checkpoint_every` rounds and
when a run is stopped (Ctrl-C, SIGTERM). It holds, at the end of round `round`:
- `server`: the server role's state (server part, its copy of the client part, optimizers, ZO updaters,
  the server process's torch RNG): `ServerRole.state_dict()`;
- `algorithm`: driver-side state (the ReplayLog of the seed-based algorithms): `Algorithm.state_dict()`;
- `engine`: the client sampler's bit-generator state, samples seen, simulated time, wall time so far,
  the ledger's totals;
- `recorder`: how many rows rounds.parquet and clients.parquet held (later rows are dropped on resume);
- `run_hash`: what decides the run's numbers (the scenario minus runtime and names, the algorithm, the
  seed); a resume with anything else is refused.
Not in it: the client workers. They hold nothing the server cannot rebuild (see `ClientRole`), so a
resumed run starts fresh workers that replay the log. Nor the system model: profiles and availability
are pure functions of (scenario, seed, round), rebuilt on resume.

Format: one header line, `hosfl-checkpoint <version> <sha256 of the rest>`, then torch.save of nested dicts,
lists and tuples of tensors and plain values (numpy arrays travel as tensors under a tag).
`torch.load(weights_only=True)` reads it, so loading never runs code from the file, and the checksum is
checked first, so a damaged file (a flipped bit, a truncation) is refused instead of resuming into other numbers.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILE = "checkpoint.pt"
VERSION = 2  # 2: a checksummed header line
MAGIC = b"hosfl-checkpoint"
_ARRAY = "__ndarray__"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or from another version."""


def encode(tree: Any) -> Any:
    """numpy arrays and scalars -> tensors and Python numbers, recursively (torch.save's safe subset)."""
    if isinstance(tree, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.ascontiguousarray(tree).copy())}
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {k: encode(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(encode(v) for v in tree)
    return tree


def decode(tree: Any) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY}:
            return tree[_ARRAY].numpy()
        return {k: decode(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(decode(v) for v in tree)
    return tree


def path_of(run_dir: str | Path) -> Path:
    return Path(run_dir) / FILE


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: a reader (or a kill) sees the previous checkpoint or this one, never half of one."""
    path = path_of(run_dir)
    tmp = path.with_suffix(".pt.tmp")
    payload = io.BytesIO()
    torch.save(encode({**state, "version": VERSION}), payload)
    body = payload.getvalue()
    header = MAGIC + f" {VERSION} {hashlib.sha256(body).hexdigest()}\n".encode()
    try:
        with tmp.open("wb") as f:
            f.write(header + body)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no stray temporary file
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's checkpoint, or None when it has none. Refuses anything beyond tensors and plain values."""
    path = path_of(run_dir)
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e.strerror})") from None
    header, _, body = raw.partition(b"\n")
    fields = header.split(b" ")
    if len(fields) != 3 or fields[0] != MAGIC or fields[1] != str(VERSION).encode():
        raise CheckpointError(f"{path}: not a checkpoint of this version ({VERSION})")
    if hashlib.sha256(body).hexdigest().encode() != fields[2]:
        raise CheckpointError(f"{path}: damaged checkpoint (its checksum does not match its contents)")
    try:
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a safe checkpoint (it holds more than tensors and plain values: {first})"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a checkpoint of this version ({VERSION})")
    return decode(state)


def remove_checkpoint(run_dir: str | Path) -> None:
    path_of(run_dir).unlink(missing_ok=True)
