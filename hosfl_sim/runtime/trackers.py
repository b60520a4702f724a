"""Experiment trackers as round callbacks (`runtime.track`, or `hosfl-sim run --track`): Weights & Biases, MLflow,
TensorBoard. Each logs what rounds.parquet holds of a round (losses, accuracies, simulated time, samples, the
ledger's bytes) at step = round, and the run's resolved configuration. The packages are optional
(`pip install 'hosfl_sim[wandb]'`, `[mlflow]`, `[tensorboard]`); a missing one fails the check before anything
is written. Each tracker reads its own settings from its usual environment variables (WANDB_MODE, WANDB_PROJECT,
MLFLOW_TRACKING_URI, ...); TensorBoard writes into the run directory.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hosfl_sim.config import ConfigError, Scenario
from hosfl_sim.record import Recorder
from hosfl_sim.runtime.callbacks import LogRounds, RoundCallback, progress

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}  # tracker -> module it needs


def check_trackers(names: Sequence[str]) -> None:
    """Refuse, naming the field, a tracker given twice, one whose package is not installed, and W&B online without
    a login (every run would fail as it starts) - before anything is written."""
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"runtime.track[{i}]", name, "each tracker once")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"runtime.track[{i}]", name, f"an installed tracker: pip install 'hosfl_sim[{name}]'")
        if name == "wandb" and os.environ.get("WANDB_MODE", "").lower() not in ("offline", "disabled", "dryrun"):
            _check_wandb_login(f"runtime.track[{i}]")


def _check_wandb_login(field: str) -> None:
    import wandb

    try:
        wandb.Api()  # finds a key as wandb.init would (WANDB_API_KEY, netrc, settings); never prompts
    except wandb.errors.UsageError:
        expected = "a W&B login (`wandb login`, or WANDB_API_KEY), or WANDB_MODE=offline to log to local files"
        raise ConfigError(field, "wandb", expected) from None


def metrics(row: dict[str, Any]) -> dict[str, float]:
    """A round's numeric, finite columns (evaluation columns only where the round was evaluated)."""
    skip = {"algorithm", "seed", "round"}
    out = {}
    for key, value in row.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"federation.rounds": 300, ...}: the nested configuration as dotted keys (for trackers' flat params)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


class WandbTracker(RoundCallback):
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(project="hosfl_sim", name=name, config=config, dir=str(run_dir), reinit="create_new")

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        self.run.log(metrics(row), step=int(row["round"]))

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(RoundCallback):
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:500] for k, v in flat(config).items()})  # MLflow caps a param's length

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        self.mlflow.log_metrics(metrics(row), step=int(row["round"]))

    def close(self) -> None:
        self.mlflow.end_run()


class TensorBoardTracker(RoundCallback):
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat(config).items()))

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        for key, value in metrics(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["round"]))

    def close(self) -> None:
        self.writer.close()


Tracker = type[WandbTracker] | type[MlflowTracker] | type[TensorBoardTracker]
TRACKERS: dict[str, Tracker] = {
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
    "tensorboard": TensorBoardTracker,
}


def trackers(names: Sequence[str], run_dir: Path, manifest: dict[str, Any]) -> list[RoundCallback]:
    """The run's trackers, started with its name and its resolved configuration (scenario, algorithm, seed)."""
    config = {**manifest.get("scenario", {}), "algorithm": manifest.get("algorithm"), "seed": manifest.get("seed")}
    return [TRACKERS[name](run_dir, Path(run_dir).name, config) for name in names]


def round_callbacks(
    recorder: Recorder, label: str, rounds: int, done: int, shown: tuple[bool, float], scenario: Scenario
) -> list[RoundCallback]:
    """Everything a run's rounds go to: its Parquet files, the progress display (`shown`: on, seconds between
    lines off a terminal), the trackers the scenario asks for."""
    display = progress(label, rounds, done, *shown)
    return [LogRounds(recorder), display, *trackers(scenario.runtime.track, recorder.dir, recorder.manifest)]
