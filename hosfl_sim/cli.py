"""`hosfl-sim`: run scenarios, list them, plot runs. Thin: parse, call the engine, print."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from hosfl_sim import __version__
from hosfl_sim.config import ConfigError, Scenario, describe, load_scenario, schema_parser
from hosfl_sim.config.load import SCENARIO_DIR
from hosfl_sim.config.schema import directory_name


def _resume_target(args: argparse.Namespace) -> tuple[Scenario, Path, dict | None]:
    """(scenario, run directory, the manifest when RUN_DIR is a single run) for `--resume RUN_DIR`. The scenario
    is the given one, else the one the runs recorded; KEY=VALUE overrides apply on top (runtime.* may change)."""
    run_dir = Path(args.resume)
    single = run_dir / "manifest.json"
    manifests = [single] if single.exists() else sorted(run_dir.glob("*/manifest.json"))
    if not manifests:
        raise ConfigError("--resume", str(run_dir), "a directory written by hosfl-sim run (it has no manifest.json)")
    if args.out and Path(args.out).resolve() != run_dir.resolve():
        raise ConfigError("--out", args.out, "nothing with --resume (the runs go on where they are)")
    overrides, source = list(args.overrides), args.scenario
    if source is not None and "=" in source:  # `run --resume DIR KEY=VALUE`: no scenario given
        overrides, source = [source, *overrides], None
    from hosfl_sim.record.manifest import read_manifest

    manifest = read_manifest(manifests[0].parent, complete=True)
    scenario = load_scenario(source if source is not None else manifest["scenario"], overrides)
    return scenario, run_dir, manifest if single.exists() else None


def cmd_run(args: argparse.Namespace) -> int:
    args.overrides += [f"runtime.track={args.track}"] if args.track else []  # --track X: runtime.track=[X, ...]
    single = None
    if args.resume is not None:
        scenario, out, single = _resume_target(args)
    elif args.scenario is None:
        raise ConfigError("scenario", None, "a YAML path or a name in scenarios/ (or --resume RUN_DIR)")
    else:
        scenario = load_scenario(args.scenario, args.overrides)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path(scenario.output_dir) / directory_name(scenario.name) / stamp
        if (out / "manifest.json").exists() or any(out.glob("*/manifest.json")):
            raise ConfigError("--out", str(out), f"a directory without runs (continue them: --resume {out})")
    from hosfl_sim.runtime.engine import Engine  # imported late: `list` must stay instant
    from hosfl_sim.runtime.errors import ServerLost
    from hosfl_sim.runtime.signals import stop_on_signals

    engine = Engine(scenario, progress=not args.quiet)
    engine.validate()  # everything checkable, before any directory is made
    print(f"scenario {scenario.name}: {scenario.description or (describe(args.scenario) if not args.resume else '')}")
    fed, rt = scenario.federation, scenario.runtime
    print(
        f"  {len(scenario.algorithms)} algorithm(s) x {len(scenario.seeds)} seed(s), {fed.rounds} rounds, "
        f"N={fed.num_clients} K={fed.clients_per_round}, backend {rt.backend} with {rt.num_workers} worker(s); "
        f"{'resuming' if args.resume else 'writing to'} {out}"
    )
    restore = stop_on_signals(engine)
    try:
        if single is not None:
            summaries = [engine.run_one(single["algorithm_index"], single["seed"], out, resume=True)]
        else:
            summaries = engine.run_all(out, resume=args.resume is not None)
    except ServerLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        restore()
        engine.close()  # actors, and a local Ray instance: nothing is left running
    failed = [s for s in summaries if s.status != "completed"]
    if out.is_dir():  # runs that failed before writing anything leave nothing to summarize
        _print_summary(out, args.target)
    if args.plot:
        from hosfl_sim.plots import load_runs, save_all

        paths = save_all(load_runs([out]), out / "figures")
        print(f"figures: {out / 'figures'} ({len(paths)} files)")
    for s in failed:
        print(f"{s.algorithm} seed {s.seed}: {s.status} after {s.rounds} rounds", file=sys.stderr)
    if any(s.status == "interrupted" for s in summaries):
        print(f"stopped; continue with: hosfl-sim run --resume {out}", file=sys.stderr)
        return 130
    return 1 if failed else 0


def _print_summary(out: Path, target: float | None = None) -> None:
    from hosfl_sim.plots import format_table, load_runs, summary_table

    print()
    print(format_table(summary_table(load_runs([out]), target)))
    print(f"\nrun directories: {out}")


def cmd_list(args: argparse.Namespace) -> int:
    if args.algorithms:
        from hosfl_sim.algorithms import ALGORITHMS
        from hosfl_sim.algorithms.registry import load_plugins

        load_plugins()  # the algorithms other installed packages add
        width = max(len(n) for n in ALGORITHMS)
        for name, cls in sorted(ALGORITHMS.items()):
            print(f"{name:<{width}}  {cls.summary}")
            print(f"{'':<{width}}  fields: {', '.join(sorted(cls.options)) or '-'}")
        return 0
    files = sorted(SCENARIO_DIR.glob("*.yaml"))
    width = max((len(f.stem) for f in files), default=0)
    for f in files:
        print(f"{f.stem:<{width}}  {describe(str(f))}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from hosfl_sim.plots import load_runs, save_all

    for path in args.paths:
        if not Path(path).exists():
            raise ConfigError("paths", path, "an existing run or output directory")
    runs = load_runs(args.paths)
    if runs.rounds.empty:
        print(f"no runs with rounds.parquet under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.paths[0]) / "figures"
    paths = save_all(runs, out)
    for p in paths:
        print(p)
    if args.target is not None:
        from hosfl_sim.plots import format_table, summary_table

        print(format_table(summary_table(runs, args.target)))
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from hosfl_sim.memory_modes import memory_command

    return memory_command(load_scenario(args.scenario, args.overrides), args.device, args.out, not args.no_overhead)


def cmd_sweep(args: argparse.Namespace) -> int:
    from hosfl_sim.runtime.sweep import run_sweep
    from hosfl_sim.runtime.sweep_stop import exit_status

    result = run_sweep(args.sweep, args.out, address=args.address, resume=args.resume)
    done = [result.dir / p for p in result.index.loc[result.index["status"] != "failed", "path"]]
    done = [p for p in done if (p / "rounds.parquet").exists()]
    if done:
        from hosfl_sim.plots import format_table, load_runs, save_all, summary_table

        runs = load_runs(done)
        print()
        print(format_table(summary_table(runs)))
        if args.plot:
            paths = save_all(runs, result.dir / "figures")
            print(f"figures: {result.dir / 'figures'} ({len(paths)} files)")
    print(f"\nsweep index: {result.dir / 'sweep_index.parquet'}")
    return exit_status(result, f"hosfl-sim sweep {args.sweep} --out {result.dir} --resume")  # 130 after Ctrl-C


def cmd_reproduce(args: argparse.Namespace) -> int:
    from hosfl_sim.reproduce.command import reproduce

    return reproduce(args, dict(item.split("=", 1) for item in args.overrides if "=" in item))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hosfl-sim", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _run_arguments(sub.add_parser("run", help="run a scenario: every algorithm x seed it names"))
    _list_arguments(sub.add_parser("list", help="list scenarios (or algorithms)"))
    _plot_arguments(sub.add_parser("plot", help="draw figures from run or sweep directories"))
    _memory_arguments(
        sub.add_parser("memory", help="measure one client's memory: HO-SFL, first-order, centralized, inference")
    )
    _sweep_arguments(sub.add_parser("sweep", help="run a parameter sweep (grid x seeds x algorithms) as Ray tasks"))
    _reproduce_arguments(
        sub.add_parser("reproduce", help="run one of the paper's tables and print it beside the published numbers")
    )
    schema_parser(sub.add_parser("schema", help="print the JSON Schema of a scenario file (editor completion)"))
    return p


def _run_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("scenario", nargs="?", help="a YAML path or a name in scenarios/ (see `hosfl-sim list`)")
    r.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. federation.rounds=10")
    r.add_argument("--out", help="output directory (default: runs/<scenario>/<timestamp>); must hold no runs yet")
    r.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the runs in RUN_DIR (an --out directory or one run's): ended runs are kept, the others go on "
        "from their last checkpoint (runtime.checkpoint_every; Ctrl-C always writes one) or start again",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    trackers = ["wandb", "mlflow", "tensorboard"]
    r.add_argument("--track", action="append", choices=trackers, help="also log to this tracker (repeatable)")
    r.add_argument("--plot", action="store_true", help="draw the figures at the end")
    r.add_argument(
        "--target", type=float, help="also report rounds, simulated time and bytes to this test accuracy (0-1)"
    )
    r.set_defaults(fn=cmd_run)


def _list_arguments(ls: argparse.ArgumentParser) -> None:
    ls.add_argument("--algorithms", action="store_true", help="list algorithms with what crosses the network")
    ls.set_defaults(fn=cmd_list)


def _plot_arguments(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("paths", nargs="+")
    pl.add_argument("--out", help="figure directory (default: <first path>/figures)")
    pl.add_argument("--target", type=float, help="print rounds, simulated time and bytes to this test accuracy (0-1)")
    pl.set_defaults(fn=cmd_plot)


def _memory_arguments(me: argparse.ArgumentParser) -> None:
    me.add_argument("scenario", help="a YAML path or a name in scenarios/ (its model, cut and batch size are used)")
    me.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. task.model.cut=block3")
    me.add_argument("--out", help="directory for the table and chart (default: runs/<scenario>/memory-<timestamp>)")
    me.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the modes run and are measured")
    me.add_argument("--no-overhead", action="store_true", help="skip timing the meter's slowdown per mode")
    me.set_defaults(fn=cmd_memory)


def _sweep_arguments(sw: argparse.ArgumentParser) -> None:
    sw.add_argument("sweep", help="a sweep YAML file (see scenarios/sweeps/)")
    sw.add_argument("--address", help="an existing Ray cluster: auto or ray://host:10001 (default: a local instance)")
    sw.add_argument("--resume", action="store_true", help="keep the runs already complete and run the rest")
    sw.add_argument("--out", help="sweep directory (default: runs/sweeps/<sweep name>)")
    sw.add_argument("--plot", action="store_true", help="draw the figures at the end")
    sw.set_defaults(fn=cmd_sweep)


def _reproduce_arguments(rp: argparse.ArgumentParser) -> None:
    rp.add_argument(
        "table",
        choices=["vision", "language", "memory", "communication"],
        help="which table (README: Reproducing the paper)",
    )
    rp.add_argument(
        "overrides", nargs="*", help="dotted KEY=VALUE overrides for every run, e.g. runtime.torch_threads=2"
    )
    rp.add_argument(
        "--scale", type=float, default=1.0, help="share of the paper's sample budget (0.02: a laptop check)"
    )
    rp.add_argument("--seeds", type=int, help="seeds per cell (default: 10, the paper's, at full scale; else 1)")
    rp.add_argument("--with", dest="extra", action="append", help="also run this algorithm in every cell (repeatable)")
    rp.add_argument("--data", help="a folder of local copies: <dataset>.npz or <dataset>/ (GLUE train.tsv, dev.tsv)")
    rp.add_argument("--model", help="language: one model's cells only (opt-125m, gemma-3-270m, llama-3.2-1b, minilm)")
    rp.add_argument("--out", help="sweep directory (default: runs/reproduce/<table>-scale<scale>)")
    rp.add_argument("--address", help="an existing Ray cluster: auto or ray://host:10001 (default: a local instance)")
    rp.add_argument("--resume", action="store_true", help="keep the runs already complete and run the rest")
    rp.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where runs go, and memory is measured")
    rp.add_argument("--gpus-per-run", type=float, default=0.5, help="with --device cuda: the GPU share of each run")
    rp.set_defaults(fn=cmd_reproduce)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("hosfl_sim.progress").setLevel(logging.INFO)  # off a terminal, progress lines go here
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished rounds are on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
