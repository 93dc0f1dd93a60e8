"""Data: TFDS data sets or image folders -> per-host batches -> global arrays sharded over devices.

The host only decodes, fits each image into one fixed S x S canvas (S = data.image_size) and batches
uint8 images; everything random about a view (random-resized crop, flip, colour jitter, blur, ...)
runs on the accelerator in `common/augment.py`, starting from the canvas the host delivers.

Fit (`data.fit`):
  * 'whole' (the default): the WHOLE image, aspect preserved, resized so that its longer side is at
    most S (never upsampled), at the top-left of the canvas with zeros elsewhere. Every batch carries
    `extent` int32 [B, 2], each image's valid (height, width), and the device samples its random
    crops inside it (`augment.random_resized_crop(..., extent=...)`), as the official pipelines crop
    the decoded image. A square image of side S (Fashion-MNIST at 28, CIFAR at 32) fills the canvas.
  * 'centre': the shorter side resized to S and the centre S x S square kept (extent (S, S)): the
    older behaviour, a quarter of a 4:3 photo is never seen.

Sources, chosen by `load(data_config, split)`:
  * TFDS in array_record format, read with random access through `tfds.data_source` (any size;
    prepare large data sets with `tfds build NAME --file_format=array_record`). A split whose canvas
    images fit in MAX_IN_MEMORY_BYTES (Fashion-MNIST, CIFAR, STL-10) keeps every image in host memory
    once decoded, shared by every `load` of the split in the process: the kNN monitor's pass at step 0
    decodes the training split once for the whole run.
  * TFDS in tfrecord format (the TFDS default), decoded into memory when small (CIFAR-10, STL-10).
  * Image folders: labelled `root/<split>/<class>/*` or a flat unlabelled `root/*`, decoded with PIL
    on demand.
  * The offline default `fashion_mnist_local`: Fashion-MNIST from the Debian package
    `dataset-fashion-mnist`, prepared once by `python scripts/prepare_data.py`. Its gray images are
    repeated to 3 channels, so colour jitter acts on them only through brightness and contrast.

Order: the batch of training step `s` is a pure function of (seed, s): epoch `s // steps_per_epoch`
is a permutation drawn from `np.random.default_rng([seed, epoch])`, and remainders are dropped. A
resumed run therefore sees exactly the batches of an uninterrupted one; a checkpoint stores only the
step. Each process loads only its own rows of the global batch, which
`jax.make_array_from_process_local_data` assembles into one array sharded along the mesh axis
'data'.

Decoding runs in `data.workers` threads per data set (PIL releases the GIL while it decodes and
resizes); scripts/benchmark_data.py measures the rate per core on ImageNet-sized JPEGs. Threads, not
Grain's worker processes: on this project's 2-core CPU (2,000 synthetic 500x375 JPEGs, canvas 512,
three passes each, quiet machine) both decode about the same number of images per CPU-second
(data.Loader 321-346, Grain 279-388 over two runs, 1 and 2 workers), and two free-running decode
threads reach 1.70-1.85x one thread, i.e. about 13% of each image's work is serialised, which caps
one process of threads near 4,000 images/s: above the ~3,000/s a ResNet-50 in bfloat16 needs on one
H100, and every accelerator gets its own process in a multi-process launch. Grain is measured beside
them by `python scripts/benchmark_data.py --grain`.

TensorFlow is imported only inside the functions that load TFDS data, with the accelerators hidden
from it, so it never takes GPU memory from JAX; importing this module is cheap.
"""

import concurrent.futures
import difflib
import io
import itertools
import os
import queue
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

DEFAULT_DATASET = "fashion_mnist_local"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A tfrecord-only TFDS data set is decoded into host memory when it fits in this many bytes; an
# array_record split that fits keeps each decoded image in memory after its first read.
MAX_IN_MEMORY_BYTES = 4 * 2**30
# Decode threads per data set (data.workers overrides it). PIL releases the GIL while it decodes and
# resizes, so threads overlap decodes of real photos; scripts/benchmark_data.py measures the scaling.
DEFAULT_WORKERS = 8


# --------------------------------------------------------------------------------------------------
# Mesh and batch size
# --------------------------------------------------------------------------------------------------


