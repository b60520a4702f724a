"""Installable anywhere: a wheel built from the checkout, installed into a fresh virtual environment outside it
(the test environment's packages reused, this checkout not on its path), runs the packaged scenarios."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[1]


def test_a_wheel_installed_outside_the_checkout_runs_the_packaged_scenarios(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("hosfl_sim-*.whl")
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("hosfl_sim/scenarios/")}
    shipped = {f"hosfl_sim/{p.relative_to(ROOT)}" for p in (ROOT / "scenarios").rglob("*") if p.is_file()}
    assert "hosfl_sim/scenarios/scenario.schema.json" in shipped  # an editor's completion works on the wheel too
    assert packaged == shipped  # the top-level scenarios/ is the source; the wheel carries all of it

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    reused = [p for p in sys.path if p.endswith("site-packages")]  # torch, ray, ...: not this checkout
    Path(purelib, "reuse_test_env.pth").write_text("\n".join(reused) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, cwd=tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "hosfl-sim"), *args], capture_output=True, text=True, cwd=tmp_path)

    where = subprocess.run([str(python), "-c", "import hosfl_sim; print(hosfl_sim.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path)  # fmt: skip
    assert where.stdout.startswith(str(venv)), where  # the installed copy, not the checkout
    assert cli("--version").stdout.strip() == "hosfl-sim 0.1.0"
    listed = cli("list")
    assert listed.returncode == 0 and "quickstart" in listed.stdout and "noniid" in listed.stdout, listed.stderr
    run = cli("run", "quickstart", "federation.rounds=2", "runtime.backend=local", "--out", "runs", "--quiet")
    assert run.returncode == 0, run.stderr
    runs = sorted((tmp_path / "runs").rglob("rounds.parquet"))  # one per algorithm of the scenario
    assert runs and all(len(pd.read_parquet(r)) == 2 for r in runs)

    # a sweep on a packaged base scenario: Ray tasks started by the installed copy, an index of both runs
    sweep = tmp_path / "tiny_sweep.yaml"
    sweep.write_text(
        "base: quickstart\n"
        "overrides: {federation.rounds: 2, federation.eval_every: 1}\n"
        "grid:\n  algorithms: [{name: hosfl}]\n  algorithms[0].perturbations: [1, 2]\n"
        "cpus_per_run: 1\n"
    )
    swept = cli("sweep", str(sweep), "--out", "sweep")
    assert swept.returncode == 0, swept.stderr[-2000:]
    index = pd.read_parquet(tmp_path / "sweep" / "sweep_index.parquet")
    assert sorted(index["status"]) == ["completed", "completed"] and len(index) == 2
