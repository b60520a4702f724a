# Over 300 lines: the source registry and every built-in source, so one file shows what task.dataset.name accepts.
"""Named data sources: `load_dataset(DatasetConfig) -> DataSplit`.

Built in: `digits` (embedded in scikit-learn), `synthetic` (Gaussian clusters), the Hugging Face
image datasets `mnist`, `fashion_mnist`, `cifar10`, `cifar100` (hub or local copy), `npz` and
`files` (Parquet/CSV/TSV). Every image source returns float32 (N, C, H, W) standardized per
channel with statistics of its own (possibly subsampled) training split.

Other modules add sources with `register_source(name, fn)`, where `fn(cfg, **options) -> DataSplit`
receives the options given to `load_dataset` (e.g. `tokenizer_name` for text). A name ending in
"/" registers a family: "glue/" serves "glue/sst2", "glue/rte", ... The modules in `PLUGINS`
(the text tasks) are imported the first time the registry is consulted, if they exist, so the
sources they register at import time are known without anyone importing them by hand.
"""

from __future__ import annotations

import importlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hosfl_sim.config import ConfigError, DatasetConfig
from hosfl_sim.data import hub
from hosfl_sim.data.dataset import (
    ArrayDataset,
    DataSplit,
    as_float,
    channel_stats,
    standardize,
    stratified_split,
    stream_rng,
    subsample,
    to_nchw,
)

SourceFn = Callable[..., DataSplit]
PLUGINS = ("hosfl_sim.data.text",)
SPLIT, CAP_TRAIN, CAP_TEST, DRAW = 0, 1, 2, 3  # generator streams derived from cfg.seed

_SOURCES: dict[str, SourceFn] = {}
_plugins_loaded = False


def register_source(name: str, fn: SourceFn, *, replace: bool = False) -> None:
    """Make `fn` the source for `task.dataset.name == name` (or any name under `name` if it ends in "/")."""
    if name in _SOURCES and not replace and _SOURCES[name] is not fn:
        raise ValueError(f"a data source named {name!r} is already registered")
    _SOURCES[name] = fn


def known_datasets() -> list[str]:
    _load_plugins()
    return sorted(_SOURCES)


def load_dataset(cfg: DatasetConfig, **options) -> DataSplit:
    """The train/test split `cfg` names, capped to `cfg.max_train` / `cfg.max_test` rows."""
    fn = _lookup(cfg.name)
    if fn is None:
        names = ", ".join(known_datasets())
        raise ConfigError("task.dataset.name", cfg.name, f"one of {names} (a name ending in '/' takes any suffix)")
    try:
        split = fn(cfg, **options)
    except MemoryError as e:  # numpy's _ArrayMemoryError is one: a size the config asked for
        raise ConfigError("task.dataset", cfg.name, f"a dataset this machine can hold in memory ({e})") from None
    # Built-in sources cap before converting; this makes the caps hold for registered sources too.
    train = _cap(split.train, cfg.max_train, stream_rng(cfg.seed, CAP_TRAIN))
    test = _cap(split.test, cfg.max_test, stream_rng(cfg.seed, CAP_TEST))
    return DataSplit(split.name, train, test)


def _lookup(name: str) -> SourceFn | None:
    _load_plugins()
    if name in _SOURCES and not name.endswith("/"):
        return _SOURCES[name]
    families = [f for f in _SOURCES if f.endswith("/") and name.startswith(f) and len(name) > len(f)]
    return _SOURCES[max(families, key=len)] if families else None


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the plugin exists but is broken: say so
                raise


def _cap(ds: ArrayDataset, cap: int | None, rng: np.random.Generator) -> ArrayDataset:
    idx = subsample(len(ds), cap, rng)
    return ds if idx is None else ds.subset(idx)


# ----------------------------------------------------------------------------- shared finishing


MAX_CLASSES = 100_000  # more than any classification benchmark has; a larger label is an error in the file


