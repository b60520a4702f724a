"""The paper's tables as sweeps: which cells (dataset, partition, model) x algorithms, from which scenario, at
what budget. A cell is a grid point of the existing sweep machinery, labelled through the scenario's
`description` (which changes no number), so the report can find every run's cell again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hosfl_sim.algorithms.registry import get_algorithm
from hosfl_sim.config import ConfigError
from hosfl_sim.config.load import load_raw, resolve_path
from hosfl_sim.data.text import HUB_TASKS
from hosfl_sim.runtime.sweep_plan import SweepSpec

FULL_SEEDS = 10  # the paper's seeds per cell


@dataclass(frozen=True)
class Cell:
    """One row of a table: `dataset` and `model` as the paper names them, the settings that make it."""

    dataset: str  # cifar10 | cifar100 | sst2 | rte
    partition: str  # iid | dirichlet
    model: str  # resnet18 | opt-125m | gemma-3-270m | llama-3.2-1b | minilm
    overrides: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.partition}/{self.model}"


@dataclass(frozen=True)
class Table:
    base: str  # the scenario whose algorithms and federation the table uses
    budget: int  # processed samples, as the paper's runs
    cells: list[Cell]
    eval_every: dict[str, int]  # by algorithm label; the rest: the scenario's


VISION_CELLS = [
    Cell(ds, part, "resnet18", {"task.dataset.name": ds, "task.partition.scheme": part})
    for ds in ("cifar10", "cifar100")
    for part in ("iid", "dirichlet")
]

# (paper name, hub id, cut) of the language table's models; verbalizers per task as the authors' prompts use them
LANGUAGE_MODELS = {
    "opt-125m": ("facebook/opt-125m", 3),
    "gemma-3-270m": ("google/gemma-3-270m", 5),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", 8),
}
VERBALIZERS = {"sst2": [" bad", " good"], "rte": ["Yes", "No"]}
# The authors' prompts: the verbalizer is the next token after them (GLUE's column names).
TEMPLATES = {"sst2": "{sentence} It was", "rte": '{sentence1}\nDoes this mean that "{sentence2}" is true? Yes or No?\n'}
OFFLINE_MODEL = "minilm"  # the packaged MiniLM-L6 (a BERT encoder): a classifier head, cut after layer 3


def language_cell(task: str, model: str) -> Cell:
    over: dict[str, Any] = {"task.dataset.name": f"glue/{task}"}
    if model == OFFLINE_MODEL:
        over |= {"task.model.name": "minilm", "task.model.cut": 3, "task.model.head": "classifier"}
        over |= {"task.model.lora_targets": [], "task.dataset.template": None}  # a classifier reads the text
    else:
        name, cut = LANGUAGE_MODELS[model]
        over |= {"task.model.name": name, "task.model.cut": cut, "task.model.verbalizer": VERBALIZERS[task]}
        over |= {"task.dataset.template": TEMPLATES[task]}
    return Cell(task, "iid", model, over)


TABLES = {
    "vision": Table(
        base="cifar10_resnet18",
        budget=160_000,
        cells=VISION_CELLS,
        eval_every={"SFL": 1},  # few long rounds: evaluated each one, as the reference does
    ),
    "language": Table(
        base="sst2_opt125m",
        budget=80_000,
        cells=[language_cell(t, m) for m in LANGUAGE_MODELS for t in ("sst2", "rte")],
        eval_every={"SplitLoRA": 1},
    ),
}


def local_data(cell: Cell, data_dir: Path) -> dict[str, Any]:
    """Overrides that point a cell at a local copy in `data_dir`: `<dataset>.npz` (vision), or a folder
    `<dataset>/` (a save_to_disk copy, Parquet files, or GLUE's train.tsv and dev.tsv)."""
    npz, folder = data_dir / f"{cell.dataset}.npz", data_dir / cell.dataset
    if npz.is_file():
        return {"task.dataset.name": "npz", "task.dataset.path": str(npz.resolve())}
    if not folder.is_dir():
        raise ConfigError("--data", str(data_dir), f"a folder holding {npz.name} or {folder.name}/ for {cell.label}")
    glue = f"glue/{cell.dataset}"
    if glue in HUB_TASKS:  # GLUE's own layout: the text columns the hub copy has
        _, _, text, pair, _ = HUB_TASKS[glue]
        return {"task.dataset.name": "files", "task.dataset.path": str(folder.resolve()),
                "task.dataset.text_column": text, "task.dataset.text_pair_column": pair}  # fmt: skip
    return {"task.dataset.path": str(folder.resolve())}


def model_cells(model: str | None = None) -> list[tuple[str, Cell]]:
    """(table, cell) for each model of the paper's tables, on its first dataset: ResNet-18, then the language
    models (only `model` among them when given; `minilm` for the offline one)."""
    if model is not None:
        _check_language_model(model)
    models = [model] if model is not None else list(LANGUAGE_MODELS)
    return [("vision", VISION_CELLS[0]), *(("language", language_cell("sst2", m)) for m in models)]


def _check_language_model(model: str) -> None:
    choices = [*LANGUAGE_MODELS, OFFLINE_MODEL]
    if model not in choices:
        raise ConfigError("--model", model, "one of " + ", ".join(choices))


def table_sweep(
    name: str,
    scale: float = 1.0,
    seeds: int | None = None,
    data_dir: str | Path | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    cells: list[Cell] | None = None,
    extra: list[str] | None = None,
) -> SweepSpec:
    """The sweep of table `name` at `scale` x the paper's budget with `seeds` seeds per cell (default: the
    paper's 10 at full scale, 1 below it). `model` keeps the language cells of one model (or `minilm`, offline);
    `overrides` (dotted keys) apply to every run, before the cells' own settings; `cells` replaces the table's;
    `extra` names algorithms to run in every cell besides the table's (with their defaults; no published number)."""
    if name not in TABLES:
        raise ConfigError("TABLE", name, "one of " + ", ".join(TABLES))
    if not 0 < scale <= 1:
        raise ConfigError("--scale", scale, "a number in (0, 1]: the share of the paper's sample budget")
    table = TABLES[name]
    if cells is None:
        cells = table.cells
        if model is not None:
            if name != "language":
                raise ConfigError("--model", model, "nothing for the vision table (it is ResNet-18)")
            _check_language_model(model)
            cells = [language_cell(t, model) for t in ("sst2", "rte")]
    n_seeds = seeds if seeds is not None else (FULL_SEEDS if scale == 1 else 1)
    if n_seeds < 1:
        raise ConfigError("--seeds", n_seeds, "an integer >= 1")
    algorithms = load_raw(table.base)["algorithms"]
    for i, name in enumerate(extra or []):
        get_algorithm(name, f"--with[{i}]")
        algorithms.append({"name": name})
    grid = []
    for cell in cells:
        point = {"description": [cell.label], **{k: [v] for k, v in cell.overrides.items()}}
        if data_dir is not None:
            point |= {k: [v] for k, v in local_data(cell, Path(data_dir)).items()}
        for algo in algorithms:
            every = table.eval_every.get(algo.get("label", algo["name"]))
            grid.append({**point, "algorithms": [algo], **({"federation.eval_every": [every]} if every else {})})
    budget = max(1, round(table.budget * scale))
    return SweepSpec(
        name=f"reproduce_{name}",
        base=str(resolve_path(table.base)),
        description=f"The paper's {name} table at {scale:g} x its budget ({budget:,} samples), {n_seeds} seed(s)",
        overrides={"federation.budget_samples": budget, **(overrides or {})},
        seeds=list(range(n_seeds)),
        grid=grid,
        folder_keys=["description"],  # runs/<cell>/<algorithm>_seed<k>
    )


def preflight(spec: SweepSpec) -> None:
    """Fail before anything is written where a run could not start: pretrained weights or a language model that
    is neither local, nor cached, nor reachable (offline, or gated without a token). What is found downloads into
    the Hugging Face cache now, once, rather than in every run."""
    from hosfl_sim.hfhub import HUB_WEIGHTS, hub_error, hub_file, hub_offline
    from hosfl_sim.runtime.sweep_plan import plan_sweep

    seen = set()
    for run in plan_sweep(spec):
        model = run.scenario.task.model
        key = (model.name, model.weights, model.config_overrides.get("random_init", False))
        if key in seen:
            continue
        seen.add(key)
        if model.weights in HUB_WEIGHTS:
            hub_file("task.model.weights", model.weights)
        elif model.name.count("/") == 1 and not key[2] and not Path(model.name).exists():
            from transformers import AutoConfig

            try:
                AutoConfig.from_pretrained(model.name, local_files_only=hub_offline())
            except (OSError, ValueError) as e:
                raise hub_error("task.model.name", model.name, e) from None
