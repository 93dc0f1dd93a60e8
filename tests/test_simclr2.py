"""SimCLRv2: NT-Xent and distillation losses against google-research/simclr outputs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr2 import train as simclr2

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
NT_XENT_CASES = [c for c in CASES if c["function"].startswith("nt_xent_loss(")]
DISTILL_CASES = [c for c in CASES if c["function"].startswith("distillation_loss(")]
# Reference checks run jitted (one compilation, faster than op-by-op); test_eager_equals_jit
# checks that the eager call gives the same value.
nt_xent_loss = jax.jit(simclr2.nt_xent_loss)
distillation_loss = jax.jit(simclr2.distillation_loss)


def load(case):
    return np.load(REFERENCE / case["file"])


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def test_cases_found():
    assert len(NT_XENT_CASES) == 2 and len(DISTILL_CASES) == 2


@pytest.mark.parametrize("case", NT_XENT_CASES, ids=lambda c: c["case"])
def test_nt_xent_matches_official(case):
    # The official function cannot run in float64 (its one_hot is float32): compare with `loss`.
    z, temperature = load(case), case["hyper"]["temperature"]
    z1, z2 = jnp.asarray(z["z1"]), jnp.asarray(z["z2"])
    assert_close(nt_xent_loss(z1, z2, temperature), z["loss"], case["tolerance"]["loss"])


@pytest.mark.parametrize("case", DISTILL_CASES, ids=lambda c: c["case"])
def test_distillation_matches_official(case):
    z, temperature = load(case), case["hyper"]["temperature"]
    student, teacher = jnp.asarray(z["student_logits"]), jnp.asarray(z["teacher_logits"])
    loss = distillation_loss(student, teacher, temperature)
    assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])


def test_eager_equals_jit():
    z = load(NT_XENT_CASES[0])
    args = (jnp.asarray(z["z1"]), jnp.asarray(z["z2"]), NT_XENT_CASES[0]["hyper"]["temperature"])
    np.testing.assert_allclose(simclr2.nt_xent_loss(*args), nt_xent_loss(*args), rtol=1e-6)
    z = load(DISTILL_CASES[0])
    args = (jnp.asarray(z["student_logits"]), jnp.asarray(z["teacher_logits"]), 2.0)
    np.testing.assert_allclose(simclr2.distillation_loss(*args), distillation_loss(*args), rtol=1e-6)


def test_distillation_gradient_reaches_only_the_student():
    case = next(c for c in DISTILL_CASES if c["hyper"]["temperature"] != 1.0)
    z, temperature = load(case), case["hyper"]["temperature"]
    student = np.asarray(z["student_logits"], np.float64)
    teacher = np.asarray(z["teacher_logits"], np.float64)
    g_student, g_teacher = jax.jit(jax.grad(simclr2.distillation_loss, argnums=(0, 1)))(
        jnp.asarray(z["student_logits"]), jnp.asarray(z["teacher_logits"]), temperature
    )
    assert np.all(np.asarray(g_teacher) == 0.0)

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # d/ds of T^2 CE(softmax(t/T), s/T), averaged over N: T (softmax(s/T) - softmax(t/T)) / N.
    p_student, p_teacher = softmax(student / temperature), softmax(teacher / temperature)
    want = temperature * (p_student - p_teacher) / len(student)
    np.testing.assert_allclose(g_student, want, rtol=1e-4, atol=1e-7)
