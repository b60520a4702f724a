"""Ends that used to leave the record wrong: a resume whose Parquet rows are gone or cut short is refused in one
line with nothing touched; a server that dies before the first checkpoint says so (not "set checkpoint_every")."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from hosfl_sim.cli import main
from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.errors import ServerLost
from hosfl_sim.runtime.local import LocalBackend
from tests.conftest import tiny_scenario

FED = {"num_clients": 8, "clients_per_round": 3, "rounds": 4, "batch_size": 16, "eval_every": 2}


class StopAfterRound2(Engine):
    def _divergence(self, result, row, completed):
        if row["round"] == 2:
            self.request_stop()  # as Ctrl-C: a checkpoint after round 2, status interrupted
        return super()._divergence(result, row, completed)


@pytest.mark.parametrize("damage", ["deleted", "cut short"])
def test_a_resume_whose_rows_are_gone_is_refused_in_one_line_with_nothing_touched(tmp_path, capsys, damage):
    raw = tiny_scenario(federation=FED, runtime={"backend": "local", "num_workers": 1, "checkpoint_every": 2})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    (stopped,) = StopAfterRound2(load_scenario(raw), progress=False).run_all(tmp_path / "out")
    assert stopped.status == "interrupted"
    rounds = stopped.run_dir / "rounds.parquet"
    if damage == "deleted":
        rounds.unlink()
    else:
        pq.write_table(pq.read_table(rounds).slice(0, 1), rounds)
    before = (stopped.run_dir / "manifest.json").read_text()
    capsys.readouterr()
    assert main(["run", str(tmp_path / "s.yaml"), "--resume", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rounds.parquet holds the 2 rows its checkpoint counts" in err
    assert ("it is missing" if damage == "deleted" else "it holds 1") in err
    assert (stopped.run_dir / "manifest.json").read_text() == before  # nothing touched
    assert not list(stopped.run_dir.glob("*.tmp"))


def test_a_server_that_dies_before_the_first_checkpoint_says_so(tmp_path):
    class ServerDiesInRound2(LocalBackend):
        ended = 0

        def server(self, method, *args, num_returns=1):
            if method.__name__ == "end_round":
                self.ended += 1
                if self.ended == 2:
                    raise ServerLost("the server actor died")
            return super().server(method, *args, num_returns=num_returns)

    sc = load_scenario(tiny_scenario(federation=FED, runtime={"backend": "local", "checkpoint_every": 3}))
    with pytest.raises(ServerLost, match=r"died before the first checkpoint \(round 3\): run it again"):
        Engine(sc, backend=ServerDiesInRound2(2), progress=False).run_all(tmp_path)
    (manifest,) = tmp_path.glob("*/manifest.json")
    record = json.loads(manifest.read_text())
    assert record["status"] == "failed" and "before the first checkpoint" in record["error"]


def test_a_run_that_fails_is_recorded_and_the_other_runs_still_go(tmp_path, capsys):
    """One algorithm's run raises mid-way (a bug; an overflow is a divergence instead): its manifest says failed
    and why, and the scenario's other runs still complete (the CLI then ends with exit 1, naming the failed run)."""
    from hosfl_sim.algorithms.hosfl import HOSFLServer

    class HOSFLServerFails(LocalBackend):
        steps = 0

        def server(self, method, *args, num_returns=1):
            if method is HOSFLServer.train_step:
                self.steps += 1
                if self.steps == 3:
                    raise KeyError("a bug in the server step")
            return super().server(method, *args, num_returns=num_returns)

    algos = [{"name": "hosfl", "perturbations": 2}, {"name": "sfl"}]
    sc = load_scenario(tiny_scenario(algorithms=algos, federation=FED))
    summaries = Engine(sc, backend=HOSFLServerFails(2), progress=False).run_all(tmp_path)
    assert [(s.algorithm, s.status, s.rounds) for s in summaries] == [("hosfl", "failed", 2), ("sfl", "completed", 4)]
    record = json.loads((summaries[0].run_dir / "manifest.json").read_text())
    assert record["status"] == "failed" and "a bug in the server step" in record["error"]


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_an_output_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path, capsys, where):
    import os

    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes through permission bits (a read-only mount is checked by statvfs instead)")
    parent = tmp_path / "parent"
    if where == "under a file":
        parent.write_text("not a folder")
    else:
        parent.mkdir()
        parent.chmod(0o555)
    args = ["run", "quickstart", "runtime.backend=local", "federation.rounds=2", "--quiet"]
    try:
        assert main([*args, "--out", str(parent / "runs")]) == 2
    finally:
        if parent.is_dir():
            parent.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out:")
    assert ("is a file" in err[0]) if where == "under a file" else ("no write permission" in err[0])
    assert not (parent / "runs").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "valid JSON"),
        ("[1, 2]", "a JSON object (it holds a list)"),
        ('{"status": "completed"}', "with scenario, algorithm, algorithm_index, seed"),
    ],
)
def test_a_damaged_manifest_is_refused_in_one_line_by_resume_and_plot(tmp_path, capsys, content, says):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(content)
    commands = [(["run", "--resume", str(tmp_path / "run")], "--resume")]
    commands += [(["plot", str(tmp_path)], "paths")] if "JSON" in says else []  # plots read any JSON object
    for args, field in commands:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {field}: got") and says in err[0], err
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "expected an existing run or output directory" in capsys.readouterr().err


def test_a_full_disk_fails_the_run_in_its_manifest_and_leaves_no_temporary_files(tmp_path, monkeypatch, capsys):
    """The disk fills up after a few rounds: the Parquet write fails part-way (a partial file is on disk, as on a
    real full disk). The run ends failed with the reason in its manifest, keeps the rows already written, leaves no
    stray .tmp file, and the next algorithm still runs."""
    import errno
    from pathlib import Path

    from hosfl_sim.record import recorder

    written = {"calls": 0}
    real_write = recorder.pq.write_table

    def write_until_full(table, path, *args, **kwargs):
        written["calls"] += 1
        if written["calls"] == 3:  # the first run's second flush: rounds written, then clients fail
            Path(path).write_bytes(b"PAR1 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, path, *args, **kwargs)

    monkeypatch.setattr(recorder.pq, "write_table", write_until_full)
    algos = [{"name": "hosfl", "perturbations": 2}, {"name": "sfl"}]
    sc = load_scenario(tiny_scenario(algorithms=algos, federation={**FED, "rounds": 3}))
    engine = Engine(sc, backend=LocalBackend(2), progress=False)
    engine.checkpoint_every = 0
    summaries = engine.run_all(tmp_path)
    assert [s.status for s in summaries] == ["failed", "completed"]
    record = json.loads((summaries[0].run_dir / "manifest.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert not list(tmp_path.rglob("*.tmp"))
    kept = pq.read_table(summaries[0].run_dir / "rounds.parquet").to_pylist()  # the rows written before, intact
    assert 1 <= len(kept) < 3 and kept[0]["round"] == 1


def test_a_scenario_name_with_path_separators_stays_inside_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "quickstart", "runtime.backend=local", "federation.rounds=1", "name=../../escape", "--quiet"]
    assert main(args) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name == ".._.._escape" and list(folder.glob("*/*/manifest.json"))
    assert not (tmp_path.parent / "escape").exists()
