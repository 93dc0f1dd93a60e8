"""common/augment.py against the torchvision / TensorFlow / SimCLR reference arrays, plus value tests
of the random ops (probabilities, crop-box statistics, keys under jit + vmap, multi-crop)."""

import functools
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import augment as A

REF = Path(__file__).parent / "reference"
CASES = {c["case"]: c for c in json.loads((REF / "cases.json").read_text())["cases"]}


# Every call below is jitted: one compile per function is much cheaper than JAX's eager op-by-op
# dispatch, which compiles each primitive on its own.


def _load(case):
    """(reference arrays, input image as the README defines it: uint8 / 255 in float32)."""
    z = np.load(REF / f"{case}.npz")
    return z, z["image_uint8"].astype(np.float32) / 255


def _tol(case, name):
    """cases.json tolerance for array `name` (or its category), else the case's default."""
    tol = CASES[case]["tolerance"]
    t = tol.get(name, tol.get("default"))
    return {"rtol": t["rtol"], "atol": t["atol"]}


@functools.partial(jax.jit, static_argnums=1)
def _resize(img, shape):
    """An independent expectation: jax.image.resize, bilinear with antialias (torchvision's default)."""
    return jax.image.resize(img, shape, "linear", antialias=True)


def _check(got, z, case, name, tol_name=None):
    want = z[name]
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, **_tol(case, tol_name or name))


# ----------------------------------------------------------------------------------------------------
# Deterministic ops against the official outputs
# ----------------------------------------------------------------------------------------------------

TV_SMALL = [  # (array, tolerance category, op)
    ("tv_adjust_brightness", None, lambda x: A.adjust_brightness(x, 1.3)),
    ("tv_adjust_contrast", None, lambda x: A.adjust_contrast(x, 1.4)),
    ("tv_adjust_saturation", None, lambda x: A.adjust_saturation(x, 1.6)),
    ("tv_adjust_hue_a", "hue", lambda x: A.adjust_hue(x, 0.1)),
    ("tv_adjust_hue_b", "hue", lambda x: A.adjust_hue(x, -0.15)),
    ("tv_rgb_to_grayscale", None, A.rgb_to_grayscale),
    ("tv_solarize", None, lambda x: A.solarize(x, 0.5)),
    ("tv_gaussian_blur", None, lambda x: A.gaussian_blur(x, [7, 7], [1.0, 1.0])),
    ("tv_hflip", None, A.hflip),
    ("tv_resized_crop_up", "resized_crop", lambda x: A.resized_crop(x, 10, 6, 40, 48, (64, 64))),
]

TF_SMALL = [
    ("tf_adjust_brightness", None, lambda x: A.tf_adjust_brightness(x, 0.2)),
    ("tf_adjust_contrast", None, lambda x: A.tf_adjust_contrast(x, 1.4)),
    ("tf_adjust_saturation", None, lambda x: A.tf_adjust_saturation(x, 1.6)),
    ("tf_adjust_hue_a", "hue", lambda x: A.tf_adjust_hue(x, 0.1)),
    ("tf_adjust_hue_b", "hue", lambda x: A.tf_adjust_hue(x, -0.15)),
    ("tf_rgb_to_grayscale", None, A.rgb_to_grayscale),
    ("tf_flip_left_right", None, A.hflip),
    ("simclr_gaussian_blur", None, lambda x: A.simclr_gaussian_blur(x, 6, 1.0)),
]


@pytest.mark.parametrize("name,tol_name,op", TV_SMALL, ids=[c[0] for c in TV_SMALL])
def test_torchvision_ops_small(name, tol_name, op):
    z, x = _load("aug_tv_small")
    _check(jax.jit(op)(x), z, "aug_tv_small", name, tol_name)


@pytest.mark.parametrize("name,tol_name,op", TF_SMALL, ids=[c[0] for c in TF_SMALL])
def test_tensorflow_ops_small(name, tol_name, op):
    z, x = _load("aug_tf_small")
    _check(jax.jit(op)(x), z, "aug_tf_small", name, tol_name)


