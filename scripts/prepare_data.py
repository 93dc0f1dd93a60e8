"""Prepares the offline default data set, `fashion_mnist_local`, once.

Reads Fashion-MNIST from the Debian package `dataset-fashion-mnist` (no network) and writes it as a
TFDS data set in array_record format (random access), into --data_dir, $TFDS_DATA_DIR or
~/tensorflow_datasets. Running it again is a quick no-op.

  python scripts/prepare_data.py [--data_dir=DIR]
"""

import argparse
import os
import sys

# Run as a script, Python puts scripts/ on the path, not the repository root that holds common/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import data  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data_dir", default="", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    args = parser.parse_args()
    print(f"{data.DEFAULT_DATASET} is prepared in {data.prepare_default(args.data_dir)}")


if __name__ == "__main__":
    main()
