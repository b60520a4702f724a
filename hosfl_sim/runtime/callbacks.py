"""What happens to a round once it is done, besides the engine's own bookkeeping: it is logged, and shown."""

from __future__ import annotations

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
