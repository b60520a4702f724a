# Over 300 lines: one split for every transformer family: the family table, both cut parts, loading and LoRA.
"""Hugging Face transformers cut after layer k, with LoRA adapters, for text classification.

One split for every supported architecture: a small table (`FAMILIES`) says where a family keeps its
embeddings, layers and final norm and how its embeddings are called; everything else is shared. Each
side rebuilds what its layers need from the attention mask it receives, with the library's own mask
functions (`transformers.masking_utils`): the causal + padding mask (decoders) or the padding mask
(encoders), position ids counted over real tokens only (so left padding is handled), and rotary
cos/sin from those position ids where the family has them.

    client(input_ids, attention_mask[, token_type_ids]) -> a        # (B, T, H) hidden states after layer k
    server(a, attention_mask) -> logits                             # (B, num_classes), float32

Importing this module registers `build_language_model` with the split registry, claiming every name
`is_language_model` accepts (the vision models' exact names win).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hosfl_sim.config import ConfigError, ModelConfig
from hosfl_sim.data.text import MINILM_ALIASES, load_tokenizer, pretrained_path
from hosfl_sim.hfhub import hub_error, hub_offline
from hosfl_sim.models.split import SplitModel, register_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# config_overrides keys that are ours, not the Hugging Face config's
_OUR_KEYS = ("random_init", "model_type", "tokenizer", "padding_side")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

Embed = Callable[[nn.ModuleDict, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# ----------------------------------------------------------------------------- families


def _embed_opt(m: nn.ModuleDict, ids, mask, pos, token_types):
    h = m["embed_tokens"](ids)
    if "project_in" in m:
        h = m["project_in"](h)
    return h + m["embed_positions"](mask, 0, position_ids=pos)


def _embed_gpt2(m: nn.ModuleDict, ids, mask, pos, token_types):
    h = m["wte"](ids) + m["wpe"](pos)
    if token_types is not None:  # GPT-2 embeds token types with the word table
        h = h + m["wte"](token_types)
    return m["drop"](h)


def _embed_bert(m: nn.ModuleDict, ids, mask, pos, token_types):
    return m["embeddings"](input_ids=ids, token_type_ids=token_types, position_ids=pos)


def _embed_tokens(m: nn.ModuleDict, ids, mask, pos, token_types):
    return m["embed_tokens"](ids)


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps its pieces, relative to `model.base_model`."""

    causal: bool  # decoder-only: causal mask, last-token pooling
    stem: str  # dotted path to the module holding embeddings and layers ("" = the base model)
    embeddings: tuple[str, ...]  # the stem's submodules `embed` uses (missing or None ones are left out)
    embed: Embed  # (modules, input_ids, attention_mask, position_ids, token_type_ids) -> (B, T, H)
    layers: str  # dotted path of the layer ModuleList under the stem
    final: tuple[str, ...] = ()  # applied after the last layer, in order (final norm, output projection)
    rotary: str | None = None  # rotary embedding module under the stem
    layer_types: bool = False  # layers of several attention types (config.layer_types): a mask and rotary each
    pooler: str | None = None  # encoder pooler under the stem, used by the classifier head
    lora_targets: tuple[str, ...] = ()  # default LoRA targets: the attention's query and value projections
    fan_in_fan_out: bool = False  # GPT-2's Conv1D stores weights transposed


# Another Hugging Face family is one more entry here, once the split-equivalence test passes for it.
FAMILIES: dict[str, Family] = {
    "opt": Family(
        causal=True,
        stem="decoder",
        embeddings=("embed_tokens", "embed_positions", "project_in"),
        embed=_embed_opt,
        layers="layers",
        final=("final_layer_norm", "project_out"),
        lora_targets=("q_proj", "v_proj"),
    ),
    "gpt2": Family(
        causal=True,
        stem="",
        embeddings=("wte", "wpe", "drop"),
        embed=_embed_gpt2,
        layers="h",
        final=("ln_f",),
        lora_targets=("c_attn",),
        fan_in_fan_out=True,
    ),
    "bert": Family(
        causal=False,
        stem="",
        embeddings=("embeddings",),
        embed=_embed_bert,
        layers="encoder.layer",
        pooler="pooler",
        lora_targets=("query", "value"),
    ),
    "llama": Family(
        causal=True,
        stem="",
        embeddings=("embed_tokens",),
        embed=_embed_tokens,
        layers="layers",
        final=("norm",),
        rotary="rotary_emb",
        lora_targets=("q_proj", "v_proj"),
    ),
}
# Gemma 3 (text) is laid out as LLaMA, with sliding-window and full-attention layers, each type with its own mask
# and rotary base; its embedding module scales by sqrt(hidden) itself.
FAMILIES["gemma3_text"] = dataclasses.replace(FAMILIES["llama"], layer_types=True)


