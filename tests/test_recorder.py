"""The recorder: complete, readable files while a run goes on, the types one write of every row gives, resume
at a checkpoint's position, and every logged row on disk at checkpoints and at the end, whatever the throttle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hosfl_sim.config import load_scenario
from hosfl_sim.record import Recorder, read_manifest
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario

NEVER = 1e9  # a throttle no test outlasts: only the first round, position(), flush() and finish() write


def round_rows(rnd: int, k: int = 3, offset: float = 0.0) -> tuple[dict, list[dict]]:
    """Rows shaped like the engine's: test metrics every 3rd round, memory from round 4 on, None before."""
    row = {
        "algorithm": "A",
        "seed": 0,
        "round": rnd,
        "train_loss": 1.0 / rnd + offset,
        "test_acc": 0.5 + offset if rnd % 3 == 0 else None,
        "peak_mem_bytes": 1000 * rnd if rnd >= 4 else None,
        "bytes_total": 10 * rnd,
    }
    clients = [
        {"round": rnd, "client_id": 10 * rnd + i, "loss": 0.1 * i + offset, "status": "completed"} for i in range(k)
    ]
    return row, clients


def on_disk(run_dir) -> tuple[pa.Table | None, pa.Table | None]:
    paths = [run_dir / f"{name}.parquet" for name in ("rounds", "clients")]
    return tuple(pq.read_table(p) if p.exists() else None for p in paths)


def one_write(rows: list[dict]) -> pa.Table:
    """What writing every row at once gives (the recorder's files must equal it)."""
    return pa.Table.from_pylist(rows)


def assert_complete(rec: Recorder) -> None:
    rounds, clients = on_disk(rec.dir)
    assert rounds.equals(one_write(rec.rounds)) and clients.equals(one_write(rec.clients))


def test_files_are_complete_after_every_round_when_flushing_every_round(tmp_path):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.flush_every_s = 0
    for rnd in range(1, 9):
        rec.log_round(*round_rows(rnd))
        assert_complete(rec)
        assert pd.read_parquet(rec.dir / "rounds.parquet")["round"].tolist() == list(range(1, rnd + 1))
    assert not list(rec.dir.glob("*.tmp"))


def test_a_throttled_recorder_puts_every_row_on_disk_at_position_flush_and_finish(tmp_path):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.flush_every_s = NEVER
    rec.log_round(*round_rows(1))
    assert_complete(rec)  # the first round is written at once: a watcher sees the run start
    for rnd in range(2, 6):
        rec.log_round(*round_rows(rnd))
    assert pq.read_metadata(rec.dir / "rounds.parquet").num_rows == 1  # throttled: later rows wait
    assert rec.position() == {"rounds": 5, "clients": 15}
    assert_complete(rec)
    rec.log_round(*round_rows(6))
    rec.flush()
    assert_complete(rec)
    for rnd in range(7, 10):
        rec.log_round(*round_rows(rnd))
    rec.finish("failed", error="boom")
    assert_complete(rec)
    manifest = read_manifest(rec.dir)
    assert manifest["status"] == "failed" and manifest["rounds_completed"] == 9


@pytest.mark.parametrize("flush_every_s", [0, NEVER])
def test_column_types_are_those_of_one_write_when_the_first_rows_hold_none(tmp_path, flush_every_s):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.flush_every_s = flush_every_s
    columns = {
        "late_float": lambda r: None if r < 4 else 0.5 * r,
        "late_int": lambda r: None if r < 4 else r,
        "int_then_float": lambda r: r if r < 4 else r + 0.25,
        "float32_then_float": lambda r: np.float32(r) if r < 4 else float(r),  # inferred over every row at once
        "never": lambda r: None,
        "text": lambda r: None if r % 2 else f"r{r}",
    }
    for rnd in range(1, 8):
        rec.log_round({"round": rnd, **{k: f(rnd) for k, f in columns.items()}}, [])
        if rnd == 3:
            rec.flush()  # a flush between the None rows and the numbers
    rec.finish("completed")
    rounds = pq.read_table(rec.dir / "rounds.parquet")
    assert rounds.equals(one_write(rec.rounds))
    types = {name: str(rounds.schema.field(name).type) for name in columns}
    assert types == {
        "late_float": "double",
        "late_int": "int64",
        "int_then_float": "double",
        "float32_then_float": "double",
        "never": "null",
        "text": "string",
    }
    assert rounds.column("int_then_float").to_pylist() == [1.0, 2.0, 3.0, 4.25, 5.25, 6.25, 7.25]


def test_final_files_are_byte_identical_to_one_write(tmp_path):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.flush_every_s = 0
    for rnd in range(1, 12):
        rec.log_round(*round_rows(rnd))
    rec.finish("completed")
    for name, rows in (("rounds", rec.rounds), ("clients", rec.clients)):
        pq.write_table(one_write(rows), tmp_path / f"{name}.parquet")
        assert (rec.dir / f"{name}.parquet").read_bytes() == (tmp_path / f"{name}.parquet").read_bytes()


