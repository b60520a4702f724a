"""Runs against a Ray cluster of two nodes on this machine, started and stopped here: each node is a
`ray start --block` in a session of its own, ended by that session's id (`ray stop` would end every Ray
instance on the machine, the test session's included). Every run is a CLI process of its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

RAY = str(Path(sys.executable).with_name("ray"))
SCENARIO = """
name: cluster
task: {dataset: {name: digits}, model: {name: cnn, cut: block1, width: 8}}
algorithms: [{name: hosfl, perturbations: 4}]
federation: {num_clients: 8, clients_per_round: 3, rounds: ROUNDS, batch_size: 16, eval_every: 5}
seeds: [0]
runtime: {backend: ray, num_workers: 2}
"""


class Cluster:
    """Ray nodes on this machine; `root` (short: Ray's socket paths must stay under 108 characters) holds
    each node's temporary folder and log."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.nodes: dict[str, subprocess.Popen] = {}

    def env(self, node: str = "head") -> dict[str, str]:
        # RAY_TMPDIR: where `ray start --head` writes the address that Ray finds without being told one
        return dict(os.environ, RAY_TMPDIR=str(self.root / node), RAY_AUTH_MODE="disabled")

    def start(self, node: str, *args: str) -> None:
        (self.root / node).mkdir()
        log = self.root / f"{node}.log"
        with log.open("w") as f:
            cmd = [RAY, "start", "--block", "--disable-usage-stats", *args]
            self.nodes[node] = subprocess.Popen(cmd, env=self.env(node), stdout=f, stderr=subprocess.STDOUT,
                                                start_new_session=True)  # fmt: skip
        while "block forever" not in log.read_text():
            if self.nodes[node].poll() is not None:
                pytest.fail(f"ray start {node} ended: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    def start_head(self, cpus: int, gpus: int = 0) -> None:
        self.start(
            "head", "--head", "--port=0", "--include-dashboard=false", f"--num-cpus={cpus}", f"--num-gpus={gpus}"
        )

    def join(self, node: str, cpus: int) -> None:
        self.start(node, f"--address={self.address}", f"--num-cpus={cpus}")

    @property
    def address(self) -> str:
        return (self.root / "head" / "ray" / "ray_current_cluster").read_text().strip()

    def kill(self, node: str) -> None:
        """Every process of the node at once (SIGKILL): the node is lost, as when its machine goes."""
        sid = self.nodes[node].pid
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid:
                    p.kill()
            except (ProcessLookupError, psutil.Error):
                pass
        self.nodes[node].wait()

    def stop(self) -> None:
        for node in list(self.nodes):
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def run_cli(cluster: Cluster, out: Path, *overrides: str, rounds: int = 4) -> subprocess.Popen:
    scenario = cluster.root / "scenario.yaml"
    scenario.write_text(SCENARIO.replace("ROUNDS", str(rounds)))
    cmd = [sys.executable, "-m", "hosfl_sim.cli", "run", str(scenario), *overrides, "--out", str(out), "--quiet"]
    return subprocess.Popen(cmd, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rounds(proc: subprocess.Popen, path: Path, n: int) -> None:
    while proc.poll() is None:
        if path.exists() and pq.read_metadata(path).num_rows >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"the run ended (status {proc.returncode}) before round {n}: {proc.stderr.read()[-2000:]}")


def own_lines(err: str) -> list[str]:
    """stderr less Ray's own log lines (they carry a timestamp and a source file)."""
    return [line for line in err.splitlines() if line.strip() and ".py:" not in line and "(raylet)" not in line]


@pytest.mark.slow
def test_a_run_without_an_address_starts_its_own_instance_beside_a_running_cluster(cluster, tmp_path):
    """`ray start --head` on this machine: Ray would join it and refuse num_cpus; the run starts its own instance
    instead, says so in one line, and leaves the user's cluster running."""
    cluster.start_head(cpus=1)
    proc = run_cli(cluster, tmp_path / "out", "federation.rounds=1")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = own_lines(err)
    assert lines == [
        f"WARNING a Ray cluster was started at {cluster.address}; this run starts its own "
        "(runtime.address=auto joins it)"
    ], err
    assert cluster.nodes["head"].poll() is None


@pytest.mark.slow
def test_an_actor_no_node_can_hold_is_refused_at_once_with_the_numbers(cluster, tmp_path):
    """3 CPUs in all, on nodes of 1 and 2: a worker of 2.5 CPUs fits the total, no node."""
    cluster.start_head(cpus=1)
    cluster.join("n2", cpus=2)
    out = tmp_path / "out"
    args = [
        "runtime.address=auto",
        "runtime.num_workers=1",
        "runtime.worker_num_cpus=2.5",
        "runtime.server_num_cpus=0.5",
    ]
    proc = run_cli(cluster, out, *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    (line,) = own_lines(err)
    assert line.startswith("error: runtime.worker_num_cpus: got 2.5, expected actors that fit the cluster's nodes")
    assert "(2 + 1 CPUs)" in line
    assert not out.exists()


@pytest.mark.slow
def test_a_lost_node_has_its_workers_replaced_on_a_live_one_and_the_run_goes_on(cluster, tmp_path):
    """The server sits on the head (its only GPU), both workers on node n2 (the head has no other CPU). n2 is
    lost at round 2; n3 joins meanwhile; the workers come back there, the round runs again and the run ends."""
    cluster.start_head(cpus=1, gpus=1)
    cluster.join("n2", cpus=2)
    out = tmp_path / "out"
    args = ["runtime.address=auto", "runtime.server_num_gpus=1", "runtime.worker_num_gpus=0"]
    proc = run_cli(cluster, out, *args, rounds=400)
    run_dir = out / "hosfl_seed0"
    wait_for_rounds(proc, run_dir / "rounds.parquet", 2)
    cluster.kill("n2")
    cluster.join("n3", cpus=2)
    _, err = proc.communicate(timeout=400)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert proc.returncode == 0 and manifest["status"] == "completed", err
    assert "Traceback" not in err
    clients = pq.read_table(run_dir / "clients.parquet").to_pandas()
    assert (clients["status"] == "failed").any()  # the lost workers' clients, in the round they were lost


@pytest.mark.slow
def test_the_head_dying_fails_the_run_in_one_line_with_its_manifest(cluster, tmp_path):
    """The workers sit on the head, the server on node n2 (its only GPU): the head's loss takes the workers, and
    no replacement can start without it (Ray would wait 60 s, then end the process with the manifest running)."""
    cluster.start_head(cpus=2)
    cluster.start("n2", f"--address={cluster.address}", "--num-cpus=1", "--num-gpus=1")
    out = tmp_path / "out"
    args = ["runtime.address=auto", "runtime.server_num_gpus=1", "runtime.worker_num_gpus=0"]
    proc = run_cli(cluster, out, *args, rounds=400)
    run_dir = out / "hosfl_seed0"
    wait_for_rounds(proc, run_dir / "rounds.parquet", 2)
    head = cluster.address
    cluster.kill("head")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = [line for line in own_lines(err) if line.startswith("error")]
    assert len(lines) == 1 and f"the Ray cluster's head at {head} is gone" in lines[0], err
    assert "Traceback" not in err, err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and f"head at {head} is gone" in manifest["error"], manifest
    assert not list(run_dir.glob("*.tmp"))


def test_actors_that_find_no_place_are_refused_after_a_bounded_wait_with_the_numbers(ray_session, monkeypatch):
    """Another job holds CPUs: the pool fits the cluster, not what is free of it; Ray would wait without end."""
    from hosfl_sim.config import ConfigError, load_scenario
    from hosfl_sim.runtime import cluster as cluster_checks
    from hosfl_sim.runtime.ray_backend import RayBackend
    from tests.conftest import tiny_scenario

    monkeypatch.setattr(cluster_checks, "PLACE_TIMEOUT_S", 2.0)
    cpus = ray_session.cluster_resources()["CPU"]

    @ray_session.remote(num_cpus=cpus - 2)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    try:
        ray_session.get(holder.ready.remote())
        cfg = load_scenario(tiny_scenario(runtime={"backend": "ray", "num_workers": 2})).runtime
        with pytest.raises(ConfigError) as e:
            RayBackend(cfg)
        assert str(e.value).startswith("runtime.worker_num_cpus: got 1.0, expected a pool the cluster can place: ")
        # at least the one that 2 free CPUs cannot hold; the others may still be starting
        assert re.search(
            r"[123] of 3 actors had not started after 2 s \(the cluster had 2 CPUs free, the run asks for 3\)$",
            str(e.value),
        )
    finally:
        ray_session.kill(holder)


def test_a_lost_worker_no_node_can_replace_fails_the_run_in_one_line(ray_session, monkeypatch, tmp_path):
    """Worker 1 dies in round 3 and another job takes its CPU at once: the replacement finds no place, and the run
    ends failed (ClusterLost, a ServerLost: no further run starts) after a bounded wait instead of waiting on."""
    from hosfl_sim.algorithms.hosfl import HOSFLClient
    from hosfl_sim.config import load_scenario
    from hosfl_sim.record import read_manifest
    from hosfl_sim.runtime import Engine
    from hosfl_sim.runtime import cluster as cluster_checks
    from hosfl_sim.runtime.errors import ServerLost
    from hosfl_sim.runtime.ray_backend import RayBackend
    from tests.conftest import tiny_scenario

    @ray_session.remote
    class Holder:
        def ready(self) -> bool:
            return True

    class KillAndTake(RayBackend):
        calls, holder = 0, None

        def client(self, worker, method, *args, num_returns=1):
            if worker == 1 and method is HOSFLClient.each_of:  # once a round (worker 1 serves one client)
                self.calls += 1
                if self.calls == 3:
                    ray_session.kill(self.workers[1], no_restart=True)
                    free = ray_session.cluster_resources()["CPU"] - 2  # all but the server's and worker 0's
                    self.holder = Holder.options(num_cpus=free).remote()
                    ray_session.get(self.holder.ready.remote())
            return super().client(worker, method, *args, num_returns=num_returns)

    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 5, "batch_size": 16, "eval_every": 1}
    sc = load_scenario(tiny_scenario(federation=fed, runtime={"backend": "ray", "num_workers": 2}))
    backend = KillAndTake(sc.runtime)
    monkeypatch.setattr(cluster_checks, "PLACE_TIMEOUT_S", 2.0)
    try:
        with pytest.raises(ServerLost) as e:
            Engine(sc, backend=backend, progress=False).run_all(tmp_path)
        assert "hosfl seed 0: no live node took replacement worker(s) [1] in 2 s" in str(e.value)
        manifest = read_manifest(tmp_path / "hosfl_seed0")
        assert manifest["status"] == "failed" and "no live node took" in manifest["error"]
        assert manifest["rounds_completed"] == 2
    finally:
        if backend.holder is not None:
            ray_session.kill(backend.holder)
        backend.shutdown()
