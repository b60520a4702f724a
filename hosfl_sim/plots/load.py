"""Find recorded runs on disk and load them into one set of tables.

A run is any directory holding a `manifest.json`; its `rounds.parquet` and `clients.parquet` sit
beside it. Runs may be nested at any depth (a scenario's output dir, a sweep dir, several of each).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hosfl_sim.record.manifest import read_manifest

MANIFEST = "manifest.json"
ROUNDS = "rounds.parquet"
CLIENTS = "clients.parquet"

# Override keys that only pick a seed: runs that differ only in these belong to one setting.
_SEED_KEYS = {"seed", "seeds"}

# The ledger's categories, as `bytes_<category>` columns of rounds.parquet (cumulative).
BYTE_CATEGORIES = (
    "act_up",
    "grad_down",
    "labels_up",
    "scalar_up",
    "scalar_down",
    "seed_down",
    "model_up",
    "model_down",
)


@dataclass(frozen=True)
class RunSet:
    """The recorded runs, concatenated.

    `rounds` and `clients` hold every run's rows plus three columns: `run` (the run directory, as a
    string), `setting` (algorithm label plus any non-seed sweep overrides, prefixed by the scenario
    name when runs of several scenarios are loaded together: runs of one setting differ only in
    their seed) and the run's status from the manifest: `status` in `rounds`, `run_status` in
    `clients` (whose own optional `status` column says what became of each sampled client).
    Optional columns appear only when at least one run wrote them. `manifests` holds one dict per
    loaded run, with `run` and `setting` added, sorted by setting (scenario algorithm order, then
    override values) and seed. Treat the frames as read-only: figures share them.
    """

    rounds: pd.DataFrame
    clients: pd.DataFrame
    manifests: list[dict]

    @property
    def settings(self) -> list[str]:
        """Every setting once, in a stable order (scenario algorithm order, then override values)."""
        seen: dict[str, None] = {}
        for m in self.manifests:
            seen.setdefault(m["setting"], None)
        return list(seen)

    def __len__(self) -> int:
        return len(self.manifests)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every directory with a manifest.json at or under the given paths, sorted, each once."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such run or output directory: {p}")
        if p.is_file():  # a manifest.json named directly
            p = p.parent
        found.update(m.parent for m in p.rglob(MANIFEST))
    return sorted(found)


def setting_label(manifest: dict) -> str:
    """'HO-SFL' or 'HO-SFL | task.partition.alpha=0.1, federation.clients_per_round=10'."""
    label = manifest.get("algorithm") or manifest.get("algorithm_name") or "?"
    overrides = manifest.get("overrides") or {}
    parts = [f"{k}={_fmt_value(v)}" for k, v in overrides.items() if k.rsplit(".", 1)[-1] not in _SEED_KEYS]
    return f"{label} | {', '.join(parts)}" if parts else label


def _fmt_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _sort_key(manifest: dict) -> tuple:
    # Algorithms in the order the scenario lists them; override values in numeric order where numeric.
    algos = (manifest.get("scenario") or {}).get("algorithms") or []
    names = [a.get("label") or a.get("name") for a in algos if isinstance(a, dict)]
    label = manifest.get("algorithm")
    pos = names.index(label) if label in names else len(names)
    overrides = manifest.get("overrides") or {}
    values = tuple(
        (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))
        for k, v in sorted(overrides.items())
        if k.rsplit(".", 1)[-1] not in _SEED_KEYS
    )
    return (str(manifest.get("scenario_name")), pos, str(label), values, manifest.get("seed", 0), manifest["run"])


def _read_parquet(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        warnings.warn(f"{path} does not exist yet; skipping it", stacklevel=3)
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # a file caught half-written by a live run
        warnings.warn(f"cannot read {path} ({e}); skipping it", stacklevel=3)
        return None


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as floats/ints even where a run wrote only nulls so far (pyarrow's null type)."""
    text = {"algorithm", "status", "tier", "run", "setting", "run_status"}
    fix = {c: pd.to_numeric(df[c], errors="coerce") for c in df.columns if c not in text and df[c].dtype == object}
    return df.assign(**fix) if fix else df


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    return _numeric(pd.concat(frames, ignore_index=True))


def load_runs(paths: Iterable[str | Path]) -> RunSet:
    """Load every run found under `paths`.

    A run without a readable rounds.parquet (not started, or caught mid-write) is skipped with a
    warning; a run without clients.parquet keeps its rounds and contributes no client rows.
    """
    loaded: list[tuple[dict, pd.DataFrame, pd.DataFrame | None]] = []
    for run_dir in find_runs(paths):
        manifest = read_manifest(run_dir, "paths")
        rounds = _read_parquet(run_dir / ROUNDS)
        if rounds is None:
            continue
        clients = _read_parquet(run_dir / CLIENTS)
        manifest = {**manifest, "run": str(run_dir), "setting": setting_label(manifest)}
        loaded.append((manifest, rounds, clients))
    # Runs of several scenarios loaded together: the scenario name tells their settings apart.
    if len({m.get("scenario_name") for m, _, _ in loaded}) > 1:
        for m, _, _ in loaded:
            m["setting"] = f"{m.get('scenario_name')}: {m['setting']}"
    loaded.sort(key=lambda t: _sort_key(t[0]))

    rounds_frames, client_frames = [], []
    for manifest, rounds, clients in loaded:
        extra = {"run": manifest["run"], "setting": manifest["setting"]}
        status = manifest.get("status", "unknown")
        rounds_frames.append(rounds.assign(**extra, status=status).sort_values("round", kind="stable"))
        if clients is not None:  # clients.parquet has its own per-client `status`
            client_frames.append(clients.assign(**extra, run_status=status))
    return RunSet(
        rounds=_concat(rounds_frames, ["run", "setting", "round", "status"]),
        clients=_concat(client_frames, ["run", "setting", "round", "run_status"]),
        manifests=[m for m, _, _ in loaded],
    )
