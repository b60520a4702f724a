"""One process per run directory: a second `run` or `--resume` on a directory in use is refused, not interleaved.

The lock is an advisory `flock` on `<run dir>/.lock`, held for the life of the run and released by the operating
system when the process ends, however it ends (a SIGKILL leaves no stale lock). Where `fcntl` does not exist
(Windows), runs are not locked.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from hosfl_sim.config import ConfigError

LOCK = ".lock"


class RunLock:
    """`with RunLock(run_dir, field):` holds the directory's lock, or raises ConfigError naming `field`."""

    def __init__(self, run_dir: str | Path, field: str):
        self.path = Path(run_dir) / LOCK
        self.field = field
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux or macOS
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            expected = f"a run directory no other process is running (pid {holder} holds it)"
            raise ConfigError(self.field, str(self.path.parent), expected) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
