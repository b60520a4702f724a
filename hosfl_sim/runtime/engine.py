"""The driver loop: scenario -> task -> runs of (algorithm, seed) on a backend -> run directories.

What keeps a run alive, all here:
- `validate()` checks everything that can be checked before a directory is made (the CLI calls it).
- A checkpoint every `runtime.checkpoint_every` rounds and when a stop is requested (Ctrl-C); `resume=True`
  continues a run from it with the same numbers (checkpoint.py says what one holds).
- A client worker that dies in a round (a backend that can lose one raises WorkerLost): the round runs
  again from its starting state (the server's snapshot, the driver's state, the ledger) with every worker
  rebuilt fresh (replicas replay the log) and the dead worker's clients recorded as `failed`. Why a rerun
  rather than a repair: algorithms chain futures of several workers and the server, so after a death the
  server may hold part of the round (a step on some of the activations); the round's starting state is
  the one state known to be consistent, and a rerun needs no code in any algorithm.
- The server dying stops the run (ServerLost), to be resumed from its last checkpoint.
- A NaN or Inf in the round's loss, the test loss or any server tensor stops the run as `diverged`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hosfl_sim.algorithms import ALGORITHMS, TaskSpec, get_algorithm
from hosfl_sim.algorithms.base import RoundResult
from hosfl_sim.algorithms.task import count_flops, to_tensors
from hosfl_sim.comm import Ledger
from hosfl_sim.comm.channel import Channel
from hosfl_sim.config import ConfigError, Scenario, to_dict
from hosfl_sim.config.identity import run_hash
from hosfl_sim.config.schema import directory_name
from hosfl_sim.data import DataSplit, load_dataset, partition_dataset
from hosfl_sim.data.text import is_text_dataset, load_text_dataset
from hosfl_sim.record import Recorder, build_manifest, read_manifest
from hosfl_sim.runtime.checkpoint import CheckpointError, load_checkpoint, remove_checkpoint, save_checkpoint
from hosfl_sim.runtime.cluster import check_address
from hosfl_sim.runtime.errors import ServerLost, WorkerLost
from hosfl_sim.runtime.lock import RunLock
from hosfl_sim.system import FAILED, Availability, RoundClock, build_profiles

log = logging.getLogger(__name__)

ENDED = ("completed", "diverged")  # a run that ended on its own: a resume keeps it
MAX_ATTEMPTS = 3  # runs of one round that lose workers before the run gives up


@dataclass
class RunSummary:
    algorithm: str
    seed: int
    run_dir: Path
    status: str
    rounds: int
    final: dict[str, Any]


@dataclass
class _Progress:
    """What the loop carries from round to round besides the roles and the algorithm."""

    sampler: np.random.Generator
    ledger: Ledger
    samples_seen: int = 0
    sim_time: float = 0.0
    best_acc: float | None = None  # the best test accuracy evaluated so far (the paper's metric)
    wall_before: float = 0.0  # wall seconds of the run before this process took it up
    started: float = field(default_factory=time.perf_counter)

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.bit_generator.state,
            "ledger": self.ledger.state_dict(),
            "samples_seen": self.samples_seen,
            "sim_time": self.sim_time,
            "best_acc": self.best_acc,
            "wall_time_s": self.wall_time(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.bit_generator.state = state["sampler"]
        self.ledger.load_state_dict(state["ledger"])
        self.samples_seen, self.sim_time = int(state["samples_seen"]), float(state["sim_time"])
        self.wall_before = float(state["wall_time_s"])
        self.best_acc = state.get("best_acc")

    def evaluated(self, acc: float) -> float:
        """Take in an evaluation's accuracy; returns the best so far."""
        self.best_acc = acc if self.best_acc is None else max(self.best_acc, acc)
        return self.best_acc


