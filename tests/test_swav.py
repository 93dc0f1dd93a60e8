"""SwAV: Sinkhorn codes and the swapped-prediction loss against facebookresearch/swav outputs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swav import train as swav

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
SINKHORN_CASES = [c for c in CASES if c["function"].startswith("sinkhorn(")]
LOSS_CASES = [c for c in CASES if c["function"].startswith("swav_loss(")]
# Reference checks run jitted (one compilation, faster than op-by-op); test_eager_equals_jit
# checks that the eager call gives the same value.
sinkhorn = jax.jit(swav.sinkhorn, static_argnames="n_iters")
swav_loss = jax.jit(swav.swav_loss, static_argnames=("n_iters", "crops_for_assign"))


def load(case):
    return np.load(REFERENCE / case["file"])


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def official_sinkhorn_f64(scores, epsilon, n_iters):
    """main_swav.distributed_sinkhorn written out in float64 numpy ([B, K] in and out)."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # [K, B]
    n_prototypes, batch_size = q.shape
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(axis=1, keepdims=True) * n_prototypes
        q /= q.sum(axis=0, keepdims=True) * batch_size
    return (q * batch_size).T


def test_cases_found():
    assert len(SINKHORN_CASES) == 2 and len(LOSS_CASES) == 2


@pytest.mark.parametrize("case", SINKHORN_CASES, ids=lambda c: c["case"])
def test_sinkhorn_matches_official(case):
    z, hyper = load(case), case["hyper"]
    q = sinkhorn(jnp.asarray(z["scores"]), hyper["epsilon"], hyper["n_iters"])
    assert_close(q, z["q_f64"], case["tolerance"]["q"])
    np.testing.assert_allclose(np.asarray(q).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["case"])
def test_swav_loss_matches_official(case):
    z, hyper = load(case), case["hyper"]
    args = (hyper["temperature"], hyper["epsilon"], hyper["n_iters"], tuple(hyper["crops_for_assign"]))
    loss = swav_loss(jnp.asarray(z["scores"]), *args)
    assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])


def test_eager_equals_jit():
    case = LOSS_CASES[0]
    z, hyper = load(case), case["hyper"]
    args = (hyper["temperature"], hyper["epsilon"], hyper["n_iters"], tuple(hyper["crops_for_assign"]))
    scores = jnp.asarray(z["scores"])
    np.testing.assert_allclose(swav.swav_loss(scores, *args), swav_loss(scores, *args), rtol=1e-6)


def test_sinkhorn_stable_for_small_epsilon():
    # eps = 0.005: exp(1 / eps) = exp(200) overflows float32, so the official float32 code gives
    # NaN here; the log-domain version must still match the float64 official result.
    scores = np.asarray(jax.random.uniform(jax.random.key(0), (16, 8), minval=-1.0, maxval=1.0))
    with np.errstate(over="ignore", invalid="ignore"):
        q_official_f32 = np.exp(scores / np.float32(0.005))
        q_official_f32 /= q_official_f32.sum()
    assert not np.all(np.isfinite(q_official_f32))
    q = sinkhorn(jnp.asarray(scores), 0.005, 3)
    np.testing.assert_allclose(q, official_sinkhorn_f64(scores, 0.005, 3), rtol=1e-3, atol=1e-6)


def test_codes_carry_no_gradient():
    # With the codes held constant, d loss / d scores[v] = sum_{a != v} (softmax(scores[v] / T) - q_a)
    # / (T B (V - 1) |A|); a gradient flowing through Sinkhorn would add to this.
    case = LOSS_CASES[0]
    z, hyper = load(case), case["hyper"]
    scores = np.asarray(z["scores"], np.float64)
    temperature, crops = hyper["temperature"], hyper["crops_for_assign"]
    n_crops, batch_size, _ = scores.shape
    codes = {a: official_sinkhorn_f64(scores[a], hyper["epsilon"], hyper["n_iters"]) for a in crops}
    logits = scores / temperature
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.zeros_like(scores)
    for v in range(n_crops):
        for a in crops:
            if a != v:
                want[v] += (p[v] - codes[a]) / (temperature * batch_size * (n_crops - 1) * len(crops))
    grad = jax.jit(jax.grad(swav.swav_loss), static_argnums=(3, 4))(
        jnp.asarray(z["scores"]), temperature, hyper["epsilon"], hyper["n_iters"], tuple(crops)
    )
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)
