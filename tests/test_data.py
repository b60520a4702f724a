"""The data layer: sources, conversions and partitioners, on real small data written by the tests."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hosfl_sim.config import ConfigError, DatasetConfig, PartitionConfig
from hosfl_sim.config.schema import SyntheticConfig
from hosfl_sim.data import ArrayDataset, DataSplit, Partition, known_datasets, load_dataset, partition_dataset, sources


def assert_same_split(a: DataSplit, b: DataSplit) -> None:
    for part_a, part_b in ((a.train, b.train), (a.test, b.test)):
        assert part_a.features.keys() == part_b.features.keys()
        for k in part_a.features:
            np.testing.assert_array_equal(part_a.features[k], part_b.features[k])
        np.testing.assert_array_equal(part_a.labels, part_b.labels)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep the `datasets` cache of local Parquet/CSV reads inside the test's folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return datasets


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetConfig())


# ----------------------------------------------------------------------------- containers


def test_array_dataset_batch_and_subset():
    x = np.arange(24, dtype=np.float32).reshape(6, 1, 2, 2)
    ds = ArrayDataset({"x": x}, np.array([0, 1, 2, 0, 1, 2]), num_classes=3)
    feats, labels = ds.batch(np.array([4, 1]))
    np.testing.assert_array_equal(feats["x"], x[[4, 1]])
    np.testing.assert_array_equal(labels, [1, 1])
    sub = ds.subset(np.array([0, 3]))
    assert len(sub) == 2 and sub.num_classes == 3 and np.all(sub.labels == 0)
    with pytest.raises(ValueError, match="rows"):
        ArrayDataset({"x": x[:5]}, ds.labels, 3)
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset({"x": x}, ds.labels, 2)


# ----------------------------------------------------------------------------- embedded sources


def test_digits_shapes_split_and_standardization(digits):
    tr, te = digits.train, digits.test
    assert digits.name == "digits" and digits.num_classes == 10
    assert len(tr) + len(te) == 1797
    assert tr.features["x"].shape[1:] == (1, 8, 8) and tr.features["x"].dtype == np.float32
    assert tr.labels.dtype == np.int64
    # stratified: every class puts round(0.25 * n_c) rows in the test split
    n_c = np.bincount(np.concatenate([tr.labels, te.labels]))
    np.testing.assert_array_equal(np.bincount(te.labels), np.floor(n_c * 0.25 + 0.5))
    x = tr.features["x"]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    # the test split went through the same affine map: raw pixels are 0..16, so both splits take
    # the same 17 standardized values
    levels = np.unique(x)
    assert len(levels) == 17
    assert np.isin(np.unique(te.features["x"]), levels).all()


def test_digits_is_deterministic_and_seeded(digits):
    assert_same_split(digits, load_dataset(DatasetConfig()))
    other = load_dataset(DatasetConfig(seed=1))
    assert not np.array_equal(other.test.features["x"], digits.test.features["x"])


def test_caps_subsample_deterministically(digits):
    cfg = DatasetConfig(max_train=100, max_test=30)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert (len(a.train), len(a.test)) == (100, 30)
    assert_same_split(a, b)
    c = load_dataset(cfg.model_copy(update={"max_train": 2000}))  # a cap above the size changes nothing
    assert len(c.train) == len(digits.train)


def test_synthetic_shapes_and_determinism():
    cfg = DatasetConfig(name="synthetic", synthetic=SyntheticConfig(num_samples=400, num_classes=4, class_sep=3.0))
    a = load_dataset(cfg)
    assert a.train.features["x"].shape == (300, 1, 8, 8) and len(a.test) == 100 and a.num_classes == 4
    assert_same_split(a, load_dataset(cfg))
    assert not np.array_equal(
        load_dataset(cfg.model_copy(update={"seed": 5})).train.features["x"], a.train.features["x"]
    )
    flat = load_dataset(cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"num_features": 10})}))
    assert flat.train.features["x"].shape == (300, 10)
    # well separated clusters: the nearest class mean (from train) classifies the test split well
    xtr, xte = a.train.features["x"].reshape(300, -1), a.test.features["x"].reshape(100, -1)
    means = np.stack([xtr[a.train.labels == c].mean(0) for c in range(4)])
    pred = np.argmin(((xte[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.test.labels).mean() > 0.9


# ----------------------------------------------------------------------------- npz and files


def test_npz_images_get_channels(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    x_train = rng.integers(0, 256, (20, 5, 6), dtype=np.uint8)  # (N, H, W)
    x_test = rng.integers(0, 256, (8, 5, 6), dtype=np.uint8)
    np.savez(path, x_train=x_train, y_train=np.arange(20) % 3, x_test=x_test, y_test=np.arange(8) % 3)
    cfg = DatasetConfig(name="npz", path=str(path))
    s = load_dataset(cfg)
    assert s.train.features["x"].shape == (20, 1, 5, 6) and s.num_classes == 3
    raw = x_train / 255.0
    expected = (x_test[:, None] / 255.0 - raw.mean()) / raw.std()
    np.testing.assert_allclose(s.test.features["x"], expected, atol=1e-5)
    assert_same_split(s, load_dataset(cfg))

    nhwc = tmp_path / "nhwc.npz"
    np.savez(
        nhwc,
        x_train=rng.random((10, 5, 5, 3)),
        y_train=np.arange(10) % 2,
        x_test=rng.random((4, 5, 5, 3)),
        y_test=[0, 1, 0, 1],
    )
    assert load_dataset(DatasetConfig(name="npz", path=str(nhwc))).train.features["x"].shape == (10, 3, 5, 5)


def test_npz_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_dataset(DatasetConfig(name="npz"))
    assert e.value.path == "task.dataset.path"
    missing = tmp_path / "nope.npz"
    with pytest.raises(ConfigError, match="task.dataset.path") as e:
        load_dataset(DatasetConfig(name="npz", path=str(missing)))
    assert str(missing) in str(e.value)
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((2, 3)), y_train=[0, 1])
    with pytest.raises(ConfigError, match="missing: x_test, y_test"):
        load_dataset(DatasetConfig(name="npz", path=str(partial)))


def test_unknown_dataset_names_the_field():
    with pytest.raises(ConfigError) as e:
        load_dataset(DatasetConfig(name="imagenet-1k"))
    assert e.value.path == "task.dataset.name" and e.value.value == "imagenet-1k"
    assert "digits" in str(e.value) and "cifar10" in str(e.value)
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz", "files"} <= set(
        known_datasets()
    )


def test_csv_with_train_and_test_files(tmp_path, hf_cache):
    import pandas as pd

    rng = np.random.default_rng(1)
    folder = tmp_path / "tab"
    folder.mkdir()
    frames = {}
    for split, n in (("train", 30), ("test", 10)):
        frames[split] = pd.DataFrame(
            {"f0": rng.normal(5, 2, n), "f1": rng.integers(0, 9, n), "label": rng.choice(["cat", "dog"], n)}
        )
        frames[split].to_csv(folder / f"{split}.csv", index=False)
    s = load_dataset(DatasetConfig(name="files", path=str(folder)))
    assert s.train.features["x"].shape == (30, 2) and s.test.features["x"].shape == (10, 2)
    assert s.num_classes == 2
    np.testing.assert_array_equal(s.train.labels, (frames["train"]["label"] == "dog").to_numpy())
    raw = frames["train"][["f0", "f1"]].to_numpy()
    np.testing.assert_allclose(s.train.features["x"], (raw - raw.mean(0)) / raw.std(0), atol=1e-5)
    assert_same_split(s, load_dataset(DatasetConfig(name="files", path=str(folder))))

    with pytest.raises(ConfigError, match="task.dataset.label_column"):
        load_dataset(DatasetConfig(name="files", path=str(folder), label_column="y"))


def test_single_csv_is_split_by_test_fraction(tmp_path, hf_cache):
    path = tmp_path / "all.csv"
    rows = ["a,b,label"] + [f"{i},{i % 7},{i % 4}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    cfg = DatasetConfig(name="files", path=str(path), test_fraction=0.25, seed=3)
    s = load_dataset(cfg)
    # stratified: each class has 10 rows and puts round(2.5) = 3 of them in the test split
    np.testing.assert_array_equal(np.bincount(s.test.labels), [3, 3, 3, 3])
    assert len(s.train) == 28 and s.num_classes == 4
    assert_same_split(s, load_dataset(cfg))
    with pytest.raises(ConfigError, match="task.dataset.test_fraction"):
        load_dataset(cfg.model_copy(update={"test_fraction": 0.01}))  # round(0.1) = 0 rows of every class


# ----------------------------------------------------------------------------- Hugging Face image tables


def _image_tables(datasets, rng, sizes=(12, 6), rgb=True, label_column="label", image_column="img"):
    from PIL import Image

    shape = (6, 5, 3) if rgb else (6, 5)
    tables, pixels = {}, {}
    for split, n in zip(("train", "test"), sizes):
        arr = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        feats = datasets.Features({image_column: datasets.Image(), label_column: datasets.ClassLabel(num_classes=10)})
        data = {image_column: [Image.fromarray(a) for a in arr], label_column: [i % 3 for i in range(n)]}
        tables[split] = datasets.Dataset.from_dict(data, features=feats)
        pixels[split] = arr
    return datasets.DatasetDict(tables), pixels


def _expected_images(train_u8, test_u8):
    """(N, H, W, C) uint8 -> (N, C, H, W) standardized per channel with train statistics."""
    tr = train_u8.transpose(0, 3, 1, 2) / 255.0
    te = test_u8.transpose(0, 3, 1, 2) / 255.0
    mean, std = tr.mean(axis=(0, 2, 3), keepdims=True), tr.std(axis=(0, 2, 3), keepdims=True)
    return (tr - mean) / std, (te - mean) / std


def test_hub_layout_from_save_to_disk_and_parquet(tmp_path, hf_cache):
    datasets = hf_cache
    tables, pixels = _image_tables(datasets, np.random.default_rng(0))
    tables.save_to_disk(str(tmp_path / "saved"))
    parquet = tmp_path / "parquet" / "plain_text"
    parquet.mkdir(parents=True)
    for split, ds in tables.items():
        ds.to_parquet(str(parquet / f"{split}-00000-of-00001.parquet"))

    saved = load_dataset(DatasetConfig(name="cifar10", path=str(tmp_path / "saved")))
    assert saved.name == "cifar10" and saved.num_classes == 10
    assert saved.train.features["x"].shape == (12, 3, 6, 5) and saved.test.features["x"].dtype == np.float32
    exp_train, exp_test = _expected_images(pixels["train"], pixels["test"])
    np.testing.assert_allclose(saved.train.features["x"], exp_train, atol=1e-5)
    np.testing.assert_allclose(saved.test.features["x"], exp_test, atol=1e-5)
    np.testing.assert_array_equal(saved.train.labels, np.arange(12) % 3)

    assert_same_split(saved, load_dataset(DatasetConfig(name="cifar10", path=str(tmp_path / "parquet"))))
    # the generic `files` source finds the image column by its feature type
    assert_same_split(saved, load_dataset(DatasetConfig(name="files", path=str(tmp_path / "saved"))))


def test_cifar100_label_column_and_gray_single_split(tmp_path, hf_cache):
    datasets = hf_cache
    rng = np.random.default_rng(2)
    tables, _ = _image_tables(datasets, rng, label_column="fine_label")
    tables.save_to_disk(str(tmp_path / "c100"))
    s = load_dataset(DatasetConfig(name="cifar100", path=str(tmp_path / "c100")))
    np.testing.assert_array_equal(s.test.labels, np.arange(6) % 3)
    assert s.num_classes == 10  # what the table's ClassLabel declares

    gray, pixels = _image_tables(datasets, rng, sizes=(24, 1), rgb=False, image_column="image")
    gray["train"].save_to_disk(str(tmp_path / "gray"))  # one split: cut by test_fraction
    cfg = DatasetConfig(name="mnist", path=str(tmp_path / "gray"), test_fraction=0.25, max_train=10)
    m = load_dataset(cfg)
    assert m.train.features["x"].shape == (10, 1, 6, 5) and len(m.test) == 6
    assert_same_split(m, load_dataset(cfg))


def test_parquet_without_datasets_metadata(tmp_path, hf_cache):
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    pd.DataFrame({"img": [png(a) for a in arr], "label": np.arange(10) % 2}).to_parquet(tmp_path / "raw.parquet")
    s = load_dataset(DatasetConfig(name="files", path=str(tmp_path / "raw.parquet"), test_fraction=0.2))
    assert s.train.features["x"].shape == (8, 3, 4, 4) and len(s.test) == 2


def test_unreachable_hub_points_to_a_local_copy(hf_cache, monkeypatch):
    monkeypatch.setattr(hf_cache.config, "HF_HUB_OFFLINE", True)  # as on a machine without network
    with pytest.raises(ConfigError) as e:
        load_dataset(DatasetConfig(name="cifar10"))
    assert e.value.path == "task.dataset.name" and "uoft-cs/cifar10" in str(e.value)
    assert "task.dataset.path" in str(e.value)


def test_missing_local_copy_names_the_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_dataset(DatasetConfig(name="cifar10", path=str(tmp_path / "absent")))
    assert e.value.path == "task.dataset.path"


# ----------------------------------------------------------------------------- registry


def test_registered_family_gets_options_and_caps(monkeypatch):
    monkeypatch.setattr(sources, "_SOURCES", dict(sources._SOURCES))
    seen = {}

    def fake_text(cfg, tokenizer_name=None):
        seen["args"] = (cfg.name, tokenizer_name)
        ids = np.arange(50, dtype=np.int64).reshape(25, 2)
        ds = ArrayDataset({"input_ids": ids, "attention_mask": np.ones_like(ids)}, np.arange(25) % 2, 2)
        return DataSplit(cfg.name, ds, ds)

    sources.register_source("toytext/", fake_text)
    s = load_dataset(DatasetConfig(name="toytext/sst2", max_train=10), tokenizer_name="tok")
    assert seen["args"] == ("toytext/sst2", "tok")
    assert len(s.train) == 10 and len(s.test) == 25
    assert "toytext/" in known_datasets()
    with pytest.raises(ConfigError):
        load_dataset(DatasetConfig(name="toytext/"))  # a family needs a member name
    with pytest.raises(ValueError, match="already registered"):
        sources.register_source("toytext/", lambda cfg: None)


# ----------------------------------------------------------------------------- partitions


def _check_cover(p: Partition, n: int, num_clients: int) -> None:
    assert p.num_clients == num_clients and p.indices.dtype == np.int64
    np.testing.assert_array_equal(np.sort(p.indices), np.arange(n))  # disjoint and complete
    assert p.sizes().min() >= 1 and p.sizes().sum() == n
    np.testing.assert_array_equal(np.concatenate([p.client_indices(i) for i in range(num_clients)]), p.indices)


SCHEMES = [
    PartitionConfig(scheme="iid"),
    PartitionConfig(scheme="dirichlet", alpha=0.5),
    PartitionConfig(scheme="dirichlet_balanced", alpha=1.0),
    PartitionConfig(scheme="shards"),
]


@pytest.mark.parametrize("cfg", SCHEMES, ids=lambda c: c.scheme)
def test_partitions_cover_and_are_deterministic(cfg, digits):
    labels = digits.train.labels
    p = partition_dataset(labels, 20, cfg, seed=7)
    _check_cover(p, len(labels), 20)
    q = partition_dataset(labels, 20, cfg, seed=7)
    np.testing.assert_array_equal(p.indices, q.indices)
    np.testing.assert_array_equal(p.offsets, q.offsets)
    assert not np.array_equal(p.indices, partition_dataset(labels, 20, cfg, seed=8).indices)
    hist = p.label_histogram(labels, 10)
    assert hist.shape == (20, 10)
    np.testing.assert_array_equal(hist.sum(axis=1), p.sizes())
    np.testing.assert_array_equal(hist[3], np.bincount(labels[p.client_indices(3)], minlength=10))


@pytest.mark.parametrize("cfg", SCHEMES, ids=lambda c: c.scheme)
def test_partitions_scale_to_many_clients(cfg):
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    p = partition_dataset(labels, 10_000, cfg, seed=0)
    _check_cover(p, 60_000, 10_000)
    if cfg.scheme == "dirichlet":
        assert p.sizes().min() >= cfg.min_size  # reached by topping up: plain redraws almost never qualify


def test_iid_sizes_differ_by_at_most_one():
    sizes = partition_dataset(np.zeros(103, dtype=np.int64), 10, PartitionConfig(), seed=0).sizes()
    assert sizes.max() - sizes.min() <= 1


def _mean_label_entropy(p: Partition, labels: np.ndarray, num_classes: int) -> float:
    hist = p.label_histogram(labels, num_classes).astype(float)
    q = hist / hist.sum(axis=1, keepdims=True)
    return float(-(q * np.log(np.where(q > 0, q, 1.0))).sum(axis=1).mean())


def test_dirichlet_skew_grows_as_alpha_shrinks(digits):
    labels = digits.train.labels
    ent = {
        a: _mean_label_entropy(
            partition_dataset(labels, 20, PartitionConfig(scheme="dirichlet", alpha=a), 0), labels, 10
        )
        for a in (0.1, 1.0, 100.0)
    }
    assert ent[0.1] < ent[1.0] < ent[100.0]
    assert ent[100.0] > 0.9 * np.log(10)  # nearly IID
    p = partition_dataset(labels, 20, PartitionConfig(scheme="dirichlet", alpha=0.1, min_size=10), 0)
    assert p.sizes().min() >= 10


def test_balanced_dirichlet_gives_equal_sizes_and_keeps_label_skew(digits):
    """DeComFL's split: every client holds n // N rows (one more for the first n mod N), the labels stay
    skewed, more so as alpha shrinks, and approach IID for large alpha."""
    labels = digits.train.labels
    n = len(labels)

    def split(alpha: float) -> Partition:
        return partition_dataset(labels, 20, PartitionConfig(scheme="dirichlet_balanced", alpha=alpha), 3)

    for alpha in (0.1, 1.0, 100.0):
        sizes = split(alpha).sizes()
        np.testing.assert_array_equal(sizes, n // 20 + (np.arange(20) < n % 20))
    ent = {a: _mean_label_entropy(split(a), labels, 10) for a in (0.1, 1.0, 100.0)}
    assert ent[0.1] < ent[1.0] < ent[100.0]
    assert ent[1.0] < 0.9 * np.log(10) < ent[100.0]


def test_shards_limit_classes_per_client():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 60))  # 600 rows, 60 per class
    for k in (1, 2, 3):
        # 20 * k shards of 30 / k rows: 60 rows per class is a multiple of the shard size, so none straddles
        p = partition_dataset(labels, 20, PartitionConfig(scheme="shards", classes_per_client=k), seed=1)
        _check_cover(p, 600, 20)
        classes_held = (p.label_histogram(labels, 10) > 0).sum(axis=1)
        assert classes_held.max() <= k
    assert classes_held.mean() > 2  # shards are dealt at random, mostly of distinct classes


def test_partition_errors_name_the_field():
    labels = np.arange(30) % 3
    with pytest.raises(ConfigError) as e:
        partition_dataset(labels, 31, PartitionConfig(), seed=0)
    assert e.value.path == "federation.num_clients" and e.value.value == 31
    with pytest.raises(ConfigError) as e:
        partition_dataset(labels, 10, PartitionConfig(scheme="dirichlet", min_size=4), seed=0)
    assert e.value.path == "task.partition.min_size"
    with pytest.raises(ConfigError) as e:
        partition_dataset(labels, 10, PartitionConfig(scheme="shards", classes_per_client=4), seed=0)
    assert e.value.path == "task.partition.classes_per_client"


@pytest.mark.parametrize("mode", ["cifar", "imagenet", "none"])
def test_fixed_normalization_uses_its_constants_on_both_splits(tmp_path, mode):
    from hosfl_sim.data.sources import FIXED_STATS

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)  # NHWC, as CIFAR is stored
    y = np.arange(12) % 3
    np.savez(tmp_path / "c.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    data = load_dataset(DatasetConfig(name="npz", path=str(tmp_path / "c.npz"), normalize=mode))
    want = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    if mode != "none":
        mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in FIXED_STATS[mode])
        want = (want - mean) / std
    np.testing.assert_allclose(data.train.features["x"], want[:8], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.test.features["x"], want[8:], rtol=1e-6, atol=1e-6)


def test_fixed_normalization_refuses_inputs_that_are_not_rgb_images():
    with pytest.raises(ConfigError, match="task.dataset.normalize: got 'cifar'"):
        load_dataset(DatasetConfig(name="digits", normalize="cifar"))


def _bad_npz(path, case: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8)).astype(np.float32)
    y = np.arange(40) % 4
    arrays = {"x_train": x[:30], "y_train": y[:30], "x_test": x[30:], "y_test": y[30:]}
    if case == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is no zip archive")
        return
    if case == "rank":
        arrays["x_train"] = np.zeros(30, np.float32)
    elif case == "lengths":
        arrays["y_train"] = y[:29]
    elif case == "labels_2d":
        arrays["y_train"] = np.stack([y[:30], y[:30]], axis=1)
    elif case == "shapes":
        arrays["x_test"] = rng.random((10, 6, 6)).astype(np.float32)
    elif case == "nan":
        arrays["x_train"][3, 2, 2] = np.nan
    elif case == "empty":
        arrays["x_train"], arrays["y_train"] = x[:0], y[:0]
    elif case == "objects":
        arrays["x_train"] = np.array([{"a": 1}] * 30, dtype=object)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("corrupt", "that numpy reads (BadZipFile)"),
        ("rank", "x_train of numbers with 2 to 4 axes"),
        ("lengths", "as many y_train labels as x_train rows (29 vs 30)"),
        ("labels_2d", "y_train with one label per row"),
        ("shapes", "train and test rows of one shape"),
        ("nan", "finite x_train values"),
        ("empty", "at least one training row"),
        ("objects", "that numpy reads (ValueError)"),
    ],
)
def test_a_bad_npz_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, case, fragment):
    from hosfl_sim.cli import main

    _bad_npz(tmp_path / "d.npz", case)
    out = tmp_path / "out"
    args = ["run", "quickstart", "task.dataset.name=npz", f"task.dataset.path={tmp_path / 'd.npz'}"]
    assert main([*args, "runtime.backend=local", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: task.dataset.path: got ") and fragment in err[0], err
    assert not out.exists()
