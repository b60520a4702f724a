"""The Ray backend: a pool of ClientWorker actors and one ServerActor.

Actors are generic hosts: `setup` builds an algorithm's role inside them once per run, and
`call` runs one role method. Futures (ObjectRefs) passed as arguments go from actor to actor
through the object store; the driver only ever fetches small metadata. Actors are created
once per backend and reused across runs.

Failures: when a `get` fails, the backend pings every actor. An actor runs the calls of one
submitter in the order they were submitted, so its answer means every earlier call has settled
(no task of an abandoned round can still change the server afterwards); a dead actor answers
with an error. Then WorkerLost (client workers died) or ServerLost is raised; an error with
every actor alive is the call's own and is raised as it is. `reset_workers` starts actors in
place of the dead ones (on a live node: one Ray placed on a lost node is started again) and rebuilds every
worker's role. ClusterLost (a ServerLost) when the head no longer answers (without it no actor starts, and Ray
would end this process after 60 s) or no live node takes a replacement within cluster.PLACE_TIMEOUT_S.

Without runtime.address a run starts its own instance, also where `ray start` left one that Ray would join.

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
import time
from collections.abc import Callable
from typing import Any

import ray
from ray._private.utils import read_ray_address

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm
from hosfl_sim.algorithms.task import TaskSpec
from hosfl_sim.config import ConfigError, RuntimeConfig
from hosfl_sim.runtime import cluster
from hosfl_sim.runtime.allocator import keep_freed_memory
from hosfl_sim.runtime.cluster import check_nodes, check_resources, wait_placed
from hosfl_sim.runtime.device import Placement, describe, place, require
from hosfl_sim.runtime.errors import ClusterLost, ServerLost, WorkerLost

log = logging.getLogger(__name__)


class RoleHost:
    """Hosts one role object. Holds no state of its own besides it."""

    def __init__(self, torch_threads: int):
        import torch

        keep_freed_memory()
        torch.set_num_threads(torch_threads)
        self.role: Any = None

    def setup(self, role_cls: type, spec: TaskSpec, device: str = "auto") -> Placement:
        """The role on `runtime.device` = `device`, on a GPU only where Ray gave this actor one (device.py)."""
        placement = place(device, ray.get_gpu_ids())
        self.role = role_cls(dataclasses.replace(spec, device=placement.device))
        return placement

    def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return self.role.invoke(method, *args)

    def pid(self) -> int:
        return os.getpid()


def _alive(ping: ray.ObjectRef) -> bool:
    try:
        ray.get(ping)
        return True
    except ray.exceptions.RayActorError:
        return False


ClientWorker = ray.remote(RoleHost)
ServerActor = ray.remote(RoleHost)


def init_ray(cfg: RuntimeConfig) -> bool:
    """Start (or join) Ray quietly, dashboard off; a local instance requires a per-instance token (see the
    module's notes on the network). Returns True when this call started a local instance."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "4")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # calls abandoned with a dead actor fail by design; the backend reads every call it needs (take_later)
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        return False
    running = os.environ.get("RAY_ADDRESS") or read_ray_address()  # what Ray itself would join
    if running:
        log.warning("a Ray cluster was started at %s; this run starts its own (runtime.address=auto joins it)", running)
    if os.environ.get("RAY_AUTH_MODE", "token") == "token":  # Ray's own default for a new local instance
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # children inherit it; no file is written
    # Logical CPUs: enough for the pool and the server even on a 2-core laptop (they mostly wait).
    need = cfg.num_workers * cfg.worker_num_cpus + cfg.server_num_cpus
    # address "local": a new instance even where `ray start` left one Ray would join (and refuse num_cpus for)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), **kwargs)
    return True


class RayBackend(Backend):
    """W ClientWorker actors and one ServerActor, reused across runs; `get` turns an actor's death into
    WorkerLost or ServerLost. `shutdown` kills them, and the Ray instance if this backend started it."""

    can_lose_workers = True

    def __init__(self, cfg: RuntimeConfig):
        super().__init__()
        self.started_ray = init_ray(cfg)
        try:
            check_resources(cfg, dict(ray.cluster_resources()))  # Ray would wait for missing ones without a word
            check_nodes(cfg, [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]])
        except ConfigError:
            if self.started_ray:
                ray.shutdown()
            raise
        free = dict(ray.available_resources())  # before the actors take theirs
        self.num_workers = cfg.num_workers
        self.torch_threads = cfg.torch_threads
        self.device = cfg.device
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        use_gpu = has_gpu and cfg.device != "cpu"  # device cpu: reserve no GPU it would leave idle
        wgpu = cfg.worker_num_gpus if use_gpu else 0.0
        sgpu = cfg.server_num_gpus if use_gpu else 0.0
        if not use_gpu and (cfg.worker_num_gpus or cfg.server_num_gpus):
            why = "runtime.device is cpu" if has_gpu else "no GPU in the Ray cluster"
            log.warning("%s: workers and server run on the CPU", why)
        self.worker_opts = dict(num_cpus=cfg.worker_num_cpus, num_gpus=wgpu, max_restarts=0)
        self.workers = [self._new_worker() for _ in range(cfg.num_workers)]
        # Any: Ray types an actor's methods as the plain functions, without .remote and .options
        self.server_actor: Any = ServerActor.options(
            num_cpus=cfg.server_num_cpus, num_gpus=sgpu, max_restarts=0
        ).remote(cfg.torch_threads)
        self._setup: tuple[type[Algorithm], ray.ObjectRef] | None = None
        self.head: str | None = getattr(ray.get_runtime_context(), "gcs_address", None)  # none through ray://
        try:
            if not self.started_ray:  # an instance this started was sized to hold them
                wait_placed([a.pid.remote() for a in [*self.workers, self.server_actor]], cfg, free)
        except ConfigError:
            self.shutdown()
            raise

    def _new_worker(self) -> Any:
        return ClientWorker.options(**self.worker_opts).remote(self.torch_threads)

    def setup(self, algorithm: type[Algorithm], spec: TaskSpec) -> dict[str, str]:
        ref = ray.put(spec)  # one copy in the object store; numpy arrays are read zero-copy
        self._setup = (algorithm, ref)
        *workers, server = self.get(
            [w.setup.remote(algorithm.client_role, ref, self.device) for w in self.workers]
            + [self.server_actor.setup.remote(algorithm.server_role, ref, self.device)]
        )
        require(self.device, [server, *workers])
        return describe(server, workers)

    def reset_workers(self, dead: list[int]) -> None:
        """New actors in place of the `dead` ones, then every worker's role rebuilt fresh. A replacement that dies
        as it starts (Ray placed it on a node whose loss it has not seen yet) is started again, for up to
        PLACE_TIMEOUT_S; ClusterLost when the head is gone or no live node takes one by then."""
        assert self._setup is not None, "reset_workers before setup"
        algorithm, ref = self._setup
        deadline = time.monotonic() + cluster.PLACE_TIMEOUT_S
        while dead:
            self._check_head()  # without the head no actor starts: Ray would wait 60 s, then end this process
            for w in dead:
                ray.kill(self.workers[w], no_restart=True)
                self.workers[w] = self._new_worker()
            pings = {w: self.workers[w].pid.remote() for w in dead}
            left = max(deadline - time.monotonic(), 0.0)
            _, waiting = ray.wait(list(pings.values()), num_returns=len(pings), timeout=left)
            if waiting:
                raise ClusterLost(f"no live node took replacement worker(s) {dead} in {cluster.PLACE_TIMEOUT_S:g} s")
            dead = [w for w, ping in pings.items() if not _alive(ping)]
            if dead:
                time.sleep(1.0)  # for Ray to see the node gone
        self.get([w.setup.remote(algorithm.client_role, ref, self.device) for w in self.workers])

    def _check_head(self) -> None:
        if self.head and not cluster.answers(self.head):
            raise ClusterLost(f"the Ray cluster's head at {self.head} is gone")

    def client(self, worker: int, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        return self.workers[worker].call.options(num_returns=num_returns).remote(method, *args)

    def server(self, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        return self.server_actor.call.options(num_returns=num_returns).remote(method, *args)

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
            self._check_head()  # the head's loss takes its actors: name the cause
            return ServerLost("the server actor died")
        return WorkerLost(dead) if dead else None

    def get(self, futures: Any) -> Any:
        """ray.get over any nesting of lists, tuples and dicts of ObjectRefs. Raises WorkerLost or ServerLost
        when the failure is an actor's death."""
        flat: list[ray.ObjectRef] = []

        def collect(x: Any) -> None:
            if isinstance(x, ray.ObjectRef):
                flat.append(x)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    collect(v)
            elif isinstance(x, dict):
                for v in x.values():
                    collect(v)

        collect(futures)
        try:
            values = iter(ray.get(flat))
        except Exception as e:
            lost = self._lost()
            if lost is None:
                raise
            raise lost from e

        def rebuild(x: Any) -> Any:
            if isinstance(x, ray.ObjectRef):
                return next(values)
            if isinstance(x, (list, tuple)):
                return type(x)(rebuild(v) for v in x)
            if isinstance(x, dict):
                return {k: rebuild(v) for k, v in x.items()}
            return x

        return rebuild(futures)

    def shutdown(self) -> None:
        """Kill the actors, and the Ray instance if this backend started it (no Ray process is left)."""
        for a in [*self.workers, self.server_actor]:
            ray.kill(a)
        self.workers = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
