"""PIRL: the loss and memory update on NumPy inputs, with the positive column and gradients (the VISSL
NCELossWithMemory cases themselves: scripts/reference/pirl.py via test_reference), batch-norm groups,
the learning-rate schedule, the jigsaw view, the PIL photometric ops against PIL, the memory bank after
the smoke runs, the bank filled with features (the loop, resume, devices and bad configs: test_contract)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image, ImageEnhance, ImageOps

from common import augment, data
from pirl import config as pirl_config
from pirl import train as pirl
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = [c for c in json.loads((REFERENCE / "cases.json").read_text())["cases"] if c["method"] == "pirl"]
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
    return [jnp.asarray(z[k]) for k in INPUTS] + [hyper["temperature"], hyper["norm_constant"], hyper["loss_type"]]


def test_cases_found():
    assert sorted(c["hyper"]["loss_type"] for c in CASES) == ["cross_entropy", "nce", "nce"]


def test_eager_equals_jit():
    case = CASES[0]
    z = load(case)
    args = loss_args(case, z)
    np.testing.assert_allclose(pirl.pirl_loss(*args), pirl_loss(*args), rtol=1e-6)
    memory_args = (args[2], args[3], args[1], case["hyper"]["memory_momentum"])
    np.testing.assert_allclose(pirl.update_memory(*memory_args), update_memory(*memory_args), rtol=1e-6)


def test_numpy_inputs_give_the_same_values():
    # NumPy arrays, as np.load gives them, work as well as JAX arrays (no `.at` on an ndarray).
    case = CASES[0]
    z, tol = load(case), case["tolerance"]
    hyper = case["hyper"]
    args = [z[k] for k in INPUTS] + [hyper["temperature"], hyper["norm_constant"], hyper["loss_type"]]
    assert all(isinstance(a, np.ndarray) for a in args[:6])
    loss, Z = pirl.pirl_loss(*args)
    assert_close(loss, z["loss"], tol["loss"])
    assert_close(Z, z["Z"], tol["Z"])
    new_memory = pirl.update_memory(z["memory"], z["indices"], z["image_embedding"], hyper["memory_momentum"])
    assert_close(new_memory, z["new_memory"], tol["new_memory"])


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


# ------------------------------------------------------------------------------------------------
# Batch-norm groups and the schedule
# ------------------------------------------------------------------------------------------------


def test_bn_groups_normalise_each_group_of_images_and_their_patches_alone():
    # VISSL: per-GPU batch norm. With 2 groups, images 0-3 and 4-7 (and their 9 patches each) are
    # normalised as if each group were alone; running statistics are the mean of the groups'.
    config = helpers.smoke_config("pirl", **{"method.bn_groups": 2})
    model = pirl.PIRL(config, nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(0), 2)
    images = jax.random.normal(keys[0], (8, 16, 16, 3))
    patches = jax.random.normal(keys[1], (8, 9, 6, 6, 3))
    embed = nnx.jit(lambda m, x, p: (m.embed_image(x, 2), m.embed_jigsaw(p, 2)))
    alone = nnx.jit(lambda m, x, p: (m.embed_image(x), m.embed_jigsaw(p)))
    copies = [nnx.clone(model) for _ in range(2)]
    got_image, got_patch = embed(model, images, patches)
    want = [alone(copies[g], images[4 * g : 4 * g + 4], patches[4 * g : 4 * g + 4]) for g in range(2)]
    # (float32 noise of a vmapped vs a plain forward, amplified by batch norm over few values)
    np.testing.assert_allclose(got_image, np.concatenate([w[0] for w in want]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_patch, np.concatenate([w[1] for w in want]), rtol=1e-4, atol=1e-4)
    whole_image, _ = alone(nnx.clone(copies[0]), images, patches)
    assert not np.allclose(got_image, whole_image, atol=1e-3)  # global batch norm differs
    stats = [jax.tree.leaves(nnx.state(m, nnx.BatchStat)) for m in (model, *copies)]
    for got, a, b in zip(*stats):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-6)


def test_imagenet_preset_normalises_per_32_images():
    config = pirl_config.get_config("imagenet")
    pirl.check_config(config)
    assert config.data.batch_size // config.method.bn_groups == 32


@pytest.mark.parametrize("mode", ["per_epoch", "per_step"])
def test_learning_rate_schedule_is_vissls_cosine(mode):
    # VISSL cosine: end + 0.5 (start - end) (1 + cos(pi t / epochs)), start = 0.03 * B / 256, end = start / 1000.
    cfg = pirl_config.get_config("imagenet").optim
    cfg.unlock()
    cfg.update(epochs=3.0, lr_schedule=mode)
    schedule = pirl.learning_rate_schedule(cfg, batch_size=1024, steps_per_epoch=2)
    got = np.array([float(schedule(step)) for step in range(7)])
    t = np.minimum(np.arange(7) // 2 if mode == "per_epoch" else np.arange(7) / 2, 3)
    np.testing.assert_allclose(got, 0.00012 + 0.5 * (0.12 - 0.00012) * (1 + np.cos(np.pi * t / 3)), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def test_jigsaw_patches_are_jittered_grid_cells_in_a_random_order():
    # Geometry alone: a full-image crop of the same size (an identity resize), no photometric change.
    cfg = helpers.smoke_config("pirl").views
    cfg.unlock()
    cfg.update(
        patch_crop_size=24,
        patch_crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        grid=3,
        patch_jitter=3,
        color_jitter=(0.0, 0.0, 0.0, 0.0),
        photometric_p=0.0,
        gray_p=0.0,
        flip_p=0.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    image = np.random.default_rng(0).uniform(size=(24, 24, 3)).astype(np.float32)
    patches = np.asarray(jax.jit(lambda k: pirl.make_jigsaw(k, image, cfg))(jax.random.key(3)))
    assert patches.shape == (9, 5, 5, 3)  # cells of 8, patches of 8 - 3
    cells = []
    for patch in patches:  # find where each patch was cut: exactly one cell, an offset in [0, jitter)
        found = [
            (top, left)
            for top in range(20)
            for left in range(20)
            if np.allclose(image[top : top + 5, left : left + 5], patch, atol=1e-5)
        ]
        assert len(found) == 1
        ((top, left),) = found
        assert top % 8 < 3 and left % 8 < 3
        cells.append(3 * (top // 8) + left // 8)
    assert sorted(cells) == list(range(9)) and cells != list(range(9))  # every cell once, shuffled


def test_views_are_cut_inside_each_images_extent():
    # Both crops (the image view's and the jigsaw's) are drawn inside the image's top-left extent of
    # the canvas (data.fit 'whole'), never in the padding (here 255 where the image is 0).
    identity = {"views.color_jitter": (0.0, 0.0, 0.0, 0.0), "views.photometric_p": 0.0, "views.gray_p": 0.0}
    config = helpers.smoke_config("pirl", **identity, **{"views.mean": (0.0,) * 3, "views.std": (1.0,) * 3})
    images = np.full((4, 28, 28, 3), 255, np.uint8)
    extents = np.array([[28, 28], [14, 28], [28, 10], [5, 7]], np.int32)
    for image, (h, w) in zip(images, extents):
        image[:h, :w] = 0
    patches, views = jax.jit(lambda key: pirl.make_views(key, images, config.views, extents))(jax.random.key(6))
    np.testing.assert_array_equal(np.asarray(patches), 0.0)
    np.testing.assert_array_equal(np.asarray(views), 0.0)


def test_pil_photometric_ops_match_pil():
    rng = np.random.default_rng(1)
    uint8 = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    uint8[..., 2] = np.clip(uint8[..., 2], 40, 200)  # one channel short of the full range
    img, pil = jnp.asarray(uint8 / 255, jnp.float32), Image.fromarray(uint8)

    def check(got, want, atol):
        np.testing.assert_allclose(np.asarray(got) * 255, np.asarray(want, np.float64), atol=atol)

    for bits in (4, 6, 8):
        check(augment.posterize(img, bits), ImageOps.posterize(pil, bits), 1e-3)
    for factor in (0.1, 1.0, 1.9):  # PIL rounds the smoothed image to uint8, then truncates the blend
        check(augment.sharpness(img, factor), ImageEnhance.Sharpness(pil).enhance(factor), 1.5)
    check(augment.autocontrast(img), ImageOps.autocontrast(pil), 1.01)  # PIL truncates to uint8
    for threshold in (0, 100, 256):
        check(pirl.augment.solarize(img, threshold / 255), ImageOps.solarize(pil, threshold), 1e-3)


# ------------------------------------------------------------------------------------------------
# Train step and main
# ------------------------------------------------------------------------------------------------


def test_smoke_run_moves_only_the_batches_memory_rows_and_keeps_Z(smoke_runs):
    # The memory bank: the rows of the 4 batches moved and stayed unit vectors, every other row is
    # still its initial value; Z was estimated at step 1 and then kept (steps 3 and 4 agree).
    runs = smoke_runs("pirl")
    config = helpers.smoke_config("pirl")
    graphdef, initial, _ = pirl.create_state(config, 60000 // 16)
    bank = nnx.merge(graphdef, initial)["memory"]
    initial_memory = np.asarray(bank.memory[...])  # [60000, D]
    assert float(bank.Z[...]) == -1.0  # "not yet estimated"
    loader = data.Loader(data.load(config.data, config.data.train_split), 16, config.seed, data.make_mesh())
    seen = np.concatenate([loader.indices(step) for step in range(4)])
    final, before = helpers.restore(str(runs.straight), 4), helpers.restore(str(runs.straight), 3)
    memory = final["memory"]["memory"]
    unseen = np.setdiff1d(np.arange(60000), seen)
    np.testing.assert_array_equal(memory[unseen], initial_memory[unseen])
    assert np.all(np.abs(memory[seen] - initial_memory[seen]).max(axis=1) > 1e-3)
    np.testing.assert_allclose(np.linalg.norm(memory, axis=1), 1.0, rtol=1e-5)
    assert float(final["memory"]["Z"]) > 0 and float(final["memory"]["Z"]) == float(before["memory"]["Z"])
    resumed = helpers.restore(str(runs.resumed), 4)
    assert float(resumed["memory"]["Z"]) == float(final["memory"]["Z"])  # Z survives the resume
    assert int(final["optimizer"]["step"]) == 4


def test_memory_from_features_holds_each_images_unit_embedding_in_order():
    config = helpers.smoke_config(
        "pirl", **{"method.memory_init": "features", "method.memory_size": 40, "eval.batch_size": 20}
    )
    dataset = data.synthetic("train", 16, num_examples=40)
    mesh = data.make_mesh()
    graphdef, state, _ = pirl.create_state(config, 40 // 16)
    new_state = pirl.memory_from_features(config, dataset, graphdef, state, mesh)
    new_parts = nnx.merge(graphdef, new_state)
    memory = np.asarray(new_parts["memory"].memory[...])
    # By hand: the initial network in train mode (batch statistics) on each batch of 20, in order.
    want = []
    for start in (0, 20):
        images = dataset.get(np.arange(start, start + 20))["image"]
        x = augment.normalize(augment.to_float(jnp.asarray(images)), tuple(config.views.mean), tuple(config.views.std))
        e = np.asarray(nnx.merge(graphdef, state)["model"].embed_image(x))
        want.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    np.testing.assert_allclose(memory, np.concatenate(want), rtol=1e-4, atol=1e-5)
    # Only the bank changed: the network's parameters and batch-norm statistics are as they were.
    before = jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)["model"]))
    for a, b in zip(before, jax.tree.leaves(nnx.state(new_parts["model"])), strict=True):
        np.testing.assert_array_equal(a, b)
