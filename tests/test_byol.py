"""BYOL loss, schedules and target update against the official deepmind-research outputs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol import train as byol

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]


def _cases(case_prefix):
    return [c for c in CASES if c["case"].startswith(case_prefix)]


def _load(case):
    return np.load(REFERENCE / case["file"])


def _assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def _loss_inputs(z):
    names = ("online_pred_1", "online_pred_2", "target_proj_1", "target_proj_2")
    return [jnp.asarray(z[name]) for name in names]


@pytest.mark.parametrize("case", _cases("byol_loss"), ids=lambda c: c["case"])
def test_byol_loss_matches_official(case):
    z = _load(case)
    loss = byol.byol_loss(*_loss_inputs(z))
    _assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])
    # The per-example terms pin down the pairing (prediction of view 1 with projection of view 2).
    per_example = z["per_example_12"] + z["per_example_21"]
    np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-5, atol=1e-5)


def test_byol_loss_jit_and_stop_gradient():
    case = _cases("byol_loss")[0]
    inputs = _loss_inputs(_load(case))
    np.testing.assert_allclose(
        jax.jit(byol.byol_loss)(*inputs), byol.byol_loss(*inputs), rtol=1e-6, atol=1e-6
    )
    grads = jax.grad(byol.byol_loss, argnums=(0, 1, 2, 3))(*inputs)
    # Online predictions get a gradient, target projections exactly none (paper's sg).
    assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_target_ema_decay_matches_official():
    case, = _cases("byol_target_ema_schedule")
    z = _load(case)
    steps = jnp.asarray(z["steps"], jnp.int32)
    hyper = case["hyper"]
    tau = byol.target_ema_decay(steps, **hyper)
    _assert_close(tau, z["tau"], case["tolerance"]["tau"])
    tau_jit = jax.jit(lambda s: byol.target_ema_decay(s, **hyper))(steps)
    np.testing.assert_array_equal(tau_jit, tau)


def test_learning_rate_schedule_matches_official():
    case, = _cases("byol_learning_rate_schedule")
    z = _load(case)
    steps = jnp.asarray(z["steps"], jnp.int32)
    hyper = case["hyper"]
    lr = byol.learning_rate_schedule(steps, **hyper)
    _assert_close(lr, z["learning_rate"], case["tolerance"]["learning_rate"])
    # Inside a jitted step the step is traced and the rest is config.
    lr_jit = jax.jit(lambda s: byol.learning_rate_schedule(s, **hyper))(steps)
    np.testing.assert_allclose(lr_jit, lr, rtol=1e-6, atol=1e-7)


def test_learning_rate_schedule_without_warmup():
    # No warmup: the cosine starts at the scaled rate at step 0 (0.1 * 512 / 256 = 0.2).
    lr = byol.learning_rate_schedule(jnp.array([0, 5, 10, 20]), 512, 0.1, 10, 0)
    np.testing.assert_allclose(lr, [0.2, 0.1, 0.0, 0.0], atol=1e-7)


def test_ema_update_matches_official():
    case, = _cases("byol_target_update")
    z = _load(case)
    # tau as the official code took it at this step.
    tau = byol.target_ema_decay(case["hyper"]["step"], case["hyper"]["base_ema"],
                                case["hyper"]["max_steps"])
    np.testing.assert_allclose(tau, z["tau"], rtol=0, atol=1e-7)
    target = {"w": jnp.asarray(z["target_w"]), "b": jnp.asarray(z["target_b"])}
    online = {"w": jnp.asarray(z["online_w"]), "b": jnp.asarray(z["online_b"])}
    new_target = jax.jit(byol.ema_update)(target, online, jnp.asarray(z["tau"]))
    tol = case["tolerance"]["new_target"]
    _assert_close(new_target["w"], z["new_target_w"], tol)
    _assert_close(new_target["b"], z["new_target_b"], tol)
