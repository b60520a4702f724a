"""The Ray backend: a pool of ClientWorker actors and one ServerActor.

Actors are generic hosts: `setup` builds an algorithm's role inside them once per run, and
`call` runs one role method. Futures (ObjectRefs) passed as arguments go from actor to actor
through the object store; the driver only ever fetches small metadata. Actors are created
once per backend and reused across runs.

Round trips (workers -> server -> workers, `Backend.round_trip`) can go through a Ray compiled graph
instead: shared-memory channels between the actors, no hop through the driver (a step of the quickstart
on 2 workers: 25.5 ms instead of 32 ms). Its actors poll their channels while they wait, about half a
core each on this Ray, so it only pays where every actor and the driver has a core: `compiled_graphs:
auto` takes it there (a local instance this backend starts), plain calls otherwise (README,
Performance). The graph is torn down at every `setup`, `reset_workers` and `shutdown`, and after a
failed execution; the next round trip builds it again (about 0.5 s).

Failures: when a `get` fails, the backend pings every actor. An actor runs the calls of one
submitter in the order they were submitted, so its answer means every earlier call has settled
(no task of an abandoned round can still change the server afterwards); a dead actor answers
with an error. Then WorkerLost (client workers died) or ServerLost is raised; an error with
every actor alive is the call's own and is raised as it is. `reset_workers` starts actors in
place of the dead ones and rebuilds every worker's role.

Network: the dashboard is off. Ray's own processes still listen on TCP: the GCS, the raylet,
each worker's gRPC server and the runtime-env and dashboard agents, on all interfaces or the
node's address, plus two read-only Prometheus metrics endpoints (44217, 44227) on 0.0.0.0;
Ray turns a loopback node address into the machine's own, so it cannot be kept on loopback.
So a local instance keeps Ray's token authentication (its default for a new instance) with a
fresh random token per instance in RAY_AUTH_TOKEN, inherited by Ray's processes and written
nowhere: a process without the token cannot join the instance or submit work to it. Set
RAY_AUTH_MODE=disabled yourself to opt out (tests/conftest.py does).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from typing import Any

import ray

from hosfl_sim.algorithms import Algorithm, TaskSpec
from hosfl_sim.algorithms.base import Stage, first_stage, last_stage, server_stage, stage_calls
from hosfl_sim.config import RuntimeConfig
from hosfl_sim.runtime.allocator import keep_freed_memory
from hosfl_sim.runtime.engine import ServerLost, WorkerLost

log = logging.getLogger(__name__)


class RoleHost:
    """Hosts one role object. Holds no state of its own besides it."""

    def __init__(self, torch_threads: int):
        import torch

        keep_freed_memory()
        torch.set_num_threads(torch_threads)
        self.role: Any = None

    def setup(self, role_cls: type, spec: TaskSpec) -> int:
        import torch

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.role = role_cls(dataclasses.replace(spec, device=device))
        return os.getpid()

    def call(self, method: str, *args: Any) -> Any:
        return self.role.invoke(method, *args)

    # A round trip's stages (Backend.round_trip), as plain calls or in a compiled graph:
    def first_stage(self, call: Stage | None) -> tuple[Any, Any]:
        return first_stage(self.role, call)

    def server_stage(self, call: Stage, *uploads: Any) -> tuple:
        return server_stage(self.role, call, uploads)

    def last_stage(self, call: Stage | None, item: Any) -> Any:
        return last_stage(self.role, call, item)

    def pid(self) -> int:
        return os.getpid()


ClientWorker = ray.remote(RoleHost)
ServerActor = ray.remote(RoleHost)


def init_ray(cfg: RuntimeConfig) -> bool:
    """Start (or join) Ray quietly, dashboard off; a local instance requires a per-instance token (see the
    module's notes on the network). Returns True when this call started a local instance."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "4")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        return False
    if os.environ.get("RAY_AUTH_MODE", "token") == "token":  # Ray's own default for a new local instance
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # children inherit it; no file is written
    # Logical CPUs: enough for the pool and the server even on a 2-core laptop (they mostly wait).
    need = cfg.num_workers * cfg.worker_num_cpus + cfg.server_num_cpus
    ray.init(num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), **kwargs)
    return True


