"""The fast paths give the numbers of the plain ones: exact probes from a saved copy, vmapped
probes, and a federation whose per-client state is a few bytes. (Numbers only, never time.)"""

from __future__ import annotations

import platform
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call

from hosfl_sim.algorithms.hosfl import HOSFLClient
from hosfl_sim.algorithms.replay import ReplayLog
from hosfl_sim.config import load_scenario
from hosfl_sim.config.schema import SystemConfig
from hosfl_sim.data.partition import IidPartitioner
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.local import LocalBackend
from hosfl_sim.system import build_profiles
from hosfl_sim.zo import derive_seeds, perturbed_copies
from hosfl_sim.zo.perturb import set_perturbed_, stacked_perturbations
from hosfl_sim.zo.probe import PROBE_CHUNK
from tests.conftest import tiny_scenario


def client(probe: str, model: dict | None = None) -> HOSFLClient:
    task = {"dataset": {"name": "digits"}, "model": model or {"name": "cnn", "cut": "block2", "width": 8}}
    sc = load_scenario(tiny_scenario(task=task, algorithms=[{"name": "hosfl", "perturbations": 4, "probe": probe}]))
    return HOSFLClient(Engine(sc, backend=object(), progress=False).spec(0, seed=0))


def snapshot(c: HOSFLClient) -> list[torch.Tensor]:
    return [p.detach().clone() for p in c.params]


