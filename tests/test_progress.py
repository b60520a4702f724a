"""Progress shows where no terminal does (CI, nohup, a sweep's Ray task): one line every so often and at the end,
with the round, the loss, the accuracy, the simulated time and an ETA; through logging where it is set up."""

from __future__ import annotations

import logging
import re

from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from tests.conftest import tiny_scenario

LINE = re.compile(
    r"hosfl seed 0: round (\d+)/4, train loss \d+\.\d{4}, test acc (-|\d+\.\d\d%), simulated \S+, elapsed \S+, ETA \S+"
)


def _run(tmp_path, every_s: float) -> None:
    sc = load_scenario(tiny_scenario())  # 4 rounds, evaluated every 2
    (summary,) = Engine(sc, progress=True, progress_every_s=every_s).run_all(tmp_path)
    assert summary.status == "completed"


def test_off_a_terminal_a_run_prints_a_line_a_while_and_at_its_end(tmp_path, capsys, monkeypatch):
    logger = logging.getLogger("hosfl_sim.progress")
    monkeypatch.setattr(logger, "level", logging.WARNING)  # logging not set up to show it (as the CLI would)
    _run(tmp_path / "every", every_s=0)  # a line every round
    lines = [m for m in map(LINE.fullmatch, capsys.readouterr().err.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3, 4]
    assert lines[0].group(2) == "-" and lines[1].group(2).endswith("%")  # round 2 was evaluated
    _run(tmp_path / "rare", every_s=3600)  # only the last round's line
    lines = [m for m in map(LINE.fullmatch, capsys.readouterr().err.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [4]


def test_progress_lines_go_through_logging_where_it_shows_them(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="hosfl_sim.progress"):
        _run(tmp_path, every_s=0)
    assert [r.name for r in caplog.records if LINE.fullmatch(r.getMessage())] == ["hosfl_sim.progress"] * 4
    assert not [line for line in capsys.readouterr().err.splitlines() if LINE.fullmatch(line)]