def _get(module: nn.Module, path: str) -> Any:
    """The submodule (or attribute) at dotted `path` of `module`, None where a name is missing."""
    obj: Any = module
    for name in filter(None, path.split(".")):
        obj = getattr(obj, name, None)
    return obj


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens: 0, 1, ... from the first real token, whatever the padding side."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


# ----------------------------------------------------------------------------- the two parts


class LayerRun(nn.Module):
    """A run of transformer layers. Builds, from the 2-D attention mask, the attention mask the layers want
    (with the library's mask functions) and the rotary cos/sin, then applies the layers in order."""

    def __init__(
        self, family: Family, config, layers: list[nn.Module], rotary: nn.Module | None, types: list[str] | None
    ):
        super().__init__()
        self.family, self.config = family, config
        self.layers = nn.ModuleList(layers)
        self.rotary = rotary
        self.types = types  # each layer's attention type, for families with several (else None)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import (
            create_bidirectional_mask,
            create_causal_mask,
            create_sliding_window_causal_mask,
        )

        if self.types is not None:  # per type: its mask and its rotary embedding
            assert self.rotary is not None  # families with several layer types are rotary
            make = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
            masks = {t: make[t](self.config, h, attention_mask, None, position_ids=pos) for t in set(self.types)}
            rope = {t: self.rotary(h, pos, t) for t in set(self.types)}
            for layer, t in zip(self.layers, self.types):
                h = layer(h, attention_mask=masks[t], position_embeddings=rope[t], position_ids=pos)
            return h  # (B, T, H)
        if self.family.causal:
            mask = create_causal_mask(self.config, h, attention_mask, None, position_ids=pos)
        else:
            mask = create_bidirectional_mask(self.config, h, attention_mask)
        extra = {"position_embeddings": self.rotary(h, pos)} if self.rotary is not None else {}
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, **extra)
        return h  # (B, T, H)


class LanguageClient(nn.Module):
    """Embeddings and the first `cut` layers: `forward(input_ids, attention_mask[, token_type_ids]) -> (B, T, H)`.

    Deterministic (dropout is off everywhere), so two forwards with the same parameters give the same `a`.
    The rows of `a` at padded positions are whatever the layers make of padding; the server never reads them.
    """

    def __init__(self, family: Family, embeddings: nn.ModuleDict, run: LayerRun):
        super().__init__()
        self.family = family
        self.embeddings = embeddings
        self.run = run

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        pos = positions(attention_mask)
        h = self.family.embed(self.embeddings, input_ids, attention_mask, pos, token_type_ids)  # (B, T, H)
        return self.run(h, attention_mask, pos)  # (B, T, H): the smashed data