def test_hyperparameters_match_cases_json():
    """The factors hard-coded in the tables above are the ones the references were made with."""
    tv, tf = CASES["aug_tv_small"]["hyper"], CASES["aug_tf_small"]["hyper"]
    assert (tv["brightness_factor"], tv["contrast_factor"], tv["saturation_factor"]) == (1.3, 1.4, 1.6)
    assert (tv["hue_factor_a"], tv["hue_factor_b"], tv["solarize_threshold"]) == (0.1, -0.15, 0.5)
    assert (tv["blur_kernel_size"], tv["blur_sigma"]) == ([7, 7], [1.0, 1.0])
    assert tv["crop_up"] == {"top": 10, "left": 6, "height": 40, "width": 48, "size": [64, 64]}
    assert (tf["brightness_delta"], tf["contrast_factor"], tf["saturation_factor"]) == (0.2, 1.4, 1.6)
    assert (tf["hue_delta_a"], tf["hue_delta_b"], tf["blur_kernel_size"], tf["blur_sigma"]) == (0.1, -0.15, 6, 1.0)


def test_simclr_to_grayscale_is_random_grayscale_p1():
    z, x = _load("aug_tf_small")
    got = jax.jit(A.random_grayscale, static_argnames="p")(jax.random.key(0), x, p=1.0)
    _check(got, z, "aug_tf_small", "simclr_to_grayscale")


def test_torchvision_blur_large():
    z, x = _load("aug_tv_large_blur")
    hyper = CASES["aug_tv_large_blur"]["hyper"]
    got = jax.jit(lambda img: A.gaussian_blur(img, hyper["kernel_size"], hyper["sigma"]))(x)
    _check(got, z, "aug_tv_large_blur", "tv_gaussian_blur")


def test_simclr_blur_large():
    z, x = _load("aug_tf_large_blur")
    hyper = CASES["aug_tf_large_blur"]["hyper"]
    got = jax.jit(lambda img: A.simclr_gaussian_blur(img, hyper["kernel_size"], hyper["sigma"]))(x)
    _check(got, z, "aug_tf_large_blur", "simclr_gaussian_blur")


@pytest.mark.parametrize("antialias,name", [(True, "tv_resized_crop_down_aa"), (False, "tv_resized_crop_down_noaa")])
def test_resized_crop_down(antialias, name):
    z, x = _load("aug_tv_large_crop")
    c = CASES["aug_tv_large_crop"]["hyper"]["crop_down"]
    box = c["top"], c["left"], c["height"], c["width"]
    got = jax.jit(lambda img: A.resized_crop(img, *box, tuple(c["size"]), antialias))(x)
    _check(got, z, "aug_tv_large_crop", name)


def test_resized_crop_traced_boxes_under_jit_vmap():
    """Per-image traced boxes give the same crops as the static call (the reference) and a resize."""
    z, x = _load("aug_tv_large_crop")
    boxes = jnp.array([[30, 50, 150, 120], [0, 0, 224, 224]])
    fn = jax.jit(jax.vmap(lambda b, img: A.resized_crop(img, b[0], b[1], b[2], b[3], 96)))
    got = fn(boxes, jnp.stack([x, x]))
    _check(got[0], z, "aug_tv_large_crop", "tv_resized_crop_down_aa")
    want_full = _resize(x, (96, 96, 3))
    np.testing.assert_allclose(got[1], want_full, atol=1e-5)


def test_gray_images_make_saturation_and_hue_no_ops():
    """The module docstring's claim for Fashion-MNIST-like images repeated to 3 channels."""
    _, x = _load("aug_tv_small")
    gray = np.repeat(np.asarray(A.rgb_to_grayscale(x)), 3, axis=-1)

    @jax.jit
    def ops(g):
        exact = A.adjust_hue(g, 0.3), A.tf_adjust_saturation(g, 1.7), A.tf_adjust_hue(g, -0.4)
        tv_saturation = A.adjust_saturation(g, 1.7), A.color_jitter(jax.random.key(1), g, 0.0, 0.0, 0.8, 0.4)
        return exact, tv_saturation

    exact, tv_saturation = ops(gray)
    for out in exact:
        np.testing.assert_allclose(out, gray, atol=1e-6)
    # torchvision's luma weights sum to 0.9999: its saturation blend moves gray pixels by
    # (f - 1) * 1e-4 * x, which is what the docstring's "up to 1e-4" means.
    for out in tv_saturation:
        np.testing.assert_allclose(out, gray, atol=1e-4)
        assert np.abs(np.asarray(out) - np.asarray(gray)).max() > 1e-6


