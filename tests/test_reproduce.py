"""`hosfl-sim reproduce`: the paper's tables end to end on data and weights the test builds locally (a CIFAR-shaped
npz, a random ResNet-18 in a Hugging Face cache, a tiny random OPT cached as facebook/opt-125m, GLUE-layout TSV
folders), with every cell's published number beside ours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hosfl_sim.cli import main
from hosfl_sim.config import ConfigError
from hosfl_sim.reproduce import published, table_sweep
from hosfl_sim.runtime.sweep_plan import plan_sweep
from tests.test_pretrained import imagenet_like_state, make_hub_cache

SMALL = ["federation.num_clients=10", "federation.clients_per_round=3", "task.partition.min_size=4"]


def test_the_tables_hold_the_papers_grid_and_budget():
    vision = plan_sweep(table_sweep("vision", scale=1.0))
    assert len(vision) == 4 * 5 * 10  # cells x algorithms x the paper's 10 seeds
    sc = vision[0].scenario
    assert sc.federation.budget_samples == 160_000 and sc.task.model.weights == "imagenet"
    assert sc.task.model.cut == "layer2" and sc.federation.num_clients == 100 and sc.federation.clients_per_round == 10
    sfl = next(r for r in vision if r.algorithm == "SFL")
    algo = sfl.scenario.algorithms[sfl.index]
    assert algo.name == "splitfed_v1" and algo.local_epochs == 1 and sfl.scenario.federation.eval_every == 1
    small = plan_sweep(table_sweep("language", scale=0.02))
    assert len(small) == 6 * 3 and {r.seed for r in small} == {0}
    assert small[0].scenario.federation.budget_samples == 1600
    names = {r.scenario.task.model.name: r.scenario.task.model.cut for r in small}
    assert names == {"facebook/opt-125m": 3, "google/gemma-3-270m": 5, "meta-llama/Llama-3.2-1B": 8}
    rte = next(r.scenario.task for r in small if r.scenario.task.dataset.name == "glue/rte")
    assert rte.model.verbalizer == ["Yes", "No"] and "Yes or No?" in rte.dataset.template
    pub = published("language")
    assert len(pub) == 18 and pub["source"].str.contains("2603.14773").all()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"name": "vision", "scale": 0}, "--scale"),
        ({"name": "vision", "scale": 1.5}, "--scale"),
        ({"name": "tables"}, "TABLE"),
        ({"name": "language", "model": "gpt-9"}, "--model"),
        ({"name": "vision", "model": "minilm"}, "--model"),
        ({"name": "vision", "seeds": 0}, "--seeds"),
        ({"name": "vision", "extra": ["cse_fsl", "not_a_method"]}, "--with[1]"),
    ],
)
def test_bad_arguments_fail_naming_the_field(args, field):
    with pytest.raises(ConfigError) as e:
        table_sweep(**args)
    assert e.value.path == field


def use_cache(monkeypatch, path) -> None:
    """The Hugging Face cache at `path`, for the runs (Ray tasks read HF_HUB_CACHE as they start) and for this
    process (which read it when it imported huggingface_hub)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))


def _cifar_npz(path, classes: int, n: int = 300) -> None:
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, n + 100)
    x = rng.integers(0, 256, (n + 100, 32, 32, 3), dtype=np.uint8)
    np.savez(path, x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])


def _read_table(out) -> pd.DataFrame:
    assert (out / "reproduce.md").is_file() and (out / "reproduce.png").stat().st_size > 0
    return pd.read_csv(out / "reproduce.csv")