@pytest.mark.parametrize("flush_every_s", [0, NEVER])
def test_reopen_keeps_the_checkpoint_rows_and_appends_after_them(tmp_path, flush_every_s):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.flush_every_s = flush_every_s
    for rnd in range(1, 5):
        rec.log_round(*round_rows(rnd))
    position = rec.position()  # a checkpoint after round 4
    kept_rounds, kept_clients = list(rec.rounds), list(rec.clients)
    for rnd in range(5, 7):  # logged after the checkpoint, then the process dies (no finish)
        rec.log_round(*round_rows(rnd))

    back = Recorder.reopen(tmp_path / "run", position, 4)
    back.flush_every_s = flush_every_s
    rounds, clients = on_disk(back.dir)
    assert rounds.equals(one_write(kept_rounds)) and clients.equals(one_write(kept_clients))
    assert read_manifest(back.dir)["status"] == "running"
    for rnd in range(5, 8):  # the resumed run logs those rounds again (here with other numbers)
        back.log_round(*round_rows(rnd, offset=100.0))
    back.finish("completed")
    rounds, clients = on_disk(back.dir)
    assert rounds.column("round").to_pylist() == [1, 2, 3, 4, 5, 6, 7]
    assert rounds.column("train_loss").to_pylist()[4:] == [1 / r + 100.0 for r in (5, 6, 7)]
    assert rounds.equals(one_write(back.rounds)) and clients.equals(one_write(back.clients))
    assert rounds.schema.field("peak_mem_bytes").type == pa.int64()
    manifest = read_manifest(back.dir)
    assert manifest["rounds_completed"] == 7 and manifest["resumed"][0]["after_round"] == 4


def test_reopen_at_the_start_leaves_no_files_until_a_round(tmp_path):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.log_round(*round_rows(1))
    back = Recorder.reopen(tmp_path / "run", {"rounds": 0, "clients": 0}, 0)
    assert on_disk(back.dir) == (None, None)
    back.log_round(*round_rows(1, offset=1.0))
    assert_complete(back)


def test_a_run_without_clients_still_gets_its_clients_file(tmp_path):
    rec = Recorder(tmp_path / "run", {"name": "t"})
    rec.flush_every_s = NEVER
    assert on_disk(rec.dir) == (None, None)  # nothing before the first round
    for rnd in range(1, 4):
        rec.log_round(round_rows(rnd)[0], [])
    rec.finish("completed")
    clients = pq.read_table(rec.dir / "clients.parquet")
    assert clients.num_rows == 0 and clients.schema == pa.schema([("round", pa.int64()), ("client_id", pa.int64())])
    assert pq.read_table(rec.dir / "rounds.parquet").num_rows == 3


# ----------------------------------------------------------------------------- with the engine


class FailAtRound(Engine):
    """Raises (as a bug or a Ctrl-C would) after round `at` is logged; notes the rows on disk at checkpoints."""

    def __init__(self, *args, at: int, error: type[BaseException], **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.error, self.on_disk_at_checkpoints = at, error, []

    def _divergence(self, result, row, completed):
        if row["round"] == self.at:
            raise self.error("stop here")
        return super()._divergence(result, row, completed)

    def _checkpoint(self, recorder, *args):
        super()._checkpoint(recorder, *args)
        on_disk = {name: pq.read_metadata(recorder.dir / f"{name}.parquet").num_rows for name in ("rounds", "clients")}
        self.on_disk_at_checkpoints.append((on_disk, load_checkpoint(recorder.dir)["recorder"]))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_engine_run_that_ends_in_an_error_keeps_every_logged_round(tmp_path, monkeypatch, error):
    monkeypatch.setattr(Recorder, "flush_every_s", NEVER)
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 8, "batch_size": 16, "eval_every": 3}
    sc = load_scenario(
        tiny_scenario(federation=fed, runtime={"backend": "local", "num_workers": 1, "checkpoint_every": 2})
    )
    engine = FailAtRound(sc, progress=False, at=5, error=error)
    with pytest.raises(error):
        engine.run_one(0, 0, tmp_path / "run")
    assert len(engine.on_disk_at_checkpoints) == 2  # after rounds 2 and 4: their rows are on disk
    assert all(on_disk == position for on_disk, position in engine.on_disk_at_checkpoints)
    rounds = pd.read_parquet(tmp_path / "run" / "rounds.parquet")
    clients = pd.read_parquet(tmp_path / "run" / "clients.parquet")
    assert rounds["round"].tolist() == [1, 2, 3, 4, 5] and sorted(set(clients["round"])) == [1, 2, 3, 4, 5]
    assert (
        rounds["test_acc"].dtype == np.float64
        and rounds["test_acc"].notna().tolist() == [False, False, True] + [False] * 2
    )
    manifest = read_manifest(tmp_path / "run")
    assert manifest["status"] == ("interrupted" if error is KeyboardInterrupt else "failed")
    assert manifest["rounds_completed"] == 5 and load_checkpoint(tmp_path / "run")["recorder"]["rounds"] == 4


def test_throttled_and_unthrottled_engine_runs_write_the_same_files(tmp_path, monkeypatch):
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 5, "batch_size": 16, "eval_every": 2}
    sc = load_scenario(tiny_scenario(federation=fed, runtime={"backend": "local", "num_workers": 1, "memory_every": 3}))
    files = {}
    for every in (0, NEVER):
        monkeypatch.setattr(Recorder, "flush_every_s", every)
        run_dir = Engine(sc, progress=False).run_one(0, 0, tmp_path / str(every)).run_dir
        files[every] = {n: pq.read_table(run_dir / f"{n}.parquet") for n in ("rounds", "clients")}
    for name in ("rounds", "clients"):
        wall = ("wall_time_s", "wall_compute_s", "memory_overhead_s")
        keep = [c for c in files[0][name].column_names if c not in wall]
        assert files[0][name].select(keep).equals(files[NEVER][name].select(keep)), name
    assert files[NEVER]["rounds"].schema.field("client_peak_mem_bytes").type == pa.int64()
