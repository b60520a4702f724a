"""LocFedMix-SL: its ledger and clock in closed form (with and without the decoder), SmashMix's mixing in closed
form, no feedback from the server to the clients, the round policies, both backends and a resume to the same
numbers, and learning on digits.

The closed forms use the constant profile of test_local_loss_sl (every client computes at F FLOP/s, uplink U and
downlink D bit/s, latency L s; the server at S FLOP/s) and N = K, so every client is sampled every round.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.algorithms import ALGORITHMS
from hosfl_sim.algorithms.locfedmix_sl import LocFedMixServer
from hosfl_sim.algorithms.task import sample_batch, to_wire
from hosfl_sim.config import ConfigError, load_scenario
from hosfl_sim.runtime import Engine
from hosfl_sim.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_scenario
from tests.test_local_loss_sl import ACT, D_AUX, D_C, B, D, F, K, L, U, _tables, constant_system, flops, per_round

assert flops  # the fixture, imported for the tests below
NAME = "locfedmix_sl"
D_DEC = ACT * 64 + 64  # the decoder: the activation to the 8x8 digit (already at most 8x8: not pooled)


def run(tmp_path, algorithm: dict | None = None, system: dict | None = None, runtime: dict | None = None, **fed):
    federation = {"num_clients": K, "clients_per_round": K, "rounds": 2, "batch_size": B, "eval_every": 2, **fed}
    runtime = runtime or {"backend": "local", "num_workers": 2}
    algos = [{"name": NAME, **(algorithm or {})}]
    sc = tiny_scenario(algorithms=algos, federation=federation, system=system or {}, runtime=runtime)
    engine = Engine(load_scenario(sc), progress=False)
    try:
        (summary,) = engine.run_all(tmp_path / f"run{len(list(tmp_path.iterdir()))}")
    finally:
        if runtime["backend"] == "ray":
            engine.close()
    assert summary.status == "completed"
    return (*_tables(summary.run_dir), engine)


def test_registered_with_a_one_line_summary_and_its_options_checked():
    cls = ALGORITHMS[NAME]
    assert "\n" not in cls.summary and "up:" in cls.summary and "down:" in cls.summary
    assert cls.supports_policies and cls.supports_epochs and {"mi_weight", "smashmix", "mix_alpha"} <= cls.options
    for override, path in (("mi_weight=-1", "mi_weight"), ("smashmix=-1", "smashmix"), ("mix_alpha=0", "mix_alpha")):
        with pytest.raises(ConfigError, match=f"algorithms\\[0\\].{path}"):
            load_scenario(tiny_scenario(algorithms=[{"name": NAME}]), [f"algorithms[0].{override}"])


@pytest.mark.parametrize(
    "server_flops, mi_weight, bound", [(1e12, 0.5, "clients"), (1e12, 0.0, "clients"), (1e7, 0.5, "server")]
)
def test_ledger_and_clock_in_closed_form(tmp_path, flops, server_flops, mi_weight, bound):
    """Per step a client computes, sends activations and labels and goes straight on. The server's step t starts
    once the step's K uploads are in and it is free, and works through the K real and the smashmix mixed batches;
    the round ends when the weights are in and the server is through its steps."""
    steps, mix = 3, 2
    algo = {"local_steps": steps, "mi_weight": mi_weight, "smashmix": mix}
    rounds, clients, _ = run(tmp_path, algo, constant_system(server_flops), rounds=3)
    dec = D_DEC if mi_weight > 0 else 0  # no decoder without its loss term
    weights = 4 * (D_C + D_AUX + dec)
    grown = per_round(rounds)
    assert (grown["bytes_act_up"] == K * steps * B * ACT * 4).all()
    assert (grown["bytes_labels_up"] == K * steps * B * 8).all()
    assert (grown["bytes_model_up"] == K * weights).all() and (grown["bytes_model_down"] == K * weights).all()
    for col in ("bytes_grad_down", "bytes_scalar_up", "bytes_scalar_down", "bytes_seed_down"):
        assert (grown[col] == 0).all(), col
    assert (clients["bytes_up"] == steps * B * (ACT * 4 + 8) + weights).all() and (
        clients["bytes_down"] == weights
    ).all()

    up = lambda n: n * 8 / U + L  # noqa: E731
    compute = (3 * flops["fc"] + 3 * 2 * B * ACT * (10 + (64 if dec else 0))) / F  # forward + backward, aux products
    step = compute + up(4 * B * ACT) + up(8 * B)
    arrive = [weights * 8 / D + L + (s + 1) * step for s in range(steps)]
    clients_done = arrive[-1] + up(weights)
    free = 0.0
    for a in arrive:  # one server step per local step: K real and `mix` mixed batches, 3x a forward each
        free = max(free, a) + (K + mix) * 3 * flops["fs"] / server_flops
    assert (clients_done > free) == (bound == "clients")
    assert rounds["round_duration_s"].tolist() == pytest.approx([max(clients_done, free)] * 3, rel=1e-12)
    assert clients["finish_s"].tolist() == pytest.approx([clients_done] * 3 * K, rel=1e-12)
    assert clients["compute_s"].tolist() == pytest.approx([steps * compute] * 3 * K, rel=1e-12)


def test_smashmix_of_an_upload_with_its_twin_is_the_upload(tmp_path):
    """lambda a + (1 - lambda) a = a and lambda CE(y) + (1 - lambda) CE(y) = CE(y): with two identical uploads the
    mixed batches are copies of the real ones, so one step with any number of them is the step without; with two
    different uploads they are not."""
    sc = tiny_scenario(algorithms=[{"name": NAME, "smashmix": 3, "server_optimizer": {"name": "sgd", "lr": 0.1}}])
    engine = Engine(load_scenario(sc), backend=object(), progress=False)
    spec = engine.spec(0, 0)
    split = spec.build_model()
    uploads = []
    for cid in (0, 1):
        feats, labels = sample_batch(spec, cid, 1, 0)
        with torch.no_grad():
            uploads.append({"a": to_wire(split.client(x=torch.from_numpy(feats["x"]))), "side": {}, "y": labels})

    def after(*ups: dict, smashmix: int) -> dict[str, torch.Tensor]:
        server = LocFedMixServer(replace(spec, algorithm=spec.algorithm.model_copy(update={"smashmix": smashmix})))
        server.mix_step(1, 0, *ups)
        return {k: v.clone() for k, v in server.server.state_dict().items()}

    twins = after(uploads[0], uploads[0], smashmix=3)
    plain = after(uploads[0], uploads[0], smashmix=0)
    for name, value in plain.items():
        torch.testing.assert_close(twins[name], value, msg=name)
    mixed, unmixed = after(*uploads, smashmix=3), after(*uploads, smashmix=0)
    assert any(not torch.allclose(mixed[n], v) for n, v in unmixed.items())


def test_the_server_changes_nothing_the_clients_learn(tmp_path):
    """No gradient comes down: the averaged client part and aux network are the same for any server learning rate
    and any SmashMix; the server part is not."""

    def after_one_round(algo: dict) -> dict[str, dict[str, torch.Tensor]]:
        fed = {"num_clients": 6, "clients_per_round": 3, "rounds": 1, "eval_every": 1}
        _, _, engine = run(tmp_path, {"local_steps": 3, **algo}, **fed)
        role = engine.backend.server_role
        return {
            k: {n: v.clone() for n, v in getattr(role, k).state_dict().items()} for k in ("client", "aux", "server")
        }

    base = after_one_round({"server_optimizer": {"lr": 1e-4}})
    for other in (after_one_round({"server_optimizer": {"lr": 1e-1}}), after_one_round({"smashmix": 4})):
        for part in ("client", "aux"):
            for name, value in base[part].items():
                assert torch.equal(value, other[part][name]), (part, name)
        assert any(not torch.equal(v, other["server"][n]) for n, v in base["server"].items())


def test_a_deadline_keeps_the_fast_clients_and_the_server_learns_from_them_only(tmp_path):
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"client_id": [0, 1, 2, 3], "compute_flops": [F, F, F / 1000, F / 1000]}).to_csv(trace, index=False)
    system = {**constant_system(1e9), "trace": str(trace), "policy": "deadline", "deadline_s": 1.0}
    rounds, clients, _ = run(tmp_path, {"local_steps": 2}, system, num_clients=4, clients_per_round=4)
    clients = clients.sort_values(["round", "client_id"])
    assert clients["status"].tolist() == (["completed"] * 2 + ["straggler_dropped"] * 2) * 2
    assert rounds["samples_seen"].tolist() == [4 * B, 8 * B] and (rounds["round_duration_s"] <= 1.0).all()
    done = clients["status"] == "completed"
    assert clients.loc[done, "train_loss"].notna().all() and clients.loc[~done, "train_loss"].isna().all()


def test_both_backends_give_the_same_numbers(tmp_path, ray_session):
    system = {"compute_flops": {"kind": "lognormal", "median": 1e8, "sigma": 1.0}, "policy": "overcommit"}
    fed = {"num_clients": 8, "clients_per_round": 3, "rounds": 3, "eval_every": 1}
    local = run(tmp_path, {"local_steps": 2}, system, **fed)
    ray = run(tmp_path, {"local_steps": 2}, system, {"backend": "ray", "num_workers": 2}, **fed)
    for a, b in zip(local[:2], ray[:2]):
        pd.testing.assert_frame_equal(b, a, check_exact=True)
    assert (local[0]["num_dropped"] > 0).all()


def test_a_resumed_run_gives_the_same_numbers(tmp_path):
    class StopInRound3(Engine):
        def _divergence(self, result, row, completed):
            if row["round"] == 3:
                self.request_stop()
            return super()._divergence(result, row, completed)

    fed = {"num_clients": 12, "clients_per_round": 3, "rounds": 5, "batch_size": 32, "eval_every": 2}
    sc = load_scenario(tiny_scenario(algorithms=[{"name": NAME, "local_epochs": 1}], federation=fed))
    (reference,) = Engine(sc, progress=False).run_all(tmp_path / "reference")
    out = tmp_path / "stopped"
    assert StopInRound3(sc, progress=False).run_one(0, 0, out).status == "interrupted"
    assert load_checkpoint(out)["round"] == 3
    assert Engine(sc, progress=False).run_one(0, 0, out, resume=True).status == "completed"
    for got, want in zip(_tables(out), _tables(reference.run_dir)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_learns_digits_in_twenty_rounds(tmp_path):
    """Budget: 20 rounds x 4 clients x 5 steps x 16 samples (6,400 samples, ~3 s); chance is 10 %."""
    fed = {"num_clients": 8, "clients_per_round": 4, "rounds": 20, "batch_size": B, "eval_every": 20}
    algo = {"local_steps": 5, "client_optimizer": {"lr": 3e-3}, "server_optimizer": {"lr": 3e-3}}
    rounds, _, _ = run(tmp_path, algo, **fed)
    assert rounds["test_acc"].iloc[-1] > 0.8
    assert rounds["train_loss"].iloc[-3:].mean() < 0.5 * rounds["train_loss"].iloc[0]
    assert np.isfinite(rounds["train_loss"]).all()


def test_its_memory_mode_holds_the_decoder_besides_the_local_loss_client():
    """The LocFedMix-SL client is the local-loss client plus its decoder: parameters, gradients and AdamW moments of
    (ACT x 64 + 64) more values, exactly; `hosfl-sim memory` lists it and FedSplitX's clients at the deeper cuts."""
    from hosfl_sim.memory.meter import MemoryMeter
    from hosfl_sim.memory_modes import build_modes, local_loss_mode, locfedmix_mode, measure_mode, scenario_spec

    sc = load_scenario(tiny_scenario(federation={"num_clients": 8, "clients_per_round": 3, "batch_size": B}))
    spec = scenario_spec(sc)
    meter = MemoryMeter("cpu")
    mix, local = (measure_mode(m, meter) for m in (locfedmix_mode(spec, "adamw"), local_loss_mode(spec, "adamw")))
    decoder = 4 * D_DEC
    assert mix["params"] - local["params"] == mix["grads"] - local["grads"] == decoder
    assert mix["optimizer_state"] - local["optimizer_state"] == 2 * decoder + 2 * 4  # moments; a step count a tensor
    names = [m.mode for m in build_modes(spec, ("adamw",))]
    assert "LocFedMix-SL client (+ aux, decoder)" in names
    assert [n for n in names if n.startswith("FedSplitX")] == [
        f"FedSplitX client at {c} (+ aux head)" for c in ("block2", "block3")
    ]


