"""What happens to a round once it is done, besides the engine's own bookkeeping: it is logged, and shown.

Progress shows everywhere: on a terminal as a bar; elsewhere (CI, nohup, a Ray task of a sweep) as one line
every `every_s` seconds and at the last round, through the `hosfl_sim.progress` logger when logging is set
up to show it (the CLI does), else on stderr.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from hosfl_sim.record import Recorder


class RoundCallback:
    """Called with each round's rows once the round is done (evaluated if due), and when the run's loop ends."""

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:  # noqa: B027
        """The round's rounds.parquet row and clients.parquet rows."""

    def close(self) -> None:  # noqa: B027
        """The loop ended (whatever the ending)."""


class LogRounds(RoundCallback):
    """The rows into the run's Parquet files."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        self.recorder.log_round(row, client_rows)


class ProgressBar(RoundCallback):
    """A bar on the terminal: rounds done of the run's, the last loss and accuracy."""

    def __init__(self, label: str, rounds: int, done: int, enabled: bool):
        self.bar = tqdm(
            total=rounds, initial=done, desc=label, disable=not enabled or None, leave=False, dynamic_ncols=True
        )

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        acc = row["test_acc"]
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc="-" if acc is None else f"{100 * acc:.1f}%")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _write_progress(line: str) -> None:
    logger = logging.getLogger("hosfl_sim.progress")
    if logger.isEnabledFor(logging.INFO):
        logger.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressLog(RoundCallback):
    """One line a while where no terminal shows a bar: round, loss, accuracy, simulated time, elapsed, ETA."""

    def __init__(
        self, label: str, rounds: int, done: int, every_s: float = 30.0, write: Callable[[str], None] = _write_progress
    ):
        self.label, self.rounds, self.first, self.every_s, self.write = label, rounds, done, every_s, write
        self.started = self.last = time.monotonic()

    def on_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        now, rnd = time.monotonic(), int(row["round"])
        if now - self.last < self.every_s and rnd < self.rounds:
            return
        self.last = now
        acc = row["test_acc"] if row["test_acc"] is not None else row["best_test_acc"]
        per_round = (now - self.started) / max(rnd - self.first, 1)
        self.write(
            f"{self.label}: round {rnd}/{self.rounds}, train loss {row['train_loss']:.4f}, "
            f"test acc {'-' if acc is None else f'{100 * acc:.2f}%'}, simulated {_duration(row['sim_time_s'])}, "
            f"elapsed {_duration(now - self.started)}, ETA {_duration(per_round * (self.rounds - rnd))}"
        )


def progress(label: str, rounds: int, done: int, enabled: bool, every_s: float) -> RoundCallback:
    """A bar on a terminal, else a line every `every_s` seconds; nothing when not `enabled`."""
    if not enabled:
        return RoundCallback()
    if sys.stderr.isatty():
        return ProgressBar(label, rounds, done, enabled)
    return ProgressLog(label, rounds, done, every_s)