def encode_labels(
    y_train: np.ndarray, y_test: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """int64 labels in [0, num_classes). Integer labels are kept; other labels (names) map to their sorted order."""
    both = np.concatenate([y_train.ravel(), y_test.ravel()])
    if both.dtype.kind == "f":
        if not np.all(np.isfinite(both) & (np.mod(both, 1) == 0)):
            bad = both[~(np.isfinite(both) & (np.mod(both, 1) == 0))][0]
            raise ConfigError("task.dataset.label_column", float(bad), "whole-number class labels (or class names)")
        both = both.astype(np.int64)
    if both.dtype.kind in "iub":
        codes = both.astype(np.int64)
        if len(codes) and codes.min() < 0:
            raise ConfigError("task.dataset.label_column", int(codes.min()), "class labels >= 0 in every row")
        if len(codes) and codes.max() >= MAX_CLASSES:  # the output layer would have that many rows
            raise ConfigError("task.dataset.label_column", int(codes.max()), f"class labels below {MAX_CLASSES:,}")
        k = num_classes if num_classes is not None else (int(codes.max()) + 1 if len(codes) else 0)
        if len(codes) and codes.max() >= k:
            raise ConfigError("task.dataset.label_column", int(codes.max()), f"class labels below {k}")
    else:
        classes, codes = np.unique(both, return_inverse=True)
        k = len(classes)
    return codes[: len(y_train)], codes[len(y_train) :], k


def finish(
    name: str,
    cfg: DatasetConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int | None = None,
    normalize: bool = True,
) -> DataSplit:
    """Raw arrays -> DataSplit: labels encoded, rows capped, images as float32 (N, C, H, W) standardized.

    The statistics come from the (capped) training rows only, and are applied to both splits.
    """
    y_train, y_test, k = encode_labels(y_train, y_test, num_classes)
    keep = subsample(len(y_train), cfg.max_train, stream_rng(cfg.seed, CAP_TRAIN))
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
    keep = subsample(len(y_test), cfg.max_test, stream_rng(cfg.seed, CAP_TEST))
    if keep is not None:
        x_test, y_test = x_test[keep], y_test[keep]
    x_train, x_test = as_float(to_nchw(x_train)), as_float(to_nchw(x_test))
    if normalize and cfg.normalize != "none":
        if cfg.normalize == "train_stats":
            mean, std = channel_stats(x_train)
        else:
            mean, std = _fixed_stats(cfg.normalize, x_train)
        x_train, x_test = standardize(x_train, mean, std), standardize(x_test, mean, std)
    return DataSplit(name, ArrayDataset({"x": x_train}, y_train, k), ArrayDataset({"x": x_test}, y_test, k))


# Fixed per-channel (mean, std) of pixels in [0, 1]: the CIFAR constants of the paper's code, torchvision's ImageNet.
FIXED_STATS = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _fixed_stats(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = (np.asarray(v, np.float32) for v in FIXED_STATS[name])
    if x.ndim != 4 or x.shape[1] != len(mean):
        expected = f"train_stats or none for inputs of shape {x.shape[1:]} ({name} is for 3-channel images)"
        raise ConfigError("task.dataset.normalize", name, expected)
    return mean, std


def _require_path(cfg: DatasetConfig, expected: str) -> Path:
    if not cfg.path:
        raise ConfigError("task.dataset.path", cfg.path, f"{expected} (task.dataset.name is {cfg.name!r})")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ConfigError("task.dataset.path", cfg.path, f"an existing path: {expected}")
    return path


# ----------------------------------------------------------------------------- built-in sources


def _digits(cfg: DatasetConfig, **_) -> DataSplit:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, cfg.test_fraction, stream_rng(cfg.seed, SPLIT))
    return finish("digits", cfg, x[tr], y[tr], x[te], y[te], num_classes=10)


def _synthetic(cfg: DatasetConfig, **_) -> DataSplit:
    """Class c ~ N(m_c, I), with m_c a random direction at distance 2 * class_sep from the origin."""
    s = cfg.synthetic
    for field, value, low in (("num_samples", s.num_samples, 2), ("num_features", s.num_features, 1)):
        if value < low:
            raise ConfigError(f"task.dataset.synthetic.{field}", value, f"an integer >= {low}")
    if not 2 <= s.num_classes <= s.num_samples:
        raise ConfigError("task.dataset.synthetic.num_classes", s.num_classes, "an integer in [2, num_samples]")
    if s.class_sep < 0:
        raise ConfigError("task.dataset.synthetic.class_sep", s.class_sep, "a number >= 0")
    rng = stream_rng(cfg.seed, DRAW)
    means = rng.standard_normal((s.num_classes, s.num_features))
    means *= 2 * s.class_sep / np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.permutation(np.arange(s.num_samples) % s.num_classes).astype(np.int64)  # balanced classes
    x = (means[y] + rng.standard_normal((s.num_samples, s.num_features))).astype(np.float32)  # (N, F)
    if s.image_side**2 == s.num_features:
        x = x.reshape(-1, 1, s.image_side, s.image_side)  # (N, 1, side, side)
    tr, te = stratified_split(y, cfg.test_fraction, stream_rng(cfg.seed, SPLIT))
    return finish("synthetic", cfg, x[tr], y[tr], x[te], y[te], num_classes=s.num_classes, normalize=False)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz(cfg: DatasetConfig, **_) -> DataSplit:
    expected = "an .npz file with arrays " + ", ".join(NPZ_KEYS)
    path = _require_path(cfg, expected)
    if not path.is_file():
        raise ConfigError("task.dataset.path", cfg.path, expected)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in NPZ_KEYS if k not in arrays.files]
            if missing:
                raise ConfigError("task.dataset.path", cfg.path, f"{expected} (missing: {', '.join(missing)})")
            x_train, y_train, x_test, y_test = (arrays[k] for k in NPZ_KEYS)
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # unreadable, corrupt, pickled objects
        raise ConfigError("task.dataset.path", cfg.path, f"{expected} that numpy reads ({type(e).__name__})") from None
    check_arrays(cfg.path, x_train, y_train, x_test, y_test)
    return finish(f"npz:{path.stem}", cfg, x_train, y_train, x_test, y_test)


