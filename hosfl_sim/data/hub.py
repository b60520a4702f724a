"""Hugging Face `datasets` tables -> numpy arrays, from the hub or from local files.

The hub and the local-file paths meet in `table_to_arrays`, so a tiny table written by a test
exercises the same conversion as CIFAR-10 downloaded from the hub. `datasets` is imported lazily:
the embedded sources never pay for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hosfl_sim.config import ConfigError

if TYPE_CHECKING:
    import datasets

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
TEST_SPLITS = ("test", "validation", "valid", "val", "dev")  # first present wins
IMAGE_COLUMNS = ("image", "img", "pixel_values")  # tried when no column has the Image feature
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_BATCH = 2048  # rows decoded at a time


def open_hub(repo_id: str, name: str) -> dict[str, datasets.Dataset]:
    """The splits of a hub dataset (downloaded once into the `datasets` cache) as {"train", "test"?}."""
    import datasets

    try:
        tables = datasets.load_dataset(repo_id)
    except Exception as err:  # offline, unknown id, ...: the fix is in the scenario either way
        raise ConfigError(
            "task.dataset.name",
            name,
            f"a dataset the Hugging Face hub serves as {repo_id!r} (loading failed: {err}); "
            "without network access set task.dataset.path to a local copy",
        ) from err
    return pick_splits(dict(tables))


def open_local(path: str | Path) -> dict[str, datasets.Dataset]:
    """Tables from disk as {"train", "test"?}.

    `path` is a directory written by `save_to_disk` (a Dataset or a DatasetDict), a single
    Parquet/CSV/TSV file, or a directory of them. In a directory, files whose path mentions
    `train` form the training split and those mentioning `test` (else `validation`/`val`/`dev`)
    the test split; with no `train` file, all files together form one table.
    """
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError("task.dataset.path", str(path), "an existing file or directory")
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        loaded = _read(str(path), "a save_to_disk directory that datasets reads", datasets.load_from_disk, str(p))
        return _with_rows(path, dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded})

    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix.lower() in TABLE_SUFFIXES)
    if not files or any(f.suffix.lower() not in TABLE_SUFFIXES for f in files):
        raise ConfigError(
            "task.dataset.path", str(path), "a save_to_disk directory, or Parquet/CSV/TSV files (or a folder of them)"
        )
    groups: dict[str, list[str]] = {}
    for f in files:
        words = set(re.split(r"[^a-z0-9]+", str(f.relative_to(p) if p.is_dir() else f.name).lower()))
        split = "train" if "train" in words else next((s for s in TEST_SPLITS if s in words), "other")
        groups.setdefault(split, []).append(str(f))
    if "train" not in groups:
        groups = {"train": [str(f) for f in files]}
    suffixes = {Path(f).suffix.lower() for fs in groups.values() for f in fs}
    if len({TABLE_SUFFIXES[s] for s in suffixes}) > 1 or suffixes == {".csv", ".tsv"}:
        raise ConfigError("task.dataset.path", str(path), f"files of one format (found {sorted(suffixes)})")
    suffix = suffixes.pop()
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    unreadable = [f for fs in groups.values() for f in fs if not os.access(f, os.R_OK)]
    if unreadable:
        raise ConfigError("task.dataset.path", str(path), f"files this user can read (not {unreadable[0]})")
    expected = f"{suffix} files that datasets reads, with rows"
    loaded = _read(str(path), expected, datasets.load_dataset, TABLE_SUFFIXES[suffix], data_files=groups, **kwargs)
    return _with_rows(path, dict(loaded))


def _read(path: str, expected: str, load: Any, *args: Any, **kwargs: Any) -> Any:
    """`load(*args, **kwargs)`, its failure (an empty, corrupt or unreadable file) one line naming the path."""
    from datasets.exceptions import DatasetGenerationError

    try:
        return load(*args, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, IndexError, DatasetGenerationError) as e:
        cause = e.__cause__ if isinstance(e, DatasetGenerationError) and e.__cause__ else e
        reason = str(cause).splitlines()[0][:120] if str(cause) else type(cause).__name__
        raise ConfigError("task.dataset.path", path, f"{expected} ({reason})") from None


def _with_rows(path: str | Path, tables: dict[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    picked = pick_splits(tables)
    empty = [name for name, t in picked.items() if len(t) == 0]
    if empty:
        raise ConfigError("task.dataset.path", str(path), f"tables with rows (the {empty[0]} split has none)")
    return picked


def pick_splits(tables: dict[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    """Rename a mapping of splits to {"train", "test"?}; a single split of any name is the training set."""
    if "train" not in tables:
        if len(tables) != 1:
            raise ConfigError("task.dataset.path", sorted(tables), "a 'train' split, or a single split")
        return {"train": next(iter(tables.values()))}
    out = {"train": tables["train"]}
    test = next((s for s in TEST_SPLITS if s in tables), None)
    if test is not None:
        out["test"] = tables[test]
    return out


def find_image_column(ds: datasets.Dataset) -> str | None:
    """The column holding images: the first with the `Image` feature, else a conventional name."""
    import datasets

    for name, feat in ds.features.items():
        if isinstance(feat, datasets.Image) or _is_encoded_image(feat):
            return name
    return next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)


def class_count(ds: datasets.Dataset, label_column: str) -> int | None:
    """The number of classes a `ClassLabel` column declares, else None."""
    import datasets

    feat = ds.features.get(label_column)
    return feat.num_classes if isinstance(feat, datasets.ClassLabel) else None


def column_values(ds: datasets.Dataset, column: str) -> np.ndarray:
    """One scalar column (labels) as a numpy array."""
    return np.asarray(ds.select_columns([column]).with_format("numpy")[column])


def table_to_arrays(ds: datasets.Dataset, label_column: str, image_column: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw features and raw labels of a table.

    With `image_column`: images decoded to uint8 (N, C, H, W), C = 1 for gray and 3 for colour
    (other modes are converted to RGB), or a list-valued column as stored. Without: every other
    numeric column stacked into float32 (N, F), or the single array-valued column as it is.
    """
    if label_column not in ds.column_names:
        raise ConfigError("task.dataset.label_column", label_column, f"one of the table's columns {ds.column_names}")
    labels = column_values(ds, label_column)
    if image_column is not None:
        return _array_column(ds, image_column), labels
    return _feature_columns(ds, label_column), labels


