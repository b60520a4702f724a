# Over 300 lines: the modes, their measurement, their table and chart follow one accounting, the docstring's.
"""The paper's four memory modes side by side, measured on a scenario's model, cut and batch.

Modes (one row each; the work of `steps` consecutive steps is measured in ONE block):
- HO-SFL client: `HOSFLClient.anchor` (which first applies the previous step's (seeds, scalars)
  record through the client optimizer) then `HOSFLClient.probe` (P forwards under no_grad), for
  AdamW and plain SGD, with in-place and functional probes;
- first-order SFL client: `SFLClient.forward` (graph kept) then `SFLClient.backward` of a cut
  gradient and an optimizer step;
- centralized: `CentralizedServer.train_round`, the joined model's forward, backward and step;
- inference: a forward of the client part in eval mode under no_grad;
beside them, the clients of other methods that differ from these: the local-loss client (first-order
on an aux head's loss: local_loss_sl, cse_fsl, dsl_aux), the LocFedMix-SL client (the same with an input
decoder; image or feature tasks), FedSplitX's clients at the model's deeper named cuts (the local-loss
client cut there; at the scenario's cut it is the local-loss row), the HERON-SFL client
(`HERONClient.step`: client part and aux head trained forward-only, P probes of both) and the HOSL client
(`HOSLClient.probe`: a record applied, then a and P perturbed activations kept for the upload), with in-place
probes.
The real role classes run, so what is measured is what the simulator does.

Accounting. Each block starts with the model built and the optimizer constructed but not stepped
and no `.grad`: the first step inside the block allocates the optimizer state (and the gradients),
the second runs in steady state. So the measured peak covers everything the steps allocate, static
state included, and:
  static (exact, `static_bytes`)  params, buffers, grads (first-order modes), optimizer state
  working (measured)              measured peak - grads - optimizer state: activations, graph,
                                  probe and update buffers: the transient part
  total                           params + buffers + measured peak
The cut gradient g the clients receive is computed beforehand from the server part (its values
do not change memory), so no server work runs inside a block. On the CPU, tensors that share NumPy
memory (the sampled batch) are outside torch's allocator and not counted, in every mode alike.
Only the client part each role trains is counted as static: the simulator's worker replica
(`SFLClient.base`) and the unused server part a role builds are not part of a client's footprint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hosfl_sim.algorithms.centralized import CentralizedServer
from hosfl_sim.algorithms.cse_fsl import CSEFSLClient
from hosfl_sim.algorithms.heron_sfl import HERONClient
from hosfl_sim.algorithms.hosfl import HOSFLClient
from hosfl_sim.algorithms.hosl import HOSLClient
from hosfl_sim.algorithms.locfedmix_sl import LocFedMixClient
from hosfl_sim.algorithms.sfl import SFLClient, shared_state, to_numpy
from hosfl_sim.algorithms.task import TaskSpec, sample_batch, to_tensors, to_wire
from hosfl_sim.config import AlgorithmConfig, ConfigError, Scenario
from hosfl_sim.config.schema import directory_name
from hosfl_sim.memory.meter import MemoryMeter, slowdown
from hosfl_sim.memory.static import static_bytes
from hosfl_sim.models.split import cut_points
from hosfl_sim.zo import derive_seeds

STATIC_PARTS = ("params", "buffers", "grads", "optimizer_state")
ROUND = 1  # the round index every mode samples its batches from
Optimizer = Literal["sgd", "adamw"]  # OptimizerConfig.name
Probe = Literal["functional", "inplace", "batched"]  # AlgorithmConfig.probe


@dataclasses.dataclass
class Mode:
    """One mode ready to run: `step(i)` does one step's work; `static()` its exact static bytes."""

    mode: str
    optimizer: str
    probe: str
    step: Callable[[int], None]
    static: Callable[[], dict]


# ----------------------------------------------------------------------------- task


