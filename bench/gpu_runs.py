"""Short runs on CUDA through the CLI and a sweep, each line naming the device (bench/gpu_check.sh runs this).

1. HO-SFL on the local backend, runtime.device=cuda (quickstart on digits, bundled with scikit-learn).
2. The same on the Ray backend, workers and server each holding a fraction of the GPU.
3. A sweep of two runs, gpus_per_run 0.5: Ray packs both on one GPU.
4. The same run on the CPU beside the local CUDA run: rounds per second of each, and the final test accuracies.
Each run's manifest must name the GPU it ran on; anything else exits 1.

    python -m bench.gpu_runs [--rounds 20] [--out DIR] [--cpu-dry-run]

`--cpu-dry-run` checks the script itself where there is no GPU: device auto, no GPU reserved, any device accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from hosfl_sim.cli import main as cli

COMMON = ["task.model.width=16", "federation.eval_every=5"]


def rounds_per_second(run_dir: Path) -> float:
    """Rounds after the first (warm-up: CUDA context, cuDNN autotuning) per second of wall clock."""
    wall = pd.read_parquet(run_dir / "rounds.parquet")["wall_time_s"].to_numpy()
    return (len(wall) - 1) / float(wall[-1] - wall[0]) if len(wall) > 1 else float("nan")


def report(label: str, run_dir: Path, device: str, dry: bool = False) -> bool:
    """One line per run: device recorded, rounds per second, final accuracy; True when the device is right."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rounds = pd.read_parquet(run_dir / "rounds.parquet")
    acc = rounds["test_acc"].dropna()
    final = f"{acc.iloc[-1]:.3f}" if len(acc) else "n/a"
    note = f"; note: {manifest['device_note']}" if "device_note" in manifest else ""
    print(
        f"  [{device}] {label}: status {manifest['status']}, manifest device {manifest['device']!r}, "
        f"model {manifest.get('model')}, {rounds_per_second(run_dir):.2f} rounds/s, final test_acc {final}{note}",
        flush=True,
    )
    return manifest["status"] == "completed" and (dry or manifest["device"].startswith("cuda:"))


def run_cli(args: list[str]) -> int:
    code = cli(args)
    if code != 0:
        print(f"  hosfl-sim {' '.join(args)} exited {code}", flush=True)
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cpu-dry-run", action="store_true", help="check the script without a GPU")
    args = ap.parse_args()
    dry = args.cpu_dry_run
    if not torch.cuda.is_available() and not dry:
        print("gpu runs: skipped: no CUDA", flush=True)
        return 0
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (dry run)"
    cuda = "runtime.device=" + ("auto" if dry else "cuda")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-runs-"))
    base = ["run", "quickstart", "algorithms=[{name: hosfl}]", f"federation.rounds={args.rounds}", *COMMON]
    ok = True
    for label, extra in {
        "HO-SFL local backend, device cuda": ["runtime.backend=local", cuda],
        "HO-SFL local backend, device cpu (for comparison)": ["runtime.backend=local", "runtime.device=cpu"],
        "HO-SFL Ray backend, 2 workers x 0.25 GPU + server 0.25 GPU, device cuda": [
            "runtime.backend=ray", "runtime.num_workers=2", "runtime.worker_num_gpus=0.25",
            "runtime.server_num_gpus=0.25", cuda,
        ],
    }.items():  # fmt: skip
        run_out = out / label.split(",")[0].replace(" ", "_") / extra[-1].split("=")[-1]
        if run_cli([*base, *extra, "--out", str(run_out), "--quiet"]) != 0:
            ok = False
            continue
        run_dir = next(p for p in run_out.iterdir() if (p / "manifest.json").exists())
        good = report(label, run_dir, device, dry or "device cpu" in label)
        ok = ok and good
    ok = sweep_on_one_gpu(out / "sweep", args.rounds, device, dry) and ok
    return 0 if ok else 1


def sweep_on_one_gpu(out: Path, rounds: int, device: str, dry: bool) -> bool:
    """Two runs (seeds 0 and 1), each reserving half a GPU: both run on it at once."""
    from hosfl_sim.config.load import SCENARIO_DIR

    out.mkdir(parents=True, exist_ok=True)
    sweep = {
        "base": str(SCENARIO_DIR / "quickstart.yaml"),
        "overrides": {
            "algorithms": [{"name": "hosfl"}], "federation.rounds": rounds, "federation.eval_every": 5,
            "task.model.width": 16, "runtime.device": "auto" if dry else "cuda",
        },
        "seeds": [0, 1],
        "cpus_per_run": 1,
        "gpus_per_run": 0 if dry else 0.5,
    }  # fmt: skip
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    if run_cli(["sweep", str(out / "sweep.yaml"), "--out", str(out / "runs")]) != 0:
        return False
    runs = sorted(p.parent for p in (out / "runs").rglob("manifest.json"))
    results = [report(f"sweep run {p.name}, gpus_per_run {sweep['gpus_per_run']}", p, device, dry) for p in runs]
    return len(runs) == 2 and all(results)


if __name__ == "__main__":
    sys.exit(main())
