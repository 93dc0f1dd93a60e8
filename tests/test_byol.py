"""BYOL: what the reference cases do not pin down (jit and stop-gradient of the loss, no warmup, LARS's
order with a changing rate, the paper presets' Haiku ResNet and separate target init), the asymmetric
views, and the EMA target in the smoke run's steps 3 and 4. The loss, schedule, target-update and
whole-step cases run through scripts/check_reference.py (scripts/reference/byol.py); the loop, resume,
devices, the non-finite guard and bad configs: test_contract."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from byol import config as byol_config
from byol import train as byol
from common import augment
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]


def _cases(case_prefix):
    return [c for c in CASES if c["case"].startswith(case_prefix)]


def _load(case):
    return np.load(REFERENCE / case["file"])


def _loss_inputs(z):
    names = ("online_pred_1", "online_pred_2", "target_proj_1", "target_proj_2")
    return [jnp.asarray(z[name]) for name in names]


def test_byol_loss_jit_and_stop_gradient():
    case = _cases("byol_loss")[0]
    inputs = _loss_inputs(_load(case))
    np.testing.assert_allclose(jax.jit(byol.byol_loss)(*inputs), byol.byol_loss(*inputs), rtol=1e-6, atol=1e-6)
    grads = jax.grad(byol.byol_loss, argnums=(0, 1, 2, 3))(*inputs)
    # Online predictions get a gradient, target projections exactly none (paper's sg).
    assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_learning_rate_schedule_without_warmup():
    # No warmup: the cosine starts at the scaled rate at step 0 (0.1 * 512 / 256 = 0.2).
    lr = byol.learning_rate_schedule(jnp.array([0, 5, 10, 20]), 512, 0.1, 10, 0)
    np.testing.assert_allclose(lr, [0.2, 0.1, 0.0, 0.0], atol=1e-7)


def test_lars_applies_momentum_before_the_learning_rate():
    # The official optimizers.lars, written out: u = g + wd w (kernels only); u *= eta ||w|| / ||u||
    # (kernels only); mu = m mu + u; update = -lr(k) mu. Biases (ndim 1) skip decay and trust ratio.
    import ml_collections
    import optax

    cfg = ml_collections.ConfigDict(dict(weight_decay=1e-2, trust_coefficient=1e-3, momentum=0.9))
    schedule = lambda k: 0.5 + 0.1 * k  # a changing rate tells the two momentum placements apart
    tx = byol.make_optimizer(cfg, schedule)
    params = {"w": jnp.full((3, 2), 2.0), "b": jnp.ones(2)}
    grads = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.array([1.0, -2.0])}
    opt_state, mu = tx.init(params), {"w": 0.0, "b": 0.0}
    for k in range(3):
        updates, opt_state = tx.update(grads, opt_state, params)
        w = np.asarray(params["w"])
        u = np.asarray(grads["w"]) + 1e-2 * w
        u = u * 1e-3 * np.linalg.norm(w) / np.linalg.norm(u)
        mu = {"w": 0.9 * mu["w"] + u, "b": 0.9 * mu["b"] + np.asarray(grads["b"])}
        np.testing.assert_allclose(updates["w"], -schedule(k) * mu["w"], rtol=1e-5)
        np.testing.assert_allclose(updates["b"], -schedule(k) * mu["b"], rtol=1e-5)
        params = optax.apply_updates(params, updates)


def test_paper_presets_build_the_official_haiku_resnet():
    # deepmind-research byol: hk ResNet50 with 'SAME' padding on every conv and the max-pool, BlockV1's
    # last batch-norm scale initialised to 0, Haiku's biased running variance, target drawn separately.
    config = byol_config.get_config("imagenet")
    assert config.model.padding == "haiku" and config.model.zero_init_residual
    assert config.method.target_init == "independent"
    body = nnx.eval_shape(lambda: byol.create_body(config.model, config.views.crop_size, nnx.Rngs(0)))
    block = body.stages[1][0]
    assert body.conv1.padding == "SAME" and body.pool_same and block.conv2.padding == "SAME"
    assert block.conv2.strides == (2, 2) and block.downsample_conv.padding == "SAME"
    batch_norms = [m for _, m in nnx.iter_graph(body) if isinstance(m, nnx.BatchNorm)]
    assert len(batch_norms) == 53 and not any(m.unbiased for m in batch_norms)

    # LARS's mask (ndim > 1) on the real online network = the official exclude_bias_and_norm: decay and
    # trust ratio for every conv / Linear kernel ('w'), none for Linear biases ('b') and batch norms.
    def online_network():
        rngs = nnx.Rngs(0)
        body = byol.create_body(config.model, config.views.crop_size, rngs)
        return byol.BYOL(byol.Encoder(body, config.model, rngs), config.model, rngs)

    online = nnx.eval_shape(online_network)
    params = nnx.to_flat_state(nnx.state(online, nnx.Param))
    assert len(params) == 171 - 2  # the official ResNet-50 layout less the classifier's w and b
    assert all((p.ndim > 1) == (path[-1] == "kernel") for path, p in params)


@pytest.mark.parametrize("target_init", ["copy", "independent"])
def test_target_init(target_init):
    config = helpers.smoke_config("byol", **{"method.target_init": target_init})
    graphdef, state, _ = byol.create_state(config, steps_per_epoch=4)
    parts = nnx.merge(graphdef, state)
    xi = jax.tree.leaves(nnx.state(parts["target"], nnx.Param))
    theta = jax.tree.leaves(nnx.state(parts["online"].encoder, nnx.Param))
    kernels = [(a, b) for a, b in zip(xi, theta) if a.ndim > 1]
    assert len(kernels) > 5
    same = [bool(np.array_equal(a, b)) for a, b in kernels]
    assert all(same) if target_init == "copy" else not any(same)


def test_haiku_init_draws_kernels_as_haiku():
    # Haiku's default w_init for Conv2D and Linear: TruncatedNormal(stddev=1/sqrt(fan_in)), cut at
    # +-2 stddev and not rescaled, so the drawn std is 0.880 / sqrt(fan_in).
    config = helpers.smoke_config("byol", **{"model.init": "haiku", "method.target_init": "independent"})
    parts = nnx.merge(*byol.create_state(config, steps_per_epoch=4)[:2])
    for network in (parts["online"], parts["target"]):
        kernels = [m.kernel[...] for _, m in nnx.iter_graph(network) if isinstance(m, (nnx.Conv, nnx.Linear))]
        assert len(kernels) > 5
        for w in kernels:
            sigma = np.prod(w.shape[:-1]) ** -0.5
            assert np.abs(w).max() <= 2 * sigma * (1 + 1e-6)
            if w.size >= 4096:
                np.testing.assert_allclose(np.std(w), 0.8796 * sigma, rtol=0.05)


# ------------------------------------------------------------------------------------------------
# Views, and the EMA target in the shared smoke run
# ------------------------------------------------------------------------------------------------


def _plain_views_config(**views):
    """Smoke config whose crop is the whole image, with every random op off unless set in `views`."""
    config = helpers.smoke_config("byol")
    config.unlock()
    config.views.update(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        color_p=0.0,
        gray_p=0.0,
        blur_p=(0.0, 0.0),
        solarize_p=(0.0, 0.0),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    config.views.update(views)
    return config


def test_views_blur_view_one_and_solarize_view_two():
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    x = images / 255.0
    # 32 // 10 = 3 taps, as the official kernel of 32 / 10 (a side below 30 gets 1 tap: no blur).
    config = _plain_views_config(crop_size=32, blur_p=(1.0, 0.0), solarize_p=(0.0, 1.0))
    view1, view2 = jax.jit(lambda key, x: byol.make_views(key, x, config.views))(jax.random.key(0), images)
    # View 2: solarised, pixels at or above 0.5 inverted (the official threshold), nothing else.
    np.testing.assert_allclose(view2, np.where(x >= 0.5, 1 - x, x), atol=1e-5)
    # View 1: always blurred, so much smoother than the (white-noise) image, and never solarised.
    variation = lambda v: np.abs(np.diff(np.asarray(v), axis=2)).mean()
    assert variation(view1) < 0.7 * variation(x)
    np.testing.assert_allclose(np.asarray(view1).mean(), x.mean(), atol=0.05)


def test_colour_transform_brightness_is_additive():
    # TensorFlow semantics (official BYOL): brightness adds one delta in [-0.4, 0.4] per image,
    # where torchvision would multiply.
    image = jnp.linspace(0.3, 0.6, 8 * 8 * 3).reshape(8, 8, 3)
    config = _plain_views_config(color_jitter=(0.4, 0.0, 0.0, 0.0), color_p=1.0)
    deltas = []
    for seed in range(4):
        out = np.asarray(byol.color_transform(jax.random.key(seed), image, config.views))
        unclipped = (out > 0) & (out < 1)
        delta = (out - np.asarray(image))[unclipped]
        np.testing.assert_allclose(delta, delta[0], atol=1e-6)
        deltas.append(delta[0])
    assert all(abs(d) <= 0.4 for d in deltas) and np.ptp(deltas) > 0.01


def _color_transform_every_op_at_every_step(key, image, cfg):
    """byol.color_transform as it was before the scan: at each step of the random order a lax.switch
    over the four ops, which under vmap computes all four and selects one. Kept as the reference that
    the scan must reproduce (same keys, same draws, same order)."""
    k_apply, k_order, k_factors, k_gray = jax.random.split(key, 4)
    b, c, s, h = cfg.color_jitter
    u = jax.random.uniform(k_factors, (4,), minval=-1.0, maxval=1.0)
    ops = [
        lambda x: augment.tf_adjust_brightness(x, b * u[0]),
        lambda x: augment.tf_adjust_contrast(x, 1 + c * u[1]),
        lambda x: augment.tf_adjust_saturation(x, 1 + s * u[2]),
        lambda x: augment.tf_adjust_hue(x, h * u[3]),
    ]
    ops = [op if strength > 0 else (lambda x: x) for op, strength in zip(ops, (b, c, s, h))]
    order = jax.random.permutation(k_order, 4)
    jittered = image
    for i in range(4):
        jittered = jnp.clip(jax.lax.switch(order[i], ops, jittered), 0.0, 1.0)
    x = jnp.where(jax.random.uniform(k_apply) < cfg.color_p, jittered, image)
    return augment.random_grayscale(k_gray, x, p=cfg.gray_p)


@pytest.mark.parametrize("jitter", [(0.4, 0.4, 0.2, 0.1), (0.4, 0.4, 0.0, 0.0), (0.0, 0.4, 0.2, 0.0)])
def test_colour_transform_one_op_per_step_equals_every_op_at_every_step(jitter):
    # The official strengths (:imagenet), the default preset's (no saturation or hue), and a mix; 64
    # colour images, one key each, so every op appears at every position of some image's order.
    config = _plain_views_config(color_jitter=jitter, color_p=0.8, gray_p=0.2)
    images = jax.random.uniform(jax.random.key(1), (64, 12, 12, 3))
    keys = jax.random.split(jax.random.key(2), 64)
    batch = lambda fn: jax.jit(jax.vmap(lambda k, x: fn(k, x, config.views)))(keys, images)
    new, old = batch(byol.color_transform), batch(_color_transform_every_op_at_every_step)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)
    changed = np.abs(np.asarray(new) - np.asarray(images)).max(axis=(1, 2, 3)) > 1e-2
    assert 0.6 < changed.mean() < 1.0  # colour_p 0.8 (+ grayscale): most images change, some do not


def _weights(tree):
    """{path: array} of the nnx.Param leaves (batch-norm running 'mean' and 'var' left out)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves if path[-1].key not in ("mean", "var")}


