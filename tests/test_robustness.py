"""Runs that survive: a real kill and resume, Ctrl-C, a worker killed mid-round, bad input, divergence."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from hosfl_sim.algorithms.hosfl import HOSFLClient, HOSFLServer
from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.record import read_manifest
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import MAGIC, VERSION, CheckpointError, load_checkpoint, path_of, save_checkpoint
from tests.conftest import tiny_scenario

BAD = Path(__file__).parent / "bad_scenarios"
WALL = ["wall_time_s", "wall_compute_s", "memory_overhead_s"]  # host timings: the only columns that may differ
SCENARIO = """\
name: survive
task:
  dataset: {name: digits}
  model: {name: cnn, cut: block1, width: 8}
algorithms:
  - {name: hosfl, label: HO-SFL, perturbations: 3}
  - {name: sfl, label: SFL}
federation: {num_clients: 8, clients_per_round: 3, rounds: 80, batch_size: 16, eval_every: 10}
runtime: {backend: local, num_workers: 2, checkpoint_every: 4}
"""
FIRST = "HO-SFL_seed0"  # the run in flight when the driver is killed


def metrics(out: Path) -> dict[str, pd.DataFrame]:
    """Every run's rounds and clients tables without the host-timing columns."""
    tables = {}
    for run in sorted(p.parent for p in out.glob("*/manifest.json")):
        for name in ("rounds", "clients"):
            df = pd.read_parquet(run / f"{name}.parquet")
            tables[f"{run.name}/{name}"] = df.drop(columns=[c for c in WALL if c in df])
    return tables


def assert_same_metrics(out: Path, reference: dict[str, pd.DataFrame]) -> None:
    got = metrics(out)
    assert sorted(got) == sorted(reference)
    for key, df in reference.items():
        pd.testing.assert_frame_equal(got[key], df, check_exact=True, obj=key)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "survive.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def reference(scenario_file, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """The same scenario, run once without interruption."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["run", str(scenario_file), "--out", str(out), "--quiet"]) == 0
    assert not list(out.glob("*/checkpoint.pt"))  # runs that ended keep no checkpoint
    return metrics(out)


