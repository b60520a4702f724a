"""The driver loop: scenario -> task -> runs of (algorithm, seed) on a backend -> run directories. What keeps a
run alive:
- `validate()` checks everything that can be checked before a directory is made (the CLI calls it).
- A checkpoint every `runtime.checkpoint_every` rounds and when a stop is requested (Ctrl-C); `resume=True`
  continues a run from it with the same numbers (checkpoint.py says what one holds).
- A client worker that dies in a round has the round run again without its clients (recovery.py).
- The server dying stops the run (ServerLost), to be resumed from its last checkpoint; a NaN or Inf in the
  round's loss, the test loss or any server tensor, or an overflow a round raises, stops it as `diverged`
  (divergence.py).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hosfl_sim.algorithms import Algorithm, TaskSpec, get_algorithm
from hosfl_sim.algorithms.base import RoundResult
from hosfl_sim.comm import Ledger
from hosfl_sim.config import ConfigError, Scenario
from hosfl_sim.config.identity import run_label
from hosfl_sim.data import DataSplit, load_dataset, partition_dataset
from hosfl_sim.data.text import is_text_dataset, load_text_dataset
from hosfl_sim.record import Recorder, build_manifest
from hosfl_sim.runtime.backends import make_backend
from hosfl_sim.runtime.callbacks import RoundCallback
from hosfl_sim.runtime.checkpoint import remove_checkpoint
from hosfl_sim.runtime.checks import check_algorithm, check_output_dir, check_scenario
from hosfl_sim.runtime.cluster import check_address
from hosfl_sim.runtime.divergence import DivergenceWatch, diverged
from hosfl_sim.runtime.errors import ServerLost
from hosfl_sim.runtime.lock import RunLock
from hosfl_sim.runtime.progress import RunProgress
from hosfl_sim.runtime.recovery import RoundMemory, run_round_surviving
from hosfl_sim.runtime.resume import ENDED, RunSummary, after_server_loss, failed_run, resume_state, save_run
from hosfl_sim.runtime.rows import client_rows, round_row
from hosfl_sim.runtime.trackers import round_callbacks
from hosfl_sim.system import Availability, RoundClock, build_profiles
from hosfl_sim.system.profiles import DeviceProfiles

log = logging.getLogger(__name__)


class Engine:
    """Runs every (algorithm, seed) of a scenario on one backend, whose actors are reused. The backend
    starts on first use. `request_stop()` (e.g. from a signal handler) ends the current run after its
    round, with a checkpoint, and starts no further run."""

    def __init__(
        self, scenario: Scenario, backend: Any | None = None, progress: bool = True, progress_every_s: float = 30.0
    ):
        self.scenario = scenario
        self._backend = backend
        self.progress = progress
        self.progress_every_s = progress_every_s  # off a terminal: a progress line this often
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

    def validate(self) -> None:
        """Raise ConfigError for anything wrong that can be found without running: runtime combinations,
        algorithm names and the policies they support, the dataset and its files, the partition of every
        seed, the model and its cut (built once), weights and trace files, and a deadline some client can
        meet; on Ray, an address that answers and a cluster that holds the actors (which this then starts).
        Run directories are made only after this passes."""
        check_scenario(self.scenario, lambda: [self.spec(0, seed) for seed in self.scenario.seeds])
        rt = self.scenario.runtime
        if rt.backend == "ray" and self._backend is None:  # last: it starts or joins Ray
            check_address(rt.address)  # Ray would retry an address that does not answer forever
            _ = self.backend  # the actors, which the Ray backend first checks the cluster can hold

    def run_all(self, out_dir: str | Path, overrides: dict | None = None, resume: bool = False) -> list[RunSummary]:
        """Every (seed, algorithm) into `out_dir/<label>_seed<seed>`; `resume` keeps ended runs and continues
        checkpointed ones. A failed run is recorded (its manifest says why); an interrupted one stops the rest."""
        check_output_dir(out_dir)
        out: list[RunSummary] = []
        for seed, i in itertools.product(self.scenario.seeds, range(len(self.scenario.algorithms))):
            run_dir = Path(out_dir) / run_label(self.scenario, i, seed)
            try:
                out.append(self.run_one(i, seed, run_dir, overrides, resume=resume))
            except (ConfigError, ServerLost):  # the scenario is wrong, or the server is gone: nothing else can run
                raise
            except Exception as e:
                out.append(failed_run(run_dir, seed, e))
            if out[-1].status == "interrupted":
                return out
        return out

    def spec(self, index: int, seed: int) -> TaskSpec:
        sc = self.scenario
        return TaskSpec(
            model=sc.task.model,
            num_classes=self.data.train.num_classes,
            train=self.data.train,
            test=self.data.test,
            partition=partition_dataset(self.data.train.labels, sc.federation.num_clients, sc.task.partition, seed),
            algorithm=sc.algorithms[index],
            federation=sc.federation,
            seed=seed,
            fuse_clients=sc.runtime.fuse_clients,
            fuse_server=sc.runtime.fuse_server,
        )

    def run_one(
        self, index: int, seed: int, run_dir: Path, overrides: dict | None = None, resume: bool = False
    ) -> RunSummary:
        """One (algorithm, seed) into `run_dir`, which no other process may use meanwhile (RunLock)."""
        algo_cls = get_algorithm(self.scenario.algorithms[index].name, f"algorithms[{index}].name")
        check_algorithm(self.scenario, index, algo_cls)  # before the directory exists
        with RunLock(run_dir, "--resume" if resume else "--out"):
            return self._run_one(index, seed, Path(run_dir), overrides, resume, algo_cls)

    def _run_one(
        self, index: int, seed: int, run_dir: Path, overrides: dict | None, resume: bool, algo_cls: type[Algorithm]
    ) -> RunSummary:
        sc = self.scenario
        algo_cfg = sc.algorithms[index]
        state = resume_state(self.scenario, index, seed, run_dir) if resume else None
        if isinstance(state, RunSummary):
            return state
        spec = self.spec(index, seed)
        if state is None:
            recorder = Recorder(run_dir, build_manifest(sc, index, seed, overrides))
        else:
            recorder = Recorder.reopen(run_dir, state["recorder"], state["round"])
        self.checkpoint_round = state["round"] if state else None
        try:
            recorder.note(self.backend.setup(algo_cls, spec))  # the device the roles run on
            self.roles = (algo_cls.client_role, algo_cls.server_role)  # what the engine calls on
            algorithm = algo_cls(spec.algorithm, sc.federation, seed, self.backend.num_workers, spec.partition.sizes())
            label, shown = f"{algo_cfg.display_name} seed {seed}", (self.progress, self.progress_every_s)
            callbacks = round_callbacks(recorder, label, sc.federation.rounds, self.checkpoint_round or 0, shown, sc)
            try:
                status, rounds = self._loop(algorithm, recorder, index, seed, state, callbacks)
            finally:
                for callback in callbacks:
                    callback.close()
        except ServerLost as e:
            then = after_server_loss(run_dir, self.checkpoint_round, sc.runtime.checkpoint_every)
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

    def _run_round(
        self, algorithm: Any, rnd: int, clients: np.ndarray, ledger: Ledger, clock_for: Any, measuring: bool
    ) -> tuple[RoundResult, RoundClock, dict[int, int], dict]:
        """The round, run again without their clients if workers die (recovery.py); returns the result, the
        clock of the attempt that finished, {failed client: its worker} and the measured memory."""
        b = self.backend
        memory = RoundMemory(b, self.roles) if measuring else None
        out = run_round_surviving(b, algorithm, rnd, clients, ledger, clock_for, memory)
        # One server call ends the round: the NaN/Inf check, read once the round is logged (divergence.py),
        # and the snapshot the next round would restore (calls to the server run in the order they are made).
        # The round's calls nobody read are read with it, so their errors surface.
        self.watch.round_ended([b.server(self.roles[1].end_round, b.can_lose_workers), *b.take_later()])
        return out

    def _start(self, algorithm: Algorithm, seed: int, state: dict | None) -> tuple[RunProgress, int]:
        """The run's state at its first round to run: fresh, or as the checkpoint left it; returns it and that round."""
        run = RunProgress(np.random.default_rng([seed, 11]), Ledger())  # the same client draws for every algorithm
        first = 1
        if state is not None:
            run.load_state_dict(state["engine"])
            algorithm.load_state_dict(state["algorithm"])
            self.backend.get(self.backend.server(self.roles[1].load_state_dict, state["server"]))
            first = state["round"] + 1
        if self.backend.can_lose_workers:
            self.backend.get(self.backend.server(self.roles[1].snapshot))  # the first round's start (see recovery)
        self.watch = DivergenceWatch(self.backend)
        self._may_defer = False  # whether the round just logged may have its server check read a round late
        return run, first

    def _loop(
        self, algorithm: Algorithm, recorder: Recorder, index: int, seed: int, state: dict | None,
        callbacks: list[RoundCallback],
    ) -> tuple[str, int]:  # fmt: skip
        sc = self.scenario
        fed, system, rt = sc.federation, sc.system, sc.runtime
        profiles = build_profiles(system, fed.num_clients, seed)
        availability = Availability(system.availability, fed.num_clients, seed)
        quota = fed.clients_per_round if system.policy == "overcommit" else None
        run, first = self._start(algorithm, seed, state)
        status, rnd = "completed", first - 1
        for rnd in range(first, fed.rounds + 1):
            clients = run.sample(availability.available(rnd), fed, system)

            def clock_for(live: np.ndarray, rnd: int = rnd) -> RoundClock:
                return RoundClock(live, profiles, system, availability.fails_mid_round(rnd, live), quota)

            measuring = rt.memory_every > 0 and rnd % rt.memory_every == 0
            try:
                outcome = self._run_round(algorithm, rnd, clients, run.ledger, clock_for, measuring)
                late, at = self.watch.late(), rnd - 1
            except Exception as e:  # NaN/Inf the round before left, or an overflow in this one (else raised again)
                late, at = self.watch.after_error(e, rnd)
            if late is not None:  # diverged at round `at` (the round before, or this one); this one is dropped
                diverged(recorder, algorithm.cfg.display_name, seed, at, late)
                status, rnd = "diverged", rnd - 1
                break
            base = {"algorithm": algorithm.cfg.display_name, "seed": seed, "round": rnd}
            row, rows, last = self._rows(base, run, clients, outcome, profiles, measuring)
            for callback in callbacks:
                callback.on_round(row, rows)
            checkpoint_due = bool(rt.checkpoint_every and rnd % rt.checkpoint_every == 0)
            self._may_defer = not (last or checkpoint_due)
            reason = self._divergence(outcome[0], row, row["num_completed"])
            if reason is None and (checkpoint_due or self.stop_requested) and not last:
                reason = self.watch.late()  # a checkpoint must not hold NaN/Inf state
                if reason is None:
                    self._checkpoint(recorder, algorithm, index, seed, rnd, run)
            if reason is not None:
                status = "diverged"
                diverged(recorder, algorithm.cfg.display_name, seed, rnd, reason)
                break
            if last:
                break
            if self.stop_requested:
                status = "interrupted"
                break
        return status, rnd

    def _rows(
        self,
        base: dict,
        run: RunProgress,
        clients: np.ndarray,
        outcome: tuple,
        profiles: DeviceProfiles,
        measuring: bool,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """The round's rounds.parquet row (evaluated if due) and clients.parquet rows, and whether it is the last."""
        fed = self.scenario.federation
        result, clock, failed, memory = outcome
        run.samples_seen += result.samples
        duration = clock.duration() if len(clients) > len(failed) else 0.0
        run.sim_time += duration
        last = base["round"] == fed.rounds or (
            fed.budget_samples is not None and run.samples_seen >= fed.budget_samples
        )
        rows = client_rows(base, clients, result, failed, clock, run.ledger, profiles, memory)
        completed = sum(row["status"] == "completed" for row in rows)
        times = {"best_test_acc": run.best_acc, "wall_time_s": run.wall_time(), "sim_time_s": run.sim_time,
                 "round_duration_s": duration}  # fmt: skip
        row = round_row(base, result, clients, completed, times, run.samples_seen, run.ledger, memory, measuring)
        if base["round"] % fed.eval_every == 0 or last:
            row.update(self.backend.get(self.backend.server(self.roles[1].evaluate)))
            row["best_test_acc"] = run.evaluated(row["test_acc"])
        return row, rows, last

    def _divergence(self, result: RoundResult, row: dict, completed: int) -> str | None:
        """Why the run has diverged at the round just logged, or None (divergence.py)."""
        return self.watch.check(result, row, completed, self._may_defer)

    def _checkpoint(
        self, recorder: Recorder, algorithm: Algorithm, index: int, seed: int, rnd: int, run: RunProgress
    ) -> None:
        server = self.backend.get(self.backend.server(self.roles[1].state_dict))
        save_run(recorder, self.scenario, index, seed, rnd, run.state_dict(), algorithm.state_dict(), server)
        self.checkpoint_round = rnd