def test_set_perturbed_and_stacked_rows_are_the_out_of_place_numbers():
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(5, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    seeds = derive_seeds(0, 1, 0, 3)
    stacked = stacked_perturbations(params, seeds, 1e-2)
    out = [torch.empty_like(p) for p in params.values()]
    for i, seed in enumerate(seeds):
        ref = perturbed_copies(params, int(seed), 1e-2)
        set_perturbed_(out, list(params.values()), int(seed), 1e-2)
        for (name, r), o in zip(ref.items(), out):
            assert torch.equal(o, r) and torch.equal(stacked[name][i], r)


def test_functional_probe_is_functional_call_bit_for_bit_and_restores_theta():
    c = client("functional")
    upload, _ = c.anchor([], 0, 1, 0)
    x, _ = c.pending[0]
    before = snapshot(c)
    seeds = derive_seeds(3, 1, 0, 4)
    outs = list(c.probe_outputs(x, seeds, 1e-3))
    for seed, out in zip(seeds, outs):
        ref = functional_call(c.model, perturbed_copies(dict(zip(c.names, before)), int(seed), 1e-3), kwargs=x)
        assert torch.equal(out, ref)
    assert torch.equal(c.forward_at(x, int(seeds[1]), 1e-3), outs[1])
    assert all(torch.equal(p, b) for p, b in zip(c.params, before))


@pytest.mark.parametrize(
    "model",
    [{"name": "cnn", "cut": "block2", "width": 8}, {"name": "resnet18", "cut": "layer1", "width": 4}],
    ids=["cnn", "resnet18_frozen_bn"],
)
def test_batched_probes_give_the_sequential_scalars(model):
    seq, bat = client("functional", model), client("batched", model)
    seeds = derive_seeds(1, 1, 0, PROBE_CHUNK + 3)  # two chunks, the second one short
    upload, _ = seq.anchor([], 2, 1, 0)
    bat.anchor([], 2, 1, 0)
    g = np.random.default_rng(0).standard_normal(upload["a"].shape).astype(np.float32)
    v_seq, _ = seq.probe(2, g, seeds)
    x, a = bat.pending.pop(2)
    before = snapshot(bat)
    g_t = torch.from_numpy(g).flatten()
    v_bat = np.array([float(torch.dot(o.sub_(a).flatten(), g_t)) for o in bat.probe_outputs(x, seeds, 1e-3)])
    assert all(torch.equal(p, b) for p, b in zip(bat.params, before))  # vmap never touches the weights
    assert len(v_bat) == len(seeds)
    # the same directional differences, up to the summation order of a grouped convolution
    np.testing.assert_allclose(v_bat, v_seq, rtol=1e-3, atol=1e-3 * np.abs(v_seq).max())


def test_inplace_probes_agree_with_functional_ones_up_to_rounding():
    fun, inp = client("functional"), client("inplace")
    seeds = derive_seeds(2, 1, 0, 4)
    upload, _ = fun.anchor([], 1, 1, 0)
    inp.anchor([], 1, 1, 0)
    g = np.ones(upload["a"].shape, np.float32)
    v_fun, _ = fun.probe(1, g, seeds)
    v_inp, _ = inp.probe(1, g, seeds)
    np.testing.assert_allclose(v_inp, v_fun, rtol=1e-3, atol=1e-4 * np.abs(v_fun).max())


def test_a_virtual_client_costs_bytes_not_a_model():
    n = 100_000
    labels = np.zeros(2 * n, dtype=np.int64)
    partition = IidPartitioner(0)(labels, n)
    profiles = build_profiles(SystemConfig(), n, 0)
    arrays = [v for v in vars(profiles).values() if isinstance(v, np.ndarray)]
    log = ReplayLog(n, 2)
    per_client = (partition.offsets.nbytes + sum(a.nbytes for a in arrays) + log.client_seen.nbytes) / n
    assert arrays and per_client <= 64  # offsets (8) + a few per-client floats + replay position (4)
    assert partition.indices.nbytes == 8 * len(labels)  # rows cost 8 bytes each, however many clients


def test_batched_falls_back_where_vmap_cannot_batch():
    c = client("batched")
    c.anchor([], 0, 1, 0)
    x, _ = c.pending[0]
    seeds = derive_seeds(4, 1, 0, 2)
    ref = [o.clone() for o in c.probe_outputs(x, seeds, 1e-3, batched=False)]

    class DataDependent(torch.nn.Module):  # .item() inside the forward: vmap refuses it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x=x)
            return y * (1.0 if float(y.sum()) > -1e30 else 0.0)

    c.prober.module = DataDependent(c.model)
    c.prober.names = ["inner." + n for n in c.names]
    outs = list(c.probe_outputs(x, seeds, 1e-3))
    assert all(torch.equal(o, r) for o, r in zip(outs, ref))
    assert c.prober.vmap_ok is False


class CountingBackend(LocalBackend):
    """Counts the actor calls an algorithm makes, by (role, method)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls: dict[tuple[str, str], int] = {}

    def client(self, worker, method, *args, num_returns=1):
        name = method.__name__
        if name in ("each", "each_of"):  # one call for the worker's clients: named by what it runs for each
            name = f"{name} {args[0].__name__}"
        self.calls[("client", name)] = self.calls.get(("client", name), 0) + 1
        return super().client(worker, method, *args, num_returns=num_returns)

    def server(self, method, *args, num_returns=1):
        self.calls[("server", method.__name__)] = self.calls.get(("server", method.__name__), 0) + 1
        return super().server(method, *args, num_returns=num_returns)


# per algorithm: its per-worker client calls, its server calls of one step, and a deadline (simulated
# seconds) that the fast half of its clients meets and the slow half misses
ROUTING = {
    "hosfl": (("each anchor", "each_of probe"), ("train_step", "update_client"), 2.0),
    "sfl_zo": (("each probe",), ("differences", "aggregate"), 2.0),
    "zo_fl": (("each probe",), ("aggregate",), 24.0),
}


@pytest.mark.parametrize("policy", ["sync", "deadline"])
@pytest.mark.parametrize("name", list(ROUTING))
def test_a_seed_based_step_makes_one_call_per_worker_per_phase(tmp_path, name, policy):
    """K = 7 clients on W = 2 workers: at most W client calls per phase and one call per server phase a step,
    whatever K, also when a deadline drops clients (the server's phase then waits for the barrier)."""
    fed = {"num_clients": 12, "clients_per_round": 7, "rounds": 3, "batch_size": 8, "eval_every": 100}
    system = {"policy": policy}
    if policy == "deadline":  # half the clients are 50x slower: the deadline drops some of them
        system |= {
            "compute_flops": {"kind": "constant", "value": 1e6},
            "straggler_fraction": 0.5,
            "straggler_slowdown": 50,
            "deadline_s": ROUTING[name][2],
        }
    algorithms = [{"name": name, "perturbations": 4, "local_steps": 2}]
    sc = load_scenario(tiny_scenario(federation=fed, system=system, algorithms=algorithms))
    backend = CountingBackend(2, 1)
    (summary,) = Engine(sc, backend=backend, progress=False).run_all(tmp_path)
    steps = 3 * 2
    client_phases, server_phases, _ = ROUTING[name]
    for method in client_phases:
        assert 0 < backend.calls[("client", method)] <= 2 * steps, method
    for method in server_phases:
        assert 0 < backend.calls[("server", method)] <= steps, method
    if policy == "sync":
        assert all(backend.calls[("server", m)] == steps for m in server_phases)
    per_client = {("client", "anchor"), ("client", "probe")}
    assert not per_client & set(backend.calls)
    # the engine's own per-round server work is one call (NaN/Inf check and snapshot together)
    assert backend.calls[("server", "end_round")] == 3 and ("server", "nonfinite") not in backend.calls
    clients = pd.read_parquet(summary.run_dir / "clients.parquet")
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    assert clients["samples"].sum() == rounds["samples_seen"].iloc[-1]
    if policy == "deadline":
        assert (clients["status"] == "straggler_dropped").any() and (clients["status"] == "completed").any()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_role_processes_keep_freed_memory_on_glibc():
    """The backends tune malloc (runtime/allocator.py); glibc accepts both thresholds."""
    from hosfl_sim.runtime.allocator import keep_freed_memory

    assert keep_freed_memory()