def scenario_spec(scenario: Scenario, seed: int | None = None, device: str = "cpu") -> TaskSpec:
    """The TaskSpec the engine would build for the scenario's HO-SFL entry (else its first algorithm)."""
    from hosfl_sim.runtime.engine import Engine
    from hosfl_sim.runtime.local import LocalBackend

    names = [a.name for a in scenario.algorithms]
    index = names.index("hosfl") if "hosfl" in names else 0
    seed = scenario.seeds[0] if seed is None else seed
    spec = Engine(scenario, backend=LocalBackend(1), progress=False).spec(index, seed)
    return dataclasses.replace(spec, device=device)


def _with_algorithm(spec: TaskSpec, name: str, optimizer: Optimizer, probe: Probe | None = None) -> TaskSpec:
    base = spec.algorithm if spec.algorithm.name == "hosfl" else AlgorithmConfig()
    opt = base.client_optimizer.model_copy(update={"name": optimizer, "momentum": 0.0})
    change = {"name": name, "client_optimizer": opt, "server_optimizer": opt, "probe": probe or base.probe}
    algo = base.model_copy(update={**change, "local_steps": 1})
    return dataclasses.replace(spec, algorithm=algo)


def _client_id(spec: TaskSpec) -> int:
    return int(np.argmax(spec.partition.sizes()))  # a full batch at any batch size the data allows


def cut_gradient(spec: TaskSpec, client_id: int) -> np.ndarray:
    """dl/da of the server part's loss at the client's anchor batch: what the server would send down."""
    split = spec.build_model()
    feats, labels = sample_batch(spec, client_id, ROUND, 0)
    with torch.no_grad():
        a = split.client(**to_tensors({k: feats[k] for k in split.input_keys}, "cpu"))  # (B, ...) smashed data
    a.requires_grad_(True)
    logits = split.server(a, **to_tensors({k: feats[k] for k in split.side_keys}, "cpu"))
    F.cross_entropy(logits.float(), torch.from_numpy(labels)).backward()
    return to_wire(a.grad)


def warm_up(spec: TaskSpec) -> None:
    """One throwaway forward and backward of the model on the device, so that one-time allocations
    (cuBLAS/cuDNN handles and workspaces on CUDA) happen before anything is measured."""
    split = spec.build_model()
    client, server = split.client.to(spec.device), split.server.to(spec.device)
    feats, _ = sample_batch(spec, _client_id(spec), ROUND, 0)
    inputs = to_tensors(feats, spec.device)
    a = client(**{k: inputs[k] for k in split.input_keys})
    server(a, **{k: inputs[k] for k in split.side_keys}).float().sum().backward()
    with torch.no_grad():
        server(client(**{k: inputs[k] for k in split.input_keys}), **{k: inputs[k] for k in split.side_keys})


# ----------------------------------------------------------------------------- the four modes


def hosfl_mode(spec: TaskSpec, optimizer: Optimizer, probe: Probe, g: np.ndarray) -> Mode:
    spec = _with_algorithm(spec, "hosfl", optimizer, probe)
    role, cid, P = HOSFLClient(spec), _client_id(spec), spec.algorithm.perturbations
    last = {"record": (derive_seeds(spec.seed, 0, 0, P), np.zeros(P, np.float32))}

    def step(i: int) -> None:
        role.anchor([last["record"]], cid, ROUND, i)  # applies the previous step's update first
        seeds = derive_seeds(spec.seed, ROUND, i, P)
        v, _ = role.probe(cid, g, seeds)
        last["record"] = (seeds, v)

    return Mode("HO-SFL client", optimizer, probe, step, lambda: static_bytes(role.model, role.updater.optimizer))


def first_order_mode(spec: TaskSpec, optimizer: Optimizer, g: np.ndarray) -> Mode:
    spec = _with_algorithm(spec, "sfl", optimizer)
    role, cid = SFLClient(spec), _client_id(spec)
    role.begin(cid, to_numpy(shared_state(role.base)))
    model, opt = role.local[cid]

    def step(i: int) -> None:
        role.forward(cid, ROUND, i)
        role.backward(cid, g)

    return Mode("first-order SFL client", optimizer, "-", step, lambda: static_bytes(model, opt, grads=True))