def test_reproduce_vision_at_a_small_scale_runs_every_cell(tmp_path, monkeypatch, capsys, ray_session):
    width = 8
    make_hub_cache(tmp_path / "hub", imagenet_like_state(width))
    use_cache(monkeypatch, tmp_path / "hub")
    data = tmp_path / "data"
    data.mkdir()
    _cifar_npz(data / "cifar10.npz", 10)
    _cifar_npz(data / "cifar100.npz", 100)
    out = tmp_path / "vision"
    args = ["reproduce", "vision", *SMALL, f"task.model.width={width}"]
    args += ["--scale", "0.001", "--data", str(data), "--out", str(out)]
    assert main(args) == 0
    table = _read_table(out)
    assert len(table) == 4 * 5 and (table["seeds"] == 1).all() and (table["not_completed"] == 0).all()
    # MU-SplitFed's reference SGD may diverge from a random start on noise; the others must give a number
    steady = table[table["diverged"] == 0]
    assert set(steady["algorithm"]) >= {"HO-SFL", "SFL", "SFL-ZO", "FSL-SAGE"}
    assert steady["ours"].between(0, 100).all()
    hosfl = table[table["algorithm"] == "HO-SFL"].set_index(["dataset", "partition"])
    assert hosfl.loc[("cifar10", "iid"), "paper"] == 75.0 and hosfl.loc[("cifar100", "dirichlet"), "paper"] == 42.5
    np.testing.assert_allclose(hosfl["diff"], hosfl["ours"] - hosfl["paper"])
    printed = capsys.readouterr().out
    assert "| cifar10 | iid | resnet18 | HO-SFL | 1 |" in printed and "| 75.0 |" in printed
    # every run started from the cached ImageNet weights and stopped at the (scaled) budget
    index = pd.read_parquet(out / "sweep_index.parquet")
    ended = index["status"] == "completed"
    assert (index.loc[ended, "samples_seen"] >= 160).all() and index["status"].isin(["completed", "diverged"]).all()
    assert sorted({p.split("/")[0] for p in index["path"]}) == [
        "description-cifar100_dirichlet_resnet18",
        "description-cifar100_iid_resnet18",
        "description-cifar10_dirichlet_resnet18",
        "description-cifar10_iid_resnet18",
    ]
    # a resume finds everything done and rewrites the same table
    assert main([*args, "--resume"]) == 0
    pd.testing.assert_frame_equal(_read_table(out), table)


