"""MoCo v2: the loss's gradients and the queue's contract; shuffling batch norm, views, the learning-rate
schedules, the train step, the queue and the key encoder in the smoke run's checkpoints (the official
loss, queue, momentum and whole-step cases: scripts/reference/moco.py via test_reference; the loop,
resume, devices and bad configs: test_contract)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import checkpoint, data, models
from moco import config as moco_config
from moco import train as moco
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
LOSS_CASES = [c for c in CASES if c["case"].startswith("moco_loss")]


def _load(case):
    return np.load(REFERENCE / case["file"])


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
        rtol=1e-6,
        atol=1e-6,
    )
    grads = jax.grad(moco.moco_loss, argnums=(0, 1, 2))(q, k, queue, temperature)
    grad_q, grad_k, grad_queue = grads
    # Only the query encoder is trained by the loss; keys and queue get exactly no gradient.
    assert float(jnp.abs(grad_q).sum()) > 0
    np.testing.assert_array_equal(grad_k, 0.0)
    np.testing.assert_array_equal(grad_queue, 0.0)


# ------------------------------------------------------------------------------------------------
# The method: ghost (shuffling) batch norm, views, the train step, main
# ------------------------------------------------------------------------------------------------


def _encoder():
    return moco.Encoder(helpers.smoke_config("moco"), nnx.Rngs(0))


# Jitted once for the tests below (an eager ResNet compiles op by op, which is slower).
_forward = nnx.jit(lambda encoder, x: encoder(x))
_shuffled_keys = nnx.jit(moco.shuffled_keys, static_argnums=3)


def test_shuffled_keys_use_batch_norm_groups_of_the_shuffled_batch_and_keep_the_order():
    x = jax.random.normal(jax.random.key(2), (8, 16, 16, 3))
    encoder = _encoder()  # in train mode: its outputs do not depend on its running statistics
    perm = np.asarray(jax.random.permutation(jax.random.key(3), 8))
    got = _shuffled_keys(encoder, x, perm, 2)
    want = np.zeros(got.shape, np.float32)
    for group in (perm[:4], perm[4:]):  # image perm[j] is normalised with the images of its group
        want[group] = _forward(encoder, x[group])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The groups differ from the query's contiguous ones, so the keys differ from unshuffled ones...
    unshuffled = jnp.concatenate([_forward(encoder, x[:4]), _forward(encoder, x[4:])])
    assert not np.allclose(got, unshuffled, atol=1e-3)
    # ...but with one group (global batch norm) the shuffle changes nothing.
    np.testing.assert_allclose(_shuffled_keys(encoder, x, perm, 1), _forward(encoder, x), rtol=1e-5, atol=1e-5)


def test_moco_has_no_copy_of_the_common_ghost_batch_norm():
    assert not hasattr(moco, "grouped_forward")


@pytest.mark.parametrize("mode", ["per_epoch", "per_step"])
def test_learning_rate_schedule_official_per_epoch_cosine(mode):
    # main_moco.py's adjust_learning_rate: lr * 0.5 * (1 + cos(pi * epoch / epochs)), set at each epoch.
    cfg = moco_config.get_config("imagenet").optim
    cfg.unlock()
    cfg.update(epochs=3.0, lr=0.1, lr_schedule=mode)
    schedule = moco.learning_rate_schedule(cfg, batch_size=8, steps_per_epoch=2)
    got = np.array([float(schedule(step)) for step in range(6)])
    epoch = np.arange(6) // 2 if mode == "per_epoch" else np.arange(6) / 2
    np.testing.assert_allclose(got, 0.1 * 0.5 * (1 + np.cos(np.pi * epoch / 3)), rtol=1e-6)
    cfg.scale_lr = True  # the linear scaling rule, off in the official code
    np.testing.assert_allclose(float(moco.learning_rate_schedule(cfg, 512, 2)(0)), 0.2, rtol=1e-6)


@pytest.mark.parametrize("aug_plus", [True, False])
def test_views_with_identity_settings_are_the_normalised_image(aug_plus):
    config = helpers.smoke_config(
        "moco",
        **{
            "views.aug_plus": aug_plus,
            "views.crop_size": 28,
            "views.crop_scale": (1.0, 1.0),
            "views.crop_ratio": (1.0, 1.0),
            "views.color_jitter": (0.0, 0.0, 0.0, 0.0),
            "views.color_p": 1.0,
            "views.gray_p": 1.0,
            "views.blur_p": 0.0,
            "views.flip_p": 1.0,
        },
    )
    images = np.asarray(jax.random.randint(jax.random.key(4), (2, 28, 28, 3), 0, 256), np.uint8)
    gray = images.astype(np.float32) / 255 @ np.array([0.2989, 0.587, 0.114], np.float32)
    want = (np.repeat(gray[..., None], 3, -1)[:, :, ::-1] - 0.2860) / 0.3530  # grayscale, flipped
    make_views = jax.jit(lambda key, images: moco.make_views(key, images, config.views))
    for view in make_views(jax.random.key(5), images):
        np.testing.assert_allclose(view, want, rtol=1e-4, atol=1e-4)


def test_views_are_cut_inside_each_images_extent():
    # The host delivers a canvas with the image in its top-left extent (data.fit 'whole'): every crop
    # is drawn inside it, never in the padding (here 255 where the image is 0).
    config = helpers.smoke_config(
        "moco",
        **{"views.color_jitter": (0.0, 0.0, 0.0, 0.0), "views.blur_p": 0.0, "views.gray_p": 0.0},
        **{"views.mean": (0.0, 0.0, 0.0), "views.std": (1.0, 1.0, 1.0), "views.crop_scale": (0.08, 1.0)},
    )
    images = np.full((8, 28, 28, 3), 255, np.uint8)
    extents = np.array([[28, 28], [14, 28], [28, 10], [5, 7]] * 2, np.int32)
    for image, (h, w) in zip(images, extents):
        image[:h, :w] = 0
    views = jax.jit(lambda key: moco.make_views(key, images, config.views, extents))(jax.random.key(6))
    for view in views:
        np.testing.assert_array_equal(np.asarray(view), 0.0)


def test_train_step_order_momentum_then_keys_then_loss_then_enqueue():
    config = helpers.smoke_config("moco")
    mesh = data.make_mesh()
    loader = data.Loader(data.load(config.data, config.data.train_split), 16, config.seed, mesh)
    graphdef, state0, step_fn = moco.create_state(config, loader.steps_per_epoch)
    state0 = checkpoint.replicate(state0, mesh)
    step_fn = jax.jit(step_fn)
    keys = [jax.random.key(10), jax.random.key(11)]
    state1, metrics1 = step_fn(state0, loader.get(0), keys[0])
    state2, metrics2 = step_fn(state1, loader.get(1), keys[1])
    parts0, parts1, parts2 = (nnx.merge(graphdef, s) for s in (state0, state1, state2))
    params = lambda m: nnx.state(m, nnx.Param)
    m, groups, T = config.method.momentum, config.method.bn_groups, config.method.temperature

    # The key encoder starts as a copy; the momentum update uses the query BEFORE this step's SGD update.
    for k0, q0 in zip(jax.tree.leaves(params(parts0["encoder_k"])), jax.tree.leaves(params(parts0["encoder_q"]))):
        np.testing.assert_array_equal(k0, q0)
    want_k2 = jax.tree.map(lambda k, q: m * k + (1 - m) * q, params(parts1["encoder_k"]), params(parts1["encoder_q"]))
    for got, want in zip(jax.tree.leaves(params(parts2["encoder_k"])), jax.tree.leaves(want_k2)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(parts2["encoder_q"].fc2.kernel[...], parts1["encoder_q"].fc2.kernel[...])

    # Step 2 recomputed by hand: keys from the updated key encoder on shuffled groups; the loss against
    # the queue BEFORE the enqueue; then the keys enter the queue at the pointer, which moves by B.
    queue1 = np.asarray(parts1["queue"][...])

    @nnx.jit
    def by_hand(encoder_q1, encoder_k2, images, extents):
        k_views, k_shuffle = jax.random.split(keys[1])
        x_q, x_k = moco.make_views(k_views, images, config.views, extents)
        k = moco.shuffled_keys(encoder_k2, x_k, jax.random.permutation(k_shuffle, x_k.shape[0]), groups)
        q = models.grouped_forward(encoder_q1, x_q, groups)
        return moco.moco_loss(q, k, queue1, T), moco.l2_normalize(k)

    batch = loader.get(1)
    loss, k = by_hand(parts1["encoder_q"], parts2["encoder_k"], batch["image"], batch["extent"])
    np.testing.assert_allclose(metrics2["loss"], loss, rtol=1e-4, atol=1e-5)
    assert tuple(int(p["queue_ptr"][...]) for p in (parts0, parts1, parts2)) == (0, 16, 32)
    queue2 = np.asarray(parts2["queue"][...])
    np.testing.assert_allclose(queue2[16:32], k, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.delete(queue2, np.s_[16:32], 0), np.delete(queue1, np.s_[16:32], 0))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(parts0["queue"][...]), axis=1), 1.0, rtol=1e-5)
    # SGD with cosine decay from lr (no B / 256 scaling, as the official code), no warmup.
    np.testing.assert_allclose(metrics1["lr"], config.optim.lr, rtol=1e-6)


def _restored_parts(workdir, step):
    """The named parts {encoder_q, encoder_k, queue, queue_ptr, optimizer} of a smoke run's checkpoint."""
    graphdef, state, _ = moco.create_state(helpers.smoke_config("moco"), 100)
    nnx.replace_by_pure_dict(state, helpers.restore(workdir, step))
    return nnx.merge(graphdef, state)


