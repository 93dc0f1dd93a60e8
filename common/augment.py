"""Image augmentations for self-supervised learning, in pure JAX, run on the accelerator.

Conventions. Every op takes ONE image, HWC float32 with values in [0, 1] (`[H, W, 3]` unless stated);
a random op takes one `jax.random` key first: `fn(key, img, ...)`. A batch is augmented inside
`jax.jit` with one key per image, `jax.vmap(fn)(keys, images)`, which `apply_per_image` spells out:

    images = to_float(batch_uint8)                        # [B, H, W, 3] uint8 -> float in [0, 1]
    views = apply_per_image(view_fn, key, images)         # view_fn(key, img) -> img

No op branches in Python on a traced value, so everything works under jit and vmap. Factors, sigmas,
deltas and crop boxes may be traced scalars; kernel sizes, output sizes, probabilities and jitter
strengths are static Python numbers.

Two families of semantics, checked against the official code in tests/test_augment.py:

* torchvision (`transforms.functional` on float tensors, as used by MoCo, DINO, SwAV and PAWS):
  `adjust_brightness` (multiplicative, clamped), `adjust_contrast` (blend with the scalar mean of the
  grayscale image, clamped), `adjust_saturation` (blend with the grayscale image, clamped),
  `adjust_hue`, `rgb_to_grayscale`, `solarize`, `gaussian_blur` (reflect padding), `hflip`,
  `resized_crop` (bilinear, optionally antialiased), and the random ops built on them:
  `random_resized_crop`, `random_flip`, `color_jitter`, `random_color_jitter`, `random_grayscale`,
  `random_gaussian_blur`, `random_solarize`.
* TensorFlow / SimCLR (`tf.image` and google-research/simclr `tf2/data_util.py`):
  `tf_adjust_brightness` (additive, not clipped), `tf_adjust_contrast` (per-channel means, not
  clipped), `tf_adjust_saturation` (scales S in HSV), `tf_adjust_hue`, `simclr_gaussian_blur` (zero
  padding, 2*int(k/2)+1 taps) and `simclr_color_jitter` (SimCLR v2: multiplicative brightness, random
  order, clipped after every op).

* PIL (`ImageOps`, `ImageEnhance`, as VISSL's photometric ops for PIRL): `posterize`, `sharpness`,
  `autocontrast` and `random_pil_photometric`, float analogues of the uint8 originals.

Grayscale, flip and hue agree between the two; brightness, contrast, saturation and the blur at the
borders differ. DINO, SwAV, MoCo and PAWS run their colour ops on PIL uint8 images: these float ops are
the continuous analogue, not bit-identical.

Gray datasets (Fashion-MNIST) repeated to 3 equal channels have zero saturation, so saturation and hue
adjustments (both families) and grayscale conversion leave them unchanged: colour jitter then acts
only through brightness and contrast. (Up to 1e-4 for torchvision's saturation and grayscale: its luma
weights sum to 0.9999, so the gray image it blends with is 0.01% darker.)
"""

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601-2 luma weights, used by both torchvision and tf.image.
_LUMA = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------------


