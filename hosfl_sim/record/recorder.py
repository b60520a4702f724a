"""Records a run's rounds to Parquet, at a cost per round that does not grow with the run.

Parquet files cannot be appended in place, so the tables are rewritten whole, to a temporary file
renamed over the old one: readers always see a complete file. Rewriting every round would cost
O(rounds so far) per round, so `log_round` appends to memory and rewrites the files only when the last
rewrite is `Recorder.flush_every_s` (2 s) old, or 20 times its own cost if that is longer (so rewrites take
at most 5% of the run's time), and after a recorder's first round. Each row is turned into Arrow once; a
rewrite concatenates and writes (at round 2,000 with K = 10: 9-15 ms in bench/recorder.py, against 27 ms from the rows).

What is on disk:
- every row logged, after `position()` (a checkpoint), `flush()` and `finish()` (the end of every run:
  completed, diverged, failed or interrupted);
- in between, every row but those of at most the last `flush_every_s` seconds (or 20 rewrite costs): what
  a watcher does not see yet, and what a hard kill (SIGKILL, out of memory) loses. A resume goes on from
  the last checkpoint, whose rows are on disk.
The files are those one write of every row gives: a column has the type `pa.Table.from_pylist` infers over
all its rows (None in the first rows and numbers later: numeric).

A resumed run reopens its directory at a checkpoint's position: rows logged after it are dropped (the
resumed run logs those rounds again, with the same numbers).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hosfl_sim.record.manifest import now, read_manifest

FLUSH_SHARE = 0.05  # of the run's wall time, at most, spent rewriting the files between checkpoints
NAMES = ("rounds", "clients")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a read-only one, Ctrl-C: the file stays as it was, no stray .tmp
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)))


def _read_rows(path: Path, count: int) -> list[dict[str, Any]]:
    if count == 0:
        return []
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; a checkpoint counts {count} rows in it")
    rows = pq.read_table(path).to_pylist()
    if len(rows) < count:
        raise ValueError(f"{path} holds {len(rows)} rows; a checkpoint counts {count}")
    return rows[:count]


def _columns(rows: list[dict[str, Any]], names: list[str]) -> dict[str, pa.Array]:
    """The columns `pa.Table.from_pylist(rows)` builds, restricted to `names` (a key missing from a row: None)."""
    return {name: pa.array([row.get(name) for row in rows]) for name in names}


def _common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type Arrow infers for the values of two arrays together, where a simple rule settles it."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if {a, b} == {pa.int64(), pa.float64()}:  # ints and floats in one column: floats
        return pa.float64()
    return None


class _Table:
    """The rows of one file and their Arrow form, built as rows come (each row converted once)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows
        self.columns: dict[str, pa.Array] = {}  # Arrow form of rows[: self.converted]
        self.converted = 0
        self.written: int | None = None  # rows in the file this recorder last wrote (None: none written)

    def arrow(self) -> pa.Table:
        new = self.rows[self.converted :]
        if not self.converted:
            self.columns = _columns(new, list(self.rows[0]))
        elif new:
            merged = {}
            for name, old in self.columns.items():
                add = pa.array([row.get(name) for row in new])
                kind = _common_type(old.type, add.type)
                if kind is None:  # rare mixtures (e.g. float32 and float64): infer over every row, as one write would
                    merged = _columns(self.rows, list(self.columns))
                    break
                merged[name] = pa.concat_arrays([old.cast(kind, safe=False), add.cast(kind, safe=False)])
            self.columns = merged
        self.converted = len(self.rows)
        return pa.table(self.columns)