def _is_encoded_image(feat: object) -> bool:
    # Parquet written without `datasets` metadata keeps images as {"bytes", "path"} structs.
    return isinstance(feat, dict) and set(feat) == {"bytes", "path"}


def _array_column(ds: datasets.Dataset, column: str) -> np.ndarray:
    import datasets

    feat = ds.features[column]
    if _is_encoded_image(feat):
        ds, feat = ds.cast_column(column, datasets.Image()), datasets.Image()
    is_image = isinstance(feat, datasets.Image)
    if is_image and len(ds):
        mode = ds.select_columns([column])[0][column].mode
        ds = ds.cast_column(column, datasets.Image(mode="L" if mode in _GRAY_MODES else "RGB"))
    ds = ds.select_columns([column]).with_format("numpy")
    out = None
    for start in range(0, len(ds), _BATCH):
        chunk = np.asarray(ds[start : start + _BATCH][column])
        if chunk.dtype == object:
            raise ValueError(f"column {column!r}: rows differ in shape; images must share one size")
        if out is None:
            out = np.empty((len(ds), *chunk.shape[1:]), dtype=chunk.dtype)
        if chunk.shape[1:] != out.shape[1:]:
            raise ValueError(f"column {column!r}: rows of shape {chunk.shape[1:]} and {out.shape[1:]}")
        out[start : start + len(chunk)] = chunk
    if out is None:
        return np.empty((0,), dtype=np.float32)
    if is_image:  # decoded images are (N, H, W) or (N, H, W, C), whatever their size
        out = out[:, None] if out.ndim == 3 else np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    return out


def _feature_columns(ds: datasets.Dataset, label_column: str) -> np.ndarray:
    import datasets

    others = [c for c in ds.column_names if c != label_column]
    scalar = [c for c in others if isinstance(ds.features[c], (datasets.Value, datasets.ClassLabel))]
    numeric = [c for c in scalar if ds.features[c].dtype.startswith(("int", "uint", "float", "bool"))]
    if numeric and len(numeric) == len(others):
        return ds.select_columns(numeric).to_pandas().to_numpy(dtype=np.float32)  # (N, F)
    if len(others) == 1 and not scalar:
        return _array_column(ds, others[0])  # e.g. one list-valued "features" column
    raise ConfigError(
        "task.dataset.path",
        f"columns {ds.column_names}",
        f"a label column {label_column!r} plus numeric feature columns, one array column, or an image column",
    )