def make_mesh() -> Mesh:
    """A 1-D mesh named 'data' over every device of every process (data parallelism)."""
    return Mesh(np.array(jax.devices()), ("data",))


def check_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> None:
    """Raises ValueError unless the global batch splits evenly over devices and processes."""
    num_devices = mesh.devices.size if mesh is not None else jax.device_count()
    if global_batch_size <= 0:
        raise ValueError(
            f"The global batch size must be positive, got {global_batch_size}; set "
            f"e.g. --config.data.batch_size={max(num_devices, 256)}."
        )
    for count, what in ((num_devices, "devices"), (jax.process_count(), "processes")):
        if global_batch_size % count:
            fix = max(count, round(global_batch_size / count) * count)
            raise ValueError(
                f"The global batch size {global_batch_size} is not divisible by the {count} "
                f"{what}: each must get the same number of rows. Use a multiple of {count}, e.g. "
                f"--config.data.batch_size={fix}."
            )


# --------------------------------------------------------------------------------------------------
# Dataset: random access to uint8 images
# --------------------------------------------------------------------------------------------------


class Dataset:
    """Random access to one split: `get(indices)` decodes those examples.

    Attributes:
      name: the TFDS name or the image folder.
      split: the split it was loaded from.
      num_examples: N.
      num_classes: number of classes, 0 when unlabelled.
      image_shape: (H, W, 3), the same for every image (the canvas).
      read: indices int [n] -> (images uint8 [n, H, W, 3], labels int32 [n], -1 when unlabelled,
        and optionally extents int32 [n, 2], the valid (height, width); absent: the whole canvas).
      read_labels: indices int [n] -> labels int32 [n], without decoding images where possible.
      decoded_once: True when each example is decoded on its first read and kept in host memory
        (array_record splits that fit in MAX_IN_MEMORY_BYTES), so later reads only copy.
    """

    def __init__(self, name, split, num_examples, num_classes, image_shape, read, read_labels, decoded_once=False):
        self.name = name
        self.split = split
        self.num_examples = num_examples
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.read = read
        self.read_labels = read_labels
        self.decoded_once = decoded_once

    def __repr__(self):
        return (
            f"Dataset({self.name!r}, split={self.split!r}, num_examples={self.num_examples}, "
            f"num_classes={self.num_classes}, image_shape={self.image_shape})"
        )

    def get(self, indices) -> dict[str, np.ndarray]:
        """Examples `indices` (int [n], each in [0, num_examples)).

        Returns:
          dict(image=uint8 [n, H, W, 3], label=int32 [n] (-1 when unlabelled), index=int32 [n],
          extent=int32 [n, 2]: the valid (height, width) of each image in the top-left of its array).
        """
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
            raise IndexError(f"indices must lie in [0, {self.num_examples}) for {self!r}")
        out = self.read(indices)
        images, labels = out[0], out[1]
        # A read without extents (a hand-made Dataset) delivers whole arrays.
        extents = out[2] if len(out) > 2 else np.tile(np.array(self.image_shape[:2], np.int32), (len(indices), 1))
        return dict(
            image=images,
            label=labels.astype(np.int32),
            index=indices.astype(np.int32),
            extent=np.asarray(extents, np.int32).reshape(len(indices), 2),
        )

    def labels(self) -> np.ndarray:
        """All labels, int32 [N] (-1 when unlabelled)."""
        return self.read_labels(np.arange(self.num_examples)).astype(np.int32)

    def subset(self, indices) -> "Dataset":
        """The examples `indices` of this split, renumbered 0..len(indices)-1 (as `index` is)."""
        base = np.asarray(indices, np.int64).reshape(-1)
        if base.size and (base.min() < 0 or base.max() >= self.num_examples):
            raise IndexError(f"subset indices must lie in [0, {self.num_examples})")
        return Dataset(
            self.name,
            self.split,
            len(base),
            self.num_classes,
            self.image_shape,
            read=lambda i: self.read(base[i]),
            read_labels=lambda i: self.read_labels(base[i]),
        )


