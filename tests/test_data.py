"""Tests of common/data.py and the fashion_mnist_local builder (CPU, about a minute).

The builder is run once per module into a temporary TFDS data dir (about 20 s on 2 cores); the
Loader, eval and subset tests use small subsets of the prepared test split.
"""

import gzip
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from common import data

RAW_DIR = "/usr/share/datasets/fashion-mnist"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(**overrides):
    fields = dict(name="fashion_mnist_local", folder="", data_dir="", image_size=0)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def raw_idx(name, header_bytes):
    """The idx file's payload after its fixed-size header (16 bytes for images, 8 for labels)."""
    with gzip.open(os.path.join(RAW_DIR, name), "rb") as f:
        return np.frombuffer(f.read()[header_bytes:], np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    data.prepare_default(path)
    return path


@pytest.fixture(scope="module")
def test_split(data_dir):
    return data.load(config(data_dir=data_dir), "test")


# --------------------------------------------------------------------------------------------------
# The embedded default data set
# --------------------------------------------------------------------------------------------------


def test_prepared_default_matches_raw_idx_files(data_dir):
    train = data.load(config(data_dir=data_dir), "train")
    test = data.load(config(data_dir=data_dir), "test")
    assert (train.num_examples, test.num_examples) == (60000, 10000)
    assert (train.num_classes, train.image_shape) == (10, (28, 28, 3))

    for ds, prefix, picks in ((train, "train", [0, 1, 31337, 59999]), (test, "t10k", [0, 9999])):
        images = raw_idx(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = raw_idx(f"{prefix}-labels-idx1-ubyte.gz", 8)
        batch = ds.get(picks)
        assert batch["image"].dtype == np.uint8 and batch["image"].shape == (len(picks), 28, 28, 3)
        for c in range(3):  # gray is repeated to 3 channels
            np.testing.assert_array_equal(batch["image"][..., c], images[picks])
        np.testing.assert_array_equal(batch["label"], labels[picks])
        np.testing.assert_array_equal(batch["index"], picks)
        assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
    # The labels of the raw file, read without decoding images: 1,000 per class in the test split.
    np.testing.assert_array_equal(test.labels(), raw_idx("t10k-labels-idx1-ubyte.gz", 8))


def test_prepare_is_idempotent(data_dir):
    folder = os.path.join(data_dir, "fashion_mnist_local", "1.0.0")
    before = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)}
    assert data.prepare_default(data_dir) == folder
    after = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)}
    assert before == after
    assert any(f.endswith(tuple(f"{i:05d}" for i in range(10))) and "array_record" in f for f in before), before


def test_image_size_resizes_the_default(data_dir):
    raw = raw_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[7]
    # fit 'centre' resizes the 28 px image to the 32 px canvas.
    ds = data.load(config(data_dir=data_dir, image_size=32, fit="centre"), "test")
    assert ds.image_shape == (32, 32, 3)
    got = ds.get([7])["image"][0]
    want = np.asarray(Image.fromarray(raw).resize((32, 32), Image.BILINEAR))
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], want)
    # fit 'whole' never upsamples: the image at the top-left of the canvas, extent (28, 28).
    batch = data.load(config(data_dir=data_dir, image_size=32), "test").get([7])
    np.testing.assert_array_equal(batch["extent"], [[28, 28]])
    np.testing.assert_array_equal(batch["image"][0, :28, :28, 0], raw)
    assert not batch["image"][0, 28:].any() and not batch["image"][0, :, 28:].any()


