"""runtime.device (auto | cpu | cuda) on both backends and in sweeps: one rule (runtime/device.py), what a run's
manifest records of it, and GPU reservations scheduled on fake Ray GPUs. Without CUDA everything here runs on the
CPU; the tests marked gpu run the CUDA path where a GPU is present (bench/gpu_check.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pandas.testing import assert_frame_equal

from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError, RuntimeConfig, load_scenario
from hosfl_sim.runtime.checks import check_device
from hosfl_sim.runtime.cluster import check_resources
from hosfl_sim.runtime.device import Placement, describe, place, require
from hosfl_sim.runtime.engine import Engine
from hosfl_sim.runtime.sweep import run_sweep
from hosfl_sim.runtime.sweep_index import load_sweep
from tests.conftest import tiny_scenario
from tests.golden.make_golden import drop_volatile

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


def _run(
    tmp_path: Path, device: str, name: str = "run", actors=None, **runtime
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    sc = tiny_scenario(
        algorithms=[{"name": "hosfl", "perturbations": 2}],
        federation={"num_clients": 6, "clients_per_round": 3, "rounds": 3, "batch_size": 8, "eval_every": 1},
        runtime={"backend": "local", "num_workers": 2, "device": device, **runtime},
    )
    engine = Engine(load_scenario(sc), actors, progress=False)  # actors: a backend to reuse (else made)
    run_dir = tmp_path / name
    try:
        assert engine.run_one(0, 0, run_dir).status == "completed"
    finally:
        if actors is None:
            engine.close()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    frames = [drop_volatile(pd.read_parquet(run_dir / f"{kind}.parquet")) for kind in ("rounds", "clients")]
    return frames[0], frames[1], manifest


# ----------------------------------------------------------------------------- the rule


@no_cuda
def test_auto_is_the_cpu_here_and_cuda_is_refused_saying_why():
    assert place("cpu") == place("auto") == place("auto", []) == Placement("cpu", "cpu")  # no note: nothing amiss
    with pytest.raises(ConfigError, match=r"^runtime\.device: got 'cuda', expected auto or cpu here: torch") as e:
        require("cuda", [place("cuda")])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="Ray gave this process no GPU"):  # an actor or task that reserved none
        require("cuda", [place("cuda", [])])


@no_cuda
def test_a_process_given_a_gpu_it_cannot_use_runs_auto_on_the_cpu_and_says_so():
    p = place("auto", ["1"])
    assert (p.device, p.name) == ("cpu", "cpu")
    assert p.note is not None and p.note.startswith("Ray gave this process GPU 1 but") and "ran on the CPU" in p.note
    assert describe(p, [p, place("auto", [])]) == {"device": "cpu", "device_note": p.note}
    with pytest.raises(ConfigError, match="GPU 1 but"):
        require("cuda", [place("cuda", ["1"])])


def test_describe_names_server_and_workers_where_they_differ():
    cpu, gpu = Placement("cpu", "cpu"), Placement("cuda", "cuda:0 (Some GPU)")
    assert describe(gpu, [gpu, gpu]) == {"device": "cuda:0 (Some GPU)"}
    assert describe(gpu, [cpu, cpu]) == {"device": "server cuda:0 (Some GPU); workers cpu"}


def test_the_ray_backend_needs_gpus_reserved_for_cuda_and_a_cluster_with_gpus():
    with pytest.raises(ConfigError, match="worker_num_gpus and server_num_gpus > 0"):
        check_device(RuntimeConfig(backend="ray", device="cuda", worker_num_gpus=0.5))
    check_device(RuntimeConfig(backend="ray", device="cuda", worker_num_gpus=0.5, server_num_gpus=0.5))
    cfg = RuntimeConfig(device="cuda", worker_num_gpus=0.5, server_num_gpus=0.5)
    with pytest.raises(ConfigError, match="this Ray cluster has no GPU"):
        check_resources(cfg, {"CPU": 8.0})
    with pytest.raises(ConfigError, match=r"fits the cluster's 1 GPUs \(the run asks for 1.5\)"):
        check_resources(cfg, {"CPU": 8.0, "GPU": 1.0})
    check_resources(cfg, {"CPU": 8.0, "GPU": 2.0})


# ----------------------------------------------------------------------------- runs


def test_cpu_and_auto_give_the_same_files_and_the_manifest_names_device_and_model(tmp_path):
    cpu_rounds, cpu_clients, cpu_manifest = _run(tmp_path, "cpu", "cpu")
    auto_rounds, auto_clients, auto_manifest = _run(tmp_path, "auto", "auto")
    for m in (cpu_manifest, auto_manifest):
        assert m["model"] == "cnn" and m["scenario"]["task"]["model"]["name"] == "cnn"
    assert cpu_manifest["device"] == "cpu" and "device_note" not in cpu_manifest
    if torch.cuda.is_available():
        assert auto_manifest["device"].startswith("cuda:")
        return
    assert auto_manifest["device"] == "cpu" and "device_note" not in auto_manifest
    assert_frame_equal(auto_rounds, cpu_rounds, check_exact=True)
    assert_frame_equal(auto_clients, cpu_clients, check_exact=True)


@no_cuda
def test_cuda_without_cuda_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    args = ["run", "quickstart", "runtime.backend=local", "runtime.device=cuda", "federation.rounds=1"]
    assert main([*args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "runtime.device: got 'cuda', expected auto or cpu here: torch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unknown_device_or_a_gpu_count_ray_cannot_take_is_refused_by_the_schema():
    with pytest.raises(ConfigError, match="runtime.device"):
        load_scenario(tiny_scenario(runtime={"backend": "local", "device": "gpu"}))
    with pytest.raises(ConfigError, match=r"runtime.server_num_gpus: got 1.5, expected a fraction in \[0, 1\]"):
        load_scenario(tiny_scenario(runtime={"backend": "ray", "server_num_gpus": 1.5}))
    load_scenario(tiny_scenario(runtime={"backend": "ray", "worker_num_gpus": 0.3, "server_num_gpus": 2}))


def test_ray_actors_reserving_gpu_fractions_run_where_they_can_and_say_so(tmp_path, ray_session):
    """Workers and server each hold half a (fake) GPU: under auto they run on the CPU, to the local backend's
    numbers, and the manifest says why; under cuda the run is refused in one line."""
    from hosfl_sim.runtime.ray_backend import RayBackend

    _fake_gpus(ray_session)
    fractions = {"backend": "ray", "num_workers": 1, "worker_num_gpus": 0.5, "server_num_gpus": 0.5}
    actors = RayBackend(RuntimeConfig(**fractions))  # its two actors serve both runs
    try:
        ray_rounds, ray_clients, manifest = _run(tmp_path, "auto", "ray", actors, **fractions)
        assert manifest["device"] == "cpu" and "but torch" in manifest["device_note"]
        actors.device = "cuda"  # what runtime.device: cuda makes of the same actors
        with pytest.raises(ConfigError, match=r"^runtime\.device: got 'cuda', expected auto or cpu here: Ray gave"):
            _run(tmp_path, "cuda", "ray_cuda", actors, **fractions)
    finally:
        actors.shutdown()
    cpu_rounds, cpu_clients, _ = _run(tmp_path, "cpu", "cpu", num_workers=1)
    assert_frame_equal(ray_rounds, cpu_rounds, check_exact=True)
    assert_frame_equal(ray_clients, cpu_clients, check_exact=True)


# ----------------------------------------------------------------------------- sweeps on fake GPUs


def _gpu_sweep(tmp_path: Path, gpus: float, device: str = "auto") -> Path:
    base = tiny_scenario(
        task={"dataset": {"name": "digits"}, "model": {"name": "cnn", "cut": "block1", "width": 4}},
        algorithms=[{"name": "hosfl", "label": "HO-SFL", "perturbations": 2}],
        federation={"num_clients": 4, "clients_per_round": 2, "rounds": 2, "batch_size": 8, "eval_every": 1},
        runtime={"backend": "local", "num_workers": 1, "device": device},
    )
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "sweep.yaml"
    sweep = {"base": "base.yaml", "seeds": [0, 1], "cpus_per_run": 1, "gpus_per_run": gpus}
    path.write_text(yaml.safe_dump(sweep))
    return path


def _fake_gpus(ray) -> float:
    gpus = ray.cluster_resources().get("GPU", 0)
    if torch.cuda.is_available() or not gpus:
        pytest.skip("needs the test Ray instance's fake GPUs (declared where there is no CUDA)")
    return gpus


def test_a_sweep_reserving_gpu_fractions_runs_each_run_and_records_the_missing_cuda(tmp_path, ray_session):
    _fake_gpus(ray_session)
    lines: list[str] = []
    result = run_sweep(_gpu_sweep(tmp_path, 0.5), tmp_path / "sweep", log=lines.append)
    assert sorted(result.index["status"]) == ["completed", "completed"]
    assert any("0.5 GPU(s) per run" in line for line in lines)
    for path in load_sweep(tmp_path / "sweep")["path"]:
        manifest = json.loads((tmp_path / "sweep" / path / "manifest.json").read_text())
        assert manifest["device"] == "cpu"  # the fake GPU has no CUDA behind it: auto falls back, and says so
        assert (
            manifest["device_note"].startswith("Ray gave this process GPU ")
            and "ran on the CPU" in manifest["device_note"]
        )


def test_a_sweep_run_asking_cuda_on_a_gpu_without_cuda_fails_in_one_line(tmp_path, ray_session):
    _fake_gpus(ray_session)
    lines: list[str] = []
    result = run_sweep(_gpu_sweep(tmp_path, 0.25, "cuda"), tmp_path / "sweep", log=lines.append)
    assert sorted(result.index["status"]) == ["failed", "failed"]
    failed = [line for line in lines if line.startswith("  failed:")]
    assert len(failed) == 2 and all("runtime.device: got 'cuda'" in line and "GPU" in line for line in failed)


def test_a_sweep_asking_more_gpus_per_run_than_the_instance_has_is_refused_at_once(tmp_path, ray_session):
    gpus = _fake_gpus(ray_session)
    with pytest.raises(ConfigError, match=rf"sweep.gpus_per_run: got {gpus + 1:g}.*at most the {gpus:g} GPUs"):
        run_sweep(_gpu_sweep(tmp_path, gpus + 1), tmp_path / "sweep", log=lambda _: None)
    assert not (tmp_path / "sweep").exists()


def test_a_cuda_sweep_must_reserve_gpus(tmp_path):
    with pytest.raises(ConfigError, match="sweep.gpus_per_run: got 0.0, expected a number > 0 with runtime.device"):
        run_sweep(_gpu_sweep(tmp_path, 0, "cuda"), tmp_path / "sweep", log=lambda _: None)
    for bad in (-1, 1.5):  # Ray takes a fraction of one GPU or whole GPUs
        with pytest.raises(ConfigError, match=rf"sweep.gpus_per_run: got {bad}, expected a fraction in \[0, 1\]"):
            run_sweep(_gpu_sweep(tmp_path, bad), tmp_path / "sweep", log=lambda _: None)


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["hosfl", "sfl", "fedavg", "sfl_zo"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_on_cuda_trains_and_records_the_gpu(tmp_path, name, dtype):
    sc = tiny_scenario(
        task={"dataset": {"name": "digits"}, "model": {"name": "cnn", "cut": "block1", "width": 8, "dtype": dtype}},
        algorithms=[{"name": name}],
        federation={"num_clients": 6, "clients_per_round": 3, "rounds": 4, "batch_size": 16, "eval_every": 2},
        runtime={"backend": "local", "num_workers": 2, "device": "cuda", "memory_every": 2},  # the CUDA meter too
    )
    engine = Engine(load_scenario(sc), progress=False)
    assert engine.run_one(0, 0, tmp_path / "run").status == "completed"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["device"] == f"cuda:0 ({torch.cuda.get_device_name(0)})"
    rounds = pd.read_parquet(tmp_path / "run" / "rounds.parquet")
    loss = rounds["train_loss"].to_numpy()
    assert np.isfinite(loss).all() and rounds["test_acc"].notna().sum() == 2
    measured = rounds.loc[rounds["round"] % 2 == 0, "server_peak_mem_bytes"]
    assert (measured > 0).all() and rounds.loc[rounds["round"] % 2 == 1, "server_peak_mem_bytes"].isna().all()
    assert loss[-1] < loss[0]  # it learns (on the CPU every case drops by 0.02 to 0.04 in these four rounds)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_first_order_on_cuda_follows_the_cpu_closely(tmp_path):
    """Same seeds, same batches: SFL's losses on CUDA and on the CPU agree up to kernel rounding (TF32 convolutions
    included), over a few rounds."""
    frames = {}
    for device in ("cpu", "cuda"):
        sc = tiny_scenario(
            algorithms=[{"name": "sfl"}],
            federation={"num_clients": 6, "clients_per_round": 3, "rounds": 3, "batch_size": 16, "eval_every": 1},
            runtime={"backend": "local", "num_workers": 1, "device": device},
        )
        Engine(load_scenario(sc), progress=False).run_one(0, 0, tmp_path / device)
        frames[device] = pd.read_parquet(tmp_path / device / "rounds.parquet")
    cpu, cuda = frames["cpu"]["train_loss"].to_numpy(), frames["cuda"]["train_loss"].to_numpy()
    assert abs(cuda - cpu).max() < 0.05 * abs(cpu).max()


@pytest.mark.parametrize("name", ["sfl", "hosfl"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bfloat16_transformer_trains_on_cuda(tmp_path, name):
    """The language models' mixed precision on CUDA: parameters and activations in bfloat16 (task.model.dtype)."""
    from hosfl_sim.config import to_dict
    from tests.test_language import tiny_cfg
    from tests.test_language_runs import _keyword_task

    data, tokenizer, vocab = _keyword_task(tmp_path)
    model = to_dict(
        tiny_cfg("opt", vocab, dtype="bfloat16", overrides={"tokenizer": tokenizer, "padding_side": "left"})
    )
    sc = {
        "task": {
            "dataset": {"name": "files", "path": data, "text_column": "sentence", "max_length": 12},
            "model": model,
        },
        "algorithms": [{"name": name, **({"perturbations": 2} if name == "hosfl" else {})}],
        "federation": {"num_clients": 6, "clients_per_round": 3, "rounds": 3, "batch_size": 16, "eval_every": 1},
        "runtime": {"backend": "local", "num_workers": 1, "device": "cuda"},
    }
    (summary,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / "out")
    assert summary.status == "completed"
    assert json.loads((summary.run_dir / "manifest.json").read_text())["device"].startswith("cuda:")
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    assert rounds["train_loss"].notna().all() and rounds["test_loss"].notna().all()