def _client_rows(
    base: dict, clients: np.ndarray, result: RoundResult, failed: dict[int, int], clock: RoundClock,
    ledger: Ledger, profiles: Any, memory: dict,
) -> list[dict[str, Any]]:  # fmt: skip
    """clients.parquet rows of one round, in sampling order: those that ran, then as `failed` those whose
    worker died (nothing of theirs was used)."""
    rows = []
    for r in result.clients:
        up, down = ledger.client_round_bytes(r.client_id)
        t, mem = clock.record(r.client_id), memory.get(r.client_id, {})
        rows.append({**base, "client_id": r.client_id, "worker": r.worker, "status": t.status,
            "tier": profiles.tier_of(r.client_id), "bytes_up": up, "bytes_down": down, "compute_s": t.compute_s,
            "comm_s": t.comm_s, "finish_s": t.t, "wall_compute_s": r.compute_s, "samples": r.samples,
            "train_loss": r.train_loss, "peak_mem_bytes": mem.get("peak_mem_bytes"),
            "static_mem_bytes": mem.get("static_mem_bytes")})  # fmt: skip
    for cid, worker in failed.items():
        rows.append({**base, "client_id": cid, "worker": worker, "status": FAILED, "tier": profiles.tier_of(cid),
            "bytes_up": 0, "bytes_down": 0, "compute_s": 0.0, "comm_s": 0.0, "finish_s": 0.0, "wall_compute_s": 0.0,
            "samples": 0, "train_loss": float("nan"), "peak_mem_bytes": None, "static_mem_bytes": None})  # fmt: skip
    order = {int(c): i for i, c in enumerate(clients)}
    return sorted(rows, key=lambda row: order.get(int(row["client_id"]), len(order)))


def make_backend(scenario: Scenario):
    """The backend the scenario asks for. Ray is imported only when it is used."""
    rt = scenario.runtime
    if rt.backend == "local":
        from hosfl_sim.runtime.local import LocalBackend

        return LocalBackend(rt.num_workers, rt.torch_threads)
    from hosfl_sim.runtime.ray_backend import RayBackend

    return RayBackend(rt)


def run_label(scenario: Scenario, index: int, seed: int) -> str:
    return f"{directory_name(scenario.algorithms[index].display_name)}_seed{seed}"


_NONE_PENDING = object()  # no end_round call is pending


