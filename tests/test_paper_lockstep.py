"""HO-SFL and MU-SplitFed as the paper's runners do them, step by step, against independent loops written from
the published pseudo-code; they share only the data, the initial weights and the perturbation generator with the
project, not its algorithm code. HO-SFL (vision runner): one shared client model in eval mode, one mini-batch
per sampled client, each loss back-propagated with weight 1/S, the server's gradient divided by S again,
v_p = <f(theta + mu u_p) - a, g>, v averaged over the clients, theta's gradient sum_p v_p u_p / (P mu)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hosfl_sim.config import load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.zo import derive_seeds, directions
from tests.conftest import tiny_scenario

N, K, B, P, MU, ROUNDS, SEED = 6, 3, 16, 3, 1e-3, 3, 0


SGD = {"name": "sgd", "lr": 0.05, "weight_decay": 0.0}  # blind to no scale (AdamW is to nearly all)
UNEVEN = {
    "dataset": {"name": "digits", "max_train": 300},
    "partition": {"scheme": "dirichlet", "alpha": 0.5, "min_size": 20},
}


def run_project(tmp_path, algo: dict, model: dict, rounds: int = ROUNDS, task: dict | None = None):
    """The project's run of `algo` on digits: (engine, clients.parquet, the run's TaskSpec)."""
    data = tiny_scenario(
        task={"dataset": {"name": "digits"}, **(task or {}), "model": model},
        algorithms=[algo],
        federation={"num_clients": N, "clients_per_round": K, "rounds": rounds, "batch_size": B, "eval_every": 3},
    )
    engine = Engine(load_scenario(data), progress=False)
    (summary,) = engine.run_all(tmp_path / "runs")
    return engine, pd.read_parquet(summary.run_dir / "clients.parquet"), engine.spec(0, SEED)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("scales", [("1/K", "1/K^2"), ("1", "1/K")], ids=["paper-vision", "ours"])
def test_hosfl_matches_the_reference_loop_in_lock_step(tmp_path, scales, optimizer):
    cut_scale, server_scale = scales
    algo = {"name": "hosfl", "perturbations": P, "mu": MU, "cut_grad_scale": cut_scale}
    algo["server_grad_scale"] = server_scale
    if optimizer == "sgd":
        algo["client_optimizer"] = algo["server_optimizer"] = SGD
    engine, clients, spec = run_project(tmp_path, algo, {"name": "cnn", "cut": "block2", "width": 4})
    split = spec.build_model()
    client, server = split.client.eval(), split.server.train()
    theta = [p for p in client.parameters() if p.requires_grad]
    for p in client.parameters():
        p.requires_grad_(False)

    def make(params: list) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=SGD["lr"])
        return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4)

    opt_c, opt_s = make(theta), make(list(server.parameters()))
    for rnd in range(1, ROUNDS + 1):
        sampled = clients.loc[clients["round"] == rnd, "client_id"].tolist()
        seeds = derive_seeds(SEED, rnd, 0, P)
        s = len(sampled)
        w = 1.0 / s if cut_scale == "1/K" else 1.0
        opt_s.zero_grad()
        v = np.zeros((s, P))
        for i, cid in enumerate(sampled):
            rows = spec.partition.client_indices(cid)
            pick = np.random.default_rng([SEED, 7, cid, rnd, 0]).choice(
                len(rows), size=min(B, len(rows)), replace=False
            )
            feats, y = spec.train.batch(np.sort(rows[pick]))
            x = torch.from_numpy(feats["x"]).float()
            with torch.no_grad():
                a = client(x=x)
            a_in = a.clone().requires_grad_(True)
            loss = F.cross_entropy(server(a_in), torch.from_numpy(y).long())
            loss.backward(torch.tensor(w))
            g = a_in.grad
            with torch.no_grad():
                for j, seed in enumerate(seeds):
                    us = list(directions(theta, int(seed)))
                    for p, u in zip(theta, us):
                        p.add_(u, alpha=MU)
                    v[i, j] = float(((client(x=x) - a) * g).sum())
                    for p, u in zip(theta, us):
                        p.sub_(u, alpha=MU)
        for p in server.parameters():  # the accumulated w * sum_k grad_k, divided by S once more
            p.grad.div_(s)
        opt_s.step()
        v_bar = v.mean(axis=0)
        for p in theta:
            p.grad = torch.zeros_like(p)
        for seed, vb in zip(seeds, v_bar):
            for p, u in zip(theta, directions(theta, int(seed))):
                p.grad.add_(u, alpha=float(vb) / (P * MU))
        opt_c.step()

    role = engine.backend.server_role
    for ours, theirs in ((role.client, client), (role.server, server)):
        got, want = ours.state_dict(), theirs.state_dict()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def _sampled_batch(spec, cid: int, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's one mini-batch of a client in a round, drawn as the simulator seeds it."""
    rows = spec.partition.client_indices(cid)
    pick = np.random.default_rng([SEED, 7, cid, rnd, 0]).choice(len(rows), size=min(B, len(rows)), replace=False)
    feats, y = spec.train.batch(np.sort(rows[pick]))
    return torch.from_numpy(feats["x"]).float(), torch.from_numpy(y).long()