def to_float(images):
    """uint8 images from the data loader (any shape) -> float32 in [0, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / 255.0


def normalize(img, mean, std):
    """(img - mean) / std per channel; mean, std: [C] (e.g. the ImageNet statistics)."""
    return (img - jnp.asarray(mean, img.dtype)) / jnp.asarray(std, img.dtype)


def rgb_to_grayscale(img):
    """[H, W, 3] -> [H, W, 1] luma, 0.2989 R + 0.587 G + 0.114 B (torchvision == tf.image)."""
    return _LUMA[0] * img[..., 0:1] + _LUMA[1] * img[..., 1:2] + _LUMA[2] * img[..., 2:3]


def rgb_to_hsv(img):
    """[..., 3] RGB in [0, 1] -> (h, s, v), each [...]; h in [0, 1), grays get h = s = 0."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    v = jnp.max(img, axis=-1)
    chroma = v - jnp.min(img, axis=-1)
    s = chroma / jnp.where(v > 0, v, 1.0)
    # Grays have no hue; dividing by 1 instead of 0 keeps the unused branch finite (and its gradient).
    c = jnp.where(chroma > 0, chroma, 1.0)
    h = jnp.where(v == r, (g - b) / c, jnp.where(v == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    h = h / 6.0  # in (-1/6, 5/6]; the mod 1 below as a select (jnp.mod is slow on CPU; same bits)
    h = jnp.where(chroma > 0, jnp.where(h < 0, h + 1.0, h), 0.0)
    return h, s, v


def hsv_to_rgb(h, s, v):
    """(h, s, v), each [...] -> [..., 3] RGB.

    The six-sector formula written piecewise-linearly: channel n of (R, G, B) = (5, 3, 1) is
    v * (1 - s * clip(min(k, 4 - k), 0, 1)) with k = (n + 6h) mod 6.
    """
    k = jnp.array([5.0, 3.0, 1.0], v.dtype) + 6.0 * h[..., None]  # in [1, 12] for h in [0, 1]
    k = jnp.where(k >= 6.0, k - 6.0, k)  # mod 6 as a select: the same bits as jnp.mod, much faster on CPU
    return v[..., None] * (1.0 - s[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))


# ----------------------------------------------------------------------------------------------------
# Deterministic ops, torchvision semantics
# ----------------------------------------------------------------------------------------------------


def _blend(img, other, factor):
    """torchvision's _blend: clamp(factor * img + (1 - factor) * other, 0, 1)."""
    return jnp.clip(factor * img + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(img, factor):
    """clamp(factor * img, 0, 1). factor >= 0; 1 leaves the image unchanged."""
    return _blend(img, 0.0, factor)


def adjust_contrast(img, factor):
    """Blend with the mean gray level: one scalar, the mean of rgb_to_grayscale(img); clamped."""
    return _blend(img, jnp.mean(rgb_to_grayscale(img)), factor)


def adjust_saturation(img, factor):
    """Blend with the grayscale image ([H, W, 1], broadcast over channels); clamped."""
    return _blend(img, rgb_to_grayscale(img), factor)


def adjust_hue(img, hue_factor):
    """Rotate the hue: H <- (H + hue_factor) mod 1 in HSV. hue_factor in [-0.5, 0.5]."""
    h, s, v = rgb_to_hsv(img)
    return hsv_to_rgb(wrap_hue(h + hue_factor), s, v)


def wrap_hue(h):
    """h mod 1 for h in [-1, 2) (a hue in [0, 1) plus a shift in [-1, 1]), as selects: the same values
    as jnp.mod, which is several times slower on XLA:CPU."""
    return jnp.where(h < 0, h + 1.0, jnp.where(h >= 1.0, h - 1.0, h))


def solarize(img, threshold):
    """Invert the pixels at or above threshold: where(img >= threshold, 1 - img, img)."""
    return jnp.where(img >= threshold, 1.0 - img, img)


def hflip(img):
    """Mirror left-right (torchvision hflip == tf.image.flip_left_right)."""
    return img[:, ::-1, :]


def _gaussian_kernel1d(taps, sigma):
    """[taps] normalised exp(-t^2 / (2 sigma^2)) at t = -(taps-1)/2 .. (taps-1)/2; sigma may be traced."""
    t = jnp.arange(taps, dtype=jnp.float32) - (taps - 1) / 2
    w = jnp.exp(-0.5 * jnp.square(t / sigma))
    return w / jnp.sum(w)


def _separable_filter(img, kernel_y, kernel_x, pad_mode):
    """Correlate every channel with kernel_y along H, then kernel_x along W; output [H, W, C].

    Odd kernel lengths are static; the taps may differ per image under vmap (a traced sigma each).
    The filter is a product with a banded [H, H] / [W, W] matrix (float32, precision HIGHEST): a
    matrix product reads its input once, where a sum of shifted slices lets XLA fuse the chain of ops
    that made the image into every slice and recompute it per tap (at 224 px, 23 taps: ~3x slower for
    a SimCLR view; at 28 px, 3 taps: MoCo's two views 41 -> 28 ms per batch of 256 on this project's
    2-core CPU). Short kernels (< 9 taps) build the matrix as the taps' weighted sum of constant 0/1
    matrices, long ones by indexing the taps (`_filter_matrix`). A kernel longer than the image
    (reflect padding needs r < n) sums shifted slices.
    """
    height, width = img.shape[:2]
    ry, rx = kernel_y.shape[0] // 2, kernel_x.shape[0] // 2
    if ry < height and rx < width:
        short = min(ry, rx) < _MATRIX_FILTER_MIN_TAPS // 2
        matrix = _basis_filter_matrix if short else _filter_matrix
        rows = jnp.einsum("ij,jwc->iwc", matrix(kernel_y, height, pad_mode), img, precision="highest")
        return jnp.einsum("kw,iwc->ikc", matrix(kernel_x, width, pad_mode), rows, precision="highest")
    x = jnp.pad(img, ((ry, ry), (0, 0), (0, 0)), mode=pad_mode)
    x = sum(kernel_y[i] * x[i : i + height] for i in range(2 * ry + 1))
    x = jnp.pad(x, ((0, 0), (rx, rx), (0, 0)), mode=pad_mode)
    return sum(kernel_x[i] * x[:, i : i + width] for i in range(2 * rx + 1))


_MATRIX_FILTER_MIN_TAPS = 9


@functools.lru_cache(maxsize=None)
def _filter_basis(taps, n, pad_mode):
    """float32 [taps, n, n] B, 0/1 (2 where a reflection folds two taps onto one source), with
    sum_t kernel[t] B[t] = `_filter_matrix(kernel, n, pad_mode)`."""
    r = taps // 2
    basis = np.zeros((taps, n, n), np.float32)
    for t in range(taps):
        source = np.arange(n) + t - r
        if pad_mode == "reflect":
            source = np.where(source < 0, -source, np.where(source > n - 1, 2 * (n - 1) - source, source))
        elif pad_mode != "constant":
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        inside = (source >= 0) & (source < n)
        np.add.at(basis[t], (np.arange(n)[inside], source[inside]), 1.0)
    return basis


def _basis_filter_matrix(kernel, n, pad_mode):
    """`_filter_matrix` as the taps' weighted sum of constant matrices (no indexing by traced values)."""
    return jnp.tensordot(kernel, _filter_basis(kernel.shape[0], n, pad_mode), 1)


def _filter_matrix(kernel, n, pad_mode):
    """[n, n] M with (M @ x)[i] = sum_t kernel[t + r] x_padded[i + t]: the taps of the source pixels of
    output i, where padding reads 0 ('constant') or the mirror image without the edge pixel
    ('reflect', source -s for s < 0 and 2(n - 1) - s for s > n - 1; needs r < n)."""
    r = kernel.shape[0] // 2
    i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]

    def tap(offset):  # kernel weight of source offset `offset` from the output pixel, 0 beyond r
        return jnp.where(jnp.abs(offset) <= r, kernel[jnp.clip(offset + r, 0, 2 * r)], 0.0)

    matrix = tap(j - i)
    if pad_mode == "reflect":
        matrix += jnp.where(j > 0, tap(-j - i), 0.0) + jnp.where(j < n - 1, tap(2 * (n - 1) - i - j), 0.0)
    elif pad_mode != "constant":
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    return matrix


def gaussian_blur(img, kernel_size, sigma):
    """torchvision gaussian_blur with reflect padding (the border pixel is not repeated).

    Args:
      img: [H, W, C].
      kernel_size: static odd int, or (x, y) = (width, height) pair of odd ints.
      sigma: scalar (possibly traced), or (x, y) pair.
    Returns:
      [H, W, C].
    """
    kx, ky = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kx % 2 == 0 or ky % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    sx, sy = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    return _separable_filter(img, _gaussian_kernel1d(ky, sy), _gaussian_kernel1d(kx, sx), "reflect")


def resized_crop(img, top, left, height, width, size, antialias=True):
    """torchvision resized_crop, bilinear: img[top:top+height, left:left+width] resized to `size`.

    Args:
      img: [H, W, C].
      top, left, height, width: the crop box in pixels, inside the image; ints, possibly traced (the
        box of a random crop differs per image under vmap, so no slicing with a dynamic shape).
      size: static int (square output) or (out_h, out_w).
      antialias: when downsampling, widen the triangle filter by the scale factor (torchvision's
        default for tensors); no effect when upsampling. False is plain bilinear.
    Returns:
      [out_h, out_w, C], with half-pixel centres (align_corners=False).
    """
    return _crop_resample(img, top, left, height, width, size, "linear", antialias)


def _crop_resample(img, top, left, height, width, size, method, antialias, scale=None, translation=None):
    """Crop-then-resize of the box (top, left, height, width) with jax.image's `method` filter.

    By default the box maps onto the whole output; `scale` and `translation` (per axis, [2]) instead
    place the resized box's pixels (resize-then-crop: output pixel i samples box coordinate
    (i + 0.5 - translation) / scale - 0.5).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    img_h, img_w, channels = img.shape
    box = jnp.stack([top, left, height, width]).astype(jnp.float32)
    if scale is None:
        scale = jnp.array([out_h, out_w], jnp.float32) / box[2:]
        translation = jnp.zeros((2,), jnp.float32)
    resample = functools.partial(
        jax.image.scale_and_translate,
        spatial_dims=(0, 1),
        scale=scale,
        translation=translation - box[:2] * scale,
        method=method,
        antialias=antialias,
    )
    # Resampling the whole image maps the box onto the output, but near the box's edges the filter
    # would also read pixels just outside it, which crop-then-resize never sees: there the filter is
    # renormalised over the pixels of the crop (for plain bilinear, a clamp to the edge pixel).
    # Resampling the box's indicator with the same filter yields exactly that normaliser, so the
    # ratio below IS crop-then-resize, with no border difference.
    rows = (jnp.arange(img_h) >= top) & (jnp.arange(img_h) < top + height)
    cols = (jnp.arange(img_w) >= left) & (jnp.arange(img_w) < left + width)
    inside = (rows[:, None, None] & cols[None, :, None]).astype(img.dtype)  # [H, W, 1]
    return resample(img * inside, (out_h, out_w, channels)) / resample(inside, (out_h, out_w, 1))


def _extent_of(img, extent):
    """(height, width) of the valid top-left region: `extent` [2] (traced int) or the whole array."""
    if extent is None:
        return img.shape[0], img.shape[1]
    extent = jnp.asarray(extent, jnp.int32)
    return extent[0], extent[1]


def center_crop(img, extent, size, crop_fraction=1.0, style="torch"):
    """The evaluation view: the central `crop_fraction` of the image, resized to size x size.

    style 'torch' (torchvision Resize(round(size / crop_fraction)) + CenterCrop(size), as the torch
    methods evaluate: the shorter side resized to size / crop_fraction (256 for 224 at 0.875), the
    longer side truncated as torchvision does, then the centre size x size with torchvision's offsets;
    bilinear, antialiased when shrinking) or 'tf' (SimCLR data_util.center_crop: the central box of
    crop_fraction x the shorter side, rounded with rint, offsets (d + 1) // 2, bicubic resize without
    antialias as tf.image.resize).

    Args:
      img: [H, W, C] float, the image in its top-left extent (the rest is ignored).
      extent: [2] int (height, width) of the valid region, possibly traced; None = the whole array.
      size: static int, the output side.
      crop_fraction: static float in (0, 1]; 1.0 resizes the shorter side to `size`.
      style: 'torch' or 'tf'.
    Returns:
      [size, size, C].
    """
    height, width = _extent_of(img, extent)
    h = jnp.asarray(height, jnp.float32)
    w = jnp.asarray(width, jnp.float32)
    if style == "tf":
        short = jnp.minimum(h, w)
        crop = jnp.round(crop_fraction * short).astype(jnp.int32)  # tf.math.rint: half to even
        top = (jnp.asarray(height, jnp.int32) - crop + 1) // 2
        left = (jnp.asarray(width, jnp.int32) - crop + 1) // 2
        return _crop_resample(img, top, left, crop, crop, size, "cubic", False)
    if style != "torch":
        raise ValueError(f"center_crop style must be 'torch' or 'tf', got {style!r}")
    resize = int(round(size / crop_fraction)) if crop_fraction != 1.0 else size
    # torchvision Resize(int): the shorter side becomes `resize`, the longer int(resize * long / short).
    short, long = jnp.minimum(h, w), jnp.maximum(h, w)
    long_new = jnp.floor(resize * long / short)
    new_h = jnp.where(h <= w, resize, long_new)
    new_w = jnp.where(h <= w, long_new, resize)
    # CenterCrop: offsets int(round((new - size) / 2)).
    top = jnp.round((new_h - size) / 2)
    left = jnp.round((new_w - size) / 2)
    scale = jnp.stack([new_h / h, new_w / w])
    return _crop_resample(
        img, 0, 0, height, width, size, "linear", True, scale=scale, translation=-jnp.stack([top, left])
    )


# ----------------------------------------------------------------------------------------------------
# Deterministic ops, TensorFlow / SimCLR semantics
# ----------------------------------------------------------------------------------------------------


def tf_adjust_brightness(img, delta):
    """tf.image.adjust_brightness: img + delta, NOT clipped."""
    return img + delta


def tf_adjust_contrast(img, factor):
    """tf.image.adjust_contrast: (img - mean_c) * factor + mean_c, per-channel means; NOT clipped."""
    mean = jnp.mean(img, axis=(0, 1), keepdims=True)  # [1, 1, C]
    return (img - mean) * factor + mean


def tf_adjust_saturation(img, factor):
    """tf.image.adjust_saturation: S <- clip(S * factor, 0, 1) in HSV."""
    h, s, v = rgb_to_hsv(img)
    return hsv_to_rgb(h, jnp.clip(s * factor, 0.0, 1.0), v)


def tf_adjust_hue(img, delta):
    """tf.image.adjust_hue: H <- (H + delta) mod 1 in HSV, delta in [-1, 1]; the same as adjust_hue."""
    return adjust_hue(img, delta)


def simclr_gaussian_blur(img, kernel_size, sigma):
    """SimCLR's data_util.gaussian_blur: 2 * int(kernel_size / 2) + 1 taps, ZERO padding ('SAME').

    SimCLR passes kernel_size = height // 10 (23 taps at 224). kernel_size: static int; sigma: scalar,
    possibly traced. Returns [H, W, C].
    """
    kernel = _gaussian_kernel1d(2 * (kernel_size // 2) + 1, sigma)
    return _separable_filter(img, kernel, kernel, "constant")


# ----------------------------------------------------------------------------------------------------
# Deterministic ops, PIL semantics (VISSL's ImgPilRandomPhotometric, used by PIRL)
# ----------------------------------------------------------------------------------------------------


def posterize(img, bits):
    """PIL ImageOps.posterize on the uint8 values: keep the top `bits` bits (bits may be traced)."""
    step = 2.0 ** (8 - bits)
    return jnp.floor(jnp.round(img * 255) / step) * step / 255


def sharpness(img, factor):
    """PIL ImageEnhance.Sharpness: smooth + factor * (img - smooth), with `smooth` the SMOOTH filter
    (3x3 taps, centre 5, others 1, / 13; border pixels kept): 0 blurs, 1 is the identity, 2 sharpens."""
    h, w = img.shape[:2]
    taps = ((1, 1, 1), (1, 5, 1), (1, 1, 1))
    inner = sum(taps[i][j] * img[i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3)) / 13
    smooth = img.at[1:-1, 1:-1].set(inner)
    return jnp.clip(smooth + factor * (img - smooth), 0.0, 1.0)


def autocontrast(img):
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 1]."""
    lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))  # [C]
    return jnp.where(hi > lo, (img - lo) / jnp.where(hi > lo, hi - lo, 1.0), img)