class Engine:
    """Runs every (algorithm, seed) of a scenario on one backend, whose actors are reused. The backend
    starts on first use. `request_stop()` (e.g. from a signal handler) ends the current run after its
    round, with a checkpoint, and starts no further run."""

    def __init__(self, scenario: Scenario, backend: Any | None = None, progress: bool = True):
        self.scenario = scenario
        self._backend = backend
        self.progress = progress
        self._data: DataSplit | None = None
        self.stop_requested = False
        self.checkpoint_round: int | None = None  # of the run in progress

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = make_backend(self.scenario)
        return self._backend

    @property
    def data(self) -> DataSplit:
        if self._data is None:
            task = self.scenario.task
            if is_text_dataset(task.dataset):  # tokenized with the model's own tokenizer
                self._data = load_text_dataset(task.dataset, task.model)
            else:
                self._data = load_dataset(task.dataset)
        return self._data

    def request_stop(self) -> None:
        self.stop_requested = True

    def close(self) -> None:
        """Stop the backend's actors (and a Ray instance it started)."""
        if self._backend is not None:
            self._backend.shutdown()

    # ------------------------------------------------------------------ checks before anything is written

    def validate(self) -> None:
        """Raise ConfigError for anything wrong that can be found without running: runtime combinations,
        algorithm names and the policies they support, the dataset and its files, the partition of every
        seed, the model and its cut (built once), weights and trace files, and a deadline some client can
        meet; on Ray, an address that answers and a cluster that holds the actors (which this then starts).
        Run directories are made only after this passes."""
        sc, rt = self.scenario, self.scenario.runtime
        if rt.backend == "local":
            for name in ("worker_num_gpus", "server_num_gpus"):
                v = getattr(rt, name)
                if v > 0:
                    raise ConfigError(f"runtime.{name}", v, "0 with runtime.backend 'local' (it runs on the CPU)")
        for i, algo in enumerate(sc.algorithms):
            self._check_policy(i, get_algorithm(algo.name, f"algorithms[{i}].name"))
        specs = [self.spec(0, seed) for seed in sc.seeds]  # data, files, every seed's partition
        split = specs[0].build_model()  # names, cut, weights, heads
        for i, algo in enumerate(sc.algorithms):
            get_algorithm(algo.name).check_task(specs[0], split, i)
        for spec in specs:
            profiles = build_profiles(sc.system, sc.federation.num_clients, spec.seed)  # trace files
            Availability(sc.system.availability, sc.federation.num_clients, spec.seed)
            if sc.system.policy == "deadline":
                self._check_deadline(split, spec, profiles)
        if rt.backend == "ray" and self._backend is None:  # last: it starts or joins Ray
            check_address(rt.address)  # Ray would retry an address that does not answer forever
            _ = self.backend  # the actors, which the Ray backend first checks the cluster can hold

    def _check_policy(self, index: int, algo_cls: type) -> None:
        """The scenario asks nothing of the algorithm that it does not do: round policies, local epochs."""
        system = self.scenario.system
        epochs = self.scenario.algorithms[index].local_epochs
        if epochs is not None and not algo_cls.supports_epochs:
            takes = ", ".join(sorted(n for n, c in ALGORITHMS.items() if c.supports_epochs))
            expected = f"null for {algo_cls.name} (set local_steps; local_epochs is for {takes})"
            raise ConfigError(f"algorithms[{index}].local_epochs", epochs, expected)
        if algo_cls.supports_policies:
            return
        if system.policy != "sync":
            raise ConfigError("system.policy", system.policy, f"'sync' for {algo_cls.name} (it has no round policies)")
        v = system.availability.mid_round_dropout
        if v > 0:
            raise ConfigError("system.availability.mid_round_dropout", v, f"0 for {algo_cls.name} (no mid-round drops)")

    def _check_deadline(self, split: Any, spec: TaskSpec, profiles: Any) -> None:
        """Before the server first waits (where the deadline acts) every client has at least run one forward of
        the client part on its batch and sent one message (one latency). If even the fastest client cannot do
        that in time, no client ever meets the deadline."""
        system = self.scenario.system
        x = to_tensors({k: v[:1] for k, v in spec.train.features.items() if k in split.input_keys}, "cpu")
        flops = count_flops(split.client, **x)  # one sample; FLOPs grow linearly with the batch
        batch = np.minimum(spec.federation.batch_size, spec.partition.sizes())
        fastest = float(np.min(batch * flops / profiles.compute_flops + profiles.latency_s))
        if system.deadline_s < fastest:
            expected = f"a number >= {fastest:.3g} (the fastest client's forward and one message take that long)"
            raise ConfigError("system.deadline_s", system.deadline_s, expected)

    # ------------------------------------------------------------------ runs

    def run_all(self, out_dir: str | Path, overrides: dict | None = None, resume: bool = False) -> list[RunSummary]:
        """Every (seed, algorithm) into `out_dir/<label>_seed<seed>`. `resume`: runs that ended are kept, runs
        with a checkpoint continue from it, the rest start afresh. Stops after a run that was interrupted."""
        out = []
        for seed in self.scenario.seeds:
            for i in range(len(self.scenario.algorithms)):
                run_dir = Path(out_dir) / run_label(self.scenario, i, seed)
                out.append(self.run_one(i, seed, run_dir, overrides, resume=resume))
                if out[-1].status == "interrupted":
                    return out
        return out

    def spec(self, index: int, seed: int) -> TaskSpec:
        sc = self.scenario
        data = self.data
        partition = partition_dataset(data.train.labels, sc.federation.num_clients, sc.task.partition, seed)
        return TaskSpec(
            model=sc.task.model,
            num_classes=data.train.num_classes,
            train=data.train,
            test=data.test,
            partition=partition,
            algorithm=sc.algorithms[index],
            federation=sc.federation,
            seed=seed,
        )

    def run_one(
        self, index: int, seed: int, run_dir: Path, overrides: dict | None = None, resume: bool = False
    ) -> RunSummary:
        """One (algorithm, seed) into `run_dir`, which no other process may use meanwhile (RunLock)."""
        algo_cls = get_algorithm(self.scenario.algorithms[index].name, f"algorithms[{index}].name")
        self._check_policy(index, algo_cls)  # before the directory exists
        with RunLock(run_dir, "--resume" if resume else "--out"):
            return self._run_one(index, seed, Path(run_dir), overrides, resume, algo_cls)

    def _run_one(
        self, index: int, seed: int, run_dir: Path, overrides: dict | None, resume: bool, algo_cls: type
    ) -> RunSummary:
        sc = self.scenario
        algo_cfg = sc.algorithms[index]
        state = self._resume_state(index, seed, run_dir) if resume else None
        if isinstance(state, RunSummary):
            return state
        spec = self.spec(index, seed)
        if state is None:
            recorder = Recorder(run_dir, build_manifest(sc, index, seed, overrides))
        else:
            recorder = Recorder.reopen(run_dir, state["recorder"], state["round"])
        self.checkpoint_round = state["round"] if state else None
        try:
            self.backend.setup(algo_cls, spec)
            self.roles = (algo_cls.client_role, algo_cls.server_role)  # what the engine calls on
            algorithm = algo_cls(algo_cfg, sc.federation, seed, self.backend.num_workers, spec.partition.sizes())
            status, rounds = self._loop(algorithm, recorder, index, seed, state)
        except ServerLost as e:
            then = "no checkpoint to resume from (set runtime.checkpoint_every)"
            if self.checkpoint_round is not None:
                then = f"resume from round {self.checkpoint_round}: hosfl-sim run --resume {run_dir.parent}"
            msg = f"{algo_cfg.display_name} seed {seed}: {e}; {then}"
            recorder.finish("failed", error=msg, checkpoint_round=self.checkpoint_round)
            raise ServerLost(msg) from None
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            recorder.finish(status, error=repr(e), checkpoint_round=self.checkpoint_round)
            raise
        self.last_algorithm = algorithm
        if status in ENDED:
            recorder.finish(status)
            remove_checkpoint(run_dir)
        else:
            recorder.finish(status, checkpoint_round=self.checkpoint_round)
        final = dict(recorder.rounds[-1]) if recorder.rounds else {}
        return RunSummary(algo_cfg.display_name, seed, run_dir, status, rounds, final)

    def _resume_state(self, index: int, seed: int, run_dir: Path) -> RunSummary | dict | None:
        """A run that ended (kept as is), a checkpoint to go on from, or None (start afresh)."""
        if not (run_dir / "manifest.json").exists():
            return None
        manifest = read_manifest(run_dir)
        want = run_hash(to_dict(self.scenario), index, seed)
        expected = "a run directory of this scenario, algorithm and seed (its configuration differs)"
        if run_hash(manifest["scenario"], manifest["algorithm_index"], manifest["seed"]) != want:
            raise ConfigError("--resume", str(run_dir), expected)
        if manifest["status"] in ENDED:
            rounds = pd.read_parquet(run_dir / "rounds.parquet")
            final = rounds.iloc[-1].to_dict() if len(rounds) else {}
            return RunSummary(manifest["algorithm"], seed, run_dir, manifest["status"], len(rounds), final)
        try:
            state = load_checkpoint(run_dir)
        except CheckpointError as e:
            raise ConfigError("--resume", str(run_dir), f"a run whose checkpoint can be used ({e})") from None
        if state is not None and state["run_hash"] != want:
            raise ConfigError("--resume", str(run_dir), expected)
        return state

    # ------------------------------------------------------------------ the loop

    def _sample(self, sampler: np.random.Generator, available: np.ndarray) -> np.ndarray:
        """K clients (ceil(c*K) under over-commit) drawn without replacement among the available."""
        fed, system = self.scenario.federation, self.scenario.system
        want = fed.clients_per_round
        if system.policy == "overcommit":
            want = math.ceil(system.overcommit * want)
        pool = np.flatnonzero(available)
        if len(pool) == fed.num_clients:  # everyone available: the plain draw
            return np.sort(sampler.choice(fed.num_clients, size=min(want, fed.num_clients), replace=False))
        return np.sort(sampler.choice(pool, size=min(want, len(pool)), replace=False))

    def _set_measuring(self, on: bool) -> None:
        b = self.backend
        client, server = self.roles
        b.get(
            [b.client(w, client.set_measuring, on) for w in range(b.num_workers)] + [b.server(server.set_measuring, on)]
        )

    def _pop_memory(self) -> dict:
        """{client_id or None (the server): its measured stats} for the round just run."""
        b = self.backend
        client, server = self.roles
        parts = b.get([b.client(w, client.pop_stats) for w in range(b.num_workers)] + [b.server(server.pop_stats)])
        self._set_measuring(False)
        merged: dict = {}
        for part in parts:
            for cid, m in part.items():
                old = merged.get(cid)
                merged[cid] = m if old is None or m["peak_mem_bytes"] > old["peak_mem_bytes"] else old
        return merged

    def _run_round(
        self, algorithm: Any, rnd: int, clients: np.ndarray, ledger: Ledger, clock_for: Any, measuring: bool
    ) -> tuple[RoundResult, RoundClock, dict[int, int], dict]:
        """Run the round; when workers die, run it again from its start without their clients.
        Returns the result, the clock of the attempt that finished, {failed client: its worker} and memory.
        The round's start: the ledger's totals, the algorithm's round mark (O(K), no copy of the replay log)
        and, where workers can die, the server's snapshot taken as the previous round ended (or the run set up)."""
        b = self.backend
        can_fail = b.can_lose_workers
        start_ledger, start_algorithm = ledger.state_dict(), algorithm.round_mark()
        failed: dict[int, int] = {}
        for _ in range(MAX_ATTEMPTS):
            live = np.array([c for c in clients if int(c) not in failed], dtype=clients.dtype)
            clock = clock_for(live)
            ledger.start_round(rnd)
            try:
                if measuring:
                    self._set_measuring(True)
                result = (
                    algorithm.run_round(rnd, live, b, Channel(ledger, clock))
                    if len(live)
                    else RoundResult(float("nan"), 0)
                )
                memory = self._pop_memory() if measuring else {}
            except WorkerLost as e:
                lost = {
                    int(c): algorithm.worker_of(i) for i, c in enumerate(live) if algorithm.worker_of(i) in e.workers
                }
                log.warning("round %d: %s; clients %s failed; running the round again", rnd, e, sorted(lost))
                failed.update(lost)
                ledger.load_state_dict(start_ledger)
                algorithm.rollback(start_algorithm)  # the workers count as fresh
                b.take_later()  # calls of the abandoned attempt
                b.get(b.server(self.roles[1].restore))
                b.reset_workers(e.workers)
                continue
            # One server call ends the round: the NaN/Inf check, fetched by _divergence once the round is logged,
            # and the snapshot the next round would restore (calls to the server run in the order they are made).
            # The round's calls nobody read are read with it, so their errors surface.
            self._round_end = [b.server(self.roles[1].end_round, can_fail), *b.take_later()]
            return result, clock, failed, memory
        raise RuntimeError(f"client workers died in {MAX_ATTEMPTS} runs of round {rnd}")

    def _loop(self, algorithm: Any, recorder: Recorder, index: int, seed: int, state: dict | None) -> tuple[str, int]:
        sc = self.scenario
        fed, system, rt = sc.federation, sc.system, sc.runtime
        profiles = build_profiles(system, fed.num_clients, seed)
        availability = Availability(system.availability, fed.num_clients, seed)
        # the same client draws for every algorithm
        run = _Progress(np.random.default_rng([seed, 11]), Ledger())
        first = 1
        if state is not None:
            run.load_state_dict(state["engine"])
            algorithm.load_state_dict(state["algorithm"])
            self.backend.get(self.backend.server(self.roles[1].load_state_dict, state["server"]))
            first = state["round"] + 1
        if self.backend.can_lose_workers:
            self.backend.get(
                self.backend.server(self.roles[1].snapshot)
            )  # the first round's start (later: see _run_round)
        self._round_end: Any = _NONE_PENDING  # the round just run: its end_round call, then its unread calls
        self._deferred: Any = _NONE_PENDING  # the previous round's, when not waited for
        self._may_defer = False
        ledger = run.ledger
        bar = tqdm(
            total=fed.rounds,
            initial=first - 1,
            desc=f"{algorithm.cfg.display_name} seed {seed}",
            disable=not self.progress or None,
            leave=False,
            dynamic_ncols=True,
        )
        status, rnd = "completed", first - 1
        for rnd in range(first, fed.rounds + 1):
            clients = self._sample(run.sampler, availability.available(rnd))
            quota = fed.clients_per_round if system.policy == "overcommit" else None

            def clock_for(live: np.ndarray, rnd: int = rnd, quota: int | None = quota) -> RoundClock:
                return RoundClock(live, profiles, system, availability.fails_mid_round(rnd, live), quota)

            measuring = rt.memory_every > 0 and rnd % rt.memory_every == 0
            try:
                result, clock, failed, memory = self._run_round(algorithm, rnd, clients, ledger, clock_for, measuring)
                late = self._late_divergence()
            except Exception:
                late = self._late_divergence()  # NaN/Inf left by the round before may be why this one failed
                if late is None:
                    raise
            if late is not None:  # the round before left NaN/Inf in the server: it diverged; this one is dropped
                status, rnd = "diverged", rnd - 1
                self._diverged(recorder, algorithm, seed, rnd, late)
                break
            run.samples_seen += result.samples
            duration = clock.duration() if len(clients) > len(failed) else 0.0
            run.sim_time += duration
            last = rnd == fed.rounds or (fed.budget_samples is not None and run.samples_seen >= fed.budget_samples)
            base = {"algorithm": algorithm.cfg.display_name, "seed": seed, "round": rnd}
            client_rows = _client_rows(base, clients, result, failed, clock, ledger, profiles, memory)
            completed = sum(row["status"] == "completed" for row in client_rows)
            row: dict[str, Any] = {
                **base,
                "train_loss": result.train_loss,
                "test_loss": None,
                "test_acc": None,
                "best_test_acc": run.best_acc,
                "wall_time_s": run.wall_time(),
                "sim_time_s": run.sim_time,
                "round_duration_s": duration,
                "num_sampled": len(clients),
                "num_completed": completed,
                "num_dropped": len(clients) - completed,
                "samples_seen": run.samples_seen,
                **ledger.columns(),
                "client_peak_mem_bytes": max(
                    (m["peak_mem_bytes"] for c, m in memory.items() if c is not None), default=None
                ),
                "server_peak_mem_bytes": memory.get(None, {}).get("peak_mem_bytes"),
                "memory_overhead_s": sum(m["overhead_s"] for m in memory.values()) if measuring else None,
            }
            if rnd % fed.eval_every == 0 or last:
                row.update(self.backend.get(self.backend.server(self.roles[1].evaluate)))
                row["best_test_acc"] = run.evaluated(row["test_acc"])
            recorder.log_round(row, client_rows)
            acc = row["test_acc"]
            bar.set_postfix(loss=f"{result.train_loss:.3f}", acc="-" if acc is None else f"{100 * acc:.1f}%")
            bar.update(1)
            checkpoint_due = bool(rt.checkpoint_every and rnd % rt.checkpoint_every == 0)
            self._may_defer = not (last or checkpoint_due)
            reason = self._divergence(result, row, completed)
            if reason is not None:
                status = "diverged"
                self._diverged(recorder, algorithm, seed, rnd, reason)
                break
            if last:
                break
            if checkpoint_due or self.stop_requested:
                reason = self._late_divergence()  # a checkpoint must not hold NaN/Inf state
                if reason is not None:
                    status = "diverged"
                    self._diverged(recorder, algorithm, seed, rnd, reason)
                    break
                self._checkpoint(recorder, algorithm, index, seed, rnd, run)
            if self.stop_requested:
                status = "interrupted"
                break
        bar.close()
        return status, rnd

    def _divergence(self, result: RoundResult, row: dict, completed: int) -> str | None:
        """Why the run has diverged, or None: a non-finite loss, or a NaN/Inf anywhere in the server's tensors
        (its copy of the client part included, so a bad aggregate of scalars shows too), as the round ended.

        The server's answer takes a round trip, so unless this is the run's last round or a checkpoint's, it is
        read after the next round has run (`_late_divergence`, by then without waiting): if it was bad, the
        run stops as diverged at this round and the next one is dropped unlogged, as if it had stopped here."""
        if completed and not math.isfinite(result.train_loss):
            return f"train_loss is {result.train_loss}"
        if row["test_loss"] is not None and not math.isfinite(row["test_loss"]):
            return f"test_loss is {row['test_loss']}"
        self._deferred, self._round_end = self._round_end, _NONE_PENDING
        return None if self._may_defer else self._late_divergence()

    def _late_divergence(self) -> str | None:
        """The server's NaN/Inf check of the round `_divergence` deferred (None: none pending, or all finite)."""
        pending, self._deferred = self._deferred, _NONE_PENDING
        if pending is _NONE_PENDING:
            return None
        bad = self.backend.get(pending)[0]  # on the local backend, the result itself
        return None if bad is None else f"NaN or Inf in the server's {bad}"

    def _diverged(self, recorder: Recorder, algorithm: Any, seed: int, rnd: int, reason: str) -> None:
        log.warning("%s seed %d diverged at round %d: %s", algorithm.cfg.display_name, seed, rnd, reason)
        recorder.manifest.update(diverged_round=rnd, diverged_reason=reason)

    def _checkpoint(self, recorder: Recorder, algorithm: Any, index: int, seed: int, rnd: int, run: _Progress) -> None:
        state = {
            "round": rnd,
            "run_hash": run_hash(to_dict(self.scenario), index, seed),
            "engine": run.state_dict(),
            "algorithm": algorithm.state_dict(),
            "server": self.backend.get(self.backend.server(self.roles[1].state_dict)),
            "recorder": recorder.position(),
        }
        save_checkpoint(recorder.dir, state)
        self.checkpoint_round = rnd
