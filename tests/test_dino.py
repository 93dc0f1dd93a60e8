"""DINO loss, centre, schedules and teacher update against the official facebookresearch/dino."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dino import train as dino

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
LOSS_CASES = [c for c in CASES if c["case"].startswith("dino_loss")]


def _case(name):
    case, = [c for c in CASES if c["case"] == name]
    return case, np.load(REFERENCE / case["file"])


def _assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def _loss_args(case):
    z = np.load(REFERENCE / case["file"])
    h = case["hyper"]
    arrays = [jnp.asarray(z[name]) for name in ("student_out", "teacher_out", "center")]
    return z, (*arrays, h["student_temp"], h["teacher_temp"], h["center_momentum"])


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["case"])
def test_dino_loss_matches_official(case):
    z, args = _loss_args(case)
    assert args[0].shape[0] == case["hyper"]["n_crops"]
    loss, new_center = dino.dino_loss(*args)
    _assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])
    _assert_close(new_center, z["new_center_f64"], case["tolerance"]["new_center"])
    assert new_center.shape == z["center"].shape


def test_dino_loss_jit_and_stop_gradient():
    # The multi-crop case: 2 global + 4 local crops.
    case, = [c for c in LOSS_CASES if c["hyper"]["n_local"] > 0]
    _, args = _loss_args(case)
    # Temperatures and momentum traced too, as when tau_t comes from the per-epoch schedule.
    loss_jit, center_jit = jax.jit(dino.dino_loss)(*args)
    loss, new_center = dino.dino_loss(*args)
    np.testing.assert_allclose(loss_jit, loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(center_jit, new_center, rtol=1e-6, atol=1e-7)

    def loss_fn(student_out, teacher_out, center):
        return dino.dino_loss(student_out, teacher_out, center, *args[3:])[0]

    grad_student, grad_teacher, grad_center = jax.grad(loss_fn, argnums=(0, 1, 2))(*args[:3])
    # Every student crop is trained (local crops and both global crops); the teacher and the centre
    # get exactly no gradient.
    assert np.all(np.abs(np.asarray(grad_student)).sum(axis=(1, 2)) > 0)
    np.testing.assert_array_equal(grad_teacher, 0.0)
    np.testing.assert_array_equal(grad_center, 0.0)


def test_teacher_temp_schedule_matches_official():
    case, z = _case("dino_teacher_temp_schedule")
    got = dino.teacher_temp_schedule(**case["hyper"])
    want = z["teacher_temp_schedule"]
    assert got.shape == want.shape
    _assert_close(got, want, case["tolerance"]["teacher_temp_schedule"])


def test_cosine_scheduler_matches_official():
    case, z = _case("dino_cosine_scheduler")
    for i, cfg in enumerate(case["hyper"]["cosine_cfgs"]):
        got = dino.cosine_scheduler(**cfg)
        want = z[f"schedule_{i}"]
        assert got.shape == want.shape == (cfg["epochs"] * cfg["niter_per_ep"],)
        _assert_close(got, want, case["tolerance"]["schedule"])


def test_ema_update_matches_official():
    case, z = _case("dino_teacher_update")
    # m is the teacher momentum at iteration 3 of the first cosine schedule of the fixtures.
    cosine_case, _ = _case("dino_cosine_scheduler")
    m = dino.cosine_scheduler(**cosine_case["hyper"]["cosine_cfgs"][0])[3]
    np.testing.assert_allclose(m, float(z["m"]), rtol=0, atol=1e-12)
    teacher = {"w": jnp.asarray(z["teacher_param"])}
    student = {"w": jnp.asarray(z["student_param"])}
    new_teacher = jax.jit(dino.ema_update)(teacher, student, m)
    _assert_close(new_teacher["w"], z["new_teacher_param"], case["tolerance"]["new_teacher_param"])