def _shifted(params: dict[str, torch.Tensor], u: list[torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    return {n: p + scale * d for (n, p), d in zip(params.items(), u)}


def test_mu_splitfed_matches_the_reference_loop_in_lock_step(tmp_path):
    """MU-SplitFed as the authors' runner: per sampled client fresh copies of both sides, tau two-sided server ZO
    steps on the fixed anchor, then one client ZO step whose loss difference goes through the updated server
    copy, SGD on both sides; then theta += 0.3 * mean_k(theta_k - theta) on both sides."""
    from torch.func import functional_call

    tau, lr_c, lr_s, mu, glr = 2, 0.005, 0.01, 0.005, 0.3  # the reference settings
    algo = {"name": "mu_splitfed", "mu": mu, "server_steps": tau, "global_lr": glr}
    algo |= {"client_optimizer": {**SGD, "lr": lr_c}, "server_optimizer": {**SGD, "lr": lr_s}}
    engine, clients, spec = run_project(tmp_path, algo, {"name": "cnn", "cut": "block2", "width": 4})
    split = spec.build_model()
    glob_c, glob_s = split.client.eval(), split.server.eval()
    for p in [*glob_c.parameters(), *glob_s.parameters()]:
        p.requires_grad_(False)

    def loss_at(module, params, a, y) -> float:
        return float(F.cross_entropy(functional_call(module, params, (a,)), y))

    for rnd in range(1, ROUNDS + 1):
        sampled = clients.loc[clients["round"] == rnd, "client_id"].tolist()
        new_c, new_s = [], []
        for cid in sampled:
            pc = {n: p.clone() for n, p in glob_c.named_parameters()}
            ps = {n: p.clone() for n, p in glob_s.named_parameters()}
            x, y = _sampled_batch(spec, cid, rnd)
            a = functional_call(glob_c, pc, (), {"x": x})
            for seed in derive_seeds(SEED, rnd, 0, tau, stream=2 * cid + 1):
                v = list(directions(list(ps.values()), int(seed)))
                diff = loss_at(glob_s, _shifted(ps, v, mu), a, y) - loss_at(glob_s, _shifted(ps, v, -mu), a, y)
                ps = {n: p - lr_s * (diff / (2 * mu)) * d for (n, p), d in zip(ps.items(), v)}
            seed = int(derive_seeds(SEED, rnd, 0, 1, stream=2 * cid)[0])
            u = list(directions(list(pc.values()), seed))
            a_plus = functional_call(glob_c, _shifted(pc, u, mu), (), {"x": x})
            a_minus = functional_call(glob_c, _shifted(pc, u, -mu), (), {"x": x})
            diff = loss_at(glob_s, ps, a_plus, y) - loss_at(glob_s, ps, a_minus, y)
            pc = {n: p - lr_c * (diff / (2 * mu)) * d for (n, p), d in zip(pc.items(), u)}
            new_c.append(pc)
            new_s.append(ps)
        with torch.no_grad():
            for module, copies in ((glob_c, new_c), (glob_s, new_s)):
                for n, p in module.named_parameters():
                    p.add_(glr * (torch.stack([c[n] for c in copies]).double().mean(0) - p.double()).float())

    role = engine.backend.server_role
    for ours, theirs in ((role.client, glob_c), (role.server, glob_s)):
        got = dict(ours.named_parameters())
        for key, want in theirs.named_parameters():
            torch.testing.assert_close(got[key], want, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_sfl_zo_v1_matches_the_reference_loop_in_lock_step(tmp_path, optimizer):
    """SFL-ZO as the authors' runner: per sampled client fresh copies of both sides and fresh optimizers, one
    local epoch (ceil(n / B) steps), per step P joint two-sided estimates ((l+ - l-) / (2 mu P)) (u, v) on both
    sides, then both sides averaged by partition size."""
    import math

    p_dirs, mu = 2, 1e-3
    sgd = {**SGD, "lr": 0.002}  # zeroth-order SGD amplifies rounding: a small step keeps the two loops in tolerance
    algo = {"name": "sfl_zo_v1", "perturbations": p_dirs, "mu": mu, "local_epochs": 1}
    if optimizer == "sgd":
        algo["client_optimizer"] = algo["server_optimizer"] = sgd
    engine, clients, spec = run_project(tmp_path, algo, {"name": "cnn", "cut": "block2", "width": 4}, task=UNEVEN)
    sizes = spec.partition.sizes()
    split = spec.build_model()
    glob_c, glob_s = split.client.eval(), split.server.eval()
    for p in [*glob_c.parameters(), *glob_s.parameters()]:
        p.requires_grad_(False)

    def make(params: list) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=sgd["lr"])
        return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4)

    from torch.func import functional_call

    for rnd in range(1, ROUNDS + 1):
        sampled = clients.loc[clients["round"] == rnd, "client_id"].tolist()
        new_c, new_s = [], []
        for cid in sampled:
            pc = {n: p.clone() for n, p in glob_c.named_parameters()}
            ps = {n: p.clone() for n, p in glob_s.named_parameters()}
            opt_c, opt_s = make(list(pc.values())), make(list(ps.values()))
            rows = spec.partition.client_indices(cid)
            order = np.random.default_rng([SEED, 13, cid, rnd, 0]).permutation(len(rows))
            for step in range(math.ceil(len(rows) / B)):
                feats, y = spec.train.batch(np.sort(rows[order[step * B : (step + 1) * B]]))
                x, y = torch.from_numpy(feats["x"]).float(), torch.from_numpy(y).long()
                grad_c = [torch.zeros_like(p) for p in pc.values()]
                grad_s = [torch.zeros_like(p) for p in ps.values()]
                seeds_c = derive_seeds(SEED, rnd, step, p_dirs, stream=2 * cid)
                seeds_s = derive_seeds(SEED, rnd, step, p_dirs, stream=2 * cid + 1)
                for sc, ss in zip(seeds_c, seeds_s):
                    u = list(directions(list(pc.values()), int(sc)))
                    v = list(directions(list(ps.values()), int(ss)))
                    loss = []
                    for sign in (1, -1):
                        a = functional_call(glob_c, _shifted(pc, u, sign * mu), (), {"x": x})
                        loss.append(
                            float(F.cross_entropy(functional_call(glob_s, _shifted(ps, v, sign * mu), (a,)), y))
                        )
                    coef = (loss[0] - loss[1]) / (2 * mu * p_dirs)
                    for g, d in zip(grad_c, u):
                        g.add_(d, alpha=coef)
                    for g, d in zip(grad_s, v):
                        g.add_(d, alpha=coef)
                for params, grads, opt in ((pc, grad_c, opt_c), (ps, grad_s, opt_s)):
                    for p, g in zip(params.values(), grads):
                        p.grad = g
                    opt.step()
            new_c.append(pc)
            new_s.append(ps)
        w = sizes[sampled].astype(np.float64) / sizes[sampled].sum()
        with torch.no_grad():
            for module, copies in ((glob_c, new_c), (glob_s, new_s)):
                for n, p in module.named_parameters():
                    p.copy_(sum(wi * c[n].double() for wi, c in zip(w, copies)).float())

    role = engine.backend.server_role
    for ours, theirs in ((role.client, glob_c), (role.server, glob_s)):
        got = dict(ours.named_parameters())
        for key, want in theirs.named_parameters():
            torch.testing.assert_close(got[key], want, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_fsl_sage_persistent_matches_the_reference_loop_in_lock_step(tmp_path):
    """FSL-SAGE as the authors' vision runner (three rounds, a small ResNet): per-client aux models aligned at
    each round's start on the client's buffer (targets from the server as the round starts, in eval mode), the
    clients one after another on their aux gradients, the shared server stepped at every `interval`-th step,
    the client parts averaged by size. Only the aux models' initial weights come from the project."""
    import copy
    import math

    from hosfl_sim.algorithms.fsl_sage_persistent import align_order, cut_channels, initial_aux

    interval, passes, keep, batch = 2, 2, 40, 16
    algo = {"name": "fsl_sage_persistent", "local_epochs": 1, "align_every": interval, "aux_passes": passes}
    algo |= {"aux_buffer_samples": keep, "aux_batch": batch}
    model = {"name": "resnet18_cifar", "cut": "layer1", "width": 4}
    engine, clients, spec = run_project(tmp_path, algo, model, task=UNEVEN)
    sizes = spec.partition.sizes()
    split = spec.build_model()
    glob_c, server = split.client, split.server.eval()

    def adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4)

    def input_grad(module, a, y, create_graph=False) -> torch.Tensor:
        a = a.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(module(a), y), a, create_graph=create_graph)[0]

    opt_s, aux = adamw(server), {}
    for rnd in range(1, ROUNDS + 1):
        sampled = clients.loc[clients["round"] == rnd, "client_id"].tolist()
        for cid in sampled:  # alignment first, all of it from the server as the round starts
            if cid not in aux:
                m = initial_aux(spec, cut_channels(spec, glob_c, ("x",)), cid)
                aux[cid] = [m, torch.optim.Adam(m.parameters(), lr=1e-3), None, None]
            m, opt, buf_a, buf_y = aux[cid]
            m.train()
            if buf_a is not None:
                target = input_grad(server, buf_a, buf_y)
                order = align_order(spec, rnd, cid)
                for _ in range(passes):
                    for idx in torch.randperm(len(buf_y), generator=order).split(batch):
                        g = input_grad(m, buf_a[idx], buf_y[idx], create_graph=True)
                        opt.zero_grad()
                        ((g - target[idx]) ** 2).sum().backward()
                        opt.step()
        trained = []
        for cid in sampled:  # then the clients, one after another
            c, m = copy.deepcopy(glob_c).train(), aux[cid][0]
            opt_c = adamw(c)
            rows = spec.partition.client_indices(cid)
            assert len(rows) % B != 1  # no last batch of one to skip here
            order = np.random.default_rng([SEED, 13, cid, rnd, 0]).permutation(len(rows))
            for step in range(math.ceil(len(rows) / B)):
                feats, y = spec.train.batch(np.sort(rows[order[step * B : (step + 1) * B]]))
                y = torch.from_numpy(y).long()
                opt_c.zero_grad()
                z = c(x=torch.from_numpy(feats["x"]).float())
                if step % interval == 0:
                    opt_s.zero_grad()
                    F.cross_entropy(server(z.detach()), y).backward()
                    opt_s.step()
                    a_old, y_old = aux[cid][2], aux[cid][3]
                    aux[cid][2] = (z.detach() if a_old is None else torch.cat([a_old, z.detach()]))[-keep:]
                    aux[cid][3] = (y if y_old is None else torch.cat([y_old, y]))[-keep:]
                z.backward(input_grad(m, z, y))
                opt_c.step()
            trained.append(c)
        w = sizes[sampled].astype(np.float64) / sizes[sampled].sum()
        with torch.no_grad():
            state = glob_c.state_dict()
            for key in [n for n, p in glob_c.named_parameters() if p.requires_grad] + [
                k for k in state if k.endswith(("running_mean", "running_var"))
            ]:
                state[key].copy_(sum(wi * t.state_dict()[key].double() for wi, t in zip(w, trained)).float())

    role = engine.backend.server_role
    pairs = [(role.client.state_dict(), glob_c.state_dict()), (role.server.state_dict(), server.state_dict())]
    pairs += [(role.aux_states[cid]["model"], m.state_dict()) for cid, (m, *_) in aux.items()]
    for got, want in pairs:
        for key, value in want.items():
            if key.endswith("num_batches_tracked"):
                continue
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=lambda msg, k=key: f"{k}: {msg}")