def start_run(scenario_file: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hosfl_sim.cli", "run", str(scenario_file), "--out", str(out), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rounds(proc: subprocess.Popen, path: Path, n: int) -> None:
    """Until rounds.parquet holds n rounds (it is replaced atomically, so a read never sees half a file)."""
    while proc.poll() is None:
        if path.exists() and pq.read_metadata(path).num_rows >= n:
            return
        time.sleep(0.01)
    pytest.fail(f"the run ended (status {proc.returncode}) before round {n}: {proc.stderr.read()[-2000:]}")


# ----------------------------------------------------------------------------- interruptions and resume


def test_resume_after_a_sigkill_gives_the_uninterrupted_metrics(scenario_file, reference, tmp_path):
    out = tmp_path / "out"
    proc = start_run(scenario_file, out)
    wait_for_rounds(proc, out / FIRST / "rounds.parquet", 10)
    proc.kill()  # SIGKILL: no handler, no flush, no checkpoint
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert read_manifest(out / FIRST)["status"] == "running"  # what a kill leaves
    logged = pq.read_metadata(out / FIRST / "rounds.parquet").num_rows
    ckpt = load_checkpoint(out / FIRST)
    assert ckpt["round"] % 4 == 0 and 8 <= ckpt["round"] <= logged  # rounds after it are logged again
    assert not (out / "SFL_seed0").exists()

    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert_same_metrics(out, reference)
    manifest = read_manifest(out / FIRST)
    assert manifest["status"] == "completed" and manifest["resumed"][0]["after_round"] == ckpt["round"]
    assert "resumed" not in read_manifest(out / "SFL_seed0")  # the second run simply ran
    assert main(["run", "--resume", str(out), "--quiet"]) == 0  # nothing left to do: ended runs are kept
    assert_same_metrics(out, reference)


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_flushes_leaves_a_resumable_run_and_exits(scenario_file, reference, tmp_path, signals):
    """Once: the round finishes, a checkpoint is written, the run stops. Twice: it stops at once, from the last
    periodic checkpoint. Either way the resumed run gives the uninterrupted numbers."""
    out = tmp_path / "out"
    proc = start_run(scenario_file, out)
    wait_for_rounds(proc, out / FIRST / "rounds.parquet", 10)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    manifest = read_manifest(out / FIRST)
    assert manifest["status"] == "interrupted"
    logged = pq.read_metadata(out / FIRST / "rounds.parquet").num_rows
    assert manifest["rounds_completed"] == logged  # flushed
    ckpt = load_checkpoint(out / FIRST)
    if signals == 1:
        assert ckpt["round"] == logged and f"--resume {out}" in err
    assert not (out / "SFL_seed0").exists()  # no run starts after a stop

    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert_same_metrics(out, reference)


ALL_ALGORITHMS = [
    {"name": "hosfl", "perturbations": 3},
    {"name": "sfl"},
    {"name": "sfl_zo", "perturbations": 2},
    {"name": "fedavg"},
    {"name": "zo_fl", "perturbations": 2},
    {"name": "centralized"},
    {"name": "mezo", "perturbations": 2},
    {"name": "splitfed_v1"},
    {"name": "mu_splitfed"},
    {"name": "fsl_sage", "local_steps": 2, "align_every": 3},
    {"name": "heron_sfl", "perturbations": 2, "local_steps": 2, "upload_every": 2},
    {"name": "hosl", "perturbations": 2},
    {"name": "locfedmix_sl", "local_steps": 2},
    {"name": "fedsplitx", "cuts": ["block1", "block2"]},
    {"name": "dsl_aux"},
]


def test_every_algorithm_resumes_to_the_same_numbers(tmp_path):
    """The generic state (role modules, optimizers, ZO updaters; the driver's replay log) is all there is."""

    class StopInRound3(Engine):  # as a Ctrl-C during round 3 would
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 6, "batch_size": 16, "eval_every": 2}
    sc = load_scenario(tiny_scenario(algorithms=ALL_ALGORITHMS, federation=fed))
    Engine(sc, progress=False).run_all(tmp_path / "reference")
    for i in range(len(ALL_ALGORITHMS)):
        out = tmp_path / "out" / str(i)
        summary = StopInRound3(sc, progress=False).run_one(i, 0, out)
        assert summary.status == "interrupted" and load_checkpoint(out)["round"] == 3
    for i in range(len(ALL_ALGORITHMS)):
        assert Engine(sc, progress=False).run_one(i, 0, tmp_path / "out" / str(i), resume=True).status == "completed"
    reference = metrics(tmp_path / "reference")
    for i in range(len(ALL_ALGORITHMS)):
        label = f"{ALL_ALGORITHMS[i]['name']}_seed0"
        for name in ("rounds", "clients"):
            df = pd.read_parquet(tmp_path / "out" / str(i) / f"{name}.parquet")
            got = df.drop(columns=[c for c in WALL if c in df])
            pd.testing.assert_frame_equal(got, reference[f"{label}/{name}"], check_exact=True, obj=label)


def test_resume_refuses_another_configuration(tmp_path):
    sc = tiny_scenario(runtime={"backend": "local", "num_workers": 1, "checkpoint_every": 1})
    engine = Engine(load_scenario(sc), progress=False)
    engine.request_stop()  # after round 1, with a checkpoint
    (summary,) = engine.run_all(tmp_path)
    assert summary.status == "interrupted" and load_checkpoint(summary.run_dir)["round"] == 1
    other = Engine(load_scenario(sc, ["algorithms[0].mu=0.01"]), progress=False)
    with pytest.raises(ConfigError) as err:
        other.run_all(tmp_path, resume=True)
    assert err.value.path == "--resume"
    again = Engine(load_scenario(sc, ["runtime.num_workers=2"]), progress=False)  # runtime may change
    assert again.run_all(tmp_path, resume=True)[0].status == "completed"


