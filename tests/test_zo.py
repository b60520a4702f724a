"""The zeroth-order engine: seeds regenerate the same directions anywhere, and the HO-SFL
client estimate is the gradient of the linear surrogate <g, f_c(theta; x)>."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from hosfl_sim.algorithms.hosfl import HOSFLClient
from hosfl_sim.config import OptimizerConfig, load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.zo import ZOUpdater, derive_seeds, directions, estimate, perturb_, perturbed_copies
from tests.conftest import tiny_scenario

SHAPES = [(8, 1, 3, 3), (8,), (16, 8)]


def _digest(seed: int, distribution: str) -> str:
    params = [torch.zeros(s) for s in SHAPES]
    h = hashlib.sha256()
    for u in directions(params, seed, distribution):
        h.update(u.numpy().tobytes())
    return h.hexdigest()


def test_seeds_are_distinct_and_deterministic():
    a = derive_seeds(0, 1, 0, 64)
    assert a.dtype == np.uint64 and len(set(a.tolist())) == 64
    assert np.array_equal(a, derive_seeds(0, 1, 0, 64))
    others = [derive_seeds(0, 2, 0, 64), derive_seeds(1, 1, 0, 64), derive_seeds(0, 1, 1, 64)]
    assert all(not set(a.tolist()) & set(o.tolist()) for o in others)
    assert all(int(s) < 2**63 for s in a)


def test_direction_is_identical_in_another_process():
    code = (
        "from tests.test_zo import _digest; import torch; torch.manual_seed(123); torch.randn(5);"
        "print(_digest(987654321, 'gaussian'), _digest(987654321, 'rademacher'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [_digest(987654321, "gaussian"), _digest(987654321, "rademacher")]


def test_rademacher_values_and_global_rng_untouched():
    state = torch.get_rng_state()
    (u,) = directions([torch.zeros(1000)], 5, "rademacher")
    assert set(u.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(state, torch.get_rng_state())


def test_out_of_place_and_in_place_perturbations_agree():
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    copies = perturbed_copies(params, 42, 1e-2)
    inplace = [p.clone() for p in params.values()]
    perturb_(inplace, 42, 1e-2)
    for (name, p), q in zip(params.items(), inplace):
        # p + (mu * u) and p.add_(u, alpha=mu) may round differently (fused kernels): equal up to rounding
        torch.testing.assert_close(copies[name], q, rtol=1e-6, atol=1e-7)
        assert not torch.equal(copies[name], p)  # the originals are untouched


def test_buffer_free_sgd_equals_explicit_estimate():
    torch.manual_seed(0)
    params = [torch.randn(5, 4), torch.randn(4)]
    ref = [p.clone() for p in params]
    seeds, scalars, mu = derive_seeds(3, 1, 0, 6), np.linspace(-1, 1, 6).astype(np.float32), 1e-3
    updater = ZOUpdater(params, OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.0))
    assert updater.buffer_free
    updater.apply(seeds, scalars, mu)
    for p, r, g in zip(params, ref, estimate(ref, seeds, scalars, mu, "gaussian")):
        torch.testing.assert_close(p, r - 0.1 * g, rtol=1e-5, atol=1e-5)
        assert p.grad is None


def test_adamw_update_is_deterministic_across_replicas():
    cfg = OptimizerConfig(name="adamw", lr=1e-2)
    a = [torch.ones(7, 3)]
    b = [torch.ones(7, 3)]
    ua, ub = ZOUpdater(a, cfg), ZOUpdater(b, cfg)
    for r in range(5):
        seeds, scalars = derive_seeds(0, r, 0, 3), np.array([0.3, -0.1, 0.2], np.float32)
        ua.apply(seeds, scalars, 1e-3)
        ub.apply(seeds, scalars, 1e-3)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], torch.ones(7, 3))


@pytest.fixture(scope="module")
def client_and_surrogate():
    """A real HO-SFL client on a digits batch, a fixed feedback g, and the true gradient of <g, f_c>."""
    scenario = load_scenario(tiny_scenario(algorithms=[{"name": "hosfl", "mu": 1e-4}]))
    spec = Engine(scenario, backend=object(), progress=False).spec(0, seed=0)
    client = HOSFLClient(spec)
    upload, _ = client.anchor([], 0, 1, 0)
    g = np.random.default_rng(0).standard_normal(upload["a"].shape).astype(np.float32)
    # autograd reference on a copy of the client part
    x, _ = client.pending[0]
    model = client.model
    params = [p.detach().clone().requires_grad_(True) for p in client.params]
    out = torch.func.functional_call(model, dict(zip(client.names, params)), args=(), kwargs=x)
    torch.sum(out * torch.from_numpy(g)).backward()
    truth = torch.cat([p.grad.flatten() for p in params]).double()
    return client, g, truth


def _client_estimate(client, g, seeds):
    upload, _ = client.anchor([], 0, 1, 0)
    assert upload["a"].dtype == np.float32
    x, a = client.pending[0]
    assert a.grad_fn is None and not a.requires_grad  # the client never builds a graph
    v, _ = client.probe(0, g, seeds)
    est = estimate(client.params, seeds, v, client.spec.algorithm.mu, "gaussian")
    return torch.cat([e.flatten() for e in est]).double()


def test_hosfl_estimate_aligns_with_autograd(client_and_surrogate):
    client, g, truth = client_and_surrogate
    d = truth.numel()
    est = _client_estimate(client, g, derive_seeds(1, 1, 0, 20 * d))
    cos = torch.nn.functional.cosine_similarity(est, truth, dim=0)
    # a Gaussian estimate with P directions has E[cos] ~ sqrt(P / (P + d_c + 1)) = 0.976 here
    assert cos > 0.93, f"cosine {cos:.3f} with P = {20 * d}, d_c = {d}"


def test_hosfl_estimate_is_unbiased(client_and_surrogate):
    client, g, truth = client_and_surrogate
    singles = [_client_estimate(client, g, derive_seeds(2, r, 0, 8)) for r in range(64)]
    err = [float((s - truth).norm() / truth.norm()) for s in singles]
    mean_err = float((torch.stack(singles).mean(0) - truth).norm() / truth.norm())
    # averaging 64 independent estimates shrinks the error ~8x; a biased estimator would plateau
    assert mean_err < 0.3 * np.median(err), (mean_err, np.median(err))
