"""Tests for foramlib.learn.loader: split checks, class lists and the SliceBatches PyDataset."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import json
import pickle
from concurrent.futures import ThreadPoolExecutor

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.utils.class_weight import compute_class_weight

from foramlib.learn import loader as fd
from foramlib.learn.loader import DataError, SliceBatches

SIZE = 16
SPECIES = ["Gamma", "Alpha", "Beta"]  # deliberately unsorted
# per species: (specimen, split, slices); "Beta" is the rarer training class
LAYOUT = {
    "Alpha": [("007", "train", 9), ("a2", "train", 5), ("a3", "val", 4), ("a4", "test", 5)],
    "Beta": [("b1", "train", 6), ("b2", "val", 3), ("b3", "test", 4)],
    "Gamma": [("g1", "train", 8), ("g2", "train", 7), ("g3", "val", 5), ("g4", "test", 3)],
}
NAMES = ["Alpha", "Beta", "Gamma"]


def make_store(root, size: int = SIZE, seed: int = 0):
    """A tiny slice store: random uint8 arrays per volume plus the split index."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, arrays = [], {}
    for species in SPECIES:
        for specimen, split, n in LAYOUT[species]:
            name = f"{species[:3]}_{specimen}.npy"
            arrays[name] = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
            np.save(root / name, arrays[name])
            for r in range(n):
                rows.append(
                    dict(
                        slice_id=f"{name[:-4]}:{r:05d}",
                        file=f"{name[:-4]}.nii.gz",
                        specimen_id=specimen,
                        species=species,
                        array=name,
                        row=r,
                        normal_x=0.0,
                        normal_y=0.0,
                        normal_z=1.0,
                        offset_vox=float(r),
                        angle_deg=0.0,
                        fossil_fraction=0.3,
                        voxel_size_um=5.0,
                        split=split,
                    )
                )
    return pd.DataFrame(rows), arrays


@pytest.fixture
def store(tmp_path):
    index, arrays = make_store(tmp_path / "slices")
    return tmp_path / "slices", index, arrays


def source_images(index: pd.DataFrame, arrays, order=None) -> np.ndarray:
    rows = index if order is None else index.set_index("slice_id").loc[order].reset_index()
    return np.stack([arrays[a][r] for a, r in zip(rows["array"], rows["row"], strict=True)])


