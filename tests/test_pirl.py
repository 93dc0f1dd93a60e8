"""PIRL: NCE / InfoNCE loss with a memory bank against VISSL's NCELossWithMemory outputs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl import train as pirl

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = [
    c for c in json.loads((REFERENCE / "cases.json").read_text())["cases"] if c["method"] == "pirl"
]
INPUTS = ("patch_embedding", "image_embedding", "memory", "indices", "neg_idx_patch", "neg_idx_image")
# Reference checks run jitted (one compilation, faster than op-by-op); test_eager_equals_jit
# checks that the eager call gives the same value.
pirl_loss = jax.jit(pirl.pirl_loss, static_argnames="loss_type")
update_memory = jax.jit(pirl.update_memory)


def load(case):
    return np.load(REFERENCE / case["file"])


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def loss_args(case, z):
    hyper = case["hyper"]
    return [jnp.asarray(z[k]) for k in INPUTS] + [
        hyper["temperature"], hyper["norm_constant"], hyper["loss_type"]
    ]


def test_cases_found():
    assert sorted(c["hyper"]["loss_type"] for c in CASES) == ["cross_entropy", "nce", "nce"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["case"])
def test_pirl_loss_and_memory_match_official(case):
    z, tol = load(case), case["tolerance"]
    args = loss_args(case, z)
    loss, Z = pirl_loss(*args)
    assert_close(loss, z["loss"], tol["loss"])
    assert_close(Z, z["Z"], tol["Z"])
    new_memory = update_memory(
        jnp.asarray(z["memory"]), jnp.asarray(z["indices"]), jnp.asarray(z["image_embedding"]),
        case["hyper"]["memory_momentum"],
    )
    assert_close(new_memory, z["new_memory"], tol["new_memory"])


def test_eager_equals_jit():
    case = CASES[0]
    z = load(case)
    args = loss_args(case, z)
    np.testing.assert_allclose(pirl.pirl_loss(*args), pirl_loss(*args), rtol=1e-6)
    memory_args = (args[2], args[3], args[1], case["hyper"]["memory_momentum"])
    np.testing.assert_allclose(pirl.update_memory(*memory_args), update_memory(*memory_args), rtol=1e-6)


def test_positive_column_comes_from_indices():
    # Column 0 of the drawn indices is overwritten with the batch indices (official sampler).
    case = CASES[0]
    z = load(case)
    args = loss_args(case, z)
    args[4] = args[4].at[:, 0].set(0)
    args[5] = args[5].at[:, 0].set(1)
    assert_close(pirl_loss(*args)[0], z["loss"], case["tolerance"]["loss"])


def test_gradients():
    case = next(c for c in CASES if c["case"] == "pirl_nce_B4_K10_M64")  # Z computed
    z = load(case)
    args = loss_args(case, z)

    def loss_fn(patch_embedding, image_embedding, memory, Z):
        return pirl.pirl_loss(patch_embedding, image_embedding, memory, *args[3:7], Z, "nce")[0]

    grads = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2)))(args[0], args[1], args[2], -1.0)
    # The memory bank is a buffer: no gradient reaches it.
    assert np.all(np.asarray(grads[2]) == 0.0)
    assert np.abs(np.asarray(grads[0])).max() > 1e-3 and np.abs(np.asarray(grads[1])).max() > 1e-3
    # Z estimated at the first call is a constant: the gradients equal those with that Z given.
    grads_given_Z = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(args[0], args[1], args[2], float(z["Z"]))
    np.testing.assert_allclose(grads[0], grads_given_Z[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], grads_given_Z[1], rtol=1e-4, atol=1e-6)
