"""Sweeps: grid expansion, Ray scheduling, the index, resume, failures, and plotting a sweep."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError, to_dict
from hosfl_sim.config.identity import run_hash
from hosfl_sim.plots import find_runs, load_runs, plan_figures
from hosfl_sim.runtime.sweep import _run_task, run_sweep
from hosfl_sim.runtime.sweep_index import INDEX, load_sweep
from hosfl_sim.runtime.sweep_plan import load_sweep_spec, plan_sweep
from tests.conftest import tiny_scenario


def _write_sweep(tmp_path: Path, grid, seeds=(0,), cpus: float = 1, **base_patch) -> Path:
    patch = {
        "task": {
            "dataset": {"name": "digits"},
            "partition": {"scheme": "dirichlet", "alpha": 1.0},
            "model": {"name": "cnn", "cut": "block1", "width": 4},
        },
        "algorithms": [{"name": "hosfl", "label": "HO-SFL", "perturbations": 2}, {"name": "sfl", "label": "SFL"}],
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 2, "batch_size": 8, "eval_every": 1},
    }
    base = tiny_scenario(**{**patch, **base_patch})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "seeds": list(seeds), "grid": grid, "cpus_per_run": cpus}))
    return path


def _all_cpus(ray) -> float:
    # Each run takes the whole test instance: one Ray worker runs them in turn, because on a small
    # machine starting several workers that each import torch costs more than the tiny runs.
    return ray.cluster_resources()["CPU"]


def _manifests(sweep_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(sweep_dir)): (p / "manifest.json").read_text() for p in find_runs([sweep_dir])}


def test_union_grid_varies_a_key_for_one_algorithm_only(tmp_path):
    grid = [
        {"algorithms": [{"name": "hosfl", "label": "HO-SFL"}], "algorithms[0].perturbations": [1, 5]},
        {"algorithms": [{"name": "sfl", "label": "SFL"}], "task.partition.alpha": [0.1, 1.0]},
    ]
    runs = plan_sweep(load_sweep_spec(_write_sweep(tmp_path, grid, seeds=(0, 1))))
    assert len(runs) == (2 + 2) * 2
    hosfl = [r for r in runs if r.algorithm == "HO-SFL"]
    # `algorithms` applies first, so `algorithms[0].perturbations` edits the algorithm the point chose
    assert sorted({r.scenario.algorithms[0].perturbations for r in hosfl}) == [1, 5]
    assert all(len(r.scenario.algorithms) == 1 and r.scenario.runtime.backend == "local" for r in runs)
    assert hosfl[0].overrides == {"algorithms[0].perturbations": 1}  # `algorithms` is the algorithm column
    assert len({r.path for r in runs}) == len({r.config_sha256 for r in runs}) == len(runs)
    assert {r.path for r in runs if r.algorithm == "SFL"} == {
        f"alpha-{a}/SFL_seed{s}" for a in ("0.1", "1") for s in (0, 1)
    }


def test_a_bad_key_or_value_fails_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="federation.rounds"):
        plan_sweep(load_sweep_spec(_write_sweep(tmp_path, {"federation.rounds": [2, -1]})))
    with pytest.raises(ConfigError, match="no_such_field"):
        plan_sweep(load_sweep_spec(_write_sweep(tmp_path, {"federation.no_such_field": [1]})))
    with pytest.raises(ConfigError, match="sweep.grid"):
        load_sweep_spec(_write_sweep(tmp_path, {"task.partition.alpha": 0.5}))  # not a list of values


def test_a_run_on_a_node_without_the_sweep_dir_sends_its_files_back(tmp_path):
    (run,) = [r for r in plan_sweep(load_sweep_spec(_write_sweep(tmp_path, {}))) if r.algorithm == "SFL"]
    (tmp_path / "token").write_text("this node's token")
    events = list(
        _run_task(to_dict(run.scenario), run.index, run.seed, str(tmp_path / "run"), {}, str(tmp_path / "token"), "x")
    )
    assert [kind for kind, _ in events] == ["started", "finished"]
    result = events[1][1]
    assert result["status"] == "completed" and result["error"] is None
    assert {"manifest.json", "rounds.parquet", "clients.parquet"} <= set(result["files"])
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_resumes_from_its_files_on_a_node_without_the_sweep_dir(tmp_path):
    """`--resume` sends an interrupted run's files (its checkpoint among them) to a node that cannot see the
    sweep directory: the run goes on from the checkpoint there, to the numbers of a run never interrupted."""
    from hosfl_sim.runtime.engine import Engine

    (run,) = [r for r in plan_sweep(load_sweep_spec(_write_sweep(tmp_path, {}))) if r.algorithm == "SFL"]
    engine = Engine(run.scenario, progress=False)
    engine.request_stop()  # as a first Ctrl-C does: round 1, a checkpoint, interrupted
    stopped = engine.run_one(run.index, run.seed, tmp_path / "stopped", run.overrides)
    assert stopped.status == "interrupted" and stopped.rounds == 1
    given = {p.name: p.read_bytes() for p in (tmp_path / "stopped").iterdir() if p.is_file()}
    assert "checkpoint.pt" in given
    (tmp_path / "token").write_text("this node's token")
    args = (to_dict(run.scenario), run.index, run.seed, str(tmp_path / "run"), run.overrides, str(tmp_path / "token"))
    _, (_, resumed) = _run_task(*args, "x", True, given)
    _, (_, fresh) = _run_task(*args, "y")
    assert resumed["status"] == fresh["status"] == "completed" and "checkpoint.pt" not in resumed["files"]
    assert json.loads(resumed["files"]["manifest.json"])["resumed"][0]["after_round"] == 1
    wall = ["wall_time_s", "wall_compute_s", "memory_overhead_s"]
    a, b = (pd.read_parquet(io.BytesIO(r["files"]["rounds.parquet"])) for r in (resumed, fresh))
    pd.testing.assert_frame_equal(a.drop(columns=wall, errors="ignore"), b.drop(columns=wall, errors="ignore"))
    assert not (tmp_path / "run").exists()


def test_sweep_index_resume_and_plot(tmp_path, ray_session):
    out = tmp_path / "sweep"
    sweep = _write_sweep(tmp_path, {"task.partition.alpha": [0.5, 1.0]}, cpus=_all_cpus(ray_session))
    result = run_sweep(sweep, out, log=lambda _: None)
    index = pd.read_parquet(out / INDEX)
    assert len(result.ran) == len(index) == 4 and result.skipped == [] and result.failed == []
    assert set(index["status"]) == {"completed"}
    assert set(index["path"]) == set(_manifests(out))  # every row has its run directory and vice versa
    for row in index.to_dict("records"):
        m = json.loads((out / row["path"] / "manifest.json").read_text())
        rounds = pd.read_parquet(out / row["path"] / "rounds.parquet")
        assert (m["algorithm"], m["seed"]) == (row["algorithm"], row["seed"])
        alpha = row["task.partition.alpha"]  # the varied key is a column
        assert (
            m["overrides"] == {"task.partition.alpha": alpha} and m["scenario"]["task"]["partition"]["alpha"] == alpha
        )
        assert run_hash(m["scenario"], m["algorithm_index"], m["seed"]) == row["config_sha256"]
        assert row["test_acc"] == rounds["test_acc"].iloc[-1] and row["bytes_total"] == rounds["bytes_total"].iloc[-1]
    assert "task.partition.alpha" in index.columns and index["config_sha256"].is_unique

    rounds = load_sweep(out)
    assert len(rounds) == 4 * 2 and {"path", "status", "task.partition.alpha", "config_sha256"} <= set(rounds.columns)
    assert rounds.groupby("path")["task.partition.alpha"].first().to_dict() == dict(
        zip(index["path"], index["task.partition.alpha"])
    )

    before = _manifests(out)
    again = run_sweep(out.parent / "sweep.yaml", out, resume=True, log=lambda _: None)
    assert again.ran == [] and len(again.skipped) == 4 and _manifests(out) == before

    gone = index["path"].iloc[1]
    acc_before = pd.read_parquet(out / gone / "rounds.parquet")["test_acc"].tolist()
    shutil.rmtree(out / gone)
    third = run_sweep(out.parent / "sweep.yaml", out, resume=True, log=lambda _: None)
    assert third.ran == [gone]
    after = _manifests(out)
    assert {k: v for k, v in after.items() if k != gone} == {k: v for k, v in before.items() if k != gone}
    assert pd.read_parquet(out / gone / "rounds.parquet")["test_acc"].tolist() == acc_before  # same seed, same numbers
    assert pd.read_parquet(out / INDEX)["status"].tolist() == ["completed"] * 4

    with pytest.raises(ConfigError, match="--resume"):  # a finished sweep is never overwritten by accident
        run_sweep(out.parent / "sweep.yaml", out, log=lambda _: None)

    figures = tmp_path / "figures"
    assert main(["plot", str(out), "--out", str(figures)]) == 0
    expected, _ = plan_figures(load_runs([out]))
    assert {"accuracy_vs_round", "accuracy_vs_bytes", "comm_breakdown", "train_loss_vs_round"} <= set(expected)
    assert {p.name for p in figures.iterdir()} == {f"{n}.{ext}" for n in expected for ext in ("png", "pdf")}


def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path, ray_session, capsys):
    grid = {"algorithms[0].name": ["sfl", "no_such_algorithm"]}
    sweep = _write_sweep(tmp_path, grid, cpus=_all_cpus(ray_session), algorithms=[{"name": "sfl"}])
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep), "--out", str(out)]) == 1  # the CLI says a run failed
    index = pd.read_parquet(out / INDEX).set_index("algorithm")
    assert index.loc["sfl", "status"] == "completed" and index.loc["sfl", "test_acc"] > 0
    assert index.loc["no_such_algorithm", "status"] == "failed"
    assert "no_such_algorithm" in index.loc["no_such_algorithm", "error"]
    assert "no_such_algorithm" in (out / index.loc["no_such_algorithm", "path"] / "error.txt").read_text()
    assert "failed 1" in capsys.readouterr().out


def _interrupt_once(out: Path, done: threading.Event) -> None:
    """SIGINT to this process once a run has completed and another is running (as Ctrl-C would)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not done.is_set():
        status = {json.loads(m.read_text()).get("status") for m in out.glob("*/*/manifest.json") if m.stat().st_size}
        if {"completed", "running"} <= status:
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.02)