def test_to_float_and_normalize():
    u8 = np.array([[[0, 51, 255]]], np.uint8)
    np.testing.assert_allclose(A.to_float(u8), [[[0.0, 0.2, 1.0]]], atol=1e-7)
    out = A.normalize(jnp.full((1, 1, 3), 0.5), (0.25, 0.5, 1.0), (0.5, 0.25, 2.0))
    np.testing.assert_allclose(out, [[[0.5, 0.0, -0.25]]], atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# Random resized crop
# ----------------------------------------------------------------------------------------------------


def test_random_resized_crop_full_scale_is_resize():
    _, x = _load("aug_tv_large_crop")
    crop = jax.jit(lambda k, img: A.random_resized_crop(k, img, 96, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    want = _resize(x, (96, 96, 3))
    for seed in (3, 4):
        np.testing.assert_allclose(crop(jax.random.key(seed), x), want, atol=1e-5)


def test_random_resized_crop_fallback_is_central_crop():
    """On a 64x32 (tall) image no full-area square box fits, so every try fails and torchvision's
    fallback takes the central crop with the aspect ratio clamped into `ratio`: rows 16..47."""
    _, x = _load("aug_tv_small")
    tall = x[:, :32]
    crop = jax.jit(lambda k, img: A.random_resized_crop(k, img, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    got = crop(jax.random.key(4), tall)
    want = _resize(tall[16:48], (16, 16, 3))
    np.testing.assert_allclose(got, want, atol=1e-5)


def _torchvision_get_params(rng, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params, transcribed in numpy: an independent sampler."""
    for _ in range(10):
        target_area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (1 / 3, 3.0))])
def test_crop_box_statistics_match_torchvision_sampler(scale, ratio):
    """Area fraction, aspect ratio and the rate of the full-image box (mostly the fallback after 10
    failed tries in the second setting) agree with an independent numpy sampler."""
    n, size = 6000, 64
    keys = jax.random.split(jax.random.key(5), n)
    box_fn = jax.jit(jax.vmap(lambda k: A.random_resized_crop_box(k, size, size, scale, ratio)))
    top, left, h, w = (np.asarray(a) for a in box_fn(keys))
    assert np.all((h > 0) & (w > 0) & (top >= 0) & (left >= 0))
    assert np.all((top + h <= size) & (left + w <= size))

    rng = np.random.default_rng(0)
    ref = np.array([_torchvision_get_params(rng, size, size, scale, ratio) for _ in range(n)])
    _, _, ref_h, ref_w = ref.T
    area, ref_area = h * w / size**2, ref_h * ref_w / size**2
    assert area.min() >= scale[0] * 0.85  # rounding of sqrt moves small boxes a little
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(np.log(w / h).mean() - np.log(ref_w / ref_h).mean()) < 0.03
    assert abs((area == 1).mean() - (ref_area == 1).mean()) < 0.04


def test_crop_offsets_are_uniform_over_valid_positions():
    """A fixed 32x32 box on a 64x64 image: top and left uniform on {0, ..., 32}."""
    keys = jax.random.split(jax.random.key(6), 3000)
    box_fn = jax.jit(jax.vmap(lambda k: A.random_resized_crop_box(k, 64, 64, (0.25, 0.25), (1.0, 1.0))))
    top, left, h, w = (np.asarray(a) for a in box_fn(keys))
    assert np.all(h == 32) and np.all(w == 32)
    for offset in (top, left):
        assert set(offset.tolist()) == set(range(33))
        assert abs(offset.mean() - 16) < 0.6


# ----------------------------------------------------------------------------------------------------
# Probabilities and colour jitter
# ----------------------------------------------------------------------------------------------------


def test_random_ops_with_p0_and_p1():
    z, x = _load("aug_tv_small")
    names = ["tv_hflip", "tv_solarize", "tv_gaussian_blur", "tv_adjust_brightness", None, None]

    @jax.jit
    def random_ops(key, img, p):  # p traced: one compile for both probabilities
        return (
            A.random_flip(key, img, p),
            A.random_solarize(key, img, p, threshold=0.5),
            A.random_gaussian_blur(key, img, p, sigma=(1.0, 1.0), kernel_size=7),
            A.random_color_jitter(key, img, (1.3, 1.3), 0, 0, 0, p),
            A.random_grayscale(key, img, p),
            A.simclr_color_jitter(key, img, 1.0, p),
        )

    for seed in (7, 8):
        for out, name in zip(random_ops(jax.random.key(seed), x, 0.0), names):
            np.testing.assert_array_equal(out, x)
        for out, name in zip(random_ops(jax.random.key(seed), x, 1.0), names):
            if name is not None:
                _check(out, z, "aug_tv_small", name)


def test_probability_is_respected():
    _, x = _load("aug_tv_small")
    keys = jax.random.split(jax.random.key(8), 2000)
    flipped = jax.jit(jax.vmap(lambda k: A.random_flip(k, x, 0.3)))(keys)
    rate = np.mean(np.all(np.asarray(flipped) == x[:, ::-1], axis=(1, 2, 3)))
    assert abs(rate - 0.3) < 0.04


def test_color_jitter_applies_ops_in_every_order():
    """Fixed factors (degenerate ranges): every output is one of the 3! orders of the three ops, and
    all six orders occur."""
    _, x = _load("aug_tv_small")
    ops = [
        lambda y: A.adjust_brightness(y, 1.3),
        lambda y: A.adjust_contrast(y, 1.4),
        lambda y: A.adjust_saturation(y, 1.6),
    ]
    compose = jax.jit(lambda y: [functools.reduce(lambda v, f: f(v), p, y) for p in itertools.permutations(ops)])
    orders = np.stack([np.asarray(o) for o in compose(x)])
    assert min(np.abs(a - b).max() for a, b in itertools.combinations(orders, 2)) > 1e-3

    keys = jax.random.split(jax.random.key(9), 96)
    jitter = jax.jit(jax.vmap(lambda k: A.color_jitter(k, x, (1.3, 1.3), (1.4, 1.4), (1.6, 1.6), 0)))
    out = np.asarray(jitter(keys))
    err = np.abs(out[:, None] - orders[None]).max(axis=(2, 3, 4))  # [keys, orders]
    assert np.all(err.min(axis=1) < 1e-5)
    assert set(err.argmin(axis=1).tolist()) == set(range(6))


def test_color_jitter_brightness_factor_range():
    """brightness b alone: out = clamp(f * x), f ~ U[1 - b, 1 + b], across keys."""
    x = jnp.full((4, 4, 3), 0.5)
    keys = jax.random.split(jax.random.key(10), 500)
    out = jax.jit(jax.vmap(lambda k: A.color_jitter(k, x, 0.4, 0, 0, 0)))(keys)
    f = np.asarray(out[:, 0, 0, 0]) / 0.5
    np.testing.assert_allclose(np.asarray(out), f[:, None, None, None] * 0.5 * np.ones((1, 4, 4, 3)), atol=1e-6)
    assert f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6
    assert f.min() < 0.65 and f.max() > 1.35 and abs(f.mean() - 1.0) < 0.03


def test_simclr_color_jitter_is_multiplicative_and_clipped():
    """On a constant gray image contrast, saturation and hue are no-ops, so SimCLR v2's jitter is
    clip(x * f), f ~ U[1 - 0.8s, 1 + 0.8s] (SimCLR v1 / tf.image would add a delta instead)."""
    keys = jax.random.split(jax.random.key(11), 500)
    jitter = jax.jit(jax.vmap(lambda k, img: A.simclr_color_jitter(k, img, 0.5, p=1.0), in_axes=(0, None)))
    for c in (0.25, 0.8):
        out = np.asarray(jitter(keys, jnp.full((4, 4, 3), c)))
        f = out[:, 0, 0, 0] / c
        np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1, :1], out.shape), atol=1e-6)
        assert f.min() >= 0.6 - 1e-6 and f.max() <= min(1.4, 1 / c) + 1e-6
        assert f.min() < 0.65 and f.max() > min(1.35, 1 / c - 1e-6)
    assert out.max() == 1.0  # 0.8 * 1.4 clipped to 1


# ----------------------------------------------------------------------------------------------------
# Batches: keys under jit + vmap, multi-crop
# ----------------------------------------------------------------------------------------------------


def _view(key, img):
    k = jax.random.split(key, 6)
    img = A.random_resized_crop(k[0], img, 24, scale=(0.2, 1.0))
    img = A.random_flip(k[1], img)
    img = A.random_color_jitter(k[2], img, 0.4, 0.4, 0.2, 0.1, p=0.8)
    img = A.random_grayscale(k[3], img, p=0.2)
    img = A.random_gaussian_blur(k[4], img, p=0.5)
    return A.random_solarize(k[5], img, p=0.2)


def test_batch_keys_under_jit_and_vmap():
    _, x = _load("aug_tv_small")
    images = jnp.stack([x] * 4)
    fn = jax.jit(jax.vmap(_view))
    keys = jax.random.split(jax.random.key(12), 4)
    out = np.asarray(fn(keys, images))
    assert out.shape == (4, 24, 24, 3) and out.min() >= 0 and out.max() <= 1
    for i, j in itertools.combinations(range(4), 2):
        assert np.abs(out[i] - out[j]).max() > 1e-2
    same = np.asarray(fn(jnp.stack([keys[1]] * 4), images))
    for i in range(4):
        np.testing.assert_array_equal(same[i], out[1])


def test_apply_per_image_matches_a_loop_over_split_keys():
    _, x = _load("aug_tv_small")
    images = jnp.stack([x, x[::-1], x[:, ::-1]])
    key = jax.random.key(13)
    got = jax.jit(lambda k, imgs: A.apply_per_image(A.random_resized_crop, k, imgs, 16))(key, images)
    one = jax.jit(lambda k, img: A.random_resized_crop(k, img, 16))
    keys = jax.random.split(key, 3)
    for i in range(3):
        np.testing.assert_allclose(got[i], one(keys[i], images[i]), atol=1e-6)
    assert np.abs(got[0] - got[1][::-1]).max() > 1e-2  # different keys, different boxes


def test_multi_crop_shapes_order_and_values():
    """Full-area crops (the fallback on a square image with scale (1, 1)) equal a resize; view_fn
    receives each crop's global index, in group order."""
    _, x = _load("aug_tv_small")
    images = jnp.stack([x, 1.0 - x])
    view_fn = lambda key, img, crop: img + crop  # noqa: E731
    fn = jax.jit(lambda key, imgs: A.multi_crop(key, imgs, (32, 16), ((1.0, 1.0), (1.0, 1.0)), (2, 2), view_fn))
    stacks = fn(jax.random.key(14), images)
    assert [s.shape for s in stacks] == [(2, 2, 32, 32, 3), (2, 2, 16, 16, 3)]
    crop = 0
    for stack, size in zip(stacks, (32, 16)):
        want = _resize(images, (2, size, size, 3))
        for c in range(stack.shape[0]):
            np.testing.assert_allclose(stack[c], want + crop, atol=1e-5)
            crop += 1


def test_multi_crop_views_differ_between_crops_and_images():
    _, x = _load("aug_tv_small")
    images = jnp.stack([x, x])
    fn = jax.jit(lambda key, imgs: A.multi_crop(key, imgs, (16,), ((0.05, 0.4),), (2,)))
    (stack,) = fn(jax.random.key(15), images)
    assert np.abs(stack[0] - stack[1]).max() > 1e-2  # two crops of the same image
    assert np.abs(stack[0, 0] - stack[0, 1]).max() > 1e-2  # same crop index, two images
