"""`fashion_mnist_local`: Fashion-MNIST from the Debian package `dataset-fashion-mnist`.

Importing this package registers the builder with TFDS (so `tfds.builder("fashion_mnist_local")`
finds it); it imports tensorflow_datasets, so only `common.data` imports it, when needed.
"""

from common.datasets.fashion_mnist_local.fashion_mnist_local_dataset_builder import RAW_DIR, FashionMnistLocal, read_idx

__all__ = ["RAW_DIR", "FashionMnistLocal", "read_idx"]
