"""Ctrl-C (or SIGTERM) during a sweep. The first: every running run stops after its round with a checkpoint (as
`hosfl-sim run` does), queued runs do not start, and the sweep ends once the runs have stopped, each `interrupted`
in its manifest and in the index; `--resume` then skips the completed runs and continues the interrupted ones from
their checkpoints. A second: the runs are cancelled at once (their manifests are marked interrupted; a resume
continues each from its last `runtime.checkpoint_every` checkpoint, or starts it again).

Why a flag in Ray's key-value store that every run's task polls, rather than `ray.cancel`: a cancelled task's
stream drops what the task yields afterwards (its status, and on a node that cannot see the sweep directory its
files), and a task cancelled mid-round has no checkpoint of that round. The store is reachable from every node.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hosfl_sim.record import read_manifest
from hosfl_sim.record.manifest import now
from hosfl_sim.record.recorder import write_json
from hosfl_sim.runtime.sweep_index import write_index
from hosfl_sim.runtime.sweep_plan import PlannedRun

if TYPE_CHECKING:
    from hosfl_sim.runtime.engine import Engine
    from hosfl_sim.runtime.sweep import SweepResult

NAMESPACE = "hosfl_sim"
POLL_S = 0.5  # how often a run looks for the flag, and the driver for a signal while it waits on runs


def _key(token: str) -> str:
    return f"sweep-stop:{token}"


class SweepStop:
    """The driver's side, around the wait for the runs: signal handlers (in the main thread only) and the flag."""

    def __init__(self, token: str, log: Callable[[str], None]):
        self.token, self.log = token, log
        self.requested = False  # a first signal came
        self.sent = False  # the runs were told
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SweepStop:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        if self.sent:
            from ray.experimental.internal_kv import _internal_kv_del

            try:
                _internal_kv_del(_key(self.token), namespace=NAMESPACE)
            except Exception:  # Ray is gone already: nothing is left to clean
                pass

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True  # acted on by `send`, outside the handler (it calls Ray)
        name = signal.Signals(signum).name
        print(f"\n{name}: runs stop after their round, with a checkpoint (again to stop now)", file=sys.stderr)

    def send(self) -> None:
        """After a first signal, once: raise the flag every run's task polls."""
        if not self.requested or self.sent:
            return
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(_key(self.token), b"1", namespace=NAMESPACE)
        self.sent = True
        self.log("  stopping: running runs finish their round and write a checkpoint; queued runs do not start")


def stop_requested(token: str) -> bool:
    """In a run's task: whether the sweep was asked to stop (never, outside Ray)."""
    import ray

    if not ray.is_initialized():
        return False
    from ray.experimental.internal_kv import _internal_kv_get

    return bool(_internal_kv_get(_key(token), namespace=NAMESPACE))


@contextmanager
def watch_stop(engine: Engine, token: str) -> Iterator[None]:
    """In a run's task: a thread that asks `engine` to stop (after its round, with a checkpoint) once the flag is up."""
    done = threading.Event()

    def poll() -> None:
        while not done.wait(POLL_S):
            try:
                asked = stop_requested(token)
            except Exception:  # the store did not answer this time: ask again
                continue
            if asked:
                engine.request_stop()
                return

    thread = threading.Thread(target=poll, name="sweep-stop", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def cancel_at_once(pending: dict[Any, PlannedRun], out: Path, rows: dict[str, dict]) -> None:
    """The driver stops at once (a second signal, or an error of its own): the runs not ended are cancelled and
    marked interrupted, in the index and, where a run's manifest still says `running`, in its manifest."""
    import ray

    for gen, r in pending.items():
        if rows[r.path]["status"] not in ("pending", "running"):
            continue
        rows[r.path]["status"] = "interrupted"
        try:
            ray.cancel(gen, force=True)
        except Exception:  # already finished or gone
            pass
        try:
            manifest = read_manifest(out / r.path)
        except (OSError, ValueError):  # not started, or on a node that cannot see the sweep directory
            continue
        if manifest.get("status") == "running":
            manifest.update(status="interrupted", finished=now(), error="cancelled at once (a second Ctrl-C)")
            write_json(out / r.path / "manifest.json", manifest)
    write_index(out, list(rows.values()))


def exit_status(result: SweepResult, again: str) -> int:
    """What a sweep's command says last and its exit status: 130 when runs were interrupted (with `again`, the
    command that continues them), 1 when some failed, else 0."""
    for path in result.failed:
        print(f"failed: {path} (see {result.dir / path / 'error.txt'})", file=sys.stderr)
    if result.interrupted:
        print(f"stopped; continue with: {again}", file=sys.stderr)
        return 130
    return 1 if result.failed else 0
