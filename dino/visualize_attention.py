"""The picture DINO is known for: the class token's self-attention in the last block, per head.

Loads the latest checkpoint of a DINO run with a ViT body (the workdir's config.json says which), runs
the teacher's body (the one evaluation uses) on the first images of the evaluation split, and writes a
PNG with one row per image: the image, then the attention of the class token to every patch, one
panel per head (paper Fig. 1 and 3; official visualize_attention.py, without its thresholding).

    python dino/visualize_attention.py --workdir runs/dino --output runs/dino/attention.png
"""

import os
import pathlib
import sys

if __package__ in (None, ""):  # run as a script: put the monorepo root (marked by WORKSPACE) on sys.path
    _root = pathlib.Path(__file__).resolve().parent
    while not (_root / "WORKSPACE").exists():
        _root = _root.parent
    sys.path.insert(0, str(_root))

import numpy as np

from common import augment, data, evaluate, loop


def attention_maps(body, images, mean, std):
    """uint8 images [B, H, W, 3], H and W multiples of the patch size -> [B, heads, H / p, W / p]:
    each head's attention weights from the class token to the patches (they sum, with the class
    token's attention to itself, to 1)."""
    x = augment.normalize(augment.to_float(images), mean, std)
    attention = body.get_last_selfattention(x)  # [B, heads, 1 + N, 1 + N]
    b, heads = attention.shape[:2]
    p = body.patch_size
    return attention[:, :, 0, 1:].reshape(b, heads, images.shape[1] // p, images.shape[2] // p)


def load_body(workdir):
    """(config, teacher body in eval mode, step) from the latest checkpoint in workdir, rebuilt by the
    train.py that wrote the run (results.json's module, so a forked folder uses its own code)."""
    config, method, _ = evaluate.read_run(workdir)
    if not config.model.name.startswith("vit"):
        raise ValueError(f"{workdir} is a {method} run of {config.model.name}: attention maps need a ViT body.")
    config, method, body, step = evaluate.load_body(workdir, steps_per_epoch=1)  # shapes do not depend on it
    return config, body, step


def main(workdir, output, num_images=4):
    """Writes the PNG to `output`; returns the attention maps [num_images, heads, h, w]."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    config, body, step = load_body(workdir)
    images = data.load(config.data, config.data.eval_split).get(np.arange(num_images))["image"]
    # Central crop to a multiple of the patch size, as the official script.
    p = body.patch_size
    h, w = images.shape[1] // p * p, images.shape[2] // p * p
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    images = images[:, top : top + h, left : left + w]
    maps = np.asarray(attention_maps(body, images, tuple(config.views.mean), tuple(config.views.std)))

    heads = maps.shape[1]
    fig, axes = plt.subplots(num_images, 1 + heads, figsize=(1.6 * (1 + heads), 1.6 * num_images), squeeze=False)
    for i in range(num_images):
        axes[i, 0].imshow(images[i])
        for j in range(heads):
            # Each patch's weight shown over its p x p pixels (nearest upsampling, as the official script).
            axes[i, 1 + j].imshow(np.kron(maps[i, j], np.ones((p, p))), cmap="inferno")
            if i == 0:
                axes[i, 1 + j].set_title(f"head {j}", fontsize=8)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.suptitle(f"{config.model.name}/{p}, step {step}: class-token attention, last block", fontsize=9)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    print(f"Wrote {output}")
    return maps


if __name__ == "__main__":
    from absl import app, flags

    _WORKDIR = flags.DEFINE_string(
        "workdir", f"runs/{pathlib.Path(__file__).resolve().parent.name}", "Workdir of a DINO run with a ViT body."
    )
    _OUTPUT = flags.DEFINE_string("output", "", "PNG to write ('' = <workdir>/attention.png).")
    _NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Images of the evaluation split to show.")

    def _run(argv):
        if not (flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1):
            loop.quiet()  # library INFO chatter hidden, as in training; --verbosity=1 shows it
        main(_WORKDIR.value, _OUTPUT.value or os.path.join(_WORKDIR.value, "attention.png"), _NUM_IMAGES.value)

    app.run(_run)