class Recorder:
    """One run directory. `log_round` after every finished round; `finish` once at the end (also when the run
    failed). Every row logged is on disk after `position()`, `flush()` and `finish()`; in between, all but at
    most the last `flush_every_s` seconds' rows (see the module docstring)."""

    flush_every_s: float = 2.0  # 0: rewrite the files after every round

    def __init__(self, run_dir: str | Path, manifest: dict[str, Any]):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = dict(manifest)
        self._start([], [])
        for name in NAMES:  # a fresh run owns the directory: no stale rows of an earlier one
            (self.dir / f"{name}.parquet").unlink(missing_ok=True)
        write_json(self.dir / "manifest.json", self.manifest)

    def _start(self, rounds: list[dict[str, Any]], clients: list[dict[str, Any]]) -> None:
        self.rounds, self.clients = rounds, clients
        self._tables = {"rounds": _Table(self.rounds), "clients": _Table(self.clients)}
        self._last_flush: float | None = None  # time.monotonic() of the last rewrite
        self._flush_cost = 0.0  # seconds it took

    @classmethod
    def reopen(cls, run_dir: str | Path, position: dict[str, int], round_idx: int) -> Recorder:
        """The recorder of an existing run directory, at `position` (from `position()`), resuming after
        round `round_idx`. The manifest keeps its history and lists the resume."""
        self = cls.__new__(cls)
        self.dir = Path(run_dir)
        manifest = read_manifest(self.dir)
        stale = ("error", "diverged_round", "diverged_reason", "finished", "rounds_completed", "checkpoint_round")
        for key in (*stale, "device_note"):
            manifest.pop(key, None)
        manifest["status"] = "running"
        manifest.setdefault("resumed", []).append({"after_round": round_idx, "at": now()})
        self.manifest = manifest
        self._start(
            _read_rows(self.dir / "rounds.parquet", position["rounds"]),
            _read_rows(self.dir / "clients.parquet", position["clients"]),
        )
        write_json(self.dir / "manifest.json", self.manifest)
        for name, rows in (("rounds", self.rounds), ("clients", self.clients)):
            if not rows:
                (self.dir / f"{name}.parquet").unlink(missing_ok=True)
        self.flush()
        return self

    def note(self, fields: dict[str, Any] | None) -> None:
        """Adds `fields` to the manifest, written now (where the run's roles run, once the backend set them up)."""
        if fields:
            self.manifest.update(fields)
            write_json(self.dir / "manifest.json", self.manifest)

    def position(self) -> dict[str, int]:
        """How many rows are logged: what a checkpoint records of the recorder. They are on disk on return."""
        self.flush()
        return {"rounds": len(self.rounds), "clients": len(self.clients)}

    def log_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        """Logs a finished round: O(1), plus a rewrite of the files when one is due."""
        self.rounds.append(row)
        self.clients.extend(client_rows)
        last, every = self._last_flush, self.flush_every_s
        if last is None or every <= 0 or time.monotonic() - last >= max(every, self._flush_cost / FLUSH_SHARE):
            self.flush()

    def flush(self) -> None:
        """Writes every row logged so far (files already up to date are left alone)."""
        t0, wrote = time.monotonic(), False
        for name, table in self._tables.items():
            rows = table.rows
            if table.written == len(rows):
                continue
            if rows:
                data = table.arrow()
            elif name == "clients" and self.rounds:  # runs without clients (centralized) still get the file
                data = pa.table({"round": pa.array([], pa.int64()), "client_id": pa.array([], pa.int64())})
            else:
                continue
            _atomic_write(self.dir / f"{name}.parquet", lambda p, t=data: pq.write_table(t, p))
            table.written, wrote = len(rows), True
        if wrote:
            self._last_flush = time.monotonic()
            self._flush_cost = self._last_flush - t0

    def finish(self, status: str, **extra: Any) -> None:
        """Writes the last rows and the manifest's end. Rows that cannot be written (a full disk) make the run
        failed, with the reason, in a manifest still written where the disk allows; the error is raised."""
        try:
            self.flush()
        except OSError as e:
            if status != "failed" or "error" not in extra:
                status, extra = "failed", {**extra, "error": f"its rows could not be written: {e!r}"}
            self._end(status, extra)
            raise
        self._end(status, extra)

    def _end(self, status: str, extra: dict[str, Any]) -> None:
        self.manifest.update(status=status, finished=now(), rounds_completed=len(self.rounds), **extra)
        write_json(self.dir / "manifest.json", self.manifest)