def test_a_small_split_is_decoded_once_and_shared_by_every_load(data_dir, monkeypatch):
    # A canvas size no other test reads: this split's memory starts empty.
    cfg = config(data_dir=data_dir, image_size=20, fit="centre")
    ds = data.load(cfg, "test")
    assert ds.decoded_once and data.load(cfg, "test") is ds  # the kNN monitor's load is the loader's
    opened = []
    real_open = data.Image.open
    monkeypatch.setattr(data.Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    picks = [3, 9998, 41, 3]
    first = ds.get(picks)
    assert len(opened) == 3  # each new example decoded once, the repeated one too
    again = ds.get(picks[::-1])
    assert len(opened) == 3  # from memory
    raw = raw_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    for row, i in enumerate(picks):
        want = np.asarray(Image.fromarray(raw[i]).resize((20, 20), Image.BILINEAR))
        for c in range(3):
            np.testing.assert_array_equal(first["image"][row, ..., c], want)
            np.testing.assert_array_equal(again["image"][len(picks) - 1 - row, ..., c], want)
    np.testing.assert_array_equal(first["label"], raw_idx("t10k-labels-idx1-ubyte.gz", 8)[picks])
    np.testing.assert_array_equal(first["extent"], [[20, 20]] * 4)

    # Beyond MAX_IN_MEMORY_BYTES a split is decoded on every read, and not shared.
    monkeypatch.setattr(data, "MAX_IN_MEMORY_BYTES", 100)
    big = data.load(config(data_dir=data_dir, image_size=21, fit="centre"), "test")
    assert not big.decoded_once and data.load(config(data_dir=data_dir, image_size=21, fit="centre"), "test") is not big
    before = len(opened)
    big.get([5, 5])
    big.get([5])
    assert len(opened) == before + 3


def test_decode_workers_are_a_config_knob(data_dir):
    one = data.load(config(data_dir=data_dir, image_size=22, workers=1), "test")
    two = data.load(config(data_dir=data_dir, image_size=22, workers=2), "test")
    assert one is not two  # each its own thread pool
    np.testing.assert_array_equal(one.get([0, 1, 2])["image"], two.get([2, 1, 0])["image"][::-1])
    with pytest.raises(ValueError, match="data.workers"):
        data.load(config(data_dir=data_dir, workers=0), "test")


def test_missing_debian_files_say_how_to_install(tmp_path, monkeypatch):
    from common.datasets.fashion_mnist_local import fashion_mnist_local_dataset_builder as builder

    monkeypatch.setattr(builder, "RAW_DIR", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.prepare_default(str(tmp_path / "tfds"))


def test_import_is_cheap():
    code = "import sys, common.data; assert not {'tensorflow', 'tensorflow_datasets'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# --------------------------------------------------------------------------------------------------
# Loader: order, determinism, resume, sharding
# --------------------------------------------------------------------------------------------------


def test_loader_order_is_a_pure_function_of_seed_and_step(test_split):
    ds = test_split.subset(np.arange(100, 164))  # 64 examples
    mesh = data.make_mesh()
    a, b = data.Loader(ds, 8, seed=3, mesh=mesh), data.Loader(ds, 8, seed=3, mesh=mesh)
    assert a.steps_per_epoch == 8
    for step in (0, 5, 13):
        x, y = a.get(step), b.get(step)
        for k in ("image", "label", "index"):
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))

    # Epoch e is the permutation default_rng([seed, e]) of the examples, cut into batches.
    epochs = []
    for e in range(2):
        order = np.concatenate([np.asarray(a.get(e * 8 + s)["index"]) for s in range(8)])
        np.testing.assert_array_equal(order, np.random.default_rng([3, e]).permutation(64))
        epochs.append(order)
    assert sorted(epochs[0]) == list(range(64))  # each example exactly once per epoch
    assert not np.array_equal(epochs[0], epochs[1])
    other_seed = data.Loader(ds, 8, seed=4, mesh=mesh).get(0)["index"]
    assert not np.array_equal(np.asarray(other_seed), epochs[0][:8])

    # Rows carry the data of the examples they name (index counts within the subset).
    batch = a.get(2)
    want = test_split.get(100 + np.asarray(batch["index"]))
    np.testing.assert_array_equal(np.asarray(batch["image"]), want["image"])
    np.testing.assert_array_equal(np.asarray(batch["label"]), want["label"])
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 28, 28, 3)
    assert isinstance(batch["image"].sharding, NamedSharding)
    assert batch["image"].sharding.spec == P("data") and mesh.axis_names == ("data",)

    # No shuffle: in order; the remainder of an epoch is dropped.
    plain = data.Loader(ds, 24, seed=3, mesh=mesh, shuffle=False)
    assert plain.steps_per_epoch == 2
    np.testing.assert_array_equal(np.asarray(plain.get(1)["index"]), np.arange(24, 48))
    np.testing.assert_array_equal(np.asarray(plain.get(2)["index"]), np.arange(24))