def balanced_subset(labels, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """A class-balanced labelled fraction: round(fraction * N / C) examples of every class.

    Which examples is a pure function of `seed`, so every run and every process picks the same ones.

    Args:
      labels: int [N].
      fraction: in (0, 1].
      num_classes: C.
      seed: chooses the examples.
    Returns:
      int64 [C * round(fraction * N / C)], sorted indices into `labels`.
    """
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise ValueError(f"The label fraction must lie in (0, 1], got {fraction}.")
    per_class = round(fraction * len(labels) / num_classes)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(
                f"A balanced {fraction:g} fraction needs {per_class} examples of every class, but "
                f"class {c} has only {len(members)}; use a smaller fraction."
            )
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------------------------------
# Host-side image preparation
# --------------------------------------------------------------------------------------------------


FITS = ("whole", "centre")


def _fit(image, image_size: int, fit: str = "whole") -> tuple[np.ndarray, tuple[int, int]]:
    """A PIL image -> (uint8 [S, S, 3] canvas, its valid (height, width)).

    fit 'whole': the image resized (PIL bilinear, antialiased) so that its longer side is S when it
    is larger, its shorter side rounded, kept as it is when it already fits; at the top-left of a zero
    canvas. fit 'centre': the shorter side resized to S, then the centre S x S crop (extent (S, S)).
    With image_size == 0 the native size is kept (the canvas is the image). Gray (and palette, RGBA,
    CMYK) images become RGB, so a gray image is repeated to 3 channels; 16-bit gray images are scaled
    to 8 bits.
    """
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit gray (PIL reads 16-bit PNGs as 'I;16' or 32-bit 'I'): scale 0..65535 to 0..255;
        # PIL's own convert would clip everything above 255 to white.
        image = Image.fromarray((np.asarray(image, np.float64) * (255 / 65535)).round().clip(0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if not image_size or image.size == (image_size, image_size):
        return np.asarray(image, np.uint8), (h, w)
    if fit == "whole":
        if max(w, h) > image_size:
            scale = image_size / max(w, h)
            w, h = max(1, min(image_size, round(w * scale))), max(1, min(image_size, round(h * scale)))
            image = image.resize((w, h), Image.BILINEAR)  # antialiased when shrinking
        canvas = np.zeros((image_size, image_size, 3), np.uint8)
        canvas[:h, :w] = np.asarray(image, np.uint8)
        return canvas, (h, w)
    if fit != "centre":
        raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}.")
    scale = image_size / min(w, h)
    # Truncation and round-half crop offsets as in torchvision's Resize and CenterCrop.
    new_w, new_h = max(image_size, int(w * scale)), max(image_size, int(h * scale))
    image = image.resize((new_w, new_h), Image.BILINEAR)  # antialiased when shrinking
    left, top = int(round((new_w - image_size) / 2)), int(round((new_h - image_size) / 2))
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, np.uint8), (image_size, image_size)


def _fit_array(image: np.ndarray, image_size: int, fit: str = "whole") -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [H, W, C] (C = 1 or 3) -> (uint8 [S, S, 3] (or [H, W, 3] when image_size == 0), extent)."""
    if image_size and image.shape[:2] != (image_size, image_size):
        return _fit(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image), image_size, fit)
    return (np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image), image.shape[:2]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load(data_config, split: str) -> Dataset:
    """Opens `split` of the data set that `data_config` names; checks it before any compile.

    Args:
      data_config: ConfigDict with `name` (TFDS name), `folder` (image folder; used instead of TFDS
        when non-empty), `data_dir` (TFDS data dir, '' = TFDS default: $TFDS_DATA_DIR or
        ~/tensorflow_datasets), `image_size` (the host-side square canvas, 0 = native size) and
        `fit` ('whole' (default when absent) or 'centre', see the module docstring) and `workers`
        (decode threads, DEFAULT_WORKERS when absent).
      split: e.g. 'train', 'test', or a TFDS slice such as 'train[:10%]'.
    Raises:
      ValueError / FileNotFoundError saying what is wrong and how to fix it.
    """
    fit = data_config.get("fit", "whole")
    if fit not in FITS:
        raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}.")
    workers = data_config.get("workers", DEFAULT_WORKERS)
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"data.workers (decode threads) must be a positive integer, got {workers!r}.")
    if data_config.folder:
        return _load_folder(data_config.folder, split, data_config.image_size, fit, workers)
    if data_config.name == "synthetic":
        return synthetic(split, data_config.image_size)
    return _load_tfds(data_config.name, split, data_config.data_dir, data_config.image_size, fit, workers)


def synthetic(split, image_size, num_examples=50_000, num_classes=10):
    """Random uint8 images whose pixels are a pure function of (split, index), 10 random labels.

    For benchmarks of the accelerator at a real input size (`--config.data.name=synthetic
    --config.data.image_size=256`) with no data set on disk; nothing can be learnt from it. Image i is
    a window of one random pool of bytes at an offset of its own (distinct for the first 65,536
    indices), so that a batch costs the host a copy, not a random draw per pixel (which capped the
    loop of an accelerator at a few hundred images/s).
    """
    size = image_size or 224
    salt = sum(map(ord, split))
    pixels = size * size * 3
    pool = np.random.default_rng([salt]).integers(0, 256, pixels + 2**16, np.uint8)

    def read_labels(indices):
        return (np.asarray(indices) * 7 + salt) % num_classes

    def read(indices):
        images = np.empty((len(indices), size, size, 3), np.uint8)
        for row, i in enumerate(indices):
            offset = (int(i) * 40503) % 2**16  # odd multiplier: a bijection of 0 .. 2**16 - 1
            images[row] = pool[offset : offset + pixels].reshape(size, size, 3)
        return images, read_labels(indices)

    return Dataset("synthetic", split, num_examples, num_classes, (size, size, 3), read, read_labels)


def _import_tfds():
    """Imports tensorflow_datasets and registers the project's builders.

    tensorflow_datasets imports TensorFlow lazily, and reading array_record never needs it; the
    paths that run TensorFlow ops call `_hide_accelerators_from_tensorflow` first.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    # Registers the builder `fashion_mnist_local` with TFDS.
    import common.datasets.fashion_mnist_local  # noqa: F401

    return tfds


def _hide_accelerators_from_tensorflow():
    """Makes TensorFlow CPU-only, so that it never takes GPU memory from JAX."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow was initialised before us; its device choice can no longer change.


def prepare_default(data_dir: str = "") -> str:
    """Prepares `fashion_mnist_local` in array_record format once; a no-op when already prepared.

    Args:
      data_dir: TFDS data dir, '' = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    Returns:
      The folder holding the prepared data set.
    """
    tfds = _import_tfds()
    builder = tfds.builder(DEFAULT_DATASET, data_dir=data_dir or None, file_format="array_record")
    if not builder.is_prepared():
        _hide_accelerators_from_tensorflow()  # preparing encodes PNGs with TensorFlow
        builder.download_and_prepare()
    return str(builder.data_dir)


def _not_prepared_message(name, data_dir):
    where = f"in {data_dir}" if data_dir else "in the default TFDS data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    if name == DEFAULT_DATASET:
        return (
            f"The default data set {name} is not prepared {where}. Prepare it once (offline, "
            "from the Debian package dataset-fashion-mnist) with: "
            "python scripts/prepare_data.py" + (f" --data_dir={data_dir}" if data_dir else "")
        )
    return (
        f"TFDS data set {name!r} is not prepared {where}, and nothing is downloaded at load "
        f"time. Prepare it (online, once) with: tfds build {name} --file_format=array_record"
        + (f" --data_dir={data_dir}" if data_dir else "")
        + ", or copy a prepared copy into the data dir; data sets with a manual download "
        "(e.g. imagenet2012) also need --manual_dir."
    )


# Array_record splits small enough to keep in memory, by (prepared folder, split, image_size, fit, workers): every
# load of the same split shares one Dataset, so the images the kNN monitor decodes at step 0 (all of
# the training split) serve the training batches too. A prepared split never changes.
_SHARED = {}


def _load_tfds(name, split, data_dir, image_size, fit="whole", workers=DEFAULT_WORKERS):
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False))
        raise ValueError(
            f"TFDS has no data set named {name!r}"
            + (f"; close names: {', '.join(close)}" if close else "")
            + f". Set --config.data.name to a TFDS name, or --config.data.folder to an image "
            f"folder; the offline default is {DEFAULT_DATASET!r}."
        ) from None
    if not builder.is_prepared():
        raise FileNotFoundError(_not_prepared_message(name, data_dir))
    key = (str(builder.data_dir), split, image_size, fit, workers)
    if key in _SHARED:
        return _SHARED[key]
    info = builder.info
    try:
        num_examples = info.splits[split].num_examples
    except (KeyError, ValueError):
        raise ValueError(
            f"{name} has no split {split!r}; its splits are {list(info.splits)}. "
            f"Set the split (e.g. train/test) in the config."
        ) from None
    if "image" not in info.features:
        raise ValueError(f"{name} has no 'image' feature (features: {list(info.features)}).")
    native = info.features["image"].shape  # (H, W, C); H, W are None when sizes vary
    if image_size:
        image_shape = (image_size, image_size, 3)
    elif None in native[:2]:
        raise ValueError(
            f"The images of {name} differ in size (shape {native}); set a fixed host-"
            f"side size, e.g. --config.data.image_size=224."
        )
    else:
        image_shape = (native[0], native[1], 3)
    # Labelled when there is a ClassLabel feature named 'label' (it has num_classes).
    num_classes = getattr(info.features["label"], "num_classes", 0) if "label" in info.features else 0

    def to_label(example):
        return example["label"] if num_classes else -1

    formats = {f.value for f in info.available_file_formats()}
    if "array_record" in formats:
        # Records with the image still encoded, decoded here with PIL: TFDS' own decoding cost about
        # 1.6 ms per 28x28 PNG (its example parser), reading the bytes and PIL about 0.3 ms (measured on
        # this 2-core machine, loaded; 256 random Fashion-MNIST examples).
        source = builder.as_data_source(
            split=split, file_format="array_record", decoders={"image": tfds.decode.SkipDecoding()}
        )
        pool = concurrent.futures.ThreadPoolExecutor(workers)

        def decode(i, example):
            try:
                with Image.open(io.BytesIO(example["image"])) as image:
                    image, extent = _fit(image, image_size, fit)
            except Exception as e:  # Say which record failed; the cause stays chained.
                raise ValueError(f"Cannot decode example {i} of {name}:{split}: {e}") from e
            if image.shape != image_shape:
                raise ValueError(f"Example {i} of {name}:{split} has shape {image.shape}, not {image_shape}.")
            return image, to_label(example), extent

        def read_records(indices):
            try:
                return source.__getitems__([int(i) for i in indices])
            except Exception as e:  # Say which records failed; the cause stays chained.
                raise ValueError(f"Cannot read examples {list(indices[:4])}... of {name}:{split}: {e}") from e

        def read(indices):
            return _stack(list(pool.map(decode, indices, read_records(indices))), image_shape)

        def read_labels(indices):
            # In chunks, to bound memory: each record still carries its encoded image.
            chunks = np.array_split(indices, len(indices) // 4096 + 1)
            return np.array([to_label(e) for chunk in chunks for e in read_records(chunk)], np.int32)

        in_memory = num_examples * int(np.prod(image_shape)) <= MAX_IN_MEMORY_BYTES
        if in_memory:
            read = _decoded_once(read, num_examples, image_shape)
        dataset = Dataset(name, split, num_examples, num_classes, image_shape, read, read_labels, in_memory)
        if in_memory:
            _SHARED[key] = dataset
        return dataset

    # Only tfrecord (sequential access): decode into memory when small enough.
    size = num_examples * int(np.prod(image_shape))
    if size > MAX_IN_MEMORY_BYTES:
        raise ValueError(
            f"{name}:{split} is prepared only as tfrecord (sequential access) and is too large to "
            f"decode into memory ({size / 2**30:.1f} GiB at {image_shape}). Re-prepare it with "
            f"random access: tfds build {name} --file_format=array_record"
            + (f" --data_dir={data_dir}" if data_dir else "")
        )
    _hide_accelerators_from_tensorflow()
    images = np.empty((num_examples, *image_shape), np.uint8)
    labels = np.empty((num_examples,), np.int32)
    extents = np.empty((num_examples, 2), np.int32)
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    for i, example in enumerate(tfds.as_numpy(dataset)):
        images[i], extents[i] = _fit_array(example["image"], image_size, fit)
        labels[i] = to_label(example)
    return Dataset(
        name,
        split,
        num_examples,
        num_classes,
        image_shape,
        read=lambda i: (images[i], labels[i], extents[i]),
        read_labels=lambda i: labels[i],
    )


def _decoded_once(read, num_examples, image_shape):
    """`read` behind a host-memory copy of every example it has decoded: each example is decoded once,
    on its first read, then copied from memory. The arrays are allocated up front but cost memory only
    where written. Two threads reading the same new example both decode it and write the same values;
    an example counts as decoded only once its row is written."""
    images = np.empty((num_examples, *image_shape), np.uint8)
    labels = np.empty((num_examples,), np.int32)
    extents = np.empty((num_examples, 2), np.int32)
    done = np.zeros((num_examples,), bool)

    def read_cached(indices):
        indices = np.asarray(indices, np.int64)
        new = np.unique(indices[~done[indices]])
        if new.size:
            images[new], labels[new], extents[new] = read(new)
            done[new] = True
        return images[indices], labels[indices], extents[indices]

    return read_cached


def _stack(decoded, image_shape):
    """[(image, label, extent)] -> (images uint8 [n, *image_shape], labels int32 [n], extents int32 [n, 2])."""
    images = np.empty((len(decoded), *image_shape), np.uint8)
    labels = np.empty((len(decoded),), np.int32)
    extents = np.empty((len(decoded), 2), np.int32)
    for row, (image, label, extent) in enumerate(decoded):
        images[row], labels[row], extents[row] = image, label, extent
    return images, labels, extents


def _list_images(folder, recursive):
    """Sorted image files of `folder` (with its subfolders when recursive), hidden files skipped."""
    if recursive:
        paths = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        paths = [os.path.join(folder, f) for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(p).startswith("."))


def _subfolders(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _load_folder(root, split, image_size, fit="whole", workers=DEFAULT_WORKERS):
    """An image folder: labelled `root/<split>/<class>/*`, or flat and unlabelled `root/*`.

    Labelled: the classes are the sorted union of the class folder names of all splits, so a label
    means the same class in every split. Flat: every split returns the same images. A split folder
    holding images but no class folders is read as unlabelled.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root} does not exist; fix --config.data.folder.")
    split_dir = os.path.join(root, split)
    if os.path.isdir(split_dir) and _subfolders(split_dir):
        classes = sorted({c for s in _subfolders(root) for c in _subfolders(os.path.join(root, s))})
        paths, labels = [], []
        for c in _subfolders(split_dir):
            files = _list_images(os.path.join(split_dir, c), recursive=True)
            paths += files
            labels += [classes.index(c)] * len(files)
        num_classes = len(classes)
    else:
        if os.path.isdir(split_dir):
            paths = _list_images(split_dir, recursive=False)
        else:
            paths = _list_images(root, recursive=False)
            if not paths and _subfolders(root):
                raise ValueError(
                    f"Image folder {root} has no split {split!r}: its subfolders are "
                    f"{_subfolders(root)}. Expected root/<split>/<class>/* or images directly "
                    f"in root/."
                )
        labels = [-1] * len(paths)
        num_classes = 0
    if not paths:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found for split {split!r} in "
            f"{root}. Expected root/<split>/<class>/*.jpg or images directly in "
            "root/."
        )

    def header_size(path):
        # Image.open reads only the header: cheap even for large folders.
        try:
            with Image.open(path) as image:
                return image.size
        except Exception as e:
            raise ValueError(f"Unreadable image {path}: {e}. Delete or replace the file.") from e

    pool = concurrent.futures.ThreadPoolExecutor(workers)
    sizes = list(pool.map(header_size, paths))
    if image_size:
        image_shape = (image_size, image_size, 3)
    else:
        different = next((i for i, s in enumerate(sizes) if s != sizes[0]), None)
        if different is not None:
            raise ValueError(
                f"Images differ in size ({paths[0]} is {sizes[0]}, {paths[different]} is "
                f"{sizes[different]}); set a host-side size, e.g. --config.data.image_size=224."
            )
        image_shape = (sizes[0][1], sizes[0][0], 3)
    labels = np.array(labels, np.int32)

    def decode(i):
        try:
            with Image.open(paths[i]) as image:
                return _fit(image, image_size, fit)
        except Exception as e:
            raise ValueError(f"Cannot decode image {paths[i]}: {e}. Delete or replace it.") from e

    def read(indices):
        return _stack(
            [(image, label, extent) for (image, extent), label in zip(pool.map(decode, indices), labels[indices])],
            image_shape,
        )

    return Dataset(root, split, len(paths), num_classes, image_shape, read, read_labels=lambda i: labels[i])


