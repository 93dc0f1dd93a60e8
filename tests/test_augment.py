"""common/augment.py: value tests of the ops and the random ops (probabilities, crop-box statistics
against the official samplers, crops inside an extent, the evaluation centre crop against PIL and
TensorFlow, the colour jitter's order, keys under jit + vmap, multi-crop). The official reference
arrays are checked by scripts/check_reference.py."""

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
# Deterministic ops (the official outputs of every aug_*.npz case are checked by
# `python scripts/check_reference.py tests/reference/aug_*.npz`, scripts/reference/augmentations.py)
# ----------------------------------------------------------------------------------------------------


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


def test_multi_crop_traces_a_shared_recipe_once_with_the_per_crop_values():
    """Crops whose view_fn recipe is the same program are vmapped together (one trace, one compile),
    with exactly the values of one apply_per_image call per crop with that crop's key; a recipe that
    depends on the crop index keeps crops apart."""
    _, x = _load("aug_tv_small")
    images = jnp.stack([x, 1.0 - x, x[::-1]])
    traced = []

    def view_fn(key, img, crop):  # crop 0 its own recipe (solarize), crops 1.. the same one
        traced.append(crop)
        img = A.random_color_jitter(key, img, 0.4, 0.4, 0.2, 0.1, p=0.8)
        return A.solarize(img, 0.5) if crop == 0 else img

    sizes, scales, counts = (16, 8), ((0.4, 1.0), (0.05, 0.4)), (2, 3)
    key = jax.random.key(16)
    stacks = jax.jit(lambda k, imgs: A.multi_crop(k, imgs, sizes, scales, counts, view_fn))(key, images)
    # Per group: one fingerprint trace per crop, then one trace per distinct recipe.
    assert traced == [0, 1, 0, 1, 2, 3, 4, 2]
    raw = jax.jit(lambda k, imgs: A.multi_crop(k, imgs, sizes, scales, counts))(key, images)
    _, k_views = jax.random.split(key)
    first = 0
    for stack, crops in zip(stacks, raw):
        for c in range(crops.shape[0]):
            fn = functools.partial(view_fn, crop=first + c)
            want = jax.jit(lambda k, imgs: A.apply_per_image(fn, k, imgs))(
                jax.random.fold_in(k_views, first + c), crops[c]
            )
            np.testing.assert_array_equal(stack[c], want)
        first += crops.shape[0]


# ----------------------------------------------------------------------------------------------------
# Crops from the whole image: statistics against the official samplers, extents, evaluation crops
# ----------------------------------------------------------------------------------------------------

# (height, width): 1:1, 4:3 (landscape), 3:4 (portrait), 16:9, and ImageNet's typical 500 x 375.
ASPECTS = [(224, 224), (300, 400), (400, 300), (225, 400), (375, 500)]
DRAWS = 3000


def _tf_boxes(height, width, n=DRAWS):
    """The official sampler: TensorFlow's own sample_distorted_bounding_box with SimCLR's arguments
    (data_util.distorted_bounding_box_crop: object box [0, 0, 1, 1], min_object_covered 0.1, aspect
    (3/4, 4/3), area (0.08, 1), 100 attempts), n draws -> int [n, 4] (top, left, h, w)."""
    tf = pytest.importorskip("tensorflow")
    tf.config.set_visible_devices([], "GPU")

    @tf.function
    def boxes(seeds):
        bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])

        def one(seed):
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.constant([height, width, 3]),
                bbox,
                seed=seed,
                min_object_covered=0.1,
                aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0),
                max_attempts=100,
                use_image_if_no_bounding_boxes=True,
            )
            return tf.concat([begin[:2], size[:2]], 0)

        return tf.map_fn(one, seeds, fn_output_signature=tf.int32)

    seeds = np.stack([np.arange(n), np.full(n, 12345)], 1).astype(np.int32)
    return boxes(tf.constant(seeds)).numpy()


