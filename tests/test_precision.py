"""Mixed precision (config.model.dtype): two training steps in bfloat16 beside the same steps in float32.

For one method of each family by default (contrastive simclr, EMA teacher dino, clustering swav; paws,
whose heads are simclr's kind, costs 44 s here; SSLJAX_PRECISION_METHODS=all runs all eight, as measured
below): the smoke state
built twice, with model.dtype 'float32' and 'bfloat16' (the same seed, so the same initial parameters),
and two steps of each on the same batches and keys, compiled together in one jit (their views are the
same computation, so XLA computes them once). The parameters must stay float32 in both, the bfloat16
losses must be close to the float32 ones, the two total parameter updates must point the same way, and
the bfloat16 numbers must differ from the float32 ones (they would not if the dtype were dropped
somewhere on its way to the convolutions and matmuls).
"""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import data, loop
from tests import helpers

# Measured on this CPU (smoke presets, seed 0, two steps): the larger |loss_bf16 / loss_f32 - 1| of the
# two steps, and the cosine of the two total parameter updates:
#   byol 3.7e-3 0.971 | dino 1.5e-3 0.9994 | moco 9.5e-3 0.860 | paws 1.9e-2 0.960
#   pirl 4.6e-3 0.971 | simclr 8.0e-4 0.985 | simclr2 8.1e-3 0.972 | swav 2.2e-3 0.977
# MoCo's tiny smoke step is that sensitive to any rounding: in float32, the same two steps on images
# with 10% of the pixels moved by 1/255 give updates at cosine 0.909 and a loss 2.4% away.
_CHOSEN = os.environ.get("SSLJAX_PRECISION_METHODS", "simclr,dino,swav")
METHODS = helpers.METHODS if _CHOSEN == "all" else _CHOSEN.split(",")  # all eight cost ~280 s here
LOSS_RTOL = 0.05
MIN_COSINE = {"moco": 0.75}  # others: 0.9


def _params(graphdef, state):
    """Every weight of every part (nnx.Param: trained, or moved by an EMA), as {path: array}."""
    return dict(nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state), nnx.Param)))


def _computes(module):
    """A layer with a compute dtype of its own: nnx.Linear, nnx.Conv, DINO's weight-normalised layer."""
    norms = (nnx.BatchNorm, nnx.LayerNorm)
    return isinstance(module, nnx.Module) and hasattr(module, "dtype") and not isinstance(module, norms)


def _build(method, dtype):
    module = importlib.import_module(f"{method}.train")
    config = helpers.smoke_config(method, **{"model.dtype": dtype})
    dataset = data.load(config.data, config.data.train_split)
    loader = data.Loader(dataset, config.data.batch_size, config.seed, data.make_mesh())
    inputs = loop.state_inputs(module, config, dataset)
    return module.create_state(config, loader.steps_per_epoch, **inputs), loader, config.seed


def run_both(method, steps=2):
    """(losses [(float32, bfloat16)] per step, the parameters at the start, after the steps float32,
    after the steps bfloat16), as {path: array} dicts."""
    (graphdef32, state32, step32), loader, seed = _build(method, "float32")
    (graphdef16, state16, step16), _, _ = _build(method, "bfloat16")
    start32 = {k: np.asarray(v[...]) for k, v in _params(graphdef32, state32).items()}
    start16 = {k: np.asarray(v[...]) for k, v in _params(graphdef16, state16).items()}
    assert start32.keys() == start16.keys()
    for k in start32:  # the same start: the dtype changes the computation, not the parameters
        np.testing.assert_array_equal(start32[k], start16[k], err_msg=str(k))

    # Every convolution and matmul layer computes in the configured dtype (norms keep theirs: None, so
    # their float32 statistics and outputs follow the input); parameters are float32 either way.
    for graphdef, state, want in ((graphdef32, state32, None), (graphdef16, state16, jnp.bfloat16)):
        layers = [(p, m) for p, m in nnx.iter_graph(nnx.merge(graphdef, state)) if _computes(m)]
        assert layers and all(m.dtype == want for _, m in layers), [p for p, m in layers if m.dtype != want]

    both = jax.jit(lambda a, b, batch, key: (step32(a, batch, key), step16(b, batch, key)))
    losses = []
    for step in range(steps):
        key = jax.random.fold_in(jax.random.key(seed), step)
        (state32, metrics32), (state16, metrics16) = both(state32, state16, loader.get(step), key)
        losses.append((float(metrics32["loss"]), float(metrics16["loss"])))
    return losses, start32, _params(graphdef32, state32), _params(graphdef16, state16)


def update_cosine(start, end32, end16):
    """The cosine of the two total parameter updates (end - start, every weight in one vector)."""
    flat = lambda end: np.concatenate([np.ravel(np.asarray(end[k][...]) - start[k]) for k in start])
    update32, update16 = flat(end32), flat(end16)
    return update32 @ update16 / (np.linalg.norm(update32) * np.linalg.norm(update16)), update32, update16


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_steps_track_the_float32_steps(method):
    # Two steps: a warmup from a rate of 0 leaves the weights where they are at step 0.
    losses, start, end32, end16 = run_both(method, steps=2)
    wrong = [k for k, v in [*end32.items(), *end16.items()] if v[...].dtype != jnp.float32]
    assert not wrong, f"parameters not float32 after the steps: {wrong}"

    for loss32, loss16 in losses:
        assert np.isfinite(loss16) and abs(loss16 / loss32 - 1) <= LOSS_RTOL, losses
    cosine, update32, update16 = update_cosine(start, end32, end16)
    assert cosine >= MIN_COSINE.get(method, 0.9), f"the updates point different ways: cosine {cosine:.4f}"
    # Not the float32 steps under another name: bfloat16's rounding must show in the numbers.
    assert losses[0][0] != losses[0][1] and not np.array_equal(update32, update16)
