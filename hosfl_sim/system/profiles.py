"""Per-client device profiles: compute speed, links, latency, tier, straggler flag.

One row per virtual client, stored as numpy arrays (a federation of 100,000 clients costs a
few megabytes). Drawn once per run from the scenario and the run seed: a pure function of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hosfl_sim.config import ConfigError
from hosfl_sim.config.schema import DistributionConfig, SystemConfig

FIELDS = ("compute_flops", "uplink_bps", "downlink_bps", "latency_s")


@dataclass(frozen=True)
class DeviceProfiles:
    compute_flops: np.ndarray  # float64 (N,), FLOP/s, straggler slowdown already applied
    uplink_bps: np.ndarray
    downlink_bps: np.ndarray
    latency_s: np.ndarray
    tier: np.ndarray  # int16 (N,), index into tier_names
    tier_names: tuple[str, ...]
    straggler: np.ndarray  # bool (N,)

    def __len__(self) -> int:
        return len(self.compute_flops)

    def tier_of(self, client_id: int) -> str:
        return self.tier_names[int(self.tier[client_id])]


def draw(dist: DistributionConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    if dist.kind == "constant":
        return np.full(n, dist.value, dtype=np.float64)
    if dist.kind == "uniform":
        return rng.uniform(dist.low, dist.high, size=n)
    return dist.median * np.exp(dist.sigma * rng.standard_normal(n))


def read_table(path: str, field: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A trace file with integer client ids (and `columns`); an empty, corrupt or malformed one is a one-line
    ConfigError naming `field`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(field, path, "an existing CSV or Parquet file")
    try:
        table = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ConfigError(field, path, f"a readable CSV or Parquet file ({reason})") from None
    missing = [c for c in ("client_id", *columns) if c not in table.columns]
    if missing:
        raise ConfigError(field, path, f"a table with the columns client_id{''.join(', ' + c for c in columns)} "
                          f"(missing: {', '.join(missing)})")  # fmt: skip
    for c in ("client_id", *(c for c in columns if c == "round")):
        if not pd.api.types.is_integer_dtype(table[c]):
            raise ConfigError(field, path, f"whole numbers in the {c} column")
    return table


def numbers(table: pd.DataFrame, column: str, path: str, field: str) -> np.ndarray:
    """A trace column as finite float64, or a one-line ConfigError naming the column."""
    try:
        values = table[column].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(field, path, f"numbers in the {column} column") from None
    if not np.isfinite(values).all():
        raise ConfigError(field, path, f"finite numbers in the {column} column (it has a gap, NaN or Inf)")
    return values


def build_profiles(cfg: SystemConfig, num_clients: int, seed: int) -> DeviceProfiles:
    """Distributions first, then tiers (drawn by proportion), then the trace, then stragglers."""
    rng = np.random.default_rng([seed, 23])
    values = {f: draw(getattr(cfg, f), num_clients, rng) for f in FIELDS}
    names: list[str] = ["default"]
    tier = np.zeros(num_clients, dtype=np.int16)
    if cfg.tiers:
        names = [t.name for t in cfg.tiers]
        p = np.array([t.proportion for t in cfg.tiers], dtype=np.float64)
        tier = rng.choice(len(cfg.tiers), size=num_clients, p=p / p.sum()).astype(np.int16)
        for i, t in enumerate(cfg.tiers):
            for f in FIELDS:
                if getattr(t, f) is not None:
                    values[f][tier == i] = getattr(t, f)
    if cfg.trace:
        table = read_table(cfg.trace, "system.trace")
        ids = table["client_id"].to_numpy()
        if ids.min() < 0 or ids.max() >= num_clients:
            raise ConfigError("system.trace", cfg.trace, f"client ids in [0, {num_clients})")
        for f in FIELDS:
            if f in table.columns:
                values[f][ids] = numbers(table, f, cfg.trace, "system.trace")
        if "tier" in table.columns:
            extra = sorted(set(table["tier"].astype(str)) - set(names))
            names += extra
            tier[ids] = [names.index(str(t)) for t in table["tier"]]
    straggler = np.zeros(num_clients, dtype=bool)
    if cfg.straggler_fraction > 0:
        count = int(round(cfg.straggler_fraction * num_clients))
        straggler[rng.choice(num_clients, size=count, replace=False)] = True
        values["compute_flops"][straggler] /= cfg.straggler_slowdown
    for f in ("compute_flops", "uplink_bps", "downlink_bps"):
        if (values[f] <= 0).any():
            raise ConfigError(f"system.{f}", float(values[f].min()), "positive values for every client")
    return DeviceProfiles(**values, tier=tier, tier_names=tuple(names), straggler=straggler)
