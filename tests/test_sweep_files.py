"""Bad sweep files are refused in one line naming the key, before Ray starts or anything is written."""

from __future__ import annotations

import pytest

from hosfl_sim.cli import main

BIG = ", ".join(str(i) for i in range(1, 201))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("base: quickstart\ngrid: 5\n", "sweep.grid: got 5, expected a mapping of dotted keys"),
        ("base: quickstart\ngrid: {federation.rounds: 5}\n", "sweep.grid.federation.rounds: got 5"),
        ("base: quickstart\nfoo: 1\n", "sweep.foo: got 1, expected a known key"),
        ("grid: {federation.rounds: [2]}\n", "sweep.base: got None"),
        ("base: quickstart\ngpus_per_run: 1.5\n", "sweep.gpus_per_run: got 1.5"),
        ("base: quickstart\ncpus_per_run: -1\n", "sweep.cpus_per_run: got -1"),
        ("base: quickstart\nseeds: [0, 0]\n", "seeds: got [0, 0], expected distinct integers"),
        ("base: quickstart\ngrid: {federation.roundz: [1]}\n", "federation.roundz: got 1, expected a known field"),
        (f"base: quickstart\ngrid:\n  federation.rounds: [{BIG}]\n  federation.eval_every: [{BIG}]\n",
         "sweep.grid: got '40,000 points', expected at most 10,000 grid points"),
        ("\x00\x01 binary", "expected valid YAML (unacceptable character #x0000"),
    ],
)  # fmt: skip
def test_a_bad_sweep_file_is_refused_in_one_line(tmp_path, capsys, text, says):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_sweep_into_a_folder_of_other_runs_is_refused(tmp_path, capsys, resume):
    (tmp_path / "out" / "HO-SFL_seed0").mkdir(parents=True)
    (tmp_path / "out" / "HO-SFL_seed0" / "manifest.json").write_text("{}")  # what hosfl-sim run leaves
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: quickstart\n")
    args = ["sweep", str(sweep), "--out", str(tmp_path / "out"), *(["--resume"] if resume else [])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--out: got" in err and "holds runs that are not a sweep's" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["HO-SFL_seed0"]
