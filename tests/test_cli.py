"""The command line as a user types it."""

from __future__ import annotations

import json

import pandas as pd

from hosfl_sim.cli import main

ROUND_COLUMNS = {
    "algorithm", "seed", "round", "train_loss", "test_loss", "test_acc", "wall_time_s", "samples_seen", "bytes_total",
    *(f"bytes_{c}" for c in ("act_up", "grad_down", "labels_up", "scalar_up", "scalar_down", "seed_down", "model_up",
                             "model_down")),
}  # fmt: skip


def test_list_shows_scenarios_and_algorithms(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "noniid" in out
    assert main(["list", "--algorithms"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("hosfl", "sfl", "sfl_zo"))


def test_run_writes_run_directories_and_a_summary(tmp_path, capsys):
    args = ["run", "quickstart", "runtime.backend=local", "federation.rounds=3", "federation.eval_every=2"]
    assert main([*args, "--out", str(tmp_path), "--quiet", "--plot"]) == 0
    out = capsys.readouterr().out
    assert "HO-SFL" in out and "SFL-ZO" in out and "act_up" in out
    runs = sorted(p for p in tmp_path.iterdir() if (p / "manifest.json").exists())
    assert [p.name for p in runs] == ["HO-SFL_seed0", "SFL-ZO_seed0", "SFL_seed0"]
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["seed"] == 0
        assert manifest["scenario"]["federation"]["rounds"] == 3
        rounds = pd.read_parquet(run / "rounds.parquet")
        assert ROUND_COLUMNS <= set(rounds.columns) and rounds["round"].tolist() == [1, 2, 3]
        assert rounds["test_acc"].isna().tolist() == [True, False, False]
        # the paper's metric: the running best over the evaluations so far
        acc = rounds["test_acc"].tolist()
        assert rounds["best_test_acc"].tolist()[1:] == [acc[1], max(acc[1], acc[2])]
        assert pd.isna(rounds["best_test_acc"].iloc[0])
        assert (rounds["samples_seen"].diff().dropna() == 5 * 32).all()
        clients = pd.read_parquet(run / "clients.parquet")
        assert len(clients) == 3 * 5 and {"client_id", "bytes_up", "bytes_down", "compute_s"} <= set(clients.columns)
    assert any((tmp_path / "figures").glob("*.png"))