# ----------------------------------------------------------------------------------------------------
# Random ops: fn(key, img, ...) on one image
# ----------------------------------------------------------------------------------------------------


def _with_probability(key, p, augmented, img):
    """augmented with probability p, else img.

    A select rather than lax.cond: under vmap a cond becomes a select of both branches anyway.
    """
    return jnp.where(jax.random.uniform(key) < p, augmented, img)


def random_resized_crop_box(key, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """torchvision RandomResizedCrop.get_params for an image of height x width pixels.

    Each try draws an area fraction uniform in `scale` and an aspect ratio (w / h) log-uniform in
    `ratio`; the first try whose box fits the image wins, with its offset uniform over the positions
    that fit. If none of the `tries` fits, the fallback is the central crop with the aspect ratio
    clamped into `ratio`. The tries are drawn all at once and the first valid one is selected.

    height, width: static ints, or traced int scalars (the valid extent of an image on a larger
    canvas: the box then lies in its top-left height x width region).
    Returns:
      (top, left, box_h, box_w): int32 scalars.
    """
    # One draw for everything (a single threefry call keeps the vmapped step quick to compile):
    # tries area fractions, tries log aspect ratios, then the two offsets as fractions in [0, 1).
    u = jax.random.uniform(key, (2 * tries + 2,))
    target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:tries])
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[tries : 2 * tries]
    aspect = jnp.exp(log_ratio)
    # jnp.round rounds half to even, like Python's round in torchvision.
    w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)  # [tries]
    h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)  # [tries]
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)  # index of the first True (0 when there is none)

    if isinstance(height, int) and isinstance(width, int):  # static sizes: plain Python
        if width / height < min(ratio):
            fallback_w, fallback_h = width, int(round(width / min(ratio)))
        elif width / height > max(ratio):
            fallback_w, fallback_h = int(round(height * max(ratio))), height
        else:
            fallback_w, fallback_h = width, height
    else:
        height, width = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
        in_ratio = width.astype(jnp.float32) / height.astype(jnp.float32)
        narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
        fallback_w = jnp.where(wide, jnp.round(height * max(ratio)).astype(jnp.int32), width)
        fallback_h = jnp.where(narrow, jnp.round(width / min(ratio)).astype(jnp.int32), height)

    found = jnp.any(fits)
    box_h = jnp.where(found, h[first], fallback_h)
    box_w = jnp.where(found, w[first], fallback_w)

    def uniform_offset(fraction, n):  # uniform integer in {0, ..., n - 1}
        return jnp.minimum(jnp.floor(fraction * n).astype(jnp.int32), n - 1)

    top = jnp.where(found, uniform_offset(u[-2], height - box_h + 1), (height - fallback_h) // 2)
    left = jnp.where(found, uniform_offset(u[-1], width - box_w + 1), (width - fallback_w) // 2)
    return top, left, box_h, box_w


def random_resized_crop(key, img, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True, extent=None):
    """torchvision RandomResizedCrop (bilinear): a random box (see random_resized_crop_box) resized to
    size x size (static int). [H, W, C] -> [size, size, C]. Exactly crop-then-resize (see resized_crop).

    extent: [2] int (height, width), possibly traced: the image lies in the top-left extent of the
    array (the rest is padding) and the box is sampled inside it, as torchvision samples it in the
    decoded image; None = the whole array.
    """
    height, width = _extent_of(img, extent)
    top, left, box_h, box_w = random_resized_crop_box(key, height, width, scale, ratio)
    return resized_crop(img, top, left, box_h, box_w, size, antialias)


def tf_random_crop_box(
    key, height, width, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3), min_object_covered=0.1, attempts=100
):
    """tf.image.sample_distorted_bounding_box with the whole image as the object box, as SimCLR's
    data_util.distorted_bounding_box_crop calls it (bounding box [0, 0, 1, 1]).

    TensorFlow's sampler, per attempt: an aspect ratio (w / h) UNIFORM in `ratio`; the heights of
    the smallest and largest allowed areas, h_min = rint(sqrt(area[0] H W / r)) and h_max =
    rint(sqrt(area[1] H W / r)), with h_max lowered until rint(h_max r) <= W and capped at H; a
    height uniform over the integers [h_min, h_max] and w = rint(h r), nudged by one row when
    rounding leaves the area outside the range; the attempt fails when the box is still outside
    the area range or the image, or covers less than `min_object_covered` of the image. The first
    success wins; its offsets are uniform in [0, H - h) and [0, W - w) (TensorFlow never puts a
    smaller box at the last position). After `attempts` failures the box is the whole image.
    All in float32 as TensorFlow computes it (rint = round half to even).

    height, width: ints, static or traced. Returns (top, left, box_h, box_w): int32 scalars.
    """
    u = jax.random.uniform(key, (2 * attempts + 2,))
    height, width = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
    hf, wf = height.astype(jnp.float32), width.astype(jnp.float32)
    min_area = area[0] * wf * hf
    max_area = area[1] * wf * hf
    r = ratio[0] + (ratio[1] - ratio[0]) * u[:attempts]  # [attempts]

    def rint(x):
        return jnp.round(x).astype(jnp.int32)

    h_lo = rint(jnp.sqrt(min_area / r))
    h_hi = rint(jnp.sqrt(max_area / r))
    # The largest h_hi with rint(h_hi r) <= W, when the largest area is too wide for the image.
    h_fit = jnp.floor((wf + 0.5 - 1e-7) / r).astype(jnp.int32)
    h_fit = jnp.where(rint(h_fit * r) > width, h_fit - 1, h_fit)
    h_hi = jnp.where(rint(h_hi * r) > width, h_fit, h_hi)
    h_hi = jnp.minimum(h_hi, height)
    h_lo = jnp.minimum(h_lo, h_hi)
    h = h_lo + jnp.floor(u[attempts : 2 * attempts] * (h_hi - h_lo + 1)).astype(jnp.int32)
    h = jnp.minimum(h, h_hi)  # u < 1, so only a float32 edge case reaches h_hi + 1
    w = rint(h * r)
    box_area = (w * h).astype(jnp.float32)
    h = jnp.where(box_area < min_area, h + 1, h)  # a slightly bigger box first
    w = rint(h * r)
    box_area = (w * h).astype(jnp.float32)
    h = jnp.where(box_area > max_area, h - 1, h)  # then a slightly smaller one
    w = rint(h * r)
    box_area = (w * h).astype(jnp.float32)
    ok = (box_area >= min_area) & (box_area <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
    ok &= (w * h >= 1) & (box_area / (wf * hf) >= min_object_covered)  # overlap with the image box
    first = jnp.argmax(ok)
    found = jnp.any(ok)
    box_h = jnp.where(found, h[first], height)
    box_w = jnp.where(found, w[first], width)

    def offset(fraction, n):  # TF's Uniform(n): an integer in [0, n), 0 when n == 0
        return jnp.clip(jnp.floor(fraction * n).astype(jnp.int32), 0, jnp.maximum(n - 1, 0))

    top = offset(u[-2], height - box_h)
    left = offset(u[-1], width - box_w)
    return top, left, box_h, box_w


def tf_random_crop(
    key, img, size, extent=None, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3), min_object_covered=0.1, attempts=100
):
    """SimCLR's random crop (data_util.crop_and_resize): a box from tf_random_crop_box, cropped and
    resized to size x size with tf.image.resize's BICUBIC (Keys a = -0.5, half-pixel centres, no
    antialias, taps outside the box dropped and the weights renormalised). Not clipped: SimCLR clips
    at the end of its view recipe. TensorFlow reads its cubic weights from a 1024-entry table; the
    exact weights here differ from them by less than 1e-3 of a neighbouring pixel difference.

    SimCLR passes ratio (3/4 r, 4/3 r) for an output of aspect r, i.e. (3/4, 4/3) for square crops.
    extent: [2] int (height, width) of the image in the top-left of the array, possibly traced;
    None = the whole array. [H, W, C] -> [size, size, C].
    """
    height, width = _extent_of(img, extent)
    top, left, box_h, box_w = tf_random_crop_box(key, height, width, area, ratio, min_object_covered, attempts)
    return _crop_resample(img, top, left, box_h, box_w, size, "cubic", False)


def random_flip(key, img, p=0.5):
    """RandomHorizontalFlip: hflip with probability p."""
    return _with_probability(key, p, hflip(img), img)


def random_grayscale(key, img, p):
    """RandomGrayscale: with probability p, the grayscale image repeated to 3 channels."""
    return _with_probability(key, p, jnp.repeat(rgb_to_grayscale(img), 3, axis=-1), img)


def random_solarize(key, img, p, threshold=0.5):
    """RandomSolarize: solarize(img, threshold) with probability p."""
    return _with_probability(key, p, solarize(img, threshold), img)


def random_pil_photometric(key, img, p):
    """VISSL ImgPilRandomPhotometric: with probability p, ALL of posterize (4-8 bits), sharpness
    (factor ~ U[0.1, 1.9]), solarize (integer threshold in [0, 256] on the uint8 scale) and
    autocontrast, in that order. PIL works on uint8 images; these are the float analogues."""
    k_apply, k_bits, k_sharp, k_solar = jax.random.split(key, 4)
    x = posterize(img, jax.random.randint(k_bits, (), 4, 9))
    x = sharpness(x, jax.random.uniform(k_sharp, (), minval=0.1, maxval=1.9))
    x = solarize(x, jax.random.randint(k_solar, (), 0, 257) / 255)
    x = autocontrast(x)
    return jnp.where(jax.random.uniform(k_apply) < p, x, img)


def random_gaussian_blur(key, img, p, sigma=(0.1, 2.0), kernel_size=None):
    """torchvision GaussianBlur (reflect padding), applied with probability p.

    sigma is drawn uniform in the range, the same along x and y. kernel_size (static odd int) defaults
    to SimCLR's choice, kernel_size = height // 10 with 2 * int(k / 2) + 1 taps, i.e. about 10% of
    the side rounded to odd: 23 taps at 224 (BYOL's and DINO's 23), 9 at 96, 3 at 32 or 28.
    """
    k_apply, k_sigma = jax.random.split(key)
    if kernel_size is None:
        kernel_size = 2 * (img.shape[0] // 20) + 1
    s = jax.random.uniform(k_sigma, minval=sigma[0], maxval=sigma[1])
    return _with_probability(k_apply, p, gaussian_blur(img, kernel_size, s), img)


def _jitter_range(value, center):
    """torchvision ColorJitter's parameter: v -> [max(0, center - v), center + v] for brightness,
    contrast and saturation (center 1), [-v, v] for hue (center 0); an explicit (lo, hi) passes
    through. None when the range is the identity, so the op is skipped (as torchvision does)."""
    lo, hi = value if isinstance(value, (tuple, list)) else (center - value, center + value)
    if center == 1.0:
        lo = max(0.0, lo)
    return None if lo == hi == center else (lo, hi)


def _jitter_in_random_order(key, img, ranges, apply_op, clip):
    """The four jitter ops in a random order, each with a factor f_i ~ U(ranges[i]) (None: skipped).

    apply_op(img, op, factor) computes the ONE op of traced index `op` (0-3: brightness, contrast,
    saturation, hue) with its traced factor, so each image pays for four ops, one per step of its
    own order. (Under vmap a lax.switch over the ops would evaluate all four at every step and
    select: 16 ops per image.) Clip to [0, 1] after every op if `clip`.
    """
    n = len(ranges)
    # One draw: n factors as fractions of their ranges, then n sort keys. The argsort of iid uniforms
    # is a uniformly random permutation.
    u = jax.random.uniform(key, (2 * n,))
    neutral = (1.0, 1.0, 1.0, 0.0)  # a value for a skipped op's unused factor
    factors = jnp.stack([neutral[i] if r is None else r[0] + (r[1] - r[0]) * u[i] for i, r in enumerate(ranges)])
    skipped = jnp.array([r is None for r in ranges])
    order = jnp.argsort(u[n:])

    def step(img, op):
        out = apply_op(img, op, factors[op])
        img = jnp.where(skipped[op], img, out) if any(r is None for r in ranges) else out
        return (jnp.clip(img, 0.0, 1.0) if clip else img), None

    # A scan, not an unrolled loop: each step's image is materialised once. Unrolled, XLA fuses the
    # steps' elementwise chains into their many consumers (HSV, means, selects) and recomputes them
    # there: 2.8 GFLOP for 32 SimCLR jitters at 224 px instead of 0.5.
    return jax.lax.scan(step, img, order)[0]


def _torchvision_jitter_op(img, op, factor, with_hue=True):
    """torchvision's adjust_brightness / _contrast / _saturation / _hue, op 0-3, computed once: the
    first three are one blend, clamp(f img + (1 - f) other), with other = 0, the gray mean or the
    gray image."""
    gray = rgb_to_grayscale(img)  # [H, W, 1]
    other = jnp.where(op == 0, 0.0, jnp.where(op == 1, jnp.mean(gray), gray))
    blended = _blend(img, other, factor)
    return jnp.where(op == 3, adjust_hue(img, factor), blended) if with_hue else blended


def _simclr_jitter_op(img, op, factor, with_hsv=True):
    """SimCLR v2's brightness (x f) / tf_adjust_contrast / tf_adjust_saturation / tf_adjust_hue, op
    0-3, computed once: the first two are (x - m) f + m with m = 0 or the per-channel means; the
    last two one trip through HSV, with S scaled (op 2) or H rotated (op 3)."""
    mean = jnp.where(op == 1, jnp.mean(img, axis=(0, 1), keepdims=True), 0.0)  # [1, 1, C]
    linear = (img - mean) * factor + mean
    if not with_hsv:
        return linear
    h, s, v = rgb_to_hsv(img)
    h = jnp.where(op == 3, wrap_hue(h + factor), h)
    s = jnp.where(op == 2, jnp.clip(s * factor, 0.0, 1.0), s)
    return jnp.where(op >= 2, hsv_to_rgb(h, s, v), linear)


def color_jitter(key, img, brightness, contrast, saturation, hue):
    """torchvision ColorJitter: the four adjust_* ops in a random order, each with a random factor.

    brightness, contrast, saturation: float b -> factor ~ U[max(0, 1 - b), 1 + b], or a (lo, hi) pair;
    hue: float h in [0, 0.5] -> hue_factor ~ U[-h, h], or a pair. 0 skips the op. Static numbers.
    """
    ranges = [_jitter_range(v, 1.0) for v in (brightness, contrast, saturation)]
    ranges.append(_jitter_range(hue, 0.0))
    apply_op = functools.partial(_torchvision_jitter_op, with_hue=ranges[3] is not None)
    return _jitter_in_random_order(key, img, ranges, apply_op, clip=False)


def random_color_jitter(key, img, brightness, contrast, saturation, hue, p):
    """RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)."""
    k_apply, k_jitter = jax.random.split(key)
    jittered = color_jitter(k_jitter, img, brightness, contrast, saturation, hue)
    return _with_probability(k_apply, p, jittered, img)


def simclr_color_jitter(key, img, strength, p=0.8):
    """SimCLR v2's colour jitter (data_util.color_jitter_rand, impl 'simclrv2'), with probability p.

    Strength s gives brightness, contrast, saturation, hue = 0.8s, 0.8s, 0.8s, 0.2s: brightness is
    MULTIPLICATIVE, img * U[max(0, 1 - 0.8s), 1 + 0.8s]; then tf_adjust_contrast with U[1 - 0.8s,
    1 + 0.8s], tf_adjust_saturation likewise and tf_adjust_hue with U[-0.2s, 0.2s]; random order,
    clipped to [0, 1] after every op. (TF rejects a negative lower bound, i.e. s > 1.25; here it is
    clamped to 0.) SimCLR's grayscale (p = 0.2) is separate: random_grayscale.
    """
    b = c = s = 0.8 * strength
    ranges = [_jitter_range(v, 1.0) for v in (b, c, s)]
    ranges.append(_jitter_range(0.2 * strength, 0.0))
    apply_op = functools.partial(_simclr_jitter_op, with_hsv=ranges[2] is not None or ranges[3] is not None)
    k_apply, k_jitter = jax.random.split(key)
    jittered = _jitter_in_random_order(k_jitter, img, ranges, apply_op, clip=True)
    return _with_probability(k_apply, p, jittered, img)


# ----------------------------------------------------------------------------------------------------
# Batches and multi-crop
# ----------------------------------------------------------------------------------------------------


def apply_per_image(fn: Callable, key, images, *args, extents=None):
    """vmap fn(key, img, *args) over [B, ...] images, with one key per image split from `key`.

    args are shared by all images and passed as they are (static ints and tuples stay static).
    extents: None, or int [B, 2], each image's valid (height, width) (the batch's `extent`), passed
    to fn as `extent=` (so fn hands it to its random crop). Returns fn's outputs stacked along a
    leading B axis.
    """
    keys = jax.random.split(key, images.shape[0])
    if extents is None:
        return jax.vmap(lambda k, img: fn(k, img, *args))(keys, images)
    return jax.vmap(lambda k, img, e: fn(k, img, *args, extent=e))(keys, images, jnp.asarray(extents, jnp.int32))


def _recipe(view_fn, img, crop):
    """A hashable fingerprint of the program view_fn(key, img, crop) traces to: its jaxpr's text and
    its constants. Two crops with the same fingerprint get the same recipe (the crop index made no
    difference), so they can share one trace."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    closed = jax.make_jaxpr(lambda k, x: view_fn(k, x, crop))(key, jax.ShapeDtypeStruct(img.shape, img.dtype))

    def fingerprint(const):  # a value of the enclosing trace is told apart by identity, an array by value
        if isinstance(const, jax.core.Tracer):
            return ("traced", id(const))
        const = np.asarray(const)
        return const.shape, str(const.dtype), const.tobytes()

    return str(closed.jaxpr), tuple(map(fingerprint, closed.consts))


def _views_of_crops(view_fn, key, crops, first):
    """view_fn(key_c_b, crops[c, b], first + c) for every crop c and image b: [count, B, S, S, 3].

    The key of crop c is fold_in(key, first + c), split over the images (as apply_per_image does).
    The crop index is a static Python int, so that a method can give crops different recipes; crops
    whose recipes are the same program (DINO's local crops, all of SwAV's) are vmapped together and
    traced and compiled once, not once per crop: the same values, a fraction of the compile time.
    """
    count, batch = crops.shape[:2]
    members = {}  # recipe -> the crops (indices within this group) that follow it
    for c in range(count):
        members.setdefault(_recipe(view_fn, crops[c, 0], first + c), []).append(c)
    out = [None] * count
    for same in members.values():
        keys = jnp.stack([jax.random.split(jax.random.fold_in(key, first + c), batch) for c in same])  # [n, B]
        crop = first + same[0]
        views = jax.vmap(jax.vmap(lambda k, img: view_fn(k, img, crop)))(keys, crops[jnp.asarray(same)])
        for i, c in enumerate(same):
            out[c] = views[i]
    return jnp.stack(out)


def multi_crop(
    key,
    images,
    sizes: Sequence[int],
    scales: Sequence[tuple[float, float]],
    counts: Sequence[int],
    view_fn: Callable | None = None,
    ratio=(3 / 4, 4 / 3),
    antialias=True,
    extents=None,
):
    """Multi-crop views (SwAV, DINO): groups of random resized crops with different output sizes.

    Crop c of the batch is random_resized_crop with its group's size and scale, then
    view_fn(key, img, c), each image with its own key. The crop index c (a static int counting over
    all groups: 0 and 1 are DINO's global crops, 2.. its local crops) lets a method give crops
    different recipes, e.g. DINO's blur p=1 on crop 0 but p=0.1 and solarize on crop 1.

    Args:
      key: one key for the whole batch.
      images: [B, H, W, 3] float in [0, 1].
      sizes: output side of each group, e.g. (224, 96).
      scales: area-fraction range of each group, e.g. ((0.4, 1.0), (0.05, 0.4)).
      counts: number of crops in each group, e.g. (2, 6).
      view_fn: view_fn(key, img, crop) -> img on one [size, size, 3] crop (flip, colour, blur...);
        None keeps the crops as they are.
      ratio, antialias: as in random_resized_crop, shared by all groups.
      extents: None, or int [B, 2]: each image's valid (height, width) in the top-left of its array
        (the batch's `extent`); every crop's box is sampled inside it. None = the whole array.
    Returns:
      A list with one crop-major stack [count, B, size, size, 3] per group.
    """
    k_crops, k_views = jax.random.split(key)
    stacks, first = [], 0  # first: global index of the group's first crop
    for group, (size, scale, count) in enumerate(zip(sizes, scales, counts, strict=True)):
        # The crops of a group differ only in their keys: one vmap over crops (and one over images
        # inside apply_per_image) traces the resampling once per group, not once per crop.
        keys = jax.random.split(jax.random.fold_in(k_crops, group), count)
        crops = jax.vmap(  # [count, B, size, size, 3]
            lambda k: apply_per_image(
                random_resized_crop, k, images, size, tuple(scale), ratio, antialias, extents=extents
            )
        )(keys)
        if view_fn is not None:
            crops = _views_of_crops(view_fn, k_views, crops, first)
        stacks.append(crops)
        first += count
    return stacks
