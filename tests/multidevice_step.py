"""Runs a method's train step on a fixed batch on every visible device and prints the result as JSON.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_step.py simclr [steps]

The test suite runs it once with 8 simulated CPU devices and once with 1, and compares: with the loss
written for the global batch, the device count must not change the numbers beyond float rounding.
"""

import importlib
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from flax import nnx

from common import checkpoint, data, loop


def main(method, steps):
    module = importlib.import_module(f"{method}.train")
    config = importlib.import_module(f"{method}.config").get_config("smoke")
    mesh = data.make_mesh()
    dataset = data.load(config.data, config.data.train_split)
    loader = data.Loader(dataset, config.data.batch_size, config.seed, mesh)
    inputs = loop.state_inputs(module, config, dataset)
    graphdef, state, step_fn = module.create_state(config, loader.steps_per_epoch, **inputs)
    state = checkpoint.replicate(state, mesh)
    step_fn = jax.jit(step_fn)
    key = jax.random.key(config.seed)
    losses = []
    for step in range(steps):
        state, metrics = step_fn(state, loader.get(step), jax.random.fold_in(key, step))
        losses.append(float(metrics["loss"]))
    parts = {
        name: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(part)]).tolist()
        for name, part in nnx.to_pure_dict(jax.device_get(state)).items()
    }
    print(json.dumps({"devices": jax.device_count(), "losses": losses, "params": parts}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