def local_loss_mode(
    spec: TaskSpec, optimizer: Optimizer, role_class: type[CSEFSLClient] = CSEFSLClient,
    name: str = "local_loss_sl", label: str = "local-loss client (+ aux head)",
) -> Mode:  # fmt: skip
    """The client of local-loss split learning, CSE-FSL and DSL-Aux: first-order on its aux head's loss, no cut
    gradient (`role_class` and `name`: another client of the kind, its aux head's optimizer counted with it)."""
    spec = _with_algorithm(spec, name, optimizer)
    role, cid = role_class(spec), _client_id(spec)
    role.begin(cid, to_numpy(shared_state(role.base)), to_numpy(shared_state(role.aux_base)))
    (model, opt), (head, head_opt) = role.local[cid], role.aux[cid]

    def step(i: int) -> None:
        role.step(cid, ROUND, i, send=True)

    def static() -> dict[str, int]:
        parts = static_bytes(model, opt, grads=True), static_bytes(head, head_opt, grads=True)
        return {k: parts[0][k] + parts[1][k] for k in parts[0]}

    return Mode(label, optimizer, "-", step, static)


def locfedmix_mode(spec: TaskSpec, optimizer: Optimizer) -> Mode:
    """The LocFedMix-SL client: the local-loss client with the input decoder beside its aux head."""
    return local_loss_mode(spec, optimizer, LocFedMixClient, "locfedmix_sl", "LocFedMix-SL client (+ aux, decoder)")


def fedsplitx_modes(spec: TaskSpec, optimizer: Optimizer) -> list[Mode]:
    """FedSplitX's clients at the model's named cuts deeper than the scenario's: the local-loss client cut there."""
    points = cut_points(spec.model.name)
    deeper = points[points.index(str(spec.model.cut)) + 1 :] if str(spec.model.cut) in points else []
    at = lambda cut: dataclasses.replace(spec, model=spec.model.model_copy(update={"cut": cut}))  # noqa: E731
    return [local_loss_mode(at(cut), optimizer, label=f"FedSplitX client at {cut} (+ aux head)") for cut in deeper]


def heron_mode(spec: TaskSpec, optimizer: Optimizer, probe: Probe) -> Mode:
    """The HERON-SFL client: client part and aux head trained forward-only on the local loss (P probes of both)."""
    spec = _with_algorithm(spec, "heron_sfl", optimizer, probe)
    role, cid = HERONClient(spec), _client_id(spec)
    role.begin(cid, to_numpy(shared_state(role.base)), to_numpy(shared_state(role.aux_base)))
    joint, updater, _ = role.zo[cid]

    def step(i: int) -> None:
        role.step(cid, ROUND, i, send=True)

    return Mode(
        "HERON-SFL client (ZO, + aux head)", optimizer, probe, step, lambda: static_bytes(joint, updater.optimizer)
    )


def hosl_mode(spec: TaskSpec, optimizer: Optimizer, probe: Probe) -> Mode:
    """The HOSL client: the previous step's (seeds, scalars) record applied, then a and the P perturbed activations."""
    spec = _with_algorithm(spec, "hosl", optimizer, probe)
    role, cid, P = HOSLClient(spec), _client_id(spec), spec.algorithm.perturbations
    last = {"record": (derive_seeds(spec.seed, 0, 0, P), np.zeros(P, np.float32))}

    def step(i: int) -> None:
        seeds = derive_seeds(spec.seed, ROUND, i, P)
        role.probe([last["record"]], cid, ROUND, i, seeds)
        last["record"] = (seeds, np.full(P, 1e-3, np.float32))  # the server's differences: values do not matter

    return Mode("HOSL client (ZO)", optimizer, probe, step, lambda: static_bytes(role.model, role.updater.optimizer))


def centralized_mode(spec: TaskSpec, optimizer: Optimizer) -> Mode:
    spec = _with_algorithm(spec, "centralized", optimizer)
    role, batch = CentralizedServer(spec), spec.federation.batch_size

    def step(i: int) -> None:
        role.train_round(ROUND + i, [batch])

    return Mode(
        "centralized (full model)", optimizer, "-", step, lambda: static_bytes(role.model, role.optimizer, grads=True)
    )