# --------------------------------------------------------------------------------------------------
# Batches: training order, prefetching, evaluation
# --------------------------------------------------------------------------------------------------


def _to_global(batch: dict, global_batch_size: int, mesh: Mesh) -> dict:
    """This process's rows (numpy) -> global jax.Arrays sharded along 'data'."""
    sharding = NamedSharding(mesh, P("data"))
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
        for k, v in batch.items()
    }


def _local_rows(global_batch_size):
    """Rows [p*B/P, (p+1)*B/P) of the global batch belong to process p of P."""
    p, num = jax.process_index(), jax.process_count()
    return slice(p * global_batch_size // num, (p + 1) * global_batch_size // num)


def _prefetch(items, buffer_size=2):
    """Yields from the iterator `items`, run `buffer_size` items ahead in a background thread."""
    buffer = queue.Queue(maxsize=buffer_size)
    stop = threading.Event()

    def put(message):
        while not stop.is_set():  # a timeout, so the thread ends once the consumer has gone
            try:
                buffer.put(message, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except Exception as e:  # pylint: disable=broad-except  # re-raised in the consumer
            put(("error", e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        # Closing the iterator waits for the producer to finish its item: a thread still inside JAX
        # when the interpreter shuts down aborts the process ("Fatal Python error: Aborted").
        stop.set()
        thread.join(timeout=60)


class Loader:
    """Training batches: step -> global batch, a pure function of (seed, step).

    Attributes:
      steps_per_epoch: num_examples // global_batch_size (the remainder of each epoch is dropped).
    """

    def __init__(self, dataset: Dataset, global_batch_size: int, seed: int, mesh: Mesh, shuffle: bool = True):
        check_batch_size(global_batch_size, mesh)
        if global_batch_size > dataset.num_examples:
            raise ValueError(
                f"The global batch size {global_batch_size} exceeds the {dataset.num_examples} "
                f"examples of {dataset!r}; lower --config.data.batch_size."
            )
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.mesh = mesh
        self.shuffle = shuffle
        self.steps_per_epoch = dataset.num_examples // global_batch_size
        self._order = (None, None)  # (epoch, permutation): the last epoch's order, cached

    def indices(self, step: int) -> np.ndarray:
        """The dataset indices of the global batch of `step`, int64 [B]."""
        epoch, position = divmod(step, self.steps_per_epoch)
        cached_epoch, order = self._order
        if cached_epoch != epoch:
            n = self.dataset.num_examples
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (epoch, order)
        b = self.global_batch_size
        return order[position * b : (position + 1) * b]

    def get(self, step: int) -> dict[str, jax.Array]:
        """The global batch of `step`: dict(image uint8 [B, H, W, 3], label int32 [B], index int32
        [B], extent int32 [B, 2]), sharded along 'data'; this process decodes only its own rows."""
        local = self.dataset.get(self.indices(step)[_local_rows(self.global_batch_size)])
        return _to_global(local, self.global_batch_size, self.mesh)

    def iterate(self, start_step: int = 0):
        """Yields (step, batch) for step = start_step, start_step + 1, ... without end. A background
        thread decodes each batch and places it on the devices (`get`: the transfer into the mesh
        sharding starts there), two batches ahead of the consumer and a third in the making, so the
        host work and the transfer overlap the step that runs meanwhile."""
        return _prefetch((step, self.get(step)) for step in itertools.count(start_step))


def eval_batches(dataset: Dataset, global_batch_size: int, mesh: Mesh):
    """Yields (batch, n_valid) covering every example once, in order (for kNN / linear evaluation).

    The last batch is padded to the full size by repeating its last example; only its first
    `n_valid` rows are real. Batches are sharded along 'data' like `Loader.get`'s.
    """
    check_batch_size(global_batch_size, mesh)
    n = dataset.num_examples

    def batches():
        for start in range(0, n, global_batch_size):
            n_valid = min(global_batch_size, n - start)
            indices = np.arange(start, start + global_batch_size).clip(max=n - 1)
            local = dataset.get(indices[_local_rows(global_batch_size)])
            yield _to_global(local, global_batch_size, mesh), n_valid

    return _prefetch(batches())