class LanguageServer(nn.Module):
    """The remaining layers, the final norm and a head: `forward(a, attention_mask) -> logits (B, C)` in float32.

    The head reads one token per sequence: the last real token for decoders, the first real token
    ([CLS]) for encoders, through the encoder's own pooler when it has one. `head` is either a new
    classifier or, for the verbalizer, the rows of the language-model head for the verbalizer tokens.
    """

    def __init__(self, family: Family, run: LayerRun, final: nn.Sequential, pooler: nn.Module | None, head: nn.Linear):
        super().__init__()
        self.family = family
        self.run = run
        self.final = final
        self.pooler = pooler
        self.head = head

    def forward(self, a: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.final(self.run(a, attention_mask, positions(attention_mask)))  # (B, T, H)
        mask = attention_mask.long()
        if self.family.causal:  # last real token
            idx = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        else:  # first real token
            idx = mask.argmax(-1)
        pooled = h[torch.arange(h.shape[0], device=h.device), idx]  # (B, H)
        if self.pooler is not None:
            pooled = self.pooler(pooled.unsqueeze(1))  # the pooler reads token 0 of (B, 1, H)
        return self.head(pooled).float()  # (B, C)


# ----------------------------------------------------------------------------- loading


def is_language_model(name: str) -> bool:
    """Names the language builder claims: the MiniLM aliases, a Hugging Face model type (for random-init
    configs), a local folder with a config.json, a hub id with a '/', or a model in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import CONFIG_MAPPING

    if name in MINILM_ALIASES or name in CONFIG_MAPPING or "/" in name or (Path(name) / "config.json").is_file():
        return True
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _load(cfg: ModelConfig, causal_lm: bool, dtype: torch.dtype) -> PreTrainedModel:
    """The whole Hugging Face model, from local files or a random-init config; dropout set to zero."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    over = {k: v for k, v in cfg.config_overrides.items() if k not in _OUR_KEYS}
    random_init = bool(cfg.config_overrides.get("random_init", False))
    path = pretrained_path(cfg.name)
    try:
        if random_init:
            config = AutoConfig.for_model(cfg.config_overrides.get("model_type", cfg.name), **over)
        else:
            config = AutoConfig.from_pretrained(path, local_files_only=hub_offline(), **over)
    except ValueError as e:
        expected = "a local folder, a Hugging Face model id, or config_overrides.random_init"
        raise ConfigError("task.model.name", cfg.name, f"{expected} ({e})") from None
    except OSError as e:
        raise hub_error("task.model.name", cfg.name, e) from None
    # The ZO probes compare forwards: dropout would add noise to them and draw from the global RNG.
    for key, value in config.to_dict().items():
        if "drop" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    if random_init:
        model = auto.from_config(config, dtype=dtype)
    else:
        try:
            model = auto.from_pretrained(path, config=config, dtype=dtype, local_files_only=hub_offline())
        except OSError as e:
            raise hub_error("task.model.name", cfg.name, e) from None
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _verbalizer_ids(cfg: ModelConfig, num_classes: int) -> list[int]:
    if len(cfg.verbalizer) != num_classes:
        raise ConfigError("task.model.verbalizer", cfg.verbalizer, f"one word per class ({num_classes} words)")
    tokenizer = load_tokenizer(cfg)
    ids = []
    for word in cfg.verbalizer:
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ConfigError("task.model.verbalizer", word, f"a word that is one token (it is {len(tokens)})")
        ids.append(tokens[0])
    return ids


def _add_lora(part: nn.Module, cfg: ModelConfig, family: Family, side: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(cfg.lora_targets) or list(family.lora_targets)
    dims = [
        min(m.weight.shape)
        for name, m in part.named_modules()
        if any(name == t or name.endswith("." + t) for t in targets) and getattr(m, "weight", None) is not None
    ]
    if dims and cfg.lora_r > min(dims):  # a rank above the layers' own adds parameters and nothing else
        expected = f"at most {min(dims)}, the smallest dimension of the layers LoRA adapts"
        raise ConfigError("task.model.lora_r", cfg.lora_r, expected)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        fan_in_fan_out=family.fan_in_fan_out,
    )
    try:
        inject_adapter_in_model(lora, part)
    except ValueError as e:
        raise ConfigError("task.model.lora_targets", targets, f"module names found in the {side} part ({e})") from None


def load_language_model(cfg: ModelConfig) -> PreTrainedModel:
    """The whole Hugging Face model `cfg` names (with its LM head when `cfg.head == "verbalizer"`), in
    `cfg.dtype`, dropout off. Random init draws from torch's global RNG: `build_language_model` seeds it."""
    dtype = _DTYPES[cfg.dtype]
    model = _load(cfg, causal_lm=cfg.head == "verbalizer", dtype=dtype)
    family = FAMILIES.get(model.config.model_type)
    if family is None:
        types = ", ".join(FAMILIES)
        raise ConfigError("task.model.name", cfg.name, f"a model of type {types} (got {model.config.model_type})")
    if cfg.head == "verbalizer" and not family.causal:
        raise ConfigError("task.model.head", cfg.head, f"classifier for the encoder model {cfg.name}")
    return model


def split_language_model(
    model: PreTrainedModel, cfg: ModelConfig, sample_features: dict[str, np.ndarray], num_classes: int
) -> SplitModel:
    """Cut `model` (from `load_language_model`) after layer `cfg.cut`, add the head and, for `finetune: lora`,
    the adapters (injected into the model's own modules, which the parts take over; nothing is copied).

    Trainable: LoRA weights on both sides plus a new classifier head (`finetune: lora`; the verbalizer
    head stays frozen, as in the reference), or every parameter (`finetune: full`).
    """
    dtype, config = _DTYPES[cfg.dtype], model.config
    family = FAMILIES[config.model_type]
    stem = _get(model.base_model, family.stem)
    layers = list(_get(stem, family.layers))
    cut = int(cfg.cut) if isinstance(cfg.cut, int) or str(cfg.cut).isdigit() else None
    if cut is None or not 1 <= cut < len(layers):
        raise ConfigError("task.model.cut", cfg.cut, f"a layer index in [1, {len(layers) - 1}] for {cfg.name}")
    ids = sample_features["input_ids"]
    if ids.size and int(ids.max()) >= config.vocab_size:
        raise ConfigError("task.model.name", cfg.name, f"a vocabulary covering token id {int(ids.max())}")

    embeddings = nn.ModuleDict({n: m for n in family.embeddings if (m := getattr(stem, n, None)) is not None})
    rotary = _get(stem, family.rotary) if family.rotary else None
    types = list(config.layer_types) if family.layer_types else None
    client = LanguageClient(family, embeddings, LayerRun(family, config, layers[:cut], rotary, types and types[:cut]))
    embed = model.get_input_embeddings()
    assert isinstance(embed, nn.Embedding)  # every family's token table
    width = embed.embedding_dim  # what the final stage outputs (OPT may project out)
    if cfg.head == "verbalizer":  # the LM head's rows for the verbalizer tokens: logits over those tokens only
        lm_head = model.get_output_embeddings()
        rows = torch.tensor(_verbalizer_ids(cfg, num_classes))
        head = nn.Linear(width, num_classes, bias=lm_head.bias is not None, dtype=dtype)
        with torch.no_grad():  # copied, so the client's (possibly tied) embedding table is not shared
            head.weight.copy_(lm_head.weight[rows])
            if lm_head.bias is not None:
                head.bias.copy_(lm_head.bias[rows])
    else:
        head = nn.Linear(width, num_classes, dtype=dtype)
        nn.init.normal_(head.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(head.bias)
    final = nn.Sequential(*[m for n in family.final if (m := getattr(stem, n, None)) is not None])
    pooler = _get(stem, family.pooler) if family.pooler else None
    server_rotary = copy.deepcopy(rotary)  # no module is shared between the parts
    run = LayerRun(family, config, layers[cut:], server_rotary, types and types[cut:])
    server = LanguageServer(family, run, final, pooler, head)

    full = cfg.finetune == "full"
    for part, side in ((client, "client"), (server, "server")):
        if not full:
            _add_lora(part, cfg, family, side)
        for name, p in part.named_parameters():
            p.requires_grad_(full or "lora_" in name)
        part.to(dtype)
    if cfg.head == "classifier":
        server.head.requires_grad_(True)
    input_keys = ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in sample_features else ())
    return SplitModel(client=client, server=server, input_keys=input_keys, side_keys=("attention_mask",))


def build_language_model(
    cfg: ModelConfig, sample_features: dict[str, np.ndarray], num_classes: int, seed: int
) -> SplitModel:
    """`load_language_model` then `split_language_model`, with torch's global RNG forked and seeded: the
    parameters depend only on (cfg, num_classes, seed) and the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return split_language_model(load_language_model(cfg), cfg, sample_features, num_classes)


register_model("minilm", build_language_model, matches=is_language_model)