def inference_mode(spec: TaskSpec) -> Mode:
    split, cid = spec.build_model(), _client_id(spec)
    model = split.client.to(spec.device).eval()

    @torch.no_grad()
    def step(i: int) -> None:
        feats, _ = sample_batch(spec, cid, ROUND, i)
        model(**to_tensors({k: feats[k] for k in split.input_keys}, spec.device))

    return Mode("inference (client part)", "-", "-", step, lambda: static_bytes(model))


def build_modes(spec: TaskSpec, optimizers: tuple[Optimizer, ...] = ("adamw", "sgd")) -> list[Mode]:
    """Every mode for `spec`, in table order. Built (and the device warmed up) before anything is measured."""
    warm_up(spec)
    g = cut_gradient(spec, _client_id(spec))
    probes: tuple[Probe, ...] = ("inplace", "functional")
    modes = [hosfl_mode(spec, o, p, g) for o in optimizers for p in probes]
    modes += [first_order_mode(spec, o, g) for o in optimizers]
    modes += [local_loss_mode(spec, o) for o in optimizers]
    modes += [heron_mode(spec, o, "inplace") for o in optimizers] + [hosl_mode(spec, o, "inplace") for o in optimizers]
    if spec.build_model().input_keys == ("x",):  # its decoder reconstructs images or features
        modes += [locfedmix_mode(spec, o) for o in optimizers]
    modes += fedsplitx_modes(spec, "adamw")
    modes += [centralized_mode(spec, "adamw"), inference_mode(spec)]
    return modes


# ----------------------------------------------------------------------------- measuring


def measure_mode(mode: Mode, meter: MemoryMeter, steps: int = 2) -> dict:
    """One table row: static parts (exact), the measured peak of `steps` steps, working and total."""
    with meter.measure(enabled=True) as m:
        for i in range(steps):
            mode.step(i)
    static = mode.static()
    row: dict[str, Any] = {"mode": mode.mode, "optimizer": mode.optimizer, "probe": mode.probe}
    row.update({k: static[k] for k in STATIC_PARTS})
    row["static"] = static["total"]
    row["measured_peak"] = m.peak_bytes
    row["retained"] = m.retained_bytes  # = grads + optimizer_state when nothing else outlives a step
    row["working"] = m.peak_bytes - static["grads"] - static["optimizer_state"]
    row["total"] = static["params"] + static["buffers"] + m.peak_bytes
    row["step_s"] = m.seconds / steps
    row["meter_s"] = m.overhead_s  # starting, stopping and reading the meter around the block
    return row


def _fresh_steps(mode: Mode, start: int) -> Callable[[], None]:
    """A callable running the mode's next step (a new batch each call)."""
    counter = iter(range(start, 2**31))
    return lambda: mode.step(next(counter))


def measure_modes(spec: TaskSpec, meter: MemoryMeter | None = None, steps: int = 2, overhead: bool = True):
    """The four-mode table (DataFrame, one row per mode and variant) for `spec` on `spec.device`.

    With `overhead`, each row also gets `slowdown`: measured / plain seconds of one more step."""
    meter = meter or MemoryMeter(spec.device)
    rows = []
    for mode in build_modes(spec):
        row = measure_mode(mode, meter, steps)
        if overhead:
            row["slowdown"] = slowdown(_fresh_steps(mode, steps), meter, repeats=3)["ratio"]
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- output


def mode_label(row: pd.Series) -> str:
    parts = [row["mode"]]
    if row["optimizer"] != "-":
        parts.append({"adamw": "AdamW", "sgd": "SGD"}.get(row["optimizer"], row["optimizer"]))
    if row["probe"] != "-":
        parts.append(f"{row['probe']} probes")
    return " · ".join(parts)