def test_checkpoints_load_without_running_code(tmp_path):
    state = {"round": 3, "sampler": np.random.default_rng(0).bit_generator.state, "a": np.arange(4, dtype=np.uint64)}
    save_checkpoint(tmp_path, {**state, "t": torch.ones(2)})
    back = load_checkpoint(tmp_path)
    assert back["sampler"] == state["sampler"] and back["a"].dtype == np.uint64 and back["a"].tolist() == [0, 1, 2, 3]

    class Payload:  # what an unsafe pickle could do on load
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    body = io.BytesIO()
    torch.save({"version": VERSION, "round": 3, "x": Payload()}, body)  # with a valid header and checksum
    digest = hashlib.sha256(body.getvalue()).hexdigest()
    path_of(tmp_path).write_bytes(MAGIC + f" {VERSION} {digest}\n".encode() + body.getvalue())
    with pytest.raises(CheckpointError, match="not a safe checkpoint"):
        load_checkpoint(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_a_damaged_checkpoint_is_refused_in_one_line_and_the_run_is_left_as_it_was(tmp_path, capsys):
    sc = tiny_scenario(federation={"num_clients": 8, "clients_per_round": 3, "rounds": 6, "eval_every": 2})
    engine = Engine(load_scenario(sc), progress=False)
    engine.request_stop()  # stops after round 1, with a checkpoint
    (summary,) = engine.run_all(tmp_path / "out")
    assert summary.status == "interrupted" and load_checkpoint(summary.run_dir)["round"] == 1
    path = path_of(summary.run_dir)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x04  # one flipped bit in a tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        load_checkpoint(summary.run_dir)
    assert main(["run", "--resume", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: ") and "damaged checkpoint" in err[0]
    assert path.read_bytes() == bytes(raw) and read_manifest(summary.run_dir)["status"] == "interrupted"
    torch.save({"version": 1, "round": 1}, path)  # a file of the previous format, without the checksum
    with pytest.raises(CheckpointError, match="not a checkpoint of this version"):
        load_checkpoint(summary.run_dir)


# ----------------------------------------------------------------------------- divergence


def test_a_huge_learning_rate_stops_the_run_as_diverged_and_keeps_its_log(tmp_path):
    algos = [
        {"name": "sfl", "label": "loss", "server_optimizer": {"name": "sgd", "lr": 1e8}},
        # the client part overflows in the server's copy while the loss it was computed from is still finite
        {"name": "hosfl", "label": "params", "client_optimizer": {"name": "sgd", "lr": 1e38}},
    ]
    sc = tiny_scenario(algorithms=algos, federation={"num_clients": 8, "clients_per_round": 3, "rounds": 30})
    summaries = Engine(load_scenario(sc), progress=False).run_all(tmp_path)
    for s in summaries:
        manifest = read_manifest(s.run_dir)
        rounds = pd.read_parquet(s.run_dir / "rounds.parquet")
        assert s.status == manifest["status"] == "diverged" and s.rounds < 30
        assert manifest["diverged_round"] == s.rounds == len(rounds) == rounds["round"].max()
        assert rounds["train_loss"].iloc[:-1].map(np.isfinite).all()  # every round before it was kept
    reasons = {s.algorithm: read_manifest(s.run_dir)["diverged_reason"] for s in summaries}
    assert "train_loss" in reasons["loss"]
    assert "server's client." in reasons["params"]
    last = pd.read_parquet(summaries[1].run_dir / "rounds.parquet").iloc[-1]
    assert np.isfinite(last["train_loss"])  # only the parameter check saw it


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_an_overflow_in_a_round_is_divergence_at_that_round_and_the_other_algorithms_run(
    tmp_path, capsys, backend, request
):
    """SGD steps float32 cannot hold make torch refuse the scalar mid-round (SFL-ZO's client update from its
    server, its server's own step, SFL's first step): each run ends `diverged` at that round, whose row is not
    logged, the rounds before it are kept, and the scenario's other algorithms still run (exit 1, no traceback)."""
    if backend == "ray":
        request.getfixturevalue("ray_session")
    zo = {"name": "sfl_zo", "perturbations": 2, "mu": 0.001}
    algos = [
        {**zo, "label": "zo-client", "client_optimizer": {"name": "sgd", "lr": 1e30}},
        {**zo, "label": "zo-server", "server_optimizer": {"name": "sgd", "lr": 1e300}},
        {"name": "sfl", "label": "sfl-client", "client_optimizer": {"name": "sgd", "lr": 1e300}},
        {"name": "sfl", "label": "fine"},
    ]
    fed = {"num_clients": 4, "clients_per_round": 2, "rounds": 4, "batch_size": 8, "eval_every": 1}
    sc = tiny_scenario(algorithms=algos, federation=fed, runtime={"backend": backend, "num_workers": 1})
    (tmp_path / "sc.yaml").write_text(yaml.safe_dump(sc))
    assert main(["run", str(tmp_path / "sc.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed" not in err
    at = {}
    for label in ("zo-client", "zo-server", "sfl-client"):
        run_dir = tmp_path / "out" / f"{label}_seed0"
        m = read_manifest(run_dir)
        assert m["status"] == "diverged" and "without overflow" in m["diverged_reason"], m
        kept = pd.read_parquet(run_dir / "rounds.parquet") if (run_dir / "rounds.parquet").exists() else None
        logged = 0 if kept is None else len(kept)
        assert m["diverged_round"] == logged + 1 == m["rounds_completed"] + 1  # that round: no row, none after it
        assert kept is None or kept["train_loss"].map(np.isfinite).all()
        assert f"{label} seed 0: diverged after {logged} rounds" in err
        at[label] = m["diverged_round"]
    assert at == {"zo-client": 2, "zo-server": 1, "sfl-client": 1}
    assert read_manifest(tmp_path / "out" / "fine_seed0")["status"] == "completed"


def test_a_deferred_nan_check_stops_at_the_same_round_as_an_immediate_one(tmp_path):
    """The server's NaN/Inf check is read a round late except at checkpoints and the last round; with a
    checkpoint every round (every check immediate) the run stops at the same round with the same log."""
    algos = [{"name": "hosfl", "label": "params", "client_optimizer": {"name": "sgd", "lr": 1e38}}]
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 30}
    logs = {}
    for every in (0, 1):
        sc = tiny_scenario(algorithms=algos, federation=fed, runtime={"backend": "local", "checkpoint_every": every})
        (s,) = Engine(load_scenario(sc), progress=False).run_all(tmp_path / str(every))
        manifest = read_manifest(s.run_dir)
        rounds = pd.read_parquet(s.run_dir / "rounds.parquet")
        assert s.status == "diverged" and manifest["diverged_round"] == s.rounds == rounds["round"].max() < 30
        logs[every] = (manifest["diverged_reason"], rounds.drop(columns=[c for c in WALL if c in rounds]))
    assert logs[0][0] == logs[1][0] and "server's client." in logs[0][0]
    pd.testing.assert_frame_equal(logs[0][1], logs[1][1], check_exact=True)


def test_an_error_in_a_call_never_waited_for_fails_the_run_even_in_its_last_round(tmp_path):
    """HO-SFL does not wait for the server's `update_client` (it reads it with the next step); the engine reads
    what is still unread with the round's end, so an error in the run's very last one is not lost."""
    from hosfl_sim.runtime.local import LocalBackend

    class Failed:  # a future whose call raised, as a Ray ObjectRef of a failed task is
        pass

    class LateFailure(LocalBackend):
        """Runs every call at once, but the 3rd `update_client` fails, and only when its future is read."""

        updates = 0

        def server(self, method, *args, num_returns=1):
            out = super().server(method, *args, num_returns=num_returns)
            if method is HOSFLServer.update_client:
                self.updates += 1
                return Failed() if self.updates == 3 else out
            return out

        def get(self, futures):
            def check(x):
                if isinstance(x, Failed):
                    raise RuntimeError("update_client failed")
                for v in x if isinstance(x, (list, tuple)) else ():
                    check(v)

            check(futures)
            return futures

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "eval_every": 100}
    sc = load_scenario(tiny_scenario(federation=fed))  # one step a round: the 3rd update is the run's last call
    (summary,) = Engine(sc, backend=LateFailure(2, 1), progress=False).run_all(tmp_path)
    manifest = read_manifest(tmp_path / "hosfl_seed0")
    assert summary.status == manifest["status"] == "failed" and "update_client failed" in manifest["error"]


# ----------------------------------------------------------------------------- bad input


def expected_messages() -> dict[str, tuple[str, str]]:
    """file -> (field, message fragment), from the table in bad_scenarios/README.md."""
    rows = {}
    for line in (BAD / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].endswith(".yaml"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_every_bad_scenario_has_a_row_and_every_row_a_file():
    files = sorted(p.name for p in BAD.glob("*.yaml"))
    assert len(files) >= 25 and files == sorted(expected_messages())


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.yaml")))
def test_bad_scenarios_are_refused_with_one_line_and_no_directory(name, tmp_path, capsys):
    field, fragment = expected_messages()[name]
    out = tmp_path / "out"
    assert main(["run", str(BAD / name), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and captured.err.strip().splitlines()[-1] == errors[0], captured.err
    if name != "verbalizer_on_encoder.yaml":  # transformers prints its loading report first (see the README)
        assert captured.err.strip() == errors[0]
    assert field in errors[0] and fragment in errors[0], errors[0]
    assert "expected" in errors[0] and not out.exists()


# ----------------------------------------------------------------------------- worker failure (Ray)


def test_a_worker_killed_mid_round_fails_its_clients_and_the_run_goes_on(tmp_path, ray_session):
    import ray

    from hosfl_sim.runtime.ray_backend import RayBackend

    class KillMidRound(RayBackend):
        """Kills worker 1 with ray.kill in round 3, between its anchor (whose activations the server steps on)
        and its probe. With K = 3 clients on W = 2 workers, worker 1 serves one client a round."""

        probes, killed = 0, False

        def client(self, worker, method, *args, num_returns=1):
            if worker == 1 and method is HOSFLClient.each_of:
                self.probes += 1
                if self.probes == 3:
                    self.old_pid = ray.get(self.workers[1].pid.remote())
                    ray.kill(self.workers[1], no_restart=True)
                    self.killed = True
            return super().client(worker, method, *args, num_returns=num_returns)

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 5, "batch_size": 16, "eval_every": 1}
    sc_raw = tiny_scenario(federation=fed, runtime={"backend": "ray", "num_workers": 2})
    sc = load_scenario(sc_raw)
    backend = KillMidRound(sc.runtime)
    engine = Engine(sc, backend=backend, progress=False)
    try:
        (summary,) = engine.run_all(tmp_path)
        assert backend.killed and summary.status == "completed"
        rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
        clients = pd.read_parquet(summary.run_dir / "clients.parquet")
        assert rounds["round"].tolist() == [1, 2, 3, 4, 5] and rounds["test_acc"].notna().all()
        failed = clients[clients["status"] == "failed"]
        assert len(failed) >= 1 and set(failed["round"]) == {3} and set(failed["worker"]) == {1}
        assert (failed[["bytes_up", "bytes_down", "samples"]] == 0).all().all()
        assert (clients.loc[clients["round"] != 3, "status"] == "completed").all()
        assert (rounds["num_sampled"] == 3).all()
        assert (rounds["num_completed"] + rounds["num_dropped"] == rounds["num_sampled"]).all()
        assert rounds.set_index("round").loc[3, "num_completed"] == 3 - len(failed)
        # the abandoned attempt left no trace: bytes and samples add up client by client, and every number is
        # the one of a run told beforehand that these clients would not take part in round 3
        assert clients["samples"].sum() == rounds["samples_seen"].iloc[-1]
        assert (clients["bytes_up"] + clients["bytes_down"]).sum() == rounds["bytes_total"].iloc[-1]
        gone = dict(zip(failed["client_id"].astype(int), failed["worker"].astype(int)))

        class Forewarned(Engine):
            def _run_round(self, algorithm, rnd, clients, *args):
                if rnd != 3:
                    return super()._run_round(algorithm, rnd, clients, *args)
                result, clock, _, memory = super()._run_round(
                    algorithm, rnd, clients[~np.isin(clients, list(gone))], *args
                )
                return result, clock, gone, memory

        Forewarned(load_scenario(sc_raw, ["runtime.backend=local"]), progress=False).run_all(tmp_path / "forewarned")
        assert_same_metrics(tmp_path, metrics(tmp_path / "forewarned"))
        # a replacement runs, and every replica equals the server's copy of the client part again
        assert ray.get(backend.workers[1].pid.remote()) != backend.old_pid
        engine.last_algorithm.sync_workers(backend)
        replicas = backend.get([backend.client(w, engine.last_algorithm.client_role.client_state) for w in range(2)])
        server = backend.get(backend.server(engine.last_algorithm.server_role.client_state))
        for key, value in server.items():
            assert all(np.array_equal(r[key], value) for r in replicas), key
    finally:
        backend.shutdown()


@pytest.mark.slow
def test_the_server_dying_stops_the_run_with_a_checkpoint_to_resume(tmp_path, ray_session):
    """The run stops with a message naming the checkpoint; resumed (here on the local backend: the numbers do not
    depend on it) it gives the uninterrupted metrics."""
    import ray

    from hosfl_sim.runtime.errors import ServerLost
    from hosfl_sim.runtime.ray_backend import RayBackend

    class KillServer(RayBackend):
        """Kills the server as round 4 starts (worker 1 serves one client a round: its 4th anchor)."""

        anchors = 0

        def client(self, worker, method, *args, num_returns=1):
            if worker == 1 and method is HOSFLClient.each and args[0] is HOSFLClient.anchor:
                self.anchors += 1
                if self.anchors == 4:
                    ray.kill(self.server_actor, no_restart=True)
            return super().client(worker, method, *args, num_returns=num_returns)

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 6, "batch_size": 16, "eval_every": 2}
    raw = tiny_scenario(federation=fed, runtime={"backend": "ray", "num_workers": 2, "checkpoint_every": 2})
    local = ["runtime.backend=local"]
    Engine(load_scenario(raw, local), progress=False).run_all(tmp_path / "reference")
    sc = load_scenario(raw)
    backend = KillServer(sc.runtime)
    try:
        with pytest.raises(ServerLost, match="resume from round 2"):
            Engine(sc, backend=backend, progress=False).run_all(tmp_path / "out")
    finally:
        backend.shutdown()
    assert read_manifest(tmp_path / "out" / "hosfl_seed0")["status"] == "failed"
    Engine(load_scenario(raw, local), progress=False).run_all(tmp_path / "out", resume=True)
    assert_same_metrics(tmp_path / "out", metrics(tmp_path / "reference"))


@pytest.mark.slow
def test_ctrl_c_on_the_ray_backend_leaves_no_ray_process(scenario_file, tmp_path):
    import psutil

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hosfl_sim.cli", "run", str(scenario_file), "runtime.backend=ray", "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rounds(proc, out / FIRST / "rounds.parquet", 2)
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    assert any("raylet" in p.name() for p in ray_processes)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130 and read_manifest(out / FIRST)["status"] == "interrupted", err
    _, alive = psutil.wait_procs(ray_processes, timeout=60)
    assert not alive, [p.name() for p in alive]
    assert json.loads((out / FIRST / "manifest.json").read_text())["rounds_completed"] >= 2


def test_a_second_process_on_a_run_directory_is_refused_while_the_first_holds_it(tmp_path, capsys):
    """Two resumes at once: the one that comes second refuses in one line and touches nothing; once the first
    is gone (however it ended), the directory is free again."""
    sc = tiny_scenario(federation={"num_clients": 8, "clients_per_round": 3, "rounds": 4, "eval_every": 2})
    engine = Engine(load_scenario(sc), progress=False)
    engine.request_stop()
    (summary,) = engine.run_all(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in summary.run_dir.iterdir() if p.is_file()}
    holder = subprocess.Popen(  # another process that holds the run's lock, as a running resume would
        [sys.executable, "-c", "import sys; from hosfl_sim.runtime.lock import RunLock; "
         f"lock = RunLock({str(summary.run_dir)!r}, 'x').__enter__(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "--resume", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --resume: got '{summary.run_dir}'")
        assert f"pid {holder.pid} holds it" in err[0]
        after = {p.name: p.read_bytes() for p in summary.run_dir.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == {k: v for k, v in before.items() if k != ".lock"}
    finally:
        holder.kill()  # the kill releases the lock: nothing stale is left behind
        holder.wait()
    assert main(["run", "--resume", str(tmp_path / "out"), "--quiet"]) == 0
    assert read_manifest(summary.run_dir)["status"] == "completed"


def test_an_address_that_does_not_answer_is_refused_at_once(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    args = ["run", "quickstart", f"runtime.address=127.0.0.1:{port}", "federation.rounds=1", "--out", str(out)]
    started = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - started < 60  # Ray itself would retry for minutes, ignoring SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: runtime.address: got '127.0.0.1:{port}'"), err
    assert not out.exists()


def test_a_pool_the_cluster_cannot_hold_is_refused_with_the_numbers(tmp_path, capsys, ray_session):
    cpus = ray_session.cluster_resources()["CPU"]
    out = tmp_path / "out"
    args = ["run", "quickstart", "runtime.num_workers=2", f"runtime.worker_num_cpus={cpus}", "federation.rounds=1"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: runtime.worker_num_cpus: got {cpus}")
    assert f"the cluster's {cpus:g} CPUs (the run asks for {2 * cpus + 1:g}" in err[0]
    assert not out.exists()
