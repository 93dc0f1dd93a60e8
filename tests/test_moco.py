"""MoCo v2 loss, queue and momentum update against the official facebookresearch/moco outputs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moco import train as moco

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
LOSS_CASES = [c for c in CASES if c["case"].startswith("moco_loss")]


def _load(case):
    return np.load(REFERENCE / case["file"])


def _assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["case"])
def test_moco_loss_matches_official(case):
    z = _load(case)
    # The project queue layout [K, D] is the transpose of the official [D, K] buffer.
    np.testing.assert_array_equal(z["queue"], z["queue_official_dk"].T)
    loss = moco.moco_loss(z["q"], z["k"], z["queue"], case["hyper"]["temperature"])
    _assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])
    # The official logits (positive in column 0) give the same cross-entropy.
    logits = z["logits"].astype(np.float64)
    want = np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["case"])
def test_update_queue_matches_official(case):
    z = _load(case)
    ptr = int(z["queue_ptr"])
    new_queue, new_ptr = jax.jit(moco.update_queue)(jnp.asarray(z["queue"]), ptr, z["k"])
    _assert_close(new_queue, z["new_queue"], case["tolerance"]["new_queue"])
    assert int(new_ptr) == int(z["new_queue_ptr"])
    # Rows outside [ptr, ptr + N) are untouched (the N16 case wraps the pointer back to 0).
    n = z["k"].shape[0]
    untouched = np.r_[0:ptr, ptr + n:z["queue"].shape[0]]
    np.testing.assert_array_equal(np.asarray(new_queue)[untouched], z["queue"][untouched])


def test_update_queue_rejects_a_queue_not_divisible_by_the_batch():
    with pytest.raises(AssertionError):
        moco.update_queue(jnp.zeros((10, 4)), 0, jnp.ones((3, 4)))


def test_moco_loss_jit_and_stop_gradient():
    z = _load(LOSS_CASES[0])
    q, k, queue = (jnp.asarray(z[name]) for name in ("q", "k", "queue"))
    temperature = LOSS_CASES[0]["hyper"]["temperature"]
    np.testing.assert_allclose(
        jax.jit(moco.moco_loss)(q, k, queue, temperature),
        moco.moco_loss(q, k, queue, temperature),
        rtol=1e-6, atol=1e-6,
    )
    grads = jax.grad(moco.moco_loss, argnums=(0, 1, 2))(q, k, queue, temperature)
    grad_q, grad_k, grad_queue = grads
    # Only the query encoder is trained by the loss; keys and queue get exactly no gradient.
    assert float(jnp.abs(grad_q).sum()) > 0
    np.testing.assert_array_equal(grad_k, 0.0)
    np.testing.assert_array_equal(grad_queue, 0.0)


def test_momentum_update_matches_official():
    case, = [c for c in CASES if c["case"] == "moco_momentum_update"]
    z = _load(case)
    params_k = {"w": jnp.asarray(z["param_k_w"]), "b": jnp.asarray(z["param_k_b"])}
    params_q = {"w": jnp.asarray(z["param_q_w"]), "b": jnp.asarray(z["param_q_b"])}
    new_k = jax.jit(moco.momentum_update)(params_k, params_q, case["hyper"]["m"])
    tol = case["tolerance"]["new_param_k"]
    _assert_close(new_k["w"], z["new_param_k_w"], tol)
    _assert_close(new_k["b"], z["new_param_k_b"], tol)