class RayBackend:
    """W ClientWorker actors and one ServerActor, reused across runs; `get` turns an actor's death into
    WorkerLost or ServerLost. `shutdown` kills them, and the Ray instance if this backend started it."""

    can_lose_workers = True

    def __init__(self, cfg: RuntimeConfig):
        self.started_ray = init_ray(cfg)
        self.num_workers = cfg.num_workers
        self.torch_threads = cfg.torch_threads
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        wgpu = cfg.worker_num_gpus if has_gpu else 0.0
        sgpu = cfg.server_num_gpus if has_gpu else 0.0
        if not has_gpu and (cfg.worker_num_gpus or cfg.server_num_gpus):
            log.warning("no GPU in the Ray cluster: workers and server run on the CPU")
        self.worker_opts = dict(num_cpus=cfg.worker_num_cpus, num_gpus=wgpu, max_restarts=0)
        self.workers = [self._new_worker() for _ in range(cfg.num_workers)]
        self.server_actor = ServerActor.options(num_cpus=cfg.server_num_cpus, num_gpus=sgpu, max_restarts=0).remote(
            cfg.torch_threads
        )
        self._setup: tuple[type[Algorithm], ray.ObjectRef] | None = None
        self.compiled_graphs = cfg.compiled_graphs
        if self.compiled_graphs == "auto":  # polling actors must not take cores the computing ones need
            self.compiled_graphs = self.started_ray and (os.cpu_count() or 1) >= cfg.num_workers + 2
        if self.compiled_graphs:
            from ray.dag.context import DAGContext

            ctx = DAGContext.get_current()  # a round's stage may take longer than Ray's 10 s default: wait
            for name in ("get_timeout", "submit_timeout"):
                if f"RAY_CGRAPH_{name}" not in os.environ:
                    setattr(ctx, name, -1)
            logging.getLogger("ray.dag").setLevel(logging.WARNING)  # a line per actor at every teardown
        self._graph: Any = None  # the compiled round trip, built on first use
        self._running: _Execution | None = None  # its execution in flight, not read yet
        self._last: dict[int, ray.ObjectRef] = {}  # actor index (server: W) -> its latest ordinary call

    def _new_worker(self) -> Any:
        return ClientWorker.options(**self.worker_opts).remote(self.torch_threads)

    def setup(self, algorithm: type[Algorithm], spec: TaskSpec) -> None:
        self.drop_graph()  # its actors poll while it exists: built again only by an algorithm that uses it
        ref = ray.put(spec)  # one copy in the object store; numpy arrays are read zero-copy
        self._setup = (algorithm, ref)
        self.get(
            [w.setup.remote(algorithm.client_role, ref) for w in self.workers]
            + [self.server_actor.setup.remote(algorithm.server_role, ref)]
        )

    def reset_workers(self, dead: list[int]) -> None:
        """New actors in place of the `dead` ones, then every worker's role rebuilt fresh."""
        algorithm, ref = self._setup
        self.drop_graph()
        for w in dead:
            ray.kill(self.workers[w], no_restart=True)
            self.workers[w] = self._new_worker()
        self.get([w.setup.remote(algorithm.client_role, ref) for w in self.workers])

    def client(self, worker: int, method: str, *args: Any, num_returns: int = 1) -> Any:
        self._settle()
        out = self.workers[worker].call.options(num_returns=num_returns).remote(method, *args)
        self._last[worker] = out if num_returns == 1 else out[0]
        return out

    def server(self, method: str, *args: Any, num_returns: int = 1) -> Any:
        self._settle()
        out = self.server_actor.call.options(num_returns=num_returns).remote(method, *args)
        self._last[self.num_workers] = out if num_returns == 1 else out[0]
        return out

    def round_trip(self, first: dict[int, Stage], server: Stage, then: dict[int, Stage]) -> tuple[dict, Any, dict]:
        """See Backend.round_trip. With `compiled_graphs`, through a compiled graph (shared-memory channels,
        no hop through the driver); otherwise, and where none can be built, through plain calls. A compiled
        stage runs on another thread of its actor, so the ordinary calls made before are waited for first,
        and an execution is read whole before the next ordinary call: a role never runs two calls at once."""
        head, tail = stage_calls(self.num_workers, first, then)
        w = self.num_workers
        graph = self._compiled()
        if graph is None:
            firsts = [a.first_stage.options(num_returns=2).remote(c) for a, c in zip(self.workers, head)]
            out = self.server_actor.server_stage.options(num_returns=w + 1).remote(server, *[u for u, _ in firsts])
            lasts = [a.last_stage.remote(c, item) for a, c, item in zip(self.workers, tail, out)]
            return {i: firsts[i][1] for i in first}, out[-1], {i: lasts[i] for i in then}
        self._settle()
        if self._last:
            ray.wait(list(self._last.values()), num_returns=len(self._last))
            self._last = {}
        self._running = _Execution(self, graph.execute(*head, server, *tail))
        return (
            {i: _Output(self._running, i) for i in first},
            _Output(self._running, w),
            {i: _Output(self._running, w + 1 + i) for i in then},
        )

    def _settle(self) -> None:
        """Read the compiled execution in flight, if any (what it raises is kept for whoever reads it)."""
        if self._running is not None:
            running, self._running = self._running, None
            try:
                running.read()
            except Exception:  # raised again where its outputs are read
                pass

    def _compiled(self) -> Any:
        """The compiled round trip over every worker and the server (built on first use), or None."""
        if self._graph is None and self.compiled_graphs:
            from ray.dag import InputNode, MultiOutputNode

            try:
                with InputNode() as inp:
                    w = self.num_workers
                    firsts = [a.first_stage.options(num_returns=2).bind(inp[i]) for i, a in enumerate(self.workers)]
                    out = list(
                        self.server_actor.server_stage.options(num_returns=w + 1).bind(inp[w], *[u for u, _ in firsts])
                    )
                    lasts = [a.last_stage.bind(inp[w + 1 + i], out[i]) for i, a in enumerate(self.workers)]
                    outputs = [*[meta for _, meta in firsts], out[w], *lasts]  # activations skip the driver
                    self._graph = MultiOutputNode(outputs).experimental_compile()
            except Exception as e:  # e.g. a cluster whose nodes cannot share channels
                log.warning("no compiled graph (%s): round trips use plain actor calls", e)
                self.compiled_graphs = False
        return self._graph

    def drop_graph(self) -> None:
        """Tear the compiled round trip down (its actors stop polling); the next round trip builds it again."""
        self._running = None
        if self._graph is not None:
            graph, self._graph = self._graph, None
            try:
                graph.teardown()
            except Exception as e:  # an actor of it died: the graph is gone either way
                log.debug("compiled graph teardown: %s", e)

    def _lost(self) -> RuntimeError | None:
        """After a failed get: WorkerLost / ServerLost if an actor is dead, once every actor has settled."""
        actors = [*self.workers, self.server_actor]
        pings = [a.pid.remote() for a in actors]  # queued behind every earlier call to the same actor
        dead = []
        for i, ping in enumerate(pings):
            try:
                ray.get(ping)
            except ray.exceptions.RayActorError:
                dead.append(i)
        if self.num_workers in dead:
            return ServerLost("the server actor died")
        return WorkerLost(dead) if dead else None

    def get(self, futures: Any) -> Any:
        """ray.get over any nesting of lists, tuples and dicts of ObjectRefs. Raises WorkerLost or ServerLost
        when the failure is an actor's death."""
        flat: list[Any] = []

        def collect(x: Any) -> None:
            if isinstance(x, (ray.ObjectRef, _Output)):
                flat.append(x)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    collect(v)
            elif isinstance(x, dict):
                for v in x.values():
                    collect(v)

        collect(futures)
        refs = [x for x in flat if isinstance(x, ray.ObjectRef)]
        try:
            for x in flat:
                if isinstance(x, _Output):
                    x.execution.read()
                    if x.execution is self._running:
                        self._running = None
            got = iter(ray.get(refs))
            values = iter([next(got) if isinstance(x, ray.ObjectRef) else x.value() for x in flat])
        except Exception as e:
            lost = self._lost()
            if lost is None:
                raise
            raise lost from e

        def rebuild(x: Any) -> Any:
            if isinstance(x, (ray.ObjectRef, _Output)):
                return next(values)
            if isinstance(x, (list, tuple)):
                return type(x)(rebuild(v) for v in x)
            if isinstance(x, dict):
                return {k: rebuild(v) for k, v in x.items()}
            return x

        return rebuild(futures)

    def shutdown(self) -> None:
        """Kill the actors, and the Ray instance if this backend started it (no Ray process is left)."""
        self.drop_graph()
        for a in [*self.workers, self.server_actor]:
            ray.kill(a)
        self.workers = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()


class _Execution:
    """One execution of the compiled round trip: its outputs are read together, once (Ray's rule)."""

    def __init__(self, backend: RayBackend, refs: list):
        self.backend, self.refs = backend, refs
        self.values: list | None = None
        self.error: BaseException | None = None

    def read(self) -> None:
        if self.values is None and self.error is None:
            try:
                self.values = ray.get(self.refs)
            except Exception as e:  # kept for every output read later; the graph is rebuilt next time
                self.error = e
                self.backend.drop_graph()
        if self.error is not None:
            raise self.error


class _Output:
    """One output of an execution (a future of the compiled path); `RayBackend.get` resolves it."""

    def __init__(self, execution: _Execution, index: int):
        self.execution, self.index = execution, index

    def value(self) -> Any:
        self.execution.read()
        return self.execution.values[self.index]
