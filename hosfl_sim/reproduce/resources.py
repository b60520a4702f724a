"""The paper's resource tables on its own models: one client's memory in its four modes, and what one round of
each algorithm sends per client, by category (measured by the ledger, not computed by hand)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd

from hosfl_sim.comm.ledger import CATEGORIES
from hosfl_sim.config import ConfigError, Scenario, load_scenario
from hosfl_sim.config.load import apply_override, load_raw
from hosfl_sim.reproduce.tables import TABLES, Cell, local_data, model_cells
from hosfl_sim.runtime.sweep_index import INDEX
from hosfl_sim.runtime.sweep_plan import SweepSpec


def cell_scenario(base: str, cell: Cell, data_dir: str | Path | None, overrides: dict[str, Any]) -> Scenario:
    """The scenario of one cell as the table's sweep would build it (overrides first, then the cell's keys)."""
    data = copy.deepcopy(load_raw(base))
    keys = {**overrides, **cell.overrides, **(local_data(cell, Path(data_dir)) if data_dir else {})}
    for key, value in keys.items():
        apply_override(data, key, copy.deepcopy(value))
    return load_scenario(data)


def memory_table(
    model: str | None, data_dir: str | Path | None, overrides: dict[str, Any], device: str = "cpu"
) -> pd.DataFrame:
    """The four memory modes (hosfl_sim.memory_modes) of every model of the paper's tables, one block of rows per model,
    each on its first cell's data, at the paper's batch size and cut."""
    from hosfl_sim.memory import MemoryMeter
    from hosfl_sim.memory_modes import measure_modes, scenario_spec

    frames = []
    meter = MemoryMeter(device)
    for table_name, cell in model_cells(model):
        scenario = cell_scenario(TABLES[table_name].base, cell, data_dir, overrides)
        spec = scenario_spec(scenario, device=device)
        rows = measure_modes(spec, meter, overhead=False)
        frames.append(rows.assign(model=cell.model, cut=str(scenario.task.model.cut), batch=spec.federation.batch_size))
    return pd.concat(frames, ignore_index=True)


def communication_sweep(spec: SweepSpec) -> SweepSpec:
    """The table's sweep cut to one round of each run, one seed, evaluated on a few test rows only (the bytes
    of a round do not depend on the evaluation)."""
    overrides = {**spec.overrides, "federation.rounds": 1, "federation.budget_samples": None}
    overrides["task.dataset.max_test"] = overrides.get("task.dataset.max_test", 64)
    return SweepSpec(
        name=spec.name.replace("reproduce_", "communication_"),
        base=spec.base,
        description=spec.description.split(" at ")[0] + ": one round of every algorithm, bytes per client",
        overrides=overrides,
        seeds=[0],
        grid=spec.grid,
        folder_keys=spec.folder_keys,
    )


def communication_table(sweep_dir: str | Path) -> pd.DataFrame:
    """Bytes per client in the first round of every run, by ledger category (categories nobody used dropped),
    read from the runs' rounds.parquet: the clients that completed the round, including the server link's
    share where an algorithm has one (SplitFed-V1's server copies)."""
    sweep_dir = Path(sweep_dir)
    index = pd.read_parquet(sweep_dir / INDEX)
    rows = []
    for run in index.to_dict("records"):
        path = sweep_dir / run["path"] / "rounds.parquet"
        if run["status"] != "completed" or not path.exists():
            rows.append({"cell": run["description"], "algorithm": run["algorithm"], "status": run["status"]})
            continue
        first = pd.read_parquet(path).iloc[0]
        clients = max(int(first["num_completed"]), 1)
        per_client = {c: int(first[f"bytes_{c}"]) / clients for c in CATEGORIES if f"bytes_{c}" in first}
        per_client["total"] = int(first["bytes_total"]) / clients
        rows.append({"cell": run["description"], "algorithm": run["algorithm"], "status": run["status"], **per_client})
    df = pd.DataFrame(rows)
    used = [c for c in CATEGORIES if c in df and (df[c].fillna(0) > 0).any()]
    cells = df["cell"].str.split("/", expand=True)
    df = df.assign(dataset=cells[0], model=cells[2])
    return df[["model", "dataset", "algorithm", "status", *used, "total"]]


def format_bytes_table(df: pd.DataFrame, title: str) -> str:
    from hosfl_sim.plots.units import human_bytes

    cols = [c for c in df.columns if c not in ("model", "dataset", "algorithm", "status")]
    lines = [f"## {title}", "", "| model | dataset | algorithm | " + " | ".join(cols) + " |"]
    lines.append("|" + "---|" * (3 + len(cols)))
    for d in df.to_dict("records"):
        cells = ["-" if pd.isna(d[c]) else human_bytes(d[c]) for c in cols]
        status = "" if d["status"] == "completed" else f" ({d['status']})"
        lines.append(f"| {d['model']} | {d['dataset']} | {d['algorithm']}{status} | " + " | ".join(cells) + " |")
    lines += ["", "Bytes per client in one round, as the ledger charges them. A round is `local_steps` mini-batches",
              "(one in the paper scenarios) for HO-SFL, MU-SplitFed and FSL-SAGE, a local epoch for SFL and SFL-ZO;",
              "a server link's share (SplitFed-V1's server copies) is divided over the round's clients."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_communication(df: pd.DataFrame, path: Path, title: str) -> None:
    """Bytes per client in one round, one group of bars per model, one bar per algorithm (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(df["model"]))
    color = {a: plt.get_cmap("tab10")(j) for j, a in enumerate(dict.fromkeys(df["algorithm"]))}
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(models)) + 2.0, 3.8))
    labelled = set()
    for i, model in enumerate(models):  # each model's own algorithms side by side
        rows = df[df["model"] == model]
        width = 0.8 / len(rows)
        for j, (algo, total) in enumerate(zip(rows["algorithm"], rows["total"])):
            label = None if algo in labelled else algo
            labelled.add(algo)
            ax.bar(i + (j - (len(rows) - 1) / 2) * width, total, width, color=color[algo], label=label)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("bytes per client in one round")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def check_scalar_options(table: str, scale: float, seeds: int | None) -> None:
    """The resource tables run one configuration: a budget scale or a seed count means nothing there."""
    if scale != 1.0:
        raise ConfigError("--scale", scale, f"nothing for the {table} table (it runs one round or a few steps)")
    if seeds is not None:
        raise ConfigError("--seeds", seeds, f"nothing for the {table} table (its numbers do not depend on a seed)")