def _torchvision_boxes(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), n=DRAWS, seed=0):
    """torchvision RandomResizedCrop.get_params, transcribed in NumPy from its documented algorithm
    (torch is not a dependency): 10 tries of area ~ U(scale) x H W and log-aspect ~ U(log ratio),
    w = round(sqrt(area r)), h = round(sqrt(area / r)); the first box that fits gets offsets uniform in
    [0, H - h] and [0, W - w]; else the central crop with the aspect clamped into `ratio`."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 4), np.int64)
    for k in range(n):
        for _ in range(10):
            area = height * width * rng.uniform(*scale)
            r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
            if 0 < w <= width and 0 < h <= height:
                out[k] = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                w, h = int(round(height * max(ratio))), height
            else:
                w, h = width, height
            out[k] = (height - h) // 2, (width - w) // 2, h, w
    return out


def _ours(box_fn, height, width, n=DRAWS, canvas=512):
    """Our sampler on a traced extent (the image in the top-left of a larger canvas), n draws."""
    fn = jax.jit(jax.vmap(lambda k, e: box_fn(k, e[0], e[1])))
    extents = jnp.tile(jnp.array([height, width], jnp.int32), (n, 1))
    return np.stack([np.asarray(v) for v in fn(jax.random.split(jax.random.key(height * 7 + width), n), extents)], 1)


def crop_statistics(boxes, height, width):
    """Per draw: area fraction, aspect w / h, and which of a 4 x 4 grid of image cells has its centre
    inside the box ([n, 16] bool)."""
    top, left, h, w = (boxes[:, i].astype(np.float64) for i in range(4))
    centres_y = (np.arange(4) + 0.5) * height / 4
    centres_x = (np.arange(4) + 0.5) * width / 4
    in_y = (centres_y[None] >= top[:, None]) & (centres_y[None] < (top + h)[:, None])
    in_x = (centres_x[None] >= left[:, None]) & (centres_x[None] < (left + w)[:, None])
    cells = (in_y[:, :, None] & in_x[:, None, :]).reshape(len(boxes), 16)
    return h * w / (height * width), w / h, cells


def _agree(ours, official, height, width):
    """Means of area, aspect and every cell's coverage within 4 standard errors, area KS distance
    below the 0.1% critical value; returns the row of the statistics table."""
    a1, r1, c1 = crop_statistics(ours, height, width)
    a0, r0, c0 = crop_statistics(official, height, width)
    for x1, x0 in ((a1, a0), (r1, r0), (c1.astype(float), c0.astype(float))):
        se = np.sqrt(x1.var(0) / len(x1) + x0.var(0) / len(x0)) + 1e-9
        assert np.all(np.abs(x1.mean(0) - x0.mean(0)) <= 4 * se), (x1.mean(0), x0.mean(0))
    grid = np.union1d(a0, a1)
    ks = np.abs(
        np.searchsorted(np.sort(a1), grid, "right") / len(a1) - np.searchsorted(np.sort(a0), grid, "right") / len(a0)
    )
    assert ks.max() < 1.95 * math.sqrt(2 / DRAWS), ks.max()
    assert np.all(ours[:, 0] + ours[:, 2] <= height) and np.all(ours[:, 1] + ours[:, 3] <= width)
    return a1.mean(), a0.mean(), r1.mean(), r0.mean(), c1.mean(), c0.mean()


@pytest.mark.parametrize("height,width", ASPECTS)
def test_tf_random_crop_statistics_match_tensorflow(height, width):
    """tf_random_crop_box (SimCLR's crop) against TensorFlow's sample_distorted_bounding_box."""
    ours = _ours(A.tf_random_crop_box, height, width)
    _agree(ours, _tf_boxes(height, width), height, width)
    # TensorFlow never offsets a smaller box to the last position: offsets in [0, H - h).
    smaller = ours[:, 2] < height
    assert np.all(ours[smaller, 0] < height - ours[smaller, 2])


@pytest.mark.parametrize("height,width", ASPECTS)
def test_random_resized_crop_statistics_match_torchvision(height, width):
    """random_resized_crop_box inside a traced extent against torchvision's get_params."""
    ours = _ours(A.random_resized_crop_box, height, width)
    _agree(ours, _torchvision_boxes(height, width), height, width)


def test_torchvision_fallback_on_a_traced_extent():
    """No try fits (scale 1 with a far narrower ratio): the central crop with the ratio clamped, the
    same for a static size and a traced extent."""
    for height, width in ((100, 30), (30, 100)):
        static = A.random_resized_crop_box(jax.random.key(0), height, width, (1.0, 1.0), (1.0, 1.0))
        traced = jax.jit(lambda e: A.random_resized_crop_box(jax.random.key(0), e[0], e[1], (1.0, 1.0), (1.0, 1.0)))(
            jnp.array([height, width])
        )
        side = min(height, width)
        want = ((height - side) // 2, (width - side) // 2, side, side)
        assert tuple(int(v) for v in static) == want == tuple(int(v) for v in traced)


def _canvas(height, width, side=64, seed=0):
    """A [side, side, 3] canvas: a random image in the top-left height x width, 1.0 elsewhere."""
    canvas = np.ones((side, side, 3), np.float32)
    canvas[:height, :width] = np.random.default_rng(seed).uniform(0, 0.5, (height, width, 3))
    return jnp.asarray(canvas)


@pytest.mark.parametrize(
    "crop",
    [
        lambda k, x, e: A.random_resized_crop(k, x, 24, (0.08, 1.0), extent=e),
        lambda k, x, e: A.tf_random_crop(k, x, 24, extent=e),
        lambda k, x, e: A.center_crop(x, e, 24, 0.875),
        lambda k, x, e: A.center_crop(x, e, 24, 0.875, style="tf"),
    ],
    ids=["random_resized_crop", "tf_random_crop", "center_crop", "center_crop_tf"],
)
def test_crops_read_only_inside_the_extent(crop):
    """Pixels outside the extent (1.0) never reach a crop: every output stays below 0.5 + the bicubic
    overshoot, for images of several aspects on one canvas."""
    keys = jax.random.split(jax.random.key(3), 64)
    for height, width in ((40, 64), (64, 30), (17, 23)):
        x = _canvas(height, width)
        out = jax.jit(jax.vmap(lambda k: crop(k, x, jnp.array([height, width]))))(keys)
        assert float(out.max()) < 0.6, (height, width, float(out.max()))


def test_multi_crop_and_apply_per_image_pass_extents():
    x = jnp.stack([_canvas(40, 64), _canvas(64, 20, seed=1)])
    extents = jnp.array([[40, 64], [64, 20]])
    stacks = jax.jit(lambda k: A.multi_crop(k, x, (16, 8), ((0.4, 1.0), (0.05, 0.4)), (2, 3), extents=extents))(
        jax.random.key(0)
    )
    assert [s.shape for s in stacks] == [(2, 2, 16, 16, 3), (3, 2, 8, 8, 3)]
    assert max(float(s.max()) for s in stacks) < 0.55
    per_image = jax.jit(
        lambda k: A.apply_per_image(
            lambda kk, img, extent: A.random_resized_crop(kk, img, 8, extent=extent), k, x, extents=extents
        )
    )(jax.random.key(1))
    assert per_image.shape == (2, 8, 8, 3) and float(per_image.max()) < 0.55


def test_center_crop_matches_pil_resize_and_center_crop():
    """center_crop(size 224, fraction 0.875) = torchvision's Resize(256) + CenterCrop(224) on a PIL
    image (PIL bilinear, antialiased; uint8 output): within one grey level, mean error < 0.5 level."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for height, width in ((375, 500), (500, 375), (300, 300), (240, 427)):
        small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
        short, long = min(height, width), max(height, width)
        new_long = int(256 * long / short)
        new_w, new_h = (256, new_long) if width <= height else (new_long, 256)
        resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
        top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
        want = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / 255
        canvas = np.zeros((512, 512, 3), np.float32)
        canvas[:height, :width] = image / 255
        got = np.asarray(jax.jit(lambda x, e: A.center_crop(x, e, 224, 0.875))(canvas, jnp.array([height, width])))
        err = np.abs(got - want)
        assert err.max() <= 1.01 / 255 and err.mean() < 0.5 / 255, (height, width, err.max(), err.mean())


def test_center_crop_tf_matches_simclr_center_crop():
    """style 'tf' = SimCLR data_util.center_crop (crop_proportion 0.875, tf.image.resize bicubic),
    computed here with TensorFlow: within 2e-3 (TensorFlow's 1024-entry cubic weight table)."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    for height, width in ((375, 500), (500, 375), (224, 224)):
        image = rng.uniform(0, 1, (height, width, 3)).astype(np.float32)
        short = min(height, width)
        crop = int(np.rint(0.875 * short))
        top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
        box = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
        want = tf.image.resize([box], [224, 224], method=tf.image.ResizeMethod.BICUBIC)[0].numpy()
        canvas = np.zeros((512, 512, 3), np.float32)
        canvas[:height, :width] = image
        got = np.asarray(
            jax.jit(lambda x, e: A.center_crop(x, e, 224, 0.875, style="tf"))(canvas, jnp.array([height, width]))
        )
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_tf_random_crop_resize_matches_tensorflow_bicubic():
    """tf_random_crop's crop-and-resize of its box = tf.image.crop_to_bounding_box + tf.image.resize
    BICUBIC on that box (within TensorFlow's cubic-table rounding)."""
    tf = pytest.importorskip("tensorflow")
    image = np.random.default_rng(2).uniform(0, 1, (90, 120, 3)).astype(np.float32)
    canvas = np.zeros((128, 128, 3), np.float32)
    canvas[:90, :120] = image
    for seed in range(4):
        key = jax.random.key(seed)
        top, left, h, w = (int(v) for v in A.tf_random_crop_box(key, 90, 120))
        got = np.asarray(jax.jit(lambda x: A.tf_random_crop(key, x, 32, extent=jnp.array([90, 120])))(canvas))
        box = tf.image.crop_to_bounding_box(image, top, left, h, w)
        want = tf.image.resize([box], [32, 32], method=tf.image.ResizeMethod.BICUBIC)[0].numpy()
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_center_crop_of_a_full_square_at_its_size_is_the_identity():
    """The evaluation default (size = the canvas, fraction 1) leaves square images bit for bit."""
    for side in (28, 32):
        x = jax.random.uniform(jax.random.key(side), (side, side, 3))
        y = jax.jit(lambda img, e: A.center_crop(img, e, side, 1.0))(x, jnp.array([side, side]))
        assert bool(jnp.all(x == y))


# ----------------------------------------------------------------------------------------------------
# The colour jitter: one op per step of each image's own order, the same outputs as all orders
# ----------------------------------------------------------------------------------------------------


def _all_orders_jitter(key, img, ops, ranges, clip):
    """The previous implementation, kept here as the reference: lax.switch over every op at every
    step (under vmap: all ops evaluated and selected), the same draws (factors, then argsort keys)."""
    n = len(ops)
    u = jax.random.uniform(key, (2 * n,))
    branches = []
    for i, (op, r) in enumerate(zip(ops, ranges, strict=True)):
        if r is None:
            branches.append(lambda x: x)
        else:
            factor = r[0] + (r[1] - r[0]) * u[i]
            branches.append(functools.partial(lambda x, op, f: op(x, f), op=op, f=factor))
    order = jnp.argsort(u[n:])
    for step in range(n):
        img = jax.lax.switch(order[step], branches, img)
        if clip:
            img = jnp.clip(img, 0.0, 1.0)
    return img


@pytest.mark.parametrize("family", ["torchvision", "simclr", "torchvision_no_hue"])
def test_color_jitter_equals_the_all_orders_implementation(family):
    """For 256 keys on a natural image, the new jitter gives the old one's output (same draws, same
    op per step): so the output distribution and the per-order frequencies are the old ones."""
    _, x = _load("aug_tv_small")
    if family == "simclr":
        ranges = [A._jitter_range(0.8, 1.0)] * 3 + [A._jitter_range(0.2, 0.0)]
        ops = (lambda y, f: y * f, A.tf_adjust_contrast, A.tf_adjust_saturation, A.tf_adjust_hue)
        new = lambda k: A.simclr_color_jitter(k, x, 1.0, p=1.0)  # noqa: E731
        old = lambda k: _all_orders_jitter(jax.random.split(k)[1], x, ops, ranges, clip=True)  # noqa: E731
    else:
        hue = 0.1 if family == "torchvision" else 0.0
        ranges = [A._jitter_range(v, 1.0) for v in (0.4, 0.4, 0.2)] + [A._jitter_range(hue, 0.0)]
        ops = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
        new = lambda k: A.color_jitter(k, x, 0.4, 0.4, 0.2, hue)  # noqa: E731
        old = lambda k: _all_orders_jitter(k, x, ops, ranges, clip=False)  # noqa: E731
    keys = jax.random.split(jax.random.key(21), 256)
    got, want = jax.jit(jax.vmap(new))(keys), jax.jit(jax.vmap(old))(keys)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-6)


def test_color_jitter_orders_are_uniform():
    """The 24 orders are equally likely (chi-square over 4800 draws of the argsort the jitter uses)."""
    keys = jax.random.split(jax.random.key(5), 4800)
    orders = np.asarray(jax.jit(jax.vmap(lambda k: jnp.argsort(jax.random.uniform(k, (8,))[4:])))(keys))
    index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([index[tuple(o)] for o in orders], minlength=24)
    expected = len(orders) / 24
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 49.7, chi2  # 23 degrees of freedom, p = 0.001


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("taps,size", [(3, 28), (5, 12), (7, 16), (9, 32), (23, 40)])
def test_separable_filter_equals_a_padded_correlation(taps, size, pad_mode):
    """Both matrix forms of the blur (the weighted constant basis for short kernels, the indexed band for
    long ones) equal NumPy's padded correlation along H then W, with per-axis kernels."""
    rng = np.random.default_rng(taps)
    img = rng.uniform(size=(size, size + 3, 2)).astype(np.float32)
    ky, kx = (rng.uniform(size=taps).astype(np.float32) for _ in range(2))
    r = taps // 2  # NumPy's pad modes are the blur's: its 'reflect' omits the edge pixel, as torch's
    want = np.pad(img, ((r, r), (0, 0), (0, 0)), mode=pad_mode)
    want = sum(ky[t] * want[t : t + size] for t in range(taps))
    want = np.pad(want, ((0, 0), (r, r), (0, 0)), mode=pad_mode)
    want = sum(kx[t] * want[:, t : t + size + 3] for t in range(taps))
    got = jax.jit(lambda x, a, b: A._separable_filter(x, a, b, pad_mode))(img, ky, kx)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    if taps < 9:  # the short kernels' basis gives the same matrix as indexing the taps
        np.testing.assert_allclose(
            np.asarray(A._basis_filter_matrix(jnp.asarray(ky), size, pad_mode)),
            np.asarray(A._filter_matrix(jnp.asarray(ky), size, pad_mode)),
            atol=1e-7,
        )
