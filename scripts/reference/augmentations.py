"""Reference runner for the augmentation cases (tests/reference/aug_*.npz): common/augment.py's ops on
the case's image against the torchvision / TensorFlow / SimCLR outputs.

The input is always image_uint8 / 255 in float32, HWC (the cases' README). Each output array maps to
one op with the factors of the case's `hyper`; the tolerance is the array's own entry in the case's
`tolerance`, else its category ('hue', 'resized_crop'), else 'default'.
"""

import jax
import numpy as np

from common import augment as A


def _tolerance(entry, name, category):
    tol = entry["tolerance"]
    t = tol.get(name) or (tol.get(category) if category else None) or tol["default"]
    return t["rtol"], t["atol"]


def _ops(hyper, case):
    """{array name: (tolerance category, op on the float image)} for the arrays of `case`."""
    if case == "aug_tv_small":
        crop = hyper["crop_up"]
        return {
            "tv_adjust_brightness": (None, lambda x: A.adjust_brightness(x, hyper["brightness_factor"])),
            "tv_adjust_contrast": (None, lambda x: A.adjust_contrast(x, hyper["contrast_factor"])),
            "tv_adjust_saturation": (None, lambda x: A.adjust_saturation(x, hyper["saturation_factor"])),
            "tv_adjust_hue_a": ("hue", lambda x: A.adjust_hue(x, hyper["hue_factor_a"])),
            "tv_adjust_hue_b": ("hue", lambda x: A.adjust_hue(x, hyper["hue_factor_b"])),
            "tv_rgb_to_grayscale": (None, A.rgb_to_grayscale),
            "tv_solarize": (None, lambda x: A.solarize(x, hyper["solarize_threshold"])),
            "tv_gaussian_blur": (None, lambda x: A.gaussian_blur(x, hyper["blur_kernel_size"], hyper["blur_sigma"])),
            "tv_hflip": (None, A.hflip),
            "tv_resized_crop_up": (
                "resized_crop",
                lambda x: A.resized_crop(
                    x, crop["top"], crop["left"], crop["height"], crop["width"], tuple(crop["size"])
                ),
            ),
        }
    if case == "aug_tf_small":
        return {
            "tf_adjust_brightness": (None, lambda x: A.tf_adjust_brightness(x, hyper["brightness_delta"])),
            "tf_adjust_contrast": (None, lambda x: A.tf_adjust_contrast(x, hyper["contrast_factor"])),
            "tf_adjust_saturation": (None, lambda x: A.tf_adjust_saturation(x, hyper["saturation_factor"])),
            "tf_adjust_hue_a": ("hue", lambda x: A.tf_adjust_hue(x, hyper["hue_delta_a"])),
            "tf_adjust_hue_b": ("hue", lambda x: A.tf_adjust_hue(x, hyper["hue_delta_b"])),
            "tf_rgb_to_grayscale": (None, A.rgb_to_grayscale),
            "simclr_to_grayscale": (None, lambda x: A.random_grayscale(jax.random.key(0), x, p=1.0)),
            "tf_flip_left_right": (None, A.hflip),
            "simclr_gaussian_blur": (
                None,
                lambda x: A.simclr_gaussian_blur(x, hyper["blur_kernel_size"], hyper["blur_sigma"]),
            ),
        }
    if case == "aug_tv_large_blur":
        return {"tv_gaussian_blur": (None, lambda x: A.gaussian_blur(x, hyper["kernel_size"], hyper["sigma"]))}
    if case == "aug_tf_large_blur":
        return {
            "simclr_gaussian_blur": (None, lambda x: A.simclr_gaussian_blur(x, hyper["kernel_size"], hyper["sigma"]))
        }
    if case == "aug_tv_large_crop":
        c = hyper["crop_down"]
        box = c["top"], c["left"], c["height"], c["width"]
        return {
            name: (None, lambda x, aa=aa: A.resized_crop(x, *box, tuple(c["size"]), aa))
            for name, aa in (("tv_resized_crop_down_aa", True), ("tv_resized_crop_down_noaa", False))
        }
    raise NotImplementedError(f"no augmentation mapping for case {case!r}")


def run(entry, arrays, path):
    x = arrays["image_uint8"].astype(np.float32) / 255
    ops = _ops(entry["hyper"], entry["case"])
    missing = [n for n in entry["arrays"] if n not in ("image", "image_uint8") and n not in ops]
    if missing:
        raise NotImplementedError(f"{path}: arrays without a mapping: {missing}")
    out = []
    for name, (category, op) in ops.items():
        rtol, atol = _tolerance(entry, name, category)
        out.append((name, np.asarray(jax.jit(op)(x)), arrays[name], rtol, atol))
    return out