def test_a_text_task_trains_the_classifier_head_alone(tmp_path):
    """Token ids have nothing to reconstruct: no decoder travels, and the run learns from the classifier head."""
    from hosfl_sim.config import to_dict
    from tests.test_language import tiny_cfg
    from tests.test_language_runs import _keyword_task

    data, tokenizer, vocab = _keyword_task(tmp_path)
    model = to_dict(tiny_cfg("opt", vocab, overrides={"tokenizer": tokenizer, "padding_side": "left"}))
    sc = {
        "task": {
            "dataset": {"name": "files", "path": data, "text_column": "sentence", "max_length": 8},
            "model": model,
        },
        "algorithms": [{"name": NAME, "smashmix": 2}],
        "federation": {"num_clients": 6, "clients_per_round": 3, "rounds": 2, "batch_size": 8, "eval_every": 1},
        "runtime": {"backend": "local", "num_workers": 1},
    }
    engine = Engine(load_scenario(sc), progress=False)
    (summary,) = engine.run_all(tmp_path / "run")
    rounds = pd.read_parquet(summary.run_dir / "rounds.parquet")
    assert summary.status == "completed" and np.isfinite(rounds["train_loss"]).all()
    assert set(engine.backend.server_role.aux) == {"head"} and (rounds["bytes_grad_down"] == 0).all()
