"""PAWS: snn, sharpen and the loss against the official facebookresearch/suncet outputs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paws import train as paws

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = [
    c for c in json.loads((REFERENCE / "cases.json").read_text())["cases"] if c["method"] == "paws"
]
INPUTS = (
    "anchor_views",
    "anchor_supports",
    "anchor_support_labels",
    "target_views",
    "target_supports",
    "target_support_labels",
)
# Reference checks run jitted (one compilation, faster than op-by-op); test_eager_equals_jit
# checks that the eager call gives the same value.
snn = jax.jit(paws.snn)
sharpen = jax.jit(paws.sharpen)
paws_loss = jax.jit(paws.paws_loss, static_argnames=("me_max", "multicrop"))


def load(case):
    return np.load(REFERENCE / case["file"])


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def loss_args(case, z):
    hyper = case["hyper"]
    return [jnp.asarray(z[k]) for k in INPUTS] + [
        hyper["tau"], hyper["T"], hyper["me_max"], hyper["multicrop"]
    ]


def test_cases_found():
    assert len(CASES) == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["case"])
def test_snn_and_sharpen_match_official(case):
    z, hyper, tol = load(case), case["hyper"], case["tolerance"]["probs"]
    anchor_probs = snn(
        jnp.asarray(z["anchor_views"]), jnp.asarray(z["anchor_supports"]),
        jnp.asarray(z["anchor_support_labels"]), hyper["tau"],
    )
    assert_close(anchor_probs, z["anchor_probs"], tol)
    target_probs = snn(
        jnp.asarray(z["target_views"]), jnp.asarray(z["target_supports"]),
        jnp.asarray(z["target_support_labels"]), hyper["tau"],
    )
    assert_close(target_probs, z["target_probs"], tol)
    sharpened = sharpen(jnp.asarray(z["target_probs"], jnp.float32), hyper["T"])
    assert_close(sharpened, z["target_probs_sharpened"], tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["case"])
def test_paws_loss_matches_official(case):
    z = load(case)
    args = loss_args(case, z)
    loss, me_max_reg = paws_loss(*args)
    assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])
    assert_close(me_max_reg, z["me_max_reg_f64"], case["tolerance"]["me_max_reg"])


def test_eager_equals_jit():
    case = CASES[0]
    args = loss_args(case, load(case))
    np.testing.assert_allclose(paws.paws_loss(*args), paws_loss(*args), rtol=1e-6)


def test_target_views_are_not_swapped_by_the_loss():
    # The API takes the swapped targets; feeding the natural view order must give another value.
    case = CASES[0]
    z = load(case)
    args = loss_args(case, z)
    args[3] = jnp.asarray(z["target_views_unswapped"])
    loss, _ = paws_loss(*args)
    assert abs(float(loss) - float(z["loss_f64"])) > 1e-3


def test_no_gradient_through_targets():
    case = CASES[1]
    z = load(case)
    args = loss_args(case, z)

    def total(anchor_views, target_views, target_supports):
        loss, me_max_reg = paws_loss(
            anchor_views, args[1], args[2], target_views, target_supports, *args[5:]
        )
        return loss + me_max_reg

    g_anchor, g_target, g_target_supports = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(
        args[0], args[3], args[4]
    )
    assert np.all(np.asarray(g_target) == 0.0) and np.all(np.asarray(g_target_supports) == 0.0)
    assert np.abs(np.asarray(g_anchor)).max() > 1e-3
