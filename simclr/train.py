"""SimCLR: contrastive learning of visual representations from two augmented views of each image.

Each image in a batch of N is augmented twice; a body f and a projection head g map both views to
z = g(f(x)). The two views of one image are a positive pair, and the other 2(N - 1) views in the global
batch are its negatives. After training, g is thrown away and f(x) is the representation.

    l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T) ),  sim = cosine
    L = mean_i l(i, i+N) + mean_i l(i+N, i)            (the official code sums the two directions)

Paper: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Checked against google-research/simclr (tf2/objective.py).

    python simclr/train.py --config simclr/config.py --workdir runs/simclr

Augmentations follow the official TensorFlow code: TensorFlow's crop sampler (sample_distorted_bounding_box,
bicubic resize), multiplicative brightness, per-channel contrast, HSV saturation, colour ops in random
order with clipping after each, zero-padded blur. The README's
benchmark table gives what the default preset reaches, and on which machine.
"""

import functools
import pathlib
import sys

if __package__ in (None, ""):  # run as a script: put the monorepo root (marked by WORKSPACE) on sys.path
    _root = pathlib.Path(__file__).resolve().parent
    while not (_root / "WORKSPACE").exists():
        _root = _root.parent
    sys.path.insert(0, str(_root))

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common import augment, checkpoint, loop, models

# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class ProjectionHead(nnx.Module):
    """g(.): Linear-BN-ReLU-Linear-BN, as the official code's non-linear head. The linear layers have no
    bias because the batch norm after each supplies the shift; the output batch norm has no shift.
    As the official Keras layers: kernels ~ N(0, 0.01^2); batch norm with decay bn_momentum (0.9),
    epsilon 1e-5 and the biased running variance (`unbiased=False`). Matmuls in `dtype` (float32
    parameters); the output z is float32, for the loss."""

    def __init__(self, in_dim, hidden_dim, out_dim, bn_momentum, rngs, dtype=None):
        bn = functools.partial(models.BatchNorm, unbiased=False, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)
        init = jax.nn.initializers.normal(0.01)
        linear = functools.partial(nnx.Linear, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
        self.fc1 = linear(in_dim, hidden_dim)
        self.bn1 = bn(hidden_dim)
        self.fc2 = linear(hidden_dim, out_dim)
        self.bn2 = bn(out_dim, use_bias=False)

    def __call__(self, h):
        return models.to_f32(self.bn2(self.fc2(jax.nn.relu(self.bn1(self.fc1(h))))))


class SimCLR(nnx.Module):
    def __init__(self, config, rngs):
        # The official TF ResNet (resnet.py): 'SAME' stem max-pool, biased BN running variance, and the
        # last BN gamma of every residual block initialised to 0 (each block starts as the identity).
        self.body = models.create_body(
            config.model.name,
            stem=config.model.stem,
            img_size=config.views.crop_size,
            bn_momentum=config.model.bn_momentum,
            padding="tf",
            bn_unbiased=False,
            zero_init_residual=config.model.zero_init_residual,
            dtype=config.model.get("dtype"),
            rngs=rngs,
        )
        m = config.model
        self.head = ProjectionHead(
            self.body.num_features,
            m.proj_hidden_dim,
            m.proj_dim,
            m.bn_momentum,
            rngs,
            models.compute_dtype(config.model),
        )

    def __call__(self, x):
        return self.head(self.body(x))


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def make_view(key, image, cfg, extent=None):
    """One SimCLR view of one float image [H, W, 3] in [0, 1] (Appendix A)."""
    k_crop, k_flip, k_color, k_gray, k_blur, k_sigma = jax.random.split(key, 6)
    # TensorFlow's sample_distorted_bounding_box (min_object_covered 0.1, 100 attempts) + bicubic resize.
    x = augment.tf_random_crop(k_crop, image, cfg.crop_size, area=cfg.crop_scale, ratio=cfg.crop_ratio, extent=extent)
    x = augment.random_flip(k_flip, x, p=cfg.flip_p)
    x = augment.simclr_color_jitter(k_color, x, cfg.color_strength, p=cfg.color_p)
    x = jnp.clip(augment.random_grayscale(k_gray, x, p=cfg.gray_p), 0.0, 1.0)  # official: clip, then blur
    if cfg.blur_p > 0:  # kernel 10% of the side, sigma ~ U(0.1, 2.0), zero padding as the official code
        sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
        blurred = augment.simclr_gaussian_blur(x, cfg.crop_size // 10, sigma)
        x = jnp.where(jax.random.uniform(k_blur) < cfg.blur_p, blurred, x)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] -> two stacks of views [B, S, S, 3], one key per image and view."""
    images = augment.to_float(images)
    k1, k2 = jax.random.split(key)
    view = functools.partial(make_view, cfg=cfg)
    return tuple(augment.apply_per_image(view, k, images, extents=extents) for k in (k1, k2))


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def l2_normalize(x, axis=-1):
    # tf.math.l2_normalize: x / sqrt(max(sum x^2, 1e-12))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


def nt_xent_loss(z1, z2, temperature):
    """NT-Xent over the global batch. z1, z2: [N, D] raw projections of view 1 and view 2 -> scalar.

    As the official code: for view-1 anchors the logits are [h1 h2^T | h1 h1^T] / T, with each anchor's
    own similarity masked by subtracting 1e9; the positive is column i of the first block. The loss is
    mean over anchors of view 1 PLUS mean over anchors of view 2 (twice the "average over 2N anchors").
    """
    h1, h2 = l2_normalize(z1), l2_normalize(z2)
    n = h1.shape[0]
    mask = 1e9 * jnp.eye(n, dtype=h1.dtype)
    logits_ab = h1 @ h2.T / temperature
    logits_aa = h1 @ h1.T / temperature - mask
    logits_ba = h2 @ h1.T / temperature
    logits_bb = h2 @ h2.T / temperature - mask
    labels = jnp.arange(n)
    loss_a = optax.softmax_cross_entropy_with_integer_labels(jnp.concatenate([logits_ab, logits_aa], 1), labels)
    loss_b = optax.softmax_cross_entropy_with_integer_labels(jnp.concatenate([logits_ba, logits_bb], 1), labels)
    return jnp.mean(loss_a) + jnp.mean(loss_b)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, batch_size, steps_per_epoch):
    """Linear warmup to the scaled rate, then cosine decay to 0 (Sec. B.1)."""
    if cfg.lr_scaling == "linear":
        peak = cfg.lr * batch_size / 256
    else:  # 'sqrt': 0.075 * sqrt(B), better for small batches (Appendix B.1)
        peak = cfg.lr * batch_size**0.5
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, int(cfg.epochs * steps_per_epoch))  # a run of one step still has a schedule
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)


def lars_mask(params, excluded):
    """True for the parameters LARS decays and adapts: as the official exclusion by name, False for
    every parameter whose path names one of `excluded` (batch-norm layers are named bn*)."""
    names = lambda path: [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(e in n for n in names(path) for e in excluded), params
    )


def make_optimizer(cfg, schedule):
    """LARS as the official lars_optimizer.py with classic momentum: v <- m v + lr * trust * (g + wd w),
    w <- w - v, trust = eta |w| / |g + wd w| (1 where a norm is 0). optax.lars is that chain (the rate
    enters before the momentum trace). Batch-norm parameters and biases skip both decay and trust ratio,
    as the official exclude_from_weight_decay=['batch_normalization', 'bias']."""
    mask = functools.partial(lars_mask, excluded=("bn", "bias"))
    return optax.lars(
        schedule,
        weight_decay=cfg.weight_decay,
        weight_decay_mask=mask,
        trust_coefficient=cfg.trust_coefficient,
        trust_ratio_mask=mask,
        momentum=cfg.momentum,
    )


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the parts {model, optimizer} split into a static graph and a
    pytree of arrays, and step_fn(state, batch, key) -> (state, metrics), pure, for jax.jit.
    """
    model = SimCLR(config, nnx.Rngs(config.seed))
    schedule = learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split({"model": model, "optimizer": optimizer})
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def update(parts, x1, x2, temperature, schedule):
    """The step after the views: loss, gradients and the LARS update of parts {model, optimizer}, in
    place. x1, x2: [B, S, S, 3] normalised views (sampled by make_views, or a reference case's)."""
    model, optimizer = parts["model"], parts["optimizer"]

    def loss_fn(model):
        # Both views in one forward pass: batch norm statistics over all 2N views, as the official code.
        z1, z2 = jnp.split(model(jnp.concatenate([x1, x2])), 2)
        return nt_xent_loss(z1, z2, temperature)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    return {"loss": loss, "lr": lr, "finite": checkpoint.all_finite(loss, nnx.state(model, nnx.Param))}


def train_step(graphdef, config, schedule, state, batch, key):
    """One step on the global batch: make_views, then update; jitted with `graphdef, config, schedule`
    bound."""
    parts = nnx.merge(graphdef, state)
    x1, x2 = make_views(key, batch["image"], config.views, batch.get("extent"))
    metrics = update(parts, x1, x2, config.method.temperature, schedule)
    return nnx.state(parts), metrics


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses, as a fresh module in eval mode (a copy: switching
    it to eval leaves the training graph untouched)."""
    body = nnx.merge(graphdef, state)["model"].body
    body.eval()
    return body


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    if config.data.batch_size < 2:
        problems.append(f"data.batch_size={config.data.batch_size}: NT-Xent needs at least 2 images")
    if config.method.temperature <= 0:
        problems.append(f"method.temperature={config.method.temperature} must be > 0")
    if config.optim.lr_scaling not in ("linear", "sqrt"):
        problems.append(f"optim.lr_scaling={config.optim.lr_scaling!r} must be 'linear' or 'sqrt'")
    if config.optim.epochs <= 0 or config.optim.warmup_epochs < 0:
        problems.append("optim.epochs must be > 0 and optim.warmup_epochs >= 0")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    return loop.train(config, workdir, create_state, get_body, epochs=config.optim.epochs)


if __name__ == "__main__":
    loop.cli(main)
