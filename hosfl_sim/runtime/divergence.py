"""When a run has diverged: a non-finite loss, or a NaN or Inf anywhere in the server's tensors (its copy of the
client part included, so a bad aggregate of scalars shows too), as a round ended.

The server's answer takes a round trip, so unless the round is the run's last or a checkpoint's, it is read
after the next round has run (by then without waiting): if it was bad, the run stops as diverged at the round
that left it and the next one is dropped unlogged, as if the run had stopped there.

A round that raises an arithmetic overflow (a learning rate or step that float32 cannot hold: torch refuses the
scalar) or an error over a NaN or Inf it met has diverged too: the run stops as diverged at that round, which
has no results and is not logged.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import RoundResult
from hosfl_sim.config import ConfigError
from hosfl_sim.record import Recorder

log = logging.getLogger(__name__)

_NONE = object()  # nothing pending
# torch's "value cannot be converted to type float without overflow", numpy's and Python's "cannot convert float NaN
# to integer", "probability tensor contains either `inf`, `nan` or element < 0", ...
_NUMERIC = re.compile(r"overflow|\bnan\b|\binf(inity)?\b", re.IGNORECASE)


def overflow(error: BaseException) -> str | None:
    """Why an error a round raised is the run diverging (an overflow, a NaN or Inf refused), or None. A Ray task's
    error is judged by the error it wraps."""
    cause = getattr(error, "cause", None)  # RayTaskError: the error raised in the actor
    e = cause if isinstance(cause, BaseException) else error
    if isinstance(e, ConfigError):
        return None
    numeric = isinstance(e, (OverflowError, FloatingPointError))
    if numeric or (isinstance(e, (RuntimeError, ValueError)) and _NUMERIC.search(str(e))):
        text = " ".join(str(e).split())
        return f"{type(e).__name__}: {text[:200]}"
    return None


class DivergenceWatch:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.ended: Any = _NONE  # the round just run: its end_round call (the check), then its unread calls
        self.deferred: Any = _NONE  # the round before's, when not waited for

    def round_ended(self, futures: list[Any]) -> None:
        """The calls that end the round just run; the first answers the server's NaN/Inf check."""
        self.ended = futures

    def check(self, result: RoundResult, row: dict[str, Any], completed: int, may_defer: bool) -> str | None:
        """Why the run has diverged at the round just logged, or None (its server check deferred if `may_defer`)."""
        if completed and not math.isfinite(result.train_loss):
            return f"train_loss is {result.train_loss}"
        if row["test_loss"] is not None and not math.isfinite(row["test_loss"]):
            return f"test_loss is {row['test_loss']}"
        self.deferred, self.ended = self.ended, _NONE
        return None if may_defer else self.late()

    def late(self) -> str | None:
        """The server's NaN/Inf check of the round `check` deferred (None: none pending, or all finite)."""
        pending, self.deferred = self.deferred, _NONE
        if pending is _NONE:
            return None
        bad = self.backend.get(pending)[0]  # on the local backend, the result itself
        return None if bad is None else f"NaN or Inf in the server's {bad}"

    def after_error(self, error: Exception, rnd: int) -> tuple[str, int]:
        """Round `rnd` raised `error`: (why, the round the run diverged at) when NaN/Inf the round before left
        explains it (that round), or it is an overflow (this round); any other error is raised again."""
        try:
            late = self.late()
        except Exception as e:  # the round before's check failed too: judge that error, at that round
            error, rnd = e, rnd - 1
        else:
            if late is not None:
                return late, rnd - 1
        why = overflow(error)
        if why is None:
            raise error
        return why, rnd


def diverged(recorder: Recorder, label: str, seed: int, rnd: int, reason: str) -> None:
    """Log, and note in the run's manifest, that it diverged at round `rnd` and why."""
    log.warning("%s seed %d diverged at round %d: %s", label, seed, rnd, reason)
    recorder.manifest.update(diverged_round=rnd, diverged_reason=reason)