def test_resumed_iteration_sees_the_same_batches(test_split):
    ds = test_split.subset(np.arange(40))
    mesh = data.make_mesh()
    full = data.Loader(ds, 8, seed=0, mesh=mesh).iterate(0)
    uninterrupted = [next(full) for _ in range(12)]
    full.close()
    resumed = data.Loader(ds, 8, seed=0, mesh=mesh).iterate(start_step=7)
    for want_step, want in uninterrupted[7:]:
        step, got = next(resumed)
        assert step == want_step
        np.testing.assert_array_equal(np.asarray(got["index"]), np.asarray(want["index"]))
        np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
    resumed.close()
    assert [s for s, _ in uninterrupted] == list(range(12))


def test_eight_devices_give_the_one_device_batch(data_dir, test_split, tmp_path):
    script = textwrap.dedent(f"""
        import jax, ml_collections, numpy as np, pytest
        from common import data
        assert jax.device_count() == 8
        cfg = ml_collections.ConfigDict(
            dict(name="fashion_mnist_local", folder="", data_dir={data_dir!r}, image_size=0))
        mesh = data.make_mesh()
        ds = data.load(cfg, "test").subset(np.arange(64))
        batch = data.Loader(ds, 16, seed=5, mesh=mesh).get(6)
        shards = batch["image"].addressable_shards
        assert len(shards) == 8 and all(s.data.shape == (2, 28, 28, 3) for s in shards)
        assert len({{s.device for s in shards}}) == 8
        with pytest.raises(ValueError, match="batch_size=16"):
            data.check_batch_size(12, mesh)
        np.savez({str(tmp_path / "batch.npz")!r}, **{{k: np.asarray(v) for k, v in batch.items()}})
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, check=True)
    eight = np.load(tmp_path / "batch.npz")
    one = data.Loader(test_split.subset(np.arange(64)), 16, seed=5, mesh=data.make_mesh()).get(6)
    for k in ("image", "label", "index"):
        np.testing.assert_array_equal(eight[k], np.asarray(one[k]))


def test_eval_batches_cover_every_example_once(test_split):
    ds = test_split.subset(np.arange(500, 537))  # 37 examples, batches of 8
    seen, n_valids = [], []
    for batch, n_valid in data.eval_batches(ds, 8, data.make_mesh()):
        assert batch["image"].shape == (8, 28, 28, 3)
        n_valids.append(n_valid)
        seen.append(np.asarray(batch["index"])[:n_valid])
        want = test_split.get(500 + seen[-1])
        np.testing.assert_array_equal(np.asarray(batch["image"])[:n_valid], want["image"])
    assert n_valids == [8, 8, 8, 8, 5]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(37))


def test_balanced_subset_is_balanced_and_deterministic(test_split):
    labels = np.repeat([0, 1, 2], [100, 50, 30])
    np.random.default_rng(0).shuffle(labels)
    picked = data.balanced_subset(labels, 0.1, 3, seed=1)  # round(0.1 * 180 / 3) = 6 per class
    np.testing.assert_array_equal(np.bincount(labels[picked]), [6, 6, 6])
    assert len(set(picked.tolist())) == 18
    np.testing.assert_array_equal(picked, data.balanced_subset(labels, 0.1, 3, seed=1))
    assert not np.array_equal(picked, data.balanced_subset(labels, 0.1, 3, seed=2))
    with pytest.raises(ValueError, match="class 2 has only 30"):
        data.balanced_subset(labels, 0.6, 3, seed=1)

    # On the real labels, through Dataset.subset: 1% of the test split is 10 of every class.
    picked = data.balanced_subset(test_split.labels(), 0.01, 10, seed=0)
    subset = test_split.subset(picked)
    assert subset.num_examples == 100
    np.testing.assert_array_equal(np.bincount(subset.labels()), [10] * 10)
    np.testing.assert_array_equal(subset.get(np.arange(100))["label"], subset.labels())


def test_bad_batch_sizes_are_refused(test_split):
    mesh = data.make_mesh()
    with pytest.raises(ValueError, match="batch_size="):
        data.check_batch_size(0, mesh)
    with pytest.raises(ValueError, match="exceeds the 16 examples"):
        data.Loader(test_split.subset(np.arange(16)), 24, seed=0, mesh=mesh)


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def solid(value, size=(6, 6)):
    return np.full((*size, 3), value, np.uint8)


def test_labelled_folder(tmp_path):
    write_png(tmp_path / "train/cat/a.png", solid((10, 20, 30)))
    write_png(tmp_path / "train/cat/b.png", np.full((6, 6), 77))  # gray
    write_png(tmp_path / "train/dog/c.png", solid((200, 0, 5)))
    write_png(tmp_path / "test/dog/d.png", solid((1, 2, 3)))  # 'dog' is class 1 in every split
    (tmp_path / "train/dog/notes.txt").write_text("not an image")

    train = data.load(config(folder=str(tmp_path)), "train")
    assert (train.num_examples, train.num_classes, train.image_shape) == (3, 2, (6, 6, 3))
    batch = train.get([0, 1, 2])
    np.testing.assert_array_equal(batch["label"], [0, 0, 1])
    np.testing.assert_array_equal(batch["image"][0], solid((10, 20, 30)))
    np.testing.assert_array_equal(batch["image"][1], solid((77, 77, 77)))
    np.testing.assert_array_equal(batch["image"][2], solid((200, 0, 5)))

    test = data.load(config(folder=str(tmp_path)), "test")
    assert (test.num_examples, test.num_classes) == (1, 2)
    np.testing.assert_array_equal(test.get([0])["label"], [1])

    with pytest.raises(ValueError, match="no split 'validation'.*test.*train"):
        data.load(config(folder=str(tmp_path)), "validation")


def test_flat_unlabelled_folder_and_resizing(tmp_path):
    # fit 'centre' (the older host fit). Column j has value 5 * j: the centre crop of a 40 x 10
    # (W x H) image at size 10 keeps columns 15..24 (the shorter side is already 10, so nothing is
    # resampled).
    wide = np.broadcast_to((5 * np.arange(40, dtype=np.uint8))[None, :, None], (10, 40, 3))
    write_png(tmp_path / "wide.png", wide)
    write_png(tmp_path / "small.png", solid(128, (5, 5)))

    with pytest.raises(ValueError, match="differ in size.*image_size"):
        data.load(config(folder=str(tmp_path)), "train")
    ds = data.load(config(folder=str(tmp_path), image_size=10, fit="centre"), "train")
    assert (ds.num_examples, ds.num_classes, ds.image_shape) == (2, 0, (10, 10, 3))
    batch = ds.get([0, 1])  # sorted names: small.png, wide.png
    np.testing.assert_array_equal(batch["label"], [-1, -1])
    np.testing.assert_array_equal(batch["image"][0], solid(128, (10, 10)))
    np.testing.assert_array_equal(batch["image"][1], wide[:, 15:25])
    np.testing.assert_array_equal(batch["extent"], [[10, 10], [10, 10]])
    # Any split of a flat folder is the same images.
    other = data.load(config(folder=str(tmp_path), image_size=10, fit="centre"), "test")
    np.testing.assert_array_equal(other.get([0, 1])["image"], batch["image"])


def test_whole_fit_keeps_the_whole_image_and_its_extent(tmp_path):
    """fit 'whole' (the default): the longer side resized to the canvas when larger (never
    upsampled), aspect kept, at the top-left of a zero canvas, and the batch's extent says where."""
    rng = np.random.default_rng(0)
    images = {
        "a_wide.png": rng.integers(1, 256, (30, 80, 3)),  # H x W = 30 x 80 -> 15 x 40
        "b_tall.png": rng.integers(1, 256, (60, 45, 3)),  # -> 40 x 30
        "c_small.png": rng.integers(1, 256, (12, 20, 3)),  # fits: kept at 12 x 20
        "d_square.png": rng.integers(1, 256, (40, 40, 3)),  # exactly the canvas: untouched
    }
    for name, array in images.items():
        write_png(tmp_path / name, array)
    ds = data.load(config(folder=str(tmp_path), image_size=40), "train")
    assert ds.image_shape == (40, 40, 3)
    batch = ds.get([0, 1, 2, 3])
    np.testing.assert_array_equal(batch["extent"], [[15, 40], [40, 30], [12, 20], [40, 40]])
    for row, (name, array) in enumerate(images.items()):
        h, w = batch["extent"][row]
        want = np.asarray(Image.fromarray(array.astype(np.uint8)).resize((w, h), Image.BILINEAR))
        np.testing.assert_array_equal(batch["image"][row, :h, :w], want)
        assert not batch["image"][row, h:].any() and not batch["image"][row, :, w:].any()
    with pytest.raises(ValueError, match="data.fit"):
        data.load(config(folder=str(tmp_path), image_size=40, fit="stretch"), "train")


def test_default_batches_carry_full_extents(test_split):
    """The embedded default (28 px, already square) fills the canvas: extent (28, 28), the images
    the same under both fits."""
    batch = test_split.get(np.arange(5))
    np.testing.assert_array_equal(batch["extent"], np.tile([28, 28], (5, 1)))
    assert batch["extent"].dtype == np.int32


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(config(folder=str(tmp_path / "missing")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        data.load(config(folder=str(tmp_path / "empty")), "train")

    bad = tmp_path / "bad"
    write_png(bad / "good.png", solid(9))
    (bad / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        data.load(config(folder=str(bad)), "train")

    # A valid header but truncated pixel data passes the cheap check and fails at decode time.
    truncated = tmp_path / "truncated"
    write_png(truncated / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3)))
    content = (truncated / "t.png").read_bytes()
    (truncated / "t.png").write_bytes(content[: len(content) // 2])
    ds = data.load(config(folder=str(truncated)), "train")
    with pytest.raises(ValueError, match="t.png"):
        ds.get([0])


# --------------------------------------------------------------------------------------------------
# TFDS errors and the tfrecord path
# --------------------------------------------------------------------------------------------------


def test_tfds_errors_name_the_problem_and_the_fix(tmp_path, monkeypatch, data_dir):
    import tensorflow_datasets as tfds

    def no_download(*args, **kwargs):
        raise AssertionError("load() must never download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    empty = str(tmp_path)
    with pytest.raises(ValueError, match="no data set named 'fashion_mnist_locl'.*fashion_mnist_local"):
        data.load(config(name="fashion_mnist_locl", data_dir=empty), "train")
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record --data_dir="):
        data.load(config(name="cifar10", data_dir=empty), "train")
    with pytest.raises(FileNotFoundError, match="python scripts/prepare_data.py"):
        data.load(config(data_dir=empty), "train")
    assert os.listdir(empty) == []
    with pytest.raises(ValueError, match="no split 'validation'.*'train', 'test'"):
        data.load(config(data_dir=data_dir), "validation")


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
    """A 12-example TFDS data set prepared in tfrecord format (TFDS's default, no random access)."""
    import tensorflow_datasets as tfds

    class TinyTfrecordForTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(
                disable_shuffling=True,
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(4, 6, 3)), "label": tfds.features.ClassLabel(num_classes=3)}
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(12):
                yield i, {"image": np.full((4, 6, 3), 20 * i, np.uint8), "label": i % 3}

    path = str(tmp_path_factory.mktemp("tfrecord"))
    TinyTfrecordForTest(data_dir=path).download_and_prepare()
    return path


def test_small_tfrecord_data_set_is_loaded_into_memory(tfrecord_dir, monkeypatch):
    ds = data.load(config(name="tiny_tfrecord_for_test", data_dir=tfrecord_dir), "train")
    assert (ds.num_examples, ds.num_classes, ds.image_shape) == (12, 3, (4, 6, 3))
    batch = ds.get([11, 0, 4])
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], [220, 0, 80])
    np.testing.assert_array_equal(batch["label"], [2, 0, 1])

    monkeypatch.setattr(data, "MAX_IN_MEMORY_BYTES", 100)
    with pytest.raises(ValueError, match="tfds build tiny_tfrecord_for_test --file_format=array_record"):
        data.load(config(name="tiny_tfrecord_for_test", data_dir=tfrecord_dir), "train")


def test_synthetic_data_is_a_pure_function_of_split_and_index():
    config = ml_collections.ConfigDict(dict(name="synthetic", folder="", data_dir="", image_size=8))
    train = data.load(config, "train")
    a, b = train.get([3, 5]), data.load(config, "train").get([5, 3])
    assert a["image"].shape == (2, 8, 8, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"][0], b["image"][1])
    assert not np.array_equal(a["image"][0], a["image"][1])
    assert not np.array_equal(a["image"][0], data.load(config, "test").get([3])["image"][0])
    assert set(np.unique(train.labels())) == set(range(10))