def _tiny_opt_in_cache(hub) -> None:
    """A tiny random OPT with a word-level tokenizer, cached under the id facebook/opt-125m."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "<s>", "</s>", "bad", "good", "Yes", "No", *[f"w{i}" for i in range(24)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    cfg = OPTConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=4, ffn_dim=32, num_attention_heads=2,
                    word_embed_proj_dim=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                    eos_token_id=3)  # fmt: skip
    torch.manual_seed(0)
    snapshot = hub / "models--facebook--opt-125m" / "snapshots" / ("1" * 40)
    OPTForCausalLM(cfg).save_pretrained(snapshot)
    fast.save_pretrained(snapshot)
    (hub / "models--facebook--opt-125m" / "refs").mkdir()
    (hub / "models--facebook--opt-125m" / "refs" / "main").write_text("1" * 40)


def _glue_folders(root) -> None:
    rng = np.random.default_rng(0)
    for task, n in (("sst2", 200), ("rte", 120)):
        folder = root / task
        folder.mkdir(parents=True)
        for split, size in (("train", n), ("dev", 40)):
            label = rng.integers(0, 2, size)
            text = [" ".join(rng.choice([f"w{i}" for i in range(24)], 5)) + f" {'good' if v else 'bad'}" for v in label]
            if task == "sst2":
                df = pd.DataFrame({"sentence": text, "label": label})
            else:
                df = pd.DataFrame({"index": range(size), "sentence1": text, "sentence2": text,
                                   "label": np.where(label == 0, "entailment", "not_entailment")})  # fmt: skip
            df.to_csv(folder / f"{split}.tsv", sep="\t", index=False)


def test_reproduce_language_at_a_small_scale_runs_every_cell_of_one_model(tmp_path, monkeypatch, capsys, ray_session):
    _tiny_opt_in_cache(tmp_path / "hub")
    use_cache(monkeypatch, tmp_path / "hub")
    _glue_folders(tmp_path / "glue")
    out = tmp_path / "language"
    args = ["reproduce", "language", "task.dataset.max_length=12", "federation.num_clients=6"]
    args += ["--model", "opt-125m", "--scale", "0.004", "--data", str(tmp_path / "glue"), "--out", str(out)]
    assert main(args) == 0
    table = _read_table(out)
    ran = table[table["seeds"] == 1]
    assert len(ran) == 2 * 3 and (ran["model"] == "opt-125m").all() and ran["ours"].between(0, 100).all()
    assert set(ran["algorithm"]) == {"HO-SFL", "SplitLoRA", "ZO-SFL"}
    # the published cells of the other models are listed beside ours
    assert len(table) == 18 and table.loc[table["model"] == "llama-3.2-1b", "ours"].isna().all()
    row = ran[(ran["dataset"] == "sst2") & (ran["algorithm"] == "HO-SFL")].iloc[0]
    assert row["paper"] == 87.6
    assert "| sst2 | iid | opt-125m | HO-SFL | 1 |" in capsys.readouterr().out


def test_reproduce_memory_and_communication_on_the_papers_models(tmp_path, monkeypatch, capsys, ray_session):
    """memory: the four modes of ResNet-18 (cut layer2) and of the offline MiniLM, measured here; communication:
    one round of every algorithm of both tables, the bytes per client as the ledger charged them."""
    width = 8
    make_hub_cache(tmp_path / "hub", imagenet_like_state(width))
    use_cache(monkeypatch, tmp_path / "hub")
    data = tmp_path / "data"
    _glue_folders(data)
    _cifar_npz(data / "cifar10.npz", 10)
    common = [*SMALL, f"task.model.width={width}", "task.dataset.max_length=16", "--model", "minilm"]
    common += ["--data", str(data)]

    assert main(["reproduce", "memory", *common, "--out", str(tmp_path / "mem")]) == 0
    mem = pd.read_csv(tmp_path / "mem" / "memory.csv")
    assert list(dict.fromkeys(mem["model"])) == ["resnet18", "minilm"]
    for model, rows in mem.groupby("model"):
        # the paper's four, the local-loss, HERON-SFL and HOSL clients; on the images also the LocFedMix-SL client
        # and the FedSplitX client at the deeper cut layer3
        modes = set(rows["mode"])
        assert len(modes) == {"resnet18": 9, "minilm": 7}[model] and (rows["total"] > 0).all()
    assert "resnet18, cut layer2, batch 32, cpu" in capsys.readouterr().out
    assert (tmp_path / "mem" / "resnet18" / "memory_modes.png").stat().st_size > 0

    assert main(["reproduce", "communication", *common, "--out", str(tmp_path / "comm")]) == 0
    comm = pd.read_csv(tmp_path / "comm" / "communication.csv").set_index(["model", "algorithm"])
    assert len(comm) == 5 + 3 and (comm["status"] == "completed").all()
    # HO-SFL: activations up and cut gradients down of one batch, P scalars up, P seeds + P scalars down
    hosfl = comm.loc[("resnet18", "HO-SFL")]
    assert hosfl["act_up"] == hosfl["grad_down"] > 0 and hosfl["scalar_up"] == 4 * 5
    assert hosfl["seed_down"] == 8 * 5 and hosfl["model_up"] == 0
    # the paper's SFL moves weights both ways, a whole epoch of activations (here 30 rows: one batch), no scalar
    sfl = comm.loc[("resnet18", "SFL")]
    assert sfl["model_up"] > 0 and sfl["act_up"] == hosfl["act_up"] and sfl["scalar_up"] == 0
    assert comm.loc[("minilm", "SplitLoRA"), "model_up"] > 0
    assert (tmp_path / "comm" / "communication.md").read_text().count("| resnet18 |") == 5
    assert (tmp_path / "comm" / "communication.png").stat().st_size > 0


def test_resource_tables_refuse_a_scale_or_seeds(capsys):
    assert main(["reproduce", "memory", "--scale", "0.5"]) == 2
    assert main(["reproduce", "communication", "--seeds", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: --scale: got 0.5, expected nothing for the memory table")
    assert err[1].startswith("error: --seeds: got 3, expected nothing for the communication table")


def test_missing_weights_offline_fail_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for table in ("vision", "language"):
        out = tmp_path / table
        assert main(["reproduce", table, "--scale", "0.01", "--out", str(out)]) == 2
        assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith("error: task.model.weights: got 'imagenet', expected files in the Hugging Face cache")
    assert err[1].startswith("error: task.model.name: got 'facebook/opt-125m'") and "HF_HUB_OFFLINE" in err[1]


def test_a_table_can_include_methods_beyond_the_papers():
    """`hosfl-sim reproduce vision --with local_loss_sl --with cse_fsl`: every cell also runs them, with defaults."""
    plain = plan_sweep(table_sweep("vision", scale=1.0))
    more = plan_sweep(table_sweep("vision", scale=1.0, extra=["local_loss_sl", "cse_fsl"]))
    cells = {r.path.split("/")[0] for r in plain}
    added = [r for r in more if r.scenario.algorithms[0].name in ("local_loss_sl", "cse_fsl")]
    assert len(more) == len(plain) + len(added) and len(added) == 2 * len(cells) * len(plain[0].scenario.seeds)
    assert {r.path.split("/")[0] for r in added} == cells


def test_a_table_on_gpus_reserves_each_runs_share_and_runs_it_on_cuda():
    import argparse

    from hosfl_sim.reproduce.command import on_device

    spec = table_sweep("vision", scale=0.01)
    on_gpu = on_device(spec, argparse.Namespace(device="cuda", gpus_per_run=0.25))
    runs = plan_sweep(on_gpu)
    assert len(runs) == len(plan_sweep(spec)) and {r.num_gpus for r in runs} == {0.25}
    assert {r.scenario.runtime.device for r in runs} == {"cuda"}
    assert on_device(spec, argparse.Namespace(device="cpu", gpus_per_run=0.25)) == spec
    for share in (0, 1.5, -1):
        with pytest.raises(ConfigError) as e:
            on_device(spec, argparse.Namespace(device="cuda", gpus_per_run=share))
        assert e.value.path == "--gpus-per-run"