def test_target_is_the_ema_of_the_online_weights(smoke_runs):
    # The target after the last step (k = 3 of K = 4) is the EMA of the saved weights, with tau read
    # from the step counter: xi_4 = tau(3) xi_3 + (1 - tau(3)) theta_4, tau(k) = 1 - (1 - b)(cos(pi k / K) + 1) / 2.
    runs = smoke_runs("byol")
    before, after = helpers.restore(str(runs.straight), 3), helpers.restore(str(runs.straight), 4)
    assert set(after) == {"online", "target", "optimizer"}
    assert set(after["target"]) == {"body", "projector"}  # the target has no predictor
    assert int(before["optimizer"]["step"]) == 3 and int(after["optimizer"]["step"]) == 4
    base_ema = helpers.smoke_config("byol").method.base_ema
    tau = 1 - (1 - base_ema) * (np.cos(np.pi * 3 / 4) + 1) / 2
    xi_3, xi_4, theta_3, theta_4 = (
        _weights(t)
        for t in (before["target"], after["target"], before["online"]["encoder"], after["online"]["encoder"])
    )
    assert xi_4.keys() == theta_4.keys() and len(xi_4) > 10
    for name in xi_4:
        np.testing.assert_allclose(xi_4[name], tau * xi_3[name] + (1 - tau) * theta_4[name], rtol=1e-5, atol=1e-7)
    assert max(np.abs(theta_4[n] - theta_3[n]).max() for n in theta_4) > 1e-4  # the online network trained
    assert max(np.abs(theta_4[n] - xi_4[n]).max() for n in theta_4) > 1e-4  # and the target lags it
