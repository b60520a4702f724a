"""Experiment trackers, each in its offline or local mode, read back: they hold the rounds.parquet numbers."""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario


def _run(tmp_path, tracker: str) -> tuple[pd.DataFrame, object]:
    fed = {"num_clients": 6, "clients_per_round": 2, "rounds": 3, "batch_size": 8, "eval_every": 1}
    sc = load_scenario(
        tiny_scenario(federation=fed, runtime={"backend": "local", "num_workers": 1, "track": [tracker]})
    )
    engine = Engine(sc, progress=False)
    engine.validate()
    (summary,) = engine.run_all(tmp_path / "runs")
    assert summary.status == "completed"
    return pd.read_parquet(summary.run_dir / "rounds.parquet"), summary.run_dir


def test_tensorboard_event_files_hold_the_rounds(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rounds, run_dir = _run(tmp_path, "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("test_acc", "train_loss", "sim_time_s", "bytes_total"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == rounds["round"].tolist()
        assert [e.value for e in logged] == pytest.approx(rounds[key].tolist(), rel=1e-6)
    assert any(tag.startswith("config") for tag in events.Tags()["tensors"])  # the resolved configuration, as text


def test_mlflow_file_store_holds_the_rounds_and_the_configuration(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database; a folder is the local mode
    rounds, run_dir = _run(tmp_path, "mlflow")
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == run_dir.name and run.data.params["federation.rounds"] == "3"
    history = client.get_metric_history(run.info.run_id, "test_acc")
    assert [m.step for m in history] == rounds["round"].tolist()
    assert [m.value for m in history] == pytest.approx(rounds["test_acc"].tolist())


def wandb_records(path: Path) -> Iterator:
    """The records of an offline W&B run file: a 7-byte header, then LevelDB log records (32 KiB blocks, each
    record a 7-byte header, crc32c, length and type, then a chunk; FULL = 1, or FIRST .. LAST = 4)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's zero padding
            pos += left
            continue
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def test_wandb_offline_run_holds_the_rounds_and_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rounds, run_dir = _run(tmp_path, "wandb")
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history, config = [], {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "run":
            config = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.run.config.update
            }
    assert [h["_step"] for h in history] == rounds["round"].tolist()
    assert [h["test_acc"] for h in history] == pytest.approx(rounds["test_acc"].tolist())
    assert config["federation"]["rounds"] == 3 and config["algorithm"] == "hosfl"


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    sc = load_scenario(tiny_scenario(runtime={"backend": "local", "track": ["tensorboard", "wandb"]}))
    with pytest.raises(ConfigError, match=r"runtime.track\[1\].*pip install 'hosfl_sim\[wandb\]'"):
        Engine(sc, progress=False).validate()


def test_the_cli_tracks_with_a_flag(tmp_path):
    import yaml

    from hosfl_sim.cli import main

    fed = {"num_clients": 6, "clients_per_round": 2, "rounds": 2, "batch_size": 8, "eval_every": 1}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_scenario(federation=fed)))
    assert main(["run", str(path), "--track", "tensorboard", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "out").glob("*/manifest.json")
    assert json.loads(run_dir.read_text())["scenario"]["runtime"]["track"] == ["tensorboard"]
    assert list((run_dir.parent / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_online_without_a_login_and_a_tracker_twice_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    from hosfl_sim.cli import main

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    args = ["run", "quickstart", "runtime.backend=local", "federation.rounds=1"]
    out = ["--out", str(tmp_path / "out")]
    assert main([*args, *out, "--track", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime.track[0]: got 'wandb', expected a W&B login" in err[0], err
    assert main([*args, "runtime.track=[tensorboard, tensorboard]", *out]) == 2
    assert "runtime.track[1]: got 'tensorboard', expected each tracker once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