def format_modes(table: pd.DataFrame) -> str:
    """The table as aligned text, bytes in human units."""
    from hosfl_sim.plots.units import human_bytes

    cols = ["params", "buffers", "grads", "optimizer_state", "working", "total"]
    heads = ["params", "buffers", "grads", "opt state", "working*", "total"]
    labels = [mode_label(r) for _, r in table.iterrows()]
    extra = [c for c in ("step_s", "slowdown") if c in table]
    width = max(len(s) for s in [*labels, "mode"])
    lines = [f"{'mode':<{width}}  " + "  ".join(f"{h:>10}" for h in heads + extra)]
    for label, (_, r) in zip(labels, table.iterrows()):
        cells = [f"{human_bytes(r[c]):>10}" for c in cols]
        if "step_s" in extra:
            cells.append(f"{1000 * r['step_s']:>8.1f} ms")
        if "slowdown" in extra:
            cells.append(f"{r['slowdown']:>9.2f}x")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    lines.append("* working: measured peak above the static part (activations, graph, probe and update buffers)")
    return "\n".join(lines)


def plot_modes(table: pd.DataFrame, out_dir: str | Path, title: str = "", dpi: int = 150) -> list[Path]:
    """Stacked bars per mode (static parts, then the measured working memory); PNG and PDF.
    `title` describes the setup (model, cut, batch, device) under the figure's heading."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from hosfl_sim.plots.style import style_axes
    from hosfl_sim.plots.units import human_bytes

    parts = [*STATIC_PARTS, "working"]
    names = {"optimizer_state": "optimizer state", "working": "working (measured)"}
    colors = dict(zip(parts, ["#4c72b0", "#8c8c8c", "#dd8452", "#c44e52", "#55a868"]))
    labels = [mode_label(r) for _, r in table.iterrows()]
    fig = Figure(figsize=(9.0, 1.6 + 0.5 * len(table)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(table))
    left = np.zeros(len(table))
    for part in parts:
        values = table[part].to_numpy(dtype=float)
        ax.barh(y, values, left=left, height=0.62, color=colors[part], label=names.get(part, part))
        left += values
    for i, total in enumerate(table["total"].to_numpy(dtype=float)):
        ax.annotate(human_bytes(total), (total, i), xytext=(5, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, float(table["total"].max()) * 1.15)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.set_xlabel("Client memory of one step (static: exact; working: measured peak)")
    style_axes(ax)
    ax.grid(False, axis="y")
    ax.set_title("Client memory by mode", loc="left", fontsize=11, fontweight="bold", pad=18)
    note = "total = static (exact) + working (measured)"
    ax.annotate(
        f"{title} · {note}" if title else note,
        (0, 1),
        xycoords="axes fraction",
        xytext=(0, 5),
        textcoords="offset points",
        fontsize=8,
        color="0.4",
    )
    fig.legend(loc="outside lower left", ncol=len(parts), fontsize=8, frameon=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"memory_modes.{ext}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def memory_command(scenario: Scenario, device: str, out_dir: str | None, overhead: bool = True) -> int:
    """`hosfl-sim memory SCENARIO`: the modes measured on `device`, printed, and written to a CSV and charts."""
    import datetime as dt

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", device, "cpu (no CUDA device is visible here)")
    torch.set_num_threads(scenario.runtime.torch_threads)  # as the simulator's workers run
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path(scenario.output_dir) / directory_name(scenario.name) / f"memory-{stamp}"
    spec = scenario_spec(scenario, device=device)
    m, feats = scenario.task.model, spec.train.features
    shape = "x".join(str(s) for s in next(iter(feats.values())).shape[1:])  # per-sample input shape
    title = f"{m.name} cut {m.cut}, batch {spec.federation.batch_size}, input {shape}, {device}"
    print(f"client memory by mode: {title}")
    meter = MemoryMeter(device)
    table = measure_modes(spec, meter, overhead=overhead)
    print(format_modes(table))
    if "slowdown" in table:
        print("slowdown: seconds of one step measured / not measured (median of 3; the CPU meter runs the profiler)")
    cost = meter.overhead()
    print(f"meter: {cost['measurements']} blocks measured, {cost['overhead_s']:.3f} s starting/stopping/reading it")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "memory_modes.csv", index=False)
    for path in plot_modes(table, out, title=title):
        print(path)
    print(out / "memory_modes.csv")
    return 0