def all_batches(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def split_rows(index, split):
    return index[index["split"] == split].reset_index(drop=True)


# --------------------------------------------------------------------------- batches


def test_batch_shapes_dtypes_and_pixels(store):
    _, index, arrays = store
    val = split_rows(index, "val")
    ds = SliceBatches(val, arrays, NAMES, batch_size=4)
    x, y = ds[1]
    assert x.shape == (4, SIZE, SIZE, 1) and x.dtype == np.float32
    assert y.shape == (4, 3) and y.dtype == np.float32
    for k in range(4):
        row = val.iloc[4 + k]
        np.testing.assert_array_equal(x[k, :, :, 0], arrays[row["array"]][row["row"]])
        assert y[k].tolist() == [float(n == row["species"]) for n in NAMES]
    assert 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 200  # raw 0..255, not rescaled
    assert ds.image_shape == (SIZE, SIZE, 1) and ds.split == "val"


def test_unshuffled_order_is_index_order(store):
    _, index, arrays = store
    test = split_rows(index, "test")
    ds = SliceBatches(test, arrays, NAMES, batch_size=5)
    x, y = all_batches(ds)
    np.testing.assert_array_equal(x[..., 0], source_images(test, arrays))
    expected = [NAMES.index(s) for s in test["species"]]
    assert ds.labels().tolist() == expected == y.argmax(axis=1).tolist()
    assert ds.slice_ids() == test["slice_id"].tolist()
    assert ds.n_images == len(test) == len(x)
    ds.on_epoch_end()  # no shuffling: the order survives epochs
    assert ds.slice_ids() == test["slice_id"].tolist()


def test_last_partial_batch(store):
    _, index, arrays = store
    val = split_rows(index, "val")  # 12 slices
    ds = SliceBatches(val, arrays, NAMES, batch_size=5)
    assert len(ds) == 3
    assert [ds[i][0].shape[0] for i in range(3)] == [5, 5, 2]
    assert ds[-1][1].shape == (2, 3)
    np.testing.assert_array_equal(ds[2][0][..., 0], source_images(val, arrays)[10:])
    with pytest.raises(IndexError):
        ds[3]
    assert len(SliceBatches(val, arrays, NAMES, batch_size=12)) == 1
    assert len(SliceBatches(val, arrays, NAMES, batch_size=100)) == 1


class RecordingArray:
    """An array stand-in that records which rows each read asks for."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.ndim, self.dtype, self.shape = array.ndim, array.dtype, array.shape

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        self.reads.append(np.asarray(key).tolist())
        return self.array[key]


def test_reads_are_grouped_by_array_in_sorted_rows_but_returned_in_batch_order(store):
    _, index, arrays = store
    two = index[index["array"].isin(["Alp_007.npy", "Gam_g1.npy"])]
    mixed = two.iloc[[12, 3, 0, 15, 8, 2, 9, 2]].reset_index(drop=True)  # interleaved, a repeat
    wrapped = {a: RecordingArray(arrays[a]) for a in ("Alp_007.npy", "Gam_g1.npy")}
    ds = SliceBatches(mixed, wrapped, NAMES, batch_size=8)
    x, _ = ds[0]
    np.testing.assert_array_equal(x[..., 0], source_images(mixed, arrays))
    # rows asked for: Alp_007 4, 7, 0, 1 and Gam_g1 3, 0, 2, 2
    assert wrapped["Alp_007.npy"].reads == [[0, 1, 4, 7]]  # one sorted read per array
    assert wrapped["Gam_g1.npy"].reads == [[0, 2, 3]]  # without the repeat


def test_shuffle_is_seeded_and_changes_between_epochs(store):
    _, index, arrays = store
    train = split_rows(index, "train")  # 35 slices
    a = SliceBatches(train, arrays, NAMES, batch_size=8, shuffle=True, seed=3)
    b = SliceBatches(train, arrays, NAMES, batch_size=8, shuffle=True, seed=3)
    c = SliceBatches(train, arrays, NAMES, batch_size=8, shuffle=True, seed=4)
    first = a.slice_ids()
    assert first == b.slice_ids() and first != c.slice_ids()
    assert first != train["slice_id"].tolist() and sorted(first) == sorted(train["slice_id"])
    xa, ya = all_batches(a)
    xb, yb = all_batches(b)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    # the batches serve exactly the images and labels the order says
    np.testing.assert_array_equal(xa[..., 0], source_images(train, arrays, first))
    assert ya.argmax(axis=1).tolist() == a.labels().tolist()
    a.on_epoch_end()
    second = a.slice_ids()
    assert second != first and sorted(second) == sorted(first)
    np.testing.assert_array_equal(all_batches(a)[0][..., 0], source_images(train, arrays, second))
    b.on_epoch_end()
    assert b.slice_ids() == second and a.epoch == b.epoch == 1


def test_input_size_resizes_with_opencv(store):
    _, index, arrays = store
    val = split_rows(index, "val")
    src = source_images(val, arrays)[:4]
    small = SliceBatches(val, arrays, NAMES, batch_size=4, input_size=6)
    x, _ = small[0]
    assert x.shape == (4, 6, 6, 1) and small.image_shape == (6, 6, 1)
    expected = np.stack([cv2.resize(im, (6, 6), interpolation=cv2.INTER_AREA) for im in src])
    np.testing.assert_array_equal(x[..., 0], expected)
    large = SliceBatches(val, arrays, NAMES, batch_size=4, input_size=24)
    expected = np.stack([cv2.resize(im, (24, 24), interpolation=cv2.INTER_LINEAR) for im in src])
    np.testing.assert_array_equal(large[0][0][..., 0], expected)
    same = SliceBatches(val, arrays, NAMES, batch_size=4, input_size=SIZE)
    np.testing.assert_array_equal(same[0][0][..., 0], src)
    # a constant image stays constant
    flat = {"f.npy": np.full((2, SIZE, SIZE), 77, np.uint8)}
    one = pd.DataFrame({"array": "f.npy", "row": [0, 1], "species": "Alpha"})
    assert np.all(SliceBatches(one, flat, NAMES, input_size=5)[0][0] == 77.0)


def test_mixed_image_sizes_need_input_size():
    arrays = {"a.npy": np.zeros((1, 8, 8), np.uint8), "b.npy": np.full((1, 12, 12), 9, np.uint8)}
    index = pd.DataFrame({"array": ["a.npy", "b.npy"], "row": 0, "species": "Alpha"})
    with pytest.raises(DataError, match="different image sizes"):
        SliceBatches(index, arrays, NAMES)
    x, _ = SliceBatches(index, arrays, NAMES, input_size=10)[0]
    assert x.shape == (2, 10, 10, 1) and x[0].max() == 0 and x[1].min() == 9


def random_fill_mix(images, onehot, rng):
    """A stand-in for CutMix/MixUp whose output shows the rng it got."""
    lam = rng.random()
    return np.full_like(images, lam * 255), onehot * lam + (1 - lam) / onehot.shape[1]


def test_mix_is_applied_per_batch_and_deterministic(store):
    _, index, arrays = store
    train = split_rows(index, "train")
    kw = dict(batch_size=8, shuffle=True, seed=1)
    plain = SliceBatches(train, arrays, NAMES, **kw)
    mixed = SliceBatches(train, arrays, NAMES, mix=random_fill_mix, **kw)
    again = SliceBatches(train, arrays, NAMES, mix=random_fill_mix, **kw)
    x0, y0 = mixed[0]
    assert x0.dtype == np.float32 and y0.dtype == np.float32
    np.testing.assert_allclose(y0.sum(axis=1), 1.0, rtol=1e-6)
    assert not np.array_equal(x0, plain[0][0])  # the mix changed the batch
    np.testing.assert_array_equal(x0, mixed[0][0])  # same (epoch, batch): same draw
    np.testing.assert_array_equal(x0, again[0][0])
    assert x0[0, 0, 0, 0] != mixed[1][0][0, 0, 0, 0]  # each batch its own draw
    # the mix sees the batch's true labels
    seen = []
    SliceBatches(train, arrays, NAMES, mix=lambda x, y, r: seen.append(y) or (x, y), **kw)[2]
    np.testing.assert_array_equal(seen[0], plain[2][1])
    mixed.on_epoch_end()
    assert mixed[0][0][0, 0, 0, 0] != x0[0, 0, 0, 0]  # a new epoch draws anew
    bad = SliceBatches(train, arrays, NAMES, mix=lambda x, y, r: (x[:1], y), **kw)
    with pytest.raises(DataError, match="mix returned shapes"):
        bad[0]


def test_thread_workers_give_identical_batches(store):
    _, index, arrays = store
    train = split_rows(index, "train")
    kw = dict(batch_size=4, shuffle=True, seed=5, mix=random_fill_mix, input_size=12)
    one = SliceBatches(train, arrays, NAMES, **kw)
    two = SliceBatches(train, arrays, NAMES, workers=2, **kw)
    assert two.workers == 2 and not two.use_multiprocessing
    order = list(range(len(two)))[::-1] * 3  # concurrent, out of order, repeated
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(two.__getitem__, order))
    for i, (x, y) in zip(order, got, strict=True):
        np.testing.assert_array_equal(x, one[i][0])
        np.testing.assert_array_equal(y, one[i][1])

    # and through Keras' own threaded enqueuer
    test = split_rows(index, "test")
    model = tiny_model(SIZE)
    p1 = model.predict(SliceBatches(test, arrays, NAMES, batch_size=3), verbose=0)
    p2 = model.predict(SliceBatches(test, arrays, NAMES, batch_size=3, workers=2), verbose=0)
    assert p1.shape == (len(test), 3)
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7)


def test_pickling_keeps_memmaps_as_file_references(store):
    root, index, _ = store
    train = split_rows(index, "train")
    arrays = {a: np.load(root / a, mmap_mode="r") for a in train["array"].unique()}
    ds = SliceBatches(train, arrays, NAMES, batch_size=8, shuffle=True, seed=2)
    blob = pickle.dumps(ds)
    assert len(blob) < sum(a.nbytes for a in arrays.values())
    copy = pickle.loads(blob)
    assert all(isinstance(a, np.memmap) for a in copy._arrays)
    for i in range(len(ds)):
        np.testing.assert_array_equal(copy[i][0], ds[i][0])
    in_memory = SliceBatches(train, {a: np.array(v) for a, v in arrays.items()}, NAMES)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(in_memory))[0][0], in_memory[0][0])


def test_construction_errors(store):
    _, index, arrays = store
    val = split_rows(index, "val")
    with pytest.raises(DataError, match="index is empty"):
        SliceBatches(val.iloc[:0], arrays, NAMES)
    with pytest.raises(DataError, match="'Beta'.*'val' split.*not in the class list"):
        SliceBatches(val, arrays, ["Alpha", "Gamma"])
    with pytest.raises(DataError, match="Bet_b2.npy"):
        SliceBatches(val, {k: v for k, v in arrays.items() if k != "Bet_b2.npy"}, NAMES)
    with pytest.raises(DataError, match="Alp_a3.npy has 4 slices.*row 4"):
        SliceBatches(val.assign(row=val["row"] + 1), arrays, NAMES)
    with pytest.raises(DataError, match="uint8"):
        SliceBatches(val, {k: v.astype(np.float32) for k, v in arrays.items()}, NAMES)
    with pytest.raises(DataError, match="lacks column"):
        SliceBatches(val.drop(columns="array"), arrays, NAMES)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        SliceBatches(val, arrays, NAMES, batch_size=0)
    with pytest.raises(ValueError, match="seed"):
        SliceBatches(val, arrays, NAMES, seed=-1)
    with pytest.raises(ValueError, match="input_size"):
        SliceBatches(val, arrays, NAMES, input_size=0)
    with pytest.raises(DataError, match="repeats"):
        SliceBatches(val, arrays, ["Alpha", "Beta", "Alpha"])


# --------------------------------------------------------------------------- checks


def test_class_names_come_from_training_rows_sorted(store):
    _, index, _ = store
    extra = pd.DataFrame({"species": ["Zeta", "Aardvark"], "split": ["val", "test"]})
    assert fd.class_names(pd.concat([index, extra])) == NAMES
    with pytest.raises(DataError, match="'train' split is empty"):
        fd.class_names(index[index["split"] != "train"])


def test_check_splits_counts(store):
    _, index, _ = store
    counts = fd.check_splits(index)
    assert list(counts) == ["train", "val", "test"]
    assert counts["train"] == {"Alpha": 14, "Beta": 6, "Gamma": 15}
    assert counts["val"] == {"Alpha": 4, "Beta": 3, "Gamma": 5}
    assert counts["test"] == {"Alpha": 5, "Beta": 4, "Gamma": 3}
    assert list(fd.check_splits(index, ["Gamma", "Alpha", "Beta"])["test"]) == [
        "Gamma",
        "Alpha",
        "Beta",
    ]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.drop(columns="split"), "no 'split' column"),
        (lambda d: d.assign(split=d["split"].replace("val", "valid")), "unknown split.*'valid'"),
        (lambda d: d.assign(split=d["split"].where(d["split"] != "test")), "no split value"),
        (lambda d: d[d["split"] != "test"], "'test' split is empty"),
        (lambda d: d[d["split"] != "val"], "'val' split is empty"),
        (
            lambda d: d[~((d["split"] == "val") & (d["species"] == "Beta"))],
            r"class 'Beta' has no slices in the 'val' split",
        ),
        (
            lambda d: d[~((d["split"] != "train") & (d["species"] == "Gamma"))],
            r"class 'Gamma' has no slices in the 'val', 'test' split",
        ),
        (
            lambda d: d.assign(species=d["species"].mask(d["slice_id"] == "Bet_b3:00001", "Zeta")),
            r"species 'Zeta' in the 'test' split: not a training class",
        ),
    ],
)
def test_check_splits_refuses(store, change, match):
    _, index, _ = store
    with pytest.raises(DataError, match=match):
        fd.check_splits(change(index))


def test_check_splits_with_given_names(store):
    _, index, _ = store
    with pytest.raises(DataError, match="species 'Gamma' in the 'train' split: not in the class"):
        fd.check_splits(index, ["Alpha", "Beta"])
    with pytest.raises(
        DataError, match="class 'Delta' has no slices in the 'train', 'val', 'test'"
    ):
        fd.check_splits(index, NAMES + ["Delta"])


def test_check_class_lists():
    fd.check_class_lists(NAMES, list(NAMES))
    with pytest.raises(DataError, match=r"model m\.keras: missing class\(es\) 'Beta'"):
        fd.check_class_lists(NAMES, ["Alpha", "Gamma"], what="model m.keras")
    with pytest.raises(DataError, match=r"extra class\(es\) 'Delta'"):
        fd.check_class_lists(NAMES, NAMES + ["Delta"])
    with pytest.raises(DataError, match=r"missing class\(es\) 'Gamma'; extra class\(es\) 'Zeta'"):
        fd.check_class_lists(NAMES, ["Alpha", "Beta", "Zeta"])
    with pytest.raises(DataError, match="different order"):
        fd.check_class_lists(NAMES, ["Beta", "Alpha", "Gamma"])


def test_class_weights_are_balanced(store):
    _, index, _ = store
    weights = fd.class_weights(index, NAMES)
    assert list(weights) == [0, 1, 2]
    train = index.loc[index["split"] == "train", "species"]
    expected = compute_class_weight("balanced", classes=np.array(NAMES), y=train.to_numpy())
    np.testing.assert_allclose([weights[i] for i in range(3)], expected)
    assert weights[1] > weights[0] > weights[2]  # Beta (6) rarest, Gamma (15) commonest
    assert weights[1] == pytest.approx(35 / (3 * 6))
    with pytest.raises(DataError, match="'Delta' have no training slices"):
        fd.class_weights(index, NAMES + ["Delta"])


def test_one_hot():
    np.testing.assert_array_equal(one := fd.one_hot(np.array([1, 0, 1]), 3), np.eye(3)[[1, 0, 1]])
    assert one.dtype == np.float32
    assert fd.one_hot(np.array([], dtype=int), 2).shape == (0, 2)
    with pytest.raises(ValueError, match="lie in"):
        fd.one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="integer"):
        fd.one_hot(np.array([0.5]), 3)


def test_class_names_file_round_trip(tmp_path):
    path = tmp_path / "models" / "class_names.json"
    fd.save_class_names(["Gamma", "Alpha"], path)
    assert fd.load_class_names(path) == ["Gamma", "Alpha"]  # order kept, not re-sorted
    assert json.loads(path.read_text()) == ["Gamma", "Alpha"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["class_names.json"]  # no temp left
    with pytest.raises(DataError, match="does not exist"):
        fd.load_class_names(tmp_path / "nope.json")
    for text, match in [
        ("[oops", "not valid JSON"),
        ('{"a": 1}', "JSON list"),
        ('["A", "A"]', "repeats"),
        ("[]", "empty"),
        ('["A", 3]', "non-string"),
    ]:
        path.write_text(text)
        with pytest.raises(DataError, match=match) as info:
            fd.load_class_names(path)
        assert str(path) in str(info.value)
    with pytest.raises(DataError):
        fd.save_class_names([], path)


# --------------------------------------------------------------------------- stages


def test_load_split_index(store, tmp_path):
    _, index, _ = store
    path = tmp_path / "split" / "index.csv"
    path.parent.mkdir()
    index.to_csv(path, index=False)
    loaded = fd.load_split_index(path)
    assert loaded["specimen_id"].tolist() == index["specimen_id"].tolist()  # "007" kept
    with pytest.raises(DataError, match="does not exist"):
        fd.load_split_index(tmp_path / "split" / "missing.csv")
    index.drop(columns="split").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"index\.csv lacks column\(s\) \['split'\]"):
        fd.load_split_index(path)


def test_make_datasets_end_to_end(store, tmp_path):
    root, index, arrays = store
    path = tmp_path / "index.csv"
    index.to_csv(path, index=False)
    split_index = fd.load_split_index(path)
    sets = fd.make_datasets(split_index, root, batch_size=4, seed=9, mix=random_fill_mix)
    assert list(sets) == ["train", "val", "test"]
    for name, ds in sets.items():
        rows = split_rows(index, name)
        assert ds.names == NAMES and ds.n_images == len(rows) and ds.split == name
        assert sorted(ds.slice_ids()) == sorted(rows["slice_id"])
        assert all(isinstance(a, np.memmap) for a in ds._arrays)
    assert sets["train"].shuffle and sets["train"].mix is random_fill_mix
    assert sets["train"].slice_ids() != split_rows(index, "train")["slice_id"].tolist()
    for name in ("val", "test"):
        ds, rows = sets[name], split_rows(index, name)
        assert not ds.shuffle and ds.mix is None
        assert ds.slice_ids() == rows["slice_id"].tolist()
        np.testing.assert_array_equal(all_batches(ds)[0][..., 0], source_images(rows, arrays))
    x, _ = sets["train"][0]
    assert np.ptp(x[0]) == 0  # the mix filled it
    assert fd.make_datasets(split_index, root, NAMES[::-1])["val"].names == NAMES[::-1]
    # a problem in the split table is found before the store is opened
    with pytest.raises(DataError, match="'val' split is empty"):
        fd.make_datasets(split_index[split_index["split"] != "val"], tmp_path / "nowhere")
    (root / "Bet_b2.npy").unlink()
    with pytest.raises(DataError, match="Bet_b2.npy"):
        fd.make_datasets(split_index, root)


def tiny_model(size: int, n_classes: int = 3) -> keras.Model:
    inputs = keras.Input((size, size, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def test_keras_fit_accepts_slice_batches(store):
    _, index, arrays = store
    train = split_rows(index, "train").groupby("species").head(6)  # 18 slices, 3 classes
    keras.utils.set_random_seed(0)
    model = tiny_model(12)
    ds = SliceBatches(
        train, arrays, NAMES, batch_size=9, shuffle=True, input_size=12, mix=random_fill_mix
    )
    assert len(ds) == 2
    first = ds.slice_ids()
    history = model.fit(ds, epochs=1, verbose=0, class_weight=fd.class_weights(train, NAMES))
    assert np.isfinite(history.history["loss"][0])
    # Keras calls on_epoch_end (at fit's start too), which draws a new order
    assert ds.epoch >= 1 and ds.slice_ids() != first
    assert model.predict(ds, verbose=0).shape == (18, 3)
