"""TFDS builder for Fashion-MNIST read from the local Debian files (no download).

The stock TFDS `fashion_mnist` builder downloads the files and checks their checksums; the Debian
package `dataset-fashion-mnist` ships the same images re-gzipped, so the checksums differ and the
stock builder rejects them. This builder reads the idx files directly instead.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017, arXiv:1708.07747): 70,000 grayscale 28x28 photos of
Zalando articles in 10 classes, 60,000 train / 10,000 test; MIT licence.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

RAW_DIR = "/usr/share/datasets/fashion-mnist"

# Label i of the idx files is CLASS_NAMES[i] (the order of the data set's README).
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path):
    """Reads a gzipped idx file (the MNIST format) into a numpy array.

    Format: two zero bytes, a type code (0x08 = uint8), the number of dimensions d, then d
    big-endian int32 sizes, then the data in C order.

    Returns:
      uint8 array: [N] for label files, [N, 28, 28] for image files.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file (header {data[:4].hex()})")
    shape = tuple(np.frombuffer(data, ">i4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST from /usr/share/datasets/fashion-mnist (Debian `dataset-fashion-mnist`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: the Debian idx files, unchanged."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            license="MIT",
            # Keep the order of the idx files (TFDS would otherwise shuffle examples by key hash),
            # so that example i of a split is image i of its file, as in other copies of the data.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the files are local.
        for images, labels in _FILES.values():
            for name in (images, labels):
                if not os.path.exists(os.path.join(RAW_DIR, name)):
                    raise FileNotFoundError(
                        f"{os.path.join(RAW_DIR, name)} not found: the default data set comes from "
                        "the Debian package dataset-fashion-mnist. Install it with "
                        "`apt-get install dataset-fashion-mnist`."
                    )
        return {split: self._generate_examples(*files) for split, files in _FILES.items()}

    def _generate_examples(self, images_file, labels_file):
        images = read_idx(os.path.join(RAW_DIR, images_file))  # [N, 28, 28]
        labels = read_idx(os.path.join(RAW_DIR, labels_file))  # [N]
        if len(images) != len(labels):
            raise ValueError(f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels")
        # The key is the position in the idx file, so example i of a split is image i of its file.
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image[:, :, None], "label": int(label)}
