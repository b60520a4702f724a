"""Checkpoints of a run, and taking it up again (`--resume`): a run that ended is kept as it is, one with a
checkpoint goes on from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hosfl_sim.config import ConfigError, Scenario, to_dict
from hosfl_sim.config.identity import run_hash
from hosfl_sim.record import Recorder, read_manifest
from hosfl_sim.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

ENDED = ("completed", "diverged")  # a run that ended on its own: a resume keeps it


@dataclass
class RunSummary:
    algorithm: str
    seed: int
    run_dir: Path
    status: str
    rounds: int
    final: dict[str, Any]


def resume_state(scenario: Scenario, index: int, seed: int, run_dir: Path) -> RunSummary | dict[str, Any] | None:
    """A run that ended (kept as is), a checkpoint to go on from, or None (start afresh)."""
    if not (run_dir / "manifest.json").exists():
        return None
    manifest = read_manifest(run_dir, complete=True)
    want = run_hash(to_dict(scenario), index, seed)
    expected = "a run directory of this scenario, algorithm and seed (its configuration differs)"
    if run_hash(manifest["scenario"], manifest["algorithm_index"], manifest["seed"]) != want:
        raise ConfigError("--resume", str(run_dir), expected)
    if manifest["status"] in ENDED:
        _check_rows(run_dir, {"rounds": 1})
        rounds = pd.read_parquet(run_dir / "rounds.parquet")
        final = {str(k): v for k, v in rounds.iloc[-1].to_dict().items()} if len(rounds) else {}
        return RunSummary(manifest["algorithm"], seed, run_dir, manifest["status"], len(rounds), final)
    try:
        state = load_checkpoint(run_dir)
    except CheckpointError as e:
        raise ConfigError("--resume", str(run_dir), f"a run whose checkpoint can be used ({e})") from None
    if state is not None and state["run_hash"] != want:
        raise ConfigError("--resume", str(run_dir), expected)
    if state is not None:
        _check_rows(run_dir, state["recorder"])
    return state


def _check_rows(run_dir: Path, counts: dict[str, int]) -> None:
    """The Parquet files hold at least the rows a resume keeps (`counts`, as a checkpoint records them): one that
    was deleted, cut short or damaged is refused in one line before anything is touched."""
    for name, count in counts.items():
        path = run_dir / f"{name}.parquet"
        if count == 0:
            continue
        try:
            held = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException) as e:
            held, why = 0, "it is missing" if not path.exists() else f"it cannot be read: {type(e).__name__}"
        else:
            why = f"it holds {held}"
        if held < count:
            expected = f"a run whose {name}.parquet holds the {count} rows its checkpoint counts ({why})"
            raise ConfigError("--resume", str(run_dir), expected)


def save_run(
    recorder: Recorder, scenario: Scenario, index: int, seed: int, rnd: int,
    engine: dict[str, Any], algorithm: dict[str, Any], server: dict[str, Any],
) -> None:  # fmt: skip
    """A checkpoint of the run after round `rnd`: the engine's, the algorithm's and the server's state, and where
    the recorder stands (checkpoint.py says how it is written)."""
    state = {
        "round": rnd,
        "run_hash": run_hash(to_dict(scenario), index, seed),
        "engine": engine,
        "algorithm": algorithm,
        "server": server,
        "recorder": recorder.position(),
    }
    save_checkpoint(recorder.dir, state)


def after_server_loss(run_dir: Path, checkpoint_round: int | None, checkpoint_every: int) -> str:
    """What a user can do once the server died: resume from the last checkpoint, or run again."""
    if checkpoint_round is not None:
        return f"resume from round {checkpoint_round}: hosfl-sim run --resume {run_dir.parent}"
    if checkpoint_every:  # set, but the server died before the first checkpoint was written
        return f"it died before the first checkpoint (round {checkpoint_every}): run it again"
    return "no checkpoint to resume from (set runtime.checkpoint_every)"


def failed_run(run_dir: Path, seed: int, error: Exception) -> RunSummary:
    """The summary of a run that raised `error` (its manifest, written as it failed, holds the reason)."""
    log.error("%s failed: %s: %s", run_dir.name, type(error).__name__, error)
    try:
        manifest = read_manifest(run_dir)
    except ConfigError:  # never written, or written only in part as the run failed
        manifest = {}
    rounds = int(manifest.get("rounds_completed") or 0)
    return RunSummary(manifest.get("algorithm", run_dir.name), seed, run_dir, "failed", rounds, {})