def test_fsl_sage_persistent_keeps_its_aux_states_through_a_checkpoint_and_a_rollback(tmp_path):
    """The per-client aux models, Adam states and buffers outlive rounds: they are in the server's state."""
    import io

    from hosfl_sim.runtime.checkpoint import decode, encode

    algo = {"name": "fsl_sage_persistent", "local_epochs": 1, "align_every": 2, "aux_buffer_samples": 40}
    engine, _, _ = run_project(tmp_path, algo, {"name": "cnn", "cut": "block1", "width": 4}, 2, UNEVEN)
    role = engine.backend.server_role
    assert len(role.aux_states) >= K and all(len(s["y"]) > 0 for s in role.aux_states.values())
    buffer = io.BytesIO()
    torch.save(encode(role.state_dict()), buffer)  # as a checkpoint writes and reads it
    buffer.seek(0)
    fresh = type(role)(role.spec)
    fresh.load_state_dict(decode(torch.load(buffer, weights_only=True)))
    role.snapshot()
    before = {cid: {k: v for k, v in s.items() if k != "opt"} for cid, s in role.aux_states.items()}
    role.aux_states.clear()  # what a round that is then rolled back might leave
    role.restore()
    for other in (fresh, role):
        assert set(other.aux_states) == set(before)
        for cid, state in before.items():
            for key in ("a", "y"):
                assert torch.equal(other.aux_states[cid][key], state[key])
            for name, t in state["model"].items():
                assert torch.equal(other.aux_states[cid]["model"][name], t), name


def test_fsl_sage_persistent_refuses_a_task_without_image_activations_before_anything_is_written(tmp_path):
    from hosfl_sim.config import ConfigError

    text = {"name": "sentiment_synthetic", "max_train": 64, "max_test": 16, "max_length": 8}
    data = tiny_scenario(  # a transformer's activations are (B, T, H): no ResNet stage reads them
        task={"dataset": text, "model": {"name": "minilm", "cut": 3}},
        algorithms=[{"name": "fsl_sage_persistent"}],
    )
    with pytest.raises(ConfigError, match=r"algorithms\[0\]\.name: got 'fsl_sage_persistent', expected a vision task"):
        Engine(load_scenario(data), progress=False).validate()