def test_smoke_checkpoints_hold_the_queue_its_pointer_and_the_momentum_encoder(smoke_runs):
    # Steps 3 and 4 of the shared smoke run (batch 16, queue 64): step 4 enqueued its keys at rows 48-63,
    # the pointer wrapped to 0, and the key encoder moved towards the query encoder of step 3.
    runs = smoke_runs("moco")
    parts3, parts4 = (_restored_parts(str(runs.straight), step) for step in (3, 4))
    assert (int(parts3["queue_ptr"][...]), int(parts4["queue_ptr"][...])) == (48, 0)
    queue3, queue4 = np.asarray(parts3["queue"][...]), np.asarray(parts4["queue"][...])
    np.testing.assert_array_equal(queue4[:48], queue3[:48])
    assert not np.allclose(queue4[48:], queue3[48:])
    np.testing.assert_allclose(np.linalg.norm(queue4, axis=1), 1.0, rtol=1e-5)
    params = lambda m: nnx.state(m, nnx.Param)
    want_k4 = moco.momentum_update(
        params(parts3["encoder_k"]), params(parts3["encoder_q"]), helpers.smoke_config("moco").method.momentum
    )
    for got, want in zip(jax.tree.leaves(params(parts4["encoder_k"])), jax.tree.leaves(want_k4)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_presets_pass_the_config_check_and_v1_differs_in_the_official_flags():
    presets = {
        name: moco_config.get_config(name) for name in ("default", "smoke", "cifar10", "imagenet", "imagenet_v1")
    }
    for config in presets.values():
        moco.check_config(config)
    v1, v2 = presets["imagenet_v1"], presets["imagenet"]
    assert (v2.model.mlp, v2.views.aug_plus, v2.optim.cos, v2.method.temperature) == (True, True, True, 0.2)
    assert (v1.model.mlp, v1.views.aug_plus, v1.optim.cos, v1.method.temperature) == (False, False, False, 0.07)
    assert (v2.method.queue_size, v2.method.momentum, v2.optim.lr, v2.data.batch_size) == (65536, 0.999, 0.03, 256)
