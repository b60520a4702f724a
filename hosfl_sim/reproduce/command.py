"""`hosfl-sim reproduce TABLE`: the command behind the CLI's subcommand (cli.py only parses)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from hosfl_sim.config import ConfigError
from hosfl_sim.config.load import parse_value
from hosfl_sim.reproduce.report import write_report
from hosfl_sim.reproduce.resources import (
    check_scalar_options,
    communication_sweep,
    communication_table,
    format_bytes_table,
    memory_table,
    plot_communication,
)
from hosfl_sim.reproduce.tables import model_cells, preflight, table_sweep
from hosfl_sim.runtime.sweep import run_sweep
from hosfl_sim.runtime.sweep_plan import SweepSpec, check_gpus_per_run
from hosfl_sim.runtime.sweep_stop import exit_status


def reproduce(args: argparse.Namespace, override_text: dict[str, str]) -> int:
    """Run a paper table as a resumable sweep, then print and write our numbers beside the published ones.
    `override_text`: dotted KEY -> YAML text, for every run. Returns the exit status."""
    overrides = {k: parse_value(v) for k, v in override_text.items()}
    out = Path(args.out or Path("runs") / "reproduce" / f"{args.table}-scale{args.scale:g}")
    if args.table in ("memory", "communication"):
        return _reproduce_resources(args, overrides, out)
    spec = on_device(
        table_sweep(args.table, args.scale, args.seeds, args.data, args.model, overrides, extra=args.extra), args
    )
    preflight(spec)
    print(spec.description)
    result = run_sweep(spec, out, address=args.address, resume=args.resume)
    _, text = write_report(result.dir, args.table, spec.description)
    print()
    print(text)
    print(f"written: {result.dir / 'reproduce.md'}, reproduce.csv, reproduce.png")
    return exit_status(result, f"hosfl-sim reproduce {args.table} (the same options) --out {result.dir} --resume")


def on_device(spec: SweepSpec, args: argparse.Namespace) -> SweepSpec:
    """`--device cuda`: every run of the table on a GPU, each reserving `--gpus-per-run` of one (Ray packs runs
    that share a GPU, and spreads them over every GPU of a cluster)."""
    if args.device != "cuda":
        return spec
    share = check_gpus_per_run(args.gpus_per_run, "--gpus-per-run")
    if share == 0:
        raise ConfigError("--gpus-per-run", args.gpus_per_run, "a share > 0 with --device cuda")
    overrides = {**spec.overrides, "runtime.device": "cuda"}
    return dataclasses.replace(spec, gpus_per_run=share, overrides=overrides)


def _reproduce_resources(args: argparse.Namespace, overrides: dict, out: Path) -> int:
    """`reproduce memory`: the four memory modes of every paper model, in this process (on --device).
    `reproduce communication`: one round of every algorithm on every paper model, as sweeps, bytes per client."""
    check_scalar_options(args.table, args.scale, args.seeds)
    if args.table == "memory":
        import torch

        from hosfl_sim.memory_modes import format_modes, plot_modes

        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device", args.device, "cpu (no CUDA device is visible here)")

        if not args.resume and out.exists() and any(out.iterdir()):
            raise ConfigError("--out", str(out), "an empty or new directory (it holds results already)")
        table = memory_table(args.model, args.data, overrides, device=args.device)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "memory.csv", index=False)
        for model, rows in table.groupby("model", sort=False):
            r = rows.iloc[0]
            title = f"{model}, cut {r['cut']}, batch {r['batch']}, {args.device}"
            print(f"\n{title}")
            print(format_modes(rows.reset_index(drop=True)))
            plot_modes(rows.reset_index(drop=True), out / str(model), title=title)
        print(f"\nwritten: {out / 'memory.csv'}, {out}/<model>/memory_modes.png")
        return 0
    frames, failed = [], []
    for name in ("vision", "language"):
        cells = [cell for table, cell in model_cells(args.model) if table == name]
        spec = on_device(communication_sweep(table_sweep(name, 1.0, None, args.data, None, overrides, cells)), args)
        preflight(spec)
        result = run_sweep(spec, out / name, address=args.address, resume=args.resume)
        if result.interrupted:  # Ctrl-C: the other table's sweep does not start
            return exit_status(result, f"hosfl-sim reproduce communication (the same options) --out {out} --resume")
        frames.append(communication_table(result.dir))
        failed += [f"{name}/{p}" for p in result.failed]
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "communication.csv", index=False)
    title = "Communication per client in one round"
    text = format_bytes_table(table, title)
    (out / "communication.md").write_text(text)
    plot_communication(table, out / "communication.png", title)
    print(text)
    print(f"written: {out / 'communication.md'}, communication.csv, communication.png")
    for path in failed:
        print(f"failed: {path} (see {out / path / 'error.txt'})", file=sys.stderr)
    return 1 if failed else 0