def check_arrays(
    path: str | None, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    """What the arrays of a dataset file must be, each failure one line naming the array: rows of features (flat,
    or images (N, H, W[, C]) or (N, C, H, W)) with one label each, train and test alike, finite numbers."""
    field = "task.dataset.path"
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dtype.kind not in "biuf" or not 2 <= x.ndim <= 4:
            raise ConfigError(field, path, f"x_{name} of numbers with 2 to 4 axes (it is {x.dtype}, shape {x.shape})")
        if y.ndim != 1:
            raise ConfigError(field, path, f"y_{name} with one label per row, a 1-D array (its shape is {y.shape})")
        if len(y) != len(x):
            raise ConfigError(field, path, f"as many y_{name} labels as x_{name} rows ({len(y)} vs {len(x)})")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ConfigError(field, path, f"finite x_{name} values (it holds NaN or Inf)")
    if len(x_train) == 0:
        raise ConfigError(field, path, "at least one training row (x_train is empty)")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(field, path, f"train and test rows of one shape ({x_train.shape[1:]} vs {x_test.shape[1:]})")


def from_tables(
    cfg: DatasetConfig,
    name: str,
    tables: dict,
    label_column: str,
    image_column: str | None,
    num_classes: int | None,
) -> DataSplit:
    """Hugging Face tables {"train", "test"?} -> DataSplit; a missing test split is cut by cfg.test_fraction."""
    train, test = tables["train"], tables.get("test")
    if label_column not in train.column_names:
        raise ConfigError("task.dataset.label_column", label_column, f"one of the columns {train.column_names}")
    if test is None:
        labels = hub.column_values(train, label_column)
        tr, te = stratified_split(labels, cfg.test_fraction, stream_rng(cfg.seed, SPLIT))
        train, test = train.select(tr), train.select(te)
    # Cut before decoding (same draws as `finish`, which then has nothing left to cut).
    keep = subsample(len(train), cfg.max_train, stream_rng(cfg.seed, CAP_TRAIN))
    train = train if keep is None else train.select(keep)
    keep = subsample(len(test), cfg.max_test, stream_rng(cfg.seed, CAP_TEST))
    test = test if keep is None else test.select(keep)
    x_train, y_train = hub.table_to_arrays(train, label_column, image_column)
    x_test, y_test = hub.table_to_arrays(test, label_column, image_column)
    return finish(name, cfg, x_train, y_train, x_test, y_test, num_classes)


@dataclass(frozen=True)
class HubImages:
    """An image dataset on the Hugging Face hub; `task.dataset.path` points at a local copy instead."""

    repo_id: str
    image_column: str
    label_column: str
    num_classes: int

    def __call__(self, cfg: DatasetConfig, **_) -> DataSplit:
        if cfg.path:
            tables = hub.open_local(_require_path(cfg, f"a local copy of {self.repo_id}"))
        else:
            tables = hub.open_hub(self.repo_id, cfg.name)
        columns = tables["train"].column_names
        image = self.image_column if self.image_column in columns else hub.find_image_column(tables["train"])
        if image is None:
            raise ConfigError("task.dataset.path", cfg.path, f"tables with an image column (found {columns})")
        label = self.label_column if self.label_column in columns else cfg.label_column
        k = hub.class_count(tables["train"], label) or self.num_classes
        return from_tables(cfg, cfg.name, tables, label, image, k)


def _files(cfg: DatasetConfig, **_) -> DataSplit:
    path = _require_path(cfg, "Parquet/CSV/TSV files (or a folder of them) or a save_to_disk directory")
    tables = hub.open_local(path)
    image = hub.find_image_column(tables["train"])
    k = hub.class_count(tables["train"], cfg.label_column)
    return from_tables(cfg, f"files:{path.name}", tables, cfg.label_column, image, k)


register_source("digits", _digits)
register_source("synthetic", _synthetic)
register_source("npz", _npz)
register_source("files", _files)
register_source("mnist", HubImages("ylecun/mnist", "image", "label", 10))
register_source("fashion_mnist", HubImages("zalando-datasets/fashion_mnist", "image", "label", 10))
register_source("cifar10", HubImages("uoft-cs/cifar10", "img", "label", 10))
register_source("cifar100", HubImages("uoft-cs/cifar100", "img", "fine_label", 100))
