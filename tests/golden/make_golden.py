"""Writes the golden Parquet files of `tests/test_golden.py`: small runs of every algorithm under the conditions
that move numbers (deadline drops, mid-round failures, churn, over-commit, local steps). Run it only when a change
alters numbers on purpose, in its own commit that says why:

    .venv/bin/python -m tests.golden.make_golden
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine

HERE = Path(__file__).parent
# Host-dependent columns: never compared.
VOLATILE = ("wall_time_s", "wall_compute_s", "memory_overhead_s")

TIERS = [
    {"name": "fast", "proportion": 0.6, "uplink_bps": 2.0e7, "downlink_bps": 5.0e7, "latency_s": 0.01},
    {"name": "slow", "proportion": 0.4, "uplink_bps": 1.0e6, "downlink_bps": 4.0e6, "latency_s": 0.1},
]
SYSTEMS = {
    "churn": {"tiers": TIERS, "availability": {"period": 3, "on_rounds": 2, "dropout": 0.2}},
    "deadline": {
        "tiers": TIERS,
        "compute_flops": {"kind": "lognormal", "median": 1.0e8, "sigma": 0.5},
        "availability": {"dropout": 0.2, "mid_round_dropout": 0.15},
        "policy": "deadline",
        "deadline_s": 0.9,
    },
    "overcommit": {
        "tiers": TIERS,
        "availability": {"period": 3, "on_rounds": 2, "mid_round_dropout": 0.1},
        "policy": "overcommit",
        "overcommit": 1.5,
    },
}
ALGORITHMS = [
    {"name": "hosfl", "perturbations": 3, "local_steps": 2},
    {"name": "sfl", "local_steps": 2},
    {"name": "sfl_zo", "perturbations": 2},
    {"name": "zo_fl", "perturbations": 2},
    {"name": "fedavg", "local_steps": 2},
    {"name": "splitfed_v1", "local_steps": 2},
    {"name": "mu_splitfed"},
    {"name": "fsl_sage", "local_steps": 2, "align_every": 2},
    {"name": "centralized"},
    {"name": "mezo", "perturbations": 2},
    {"name": "sfl_zo_v1", "perturbations": 2, "local_epochs": 1},
    {"name": "fsl_sage_persistent", "local_epochs": 1, "align_every": 2, "aux_buffer_samples": 64, "aux_batch": 32},
    {"name": "heron_sfl", "perturbations": 2, "local_steps": 3, "upload_every": 2},
    {"name": "hosl", "perturbations": 2, "local_steps": 2},
    {"name": "locfedmix_sl", "local_steps": 2},
    {"name": "fedsplitx", "local_steps": 2, "cuts": ["block1", "block2"]},
    {"name": "dsl_aux", "local_steps": 2},
]


def scenario(system: str, backend: str = "local") -> dict:
    return {
        "name": f"golden_{system}",
        "task": {
            "dataset": {"name": "digits"},
            "partition": {"scheme": "dirichlet", "alpha": 0.5, "min_size": 8},
            "model": {"name": "cnn", "cut": "block1", "width": 8},
        },
        "algorithms": ALGORITHMS,
        "federation": {"num_clients": 12, "clients_per_round": 4, "rounds": 4, "batch_size": 16, "eval_every": 2},
        "seeds": [0],
        "runtime": {"backend": backend, "num_workers": 2, "device": "cpu"},  # the files hold CPU numbers
        "system": SYSTEMS[system],
    }


def supported(system: str) -> list[int]:
    """Indices of the algorithms that accept the system's policy (the others run only under sync)."""
    from hosfl_sim.algorithms import get_algorithm

    cfg = SYSTEMS[system]
    if cfg.get("policy", "sync") == "sync" and not cfg.get("availability", {}).get("mid_round_dropout"):
        return list(range(len(ALGORITHMS)))
    return [i for i, a in enumerate(ALGORITHMS) if get_algorithm(a["name"]).supports_policies]


def run(
    system: str, out: Path, backend: str = "local", only: list[str] | None = None
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{run label: (rounds, clients)} of the golden scenario `system` on `backend` (the algorithms named in `only`,
    else all it supports), run into `out`. Both backends give the same numbers: one set of files serves both."""
    engine = Engine(load_scenario(scenario(system, backend)), progress=False)
    indices = [i for i in supported(system) if only is None or ALGORITHMS[i]["name"] in only]
    try:
        return _run_each(engine, system, out, indices)
    finally:
        if backend == "ray":
            engine.close()


def _run_each(engine: Engine, system: str, out: Path, indices: list[int]) -> dict:
    result = {}
    for i in indices:
        summary = engine.run_one(i, 0, out / f"{system}_{i}")
        rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
        clients = pd.read_parquet(summary.run_dir / "clients.parquet")
        result[f"{system}_{ALGORITHMS[i]['name']}"] = (drop_volatile(rounds), drop_volatile(clients))
    return result


def drop_volatile(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in df if c in VOLATILE or "mem_bytes" in c]).reset_index(drop=True)


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for system in SYSTEMS:
            for label, (rounds, clients) in run(system, Path(tmp)).items():
                rounds.to_parquet(HERE / f"{label}.rounds.parquet", index=False)
                clients.to_parquet(HERE / f"{label}.clients.parquet", index=False)
                print(label, len(rounds), "rounds")


if __name__ == "__main__":
    main()
