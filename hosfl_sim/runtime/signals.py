"""Ctrl-C (or SIGTERM) during a run: the first asks the engine to stop after the round, with a checkpoint;
a second one stops at once."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hosfl_sim.runtime.engine import Engine


def stop_on_signals(engine: Engine) -> Callable[[], None]:
    """First Ctrl-C (or SIGTERM): finish the round, write a checkpoint, stop. A second one: stop at once.
    Returns the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, frame: object) -> None:
        if engine.stop_requested:
            raise KeyboardInterrupt
        engine.request_stop()
        name = signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this round, with a checkpoint (again to stop now)", file=sys.stderr, flush=True
        )

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