def test_ctrl_c_stops_a_sweep_and_resume_runs_only_what_is_unfinished(tmp_path, ray_session, capsys):
    """A real SIGINT while the sweep runs (one run completed, one running, one queued): the running run stops after
    its round with a checkpoint, the queued one does not start, the index and manifests say `interrupted`, and the
    CLI prints the resume command and exits 130. `--resume` keeps the completed run as it was, continues the
    interrupted one from its checkpoint and runs the queued one."""
    fed = {"num_clients": 4, "clients_per_round": 2, "batch_size": 8, "eval_every": 100}
    sweep = _write_sweep(
        tmp_path, {"federation.rounds": [2, 300, 301]}, cpus=_all_cpus(ray_session), federation=fed,
        algorithms=[{"name": "sfl", "label": "SFL"}], runtime={"backend": "local", "num_workers": 1},
    )  # fmt: skip
    out = tmp_path / "sweep"
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # a signal sent after the sweep ended is dropped
    done = threading.Event()
    try:
        threading.Thread(target=_interrupt_once, args=(out, done), daemon=True).start()
        assert main(["sweep", str(sweep), "--out", str(out)]) == 130
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)
    assert f"continue with: hosfl-sim sweep {sweep} --out {out} --resume" in capsys.readouterr().err
    index = pd.read_parquet(out / INDEX).set_index("path")["status"].to_dict()
    assert sorted(index.values()) == ["completed", "interrupted", "interrupted"]
    (finished,) = [p for p, s in index.items() if s == "completed"]
    stopped = [p for p in index if (out / p / "manifest.json").exists() and p != finished]
    (queued,) = [p for p in index if p not in (finished, *stopped)]
    (stopped,) = stopped
    m = json.loads((out / stopped / "manifest.json").read_text())
    rounds = pd.read_parquet(out / stopped / "rounds.parquet")
    assert m["status"] == "interrupted" and 1 <= m["checkpoint_round"] == len(rounds) < 300
    assert (out / stopped / "checkpoint.pt").exists() and not any((out / queued).glob("*"))
    before = _manifests(out)

    assert main(["sweep", str(sweep), "--out", str(out), "--resume"]) == 0
    assert "1 complete already, 2 to run" in capsys.readouterr().out
    after = _manifests(out)
    assert after[finished] == before[finished]  # not run again
    resumed = json.loads(after[stopped])
    assert resumed["resumed"] == [{"after_round": m["checkpoint_round"], "at": resumed["resumed"][0]["at"]}]
    assert "resumed" not in json.loads(after[queued])
    for p in (stopped, queued):
        rounds = pd.read_parquet(out / p / "rounds.parquet")["round"].tolist()
        assert rounds == list(range(1, len(rounds) + 1)) and len(rounds) in (300, 301)
        assert not (out / p / "checkpoint.pt").exists()
    assert set(pd.read_parquet(out / INDEX)["status"]) == {"completed"}


def test_a_run_larger_than_the_instance_is_refused(tmp_path, ray_session):
    sweep = _write_sweep(tmp_path, {}, cpus=_all_cpus(ray_session) + 1)
    with pytest.raises(ConfigError, match="cpus_per_run"):  # Ray would otherwise wait for it forever
        run_sweep(sweep, tmp_path / "sweep", log=lambda _: None)
    assert not (tmp_path / "sweep").exists()  # refused before anything was written


def test_a_sweep_file_gets_the_scenario_files_checks(tmp_path):
    """Duplicate keys, a binary file or an alias bomb in a sweep file: one line naming the file."""
    from hosfl_sim.runtime.sweep_plan import load_sweep_spec

    (tmp_path / "dup.yaml").write_text("base: quickstart\nbase: noniid\n")
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nbase: quickstart\noverrides: {x: *a8}\n")
    for name, fragment in (("dup", "duplicate key 'base'"), ("bin", "a UTF-8 text file"), ("bomb", "at most 100,000")):
        with pytest.raises(ConfigError) as e:
            load_sweep_spec(tmp_path / f"{name}.yaml")
        assert fragment in str(e.value) and "\n" not in str(e.value)
