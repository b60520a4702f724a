"""The sweep index (sweep_index.parquet): one row per run, its status, the grid values it was given and its final
metrics, rewritten as runs finish; and a finished sweep read back (`load_sweep`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from hosfl_sim.config import ConfigError
from hosfl_sim.config.identity import run_hash
from hosfl_sim.runtime.sweep_plan import PlannedRun

INDEX = "sweep_index.parquet"
DONE = ("completed", "diverged")  # a run that ended on its own: rerunning it gives the same numbers
# Index columns beside the varied keys; the final values come from each run's last round.
_FINAL_COLUMNS = (
    "rounds",
    "test_acc",
    "best_test_acc",
    "test_loss",
    "train_loss",
    "samples_seen",
    "bytes_total",
    "sim_time_s",
    "wall_time_s",
)
_EVALUATED = ("test_acc", "best_test_acc", "test_loss")  # taken from the last evaluated round, the rest the last
_RUN_COLUMNS = ("path", "status", "algorithm", "seed", "config_sha256", "host", "error")


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's last round, with test metrics from its last evaluated round."""
    path = run_dir / "rounds.parquet"
    if not path.exists():
        return {}
    r = pd.read_parquet(path).sort_values("round")
    if r.empty:
        return {}
    last = r.iloc[-1]
    out: dict[str, Any] = {"rounds": int(last["round"])}
    for col in _EVALUATED:
        if col in r and r[col].notna().any():
            out[col] = float(r[col].dropna().iloc[-1])
    for col in (c for c in _FINAL_COLUMNS if c != "rounds" and c not in _EVALUATED):
        if col in r and pd.notna(last[col]):
            out[col] = last[col].item() if hasattr(last[col], "item") else last[col]
    return out


def index_row(run: PlannedRun) -> dict[str, Any]:
    varied = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in run.overrides.items()}
    return {"path": run.path, "status": "pending", "algorithm": run.algorithm, "seed": run.seed, **varied,
            "config_sha256": run.config_sha256, "host": None, "error": None}  # fmt: skip


def write_index(out: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df = df[[c for c in df.columns if c not in ("host", "error")] + ["host", "error"]]  # long text last
    for col in df.columns:  # one type per column, as Parquet wants (a grid may mix 1 and "a")
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if df[col].dtype == object and len(kinds - {str}) and len(kinds) > 1:
            df[col] = [None if v is None else str(v) for v in df[col]]
    tmp = out / (INDEX + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out / INDEX)
    return df


def is_complete(run_dir: Path, sha: str) -> bool:
    """A run that ended on its own, from exactly this configuration."""
    try:
        m = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if m.get("status") not in DONE or not (run_dir / "rounds.parquet").exists():
        return False
    return run_hash(m["scenario"], m["algorithm_index"], m["seed"]) == sha


def varied_keys(index: pd.DataFrame) -> list[str]:
    """The columns of a sweep index that hold grid values (the dotted keys that vary)."""
    return [c for c in index.columns if c not in _RUN_COLUMNS and c not in _FINAL_COLUMNS]


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """Every recorded round of every run of a sweep, with the run's index columns (path, status,
    the varied keys, config_sha256) alongside. Per-run final values: read sweep_index.parquet."""
    sweep_dir = Path(sweep_dir)
    index = pd.read_parquet(sweep_dir / INDEX)
    keep = ["path", "status", *varied_keys(index), "config_sha256"]
    frames = []
    for row in index[keep].itertuples(index=False):
        path = sweep_dir / row.path / "rounds.parquet"
        if path.exists():
            frames.append(pd.read_parquet(path).assign(**dict(zip(keep, row))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["round", *keep])


def check_sweep_dir(out: Path, resume: bool) -> None:
    """A sweep's `--out`: a new folder, one without runs, or (`resume`) the folder of a sweep to continue."""
    is_sweep = (out / INDEX).exists()  # written as a sweep starts
    if is_sweep and not resume:
        raise ConfigError("--out", str(out), "a directory without a sweep (pass --resume to continue this one)")
    if not is_sweep and (any(out.glob("*/manifest.json")) or any(out.glob("*/*/manifest.json"))):
        raise ConfigError("--out", str(out), "a directory without runs (it holds runs that are not a sweep's)")
