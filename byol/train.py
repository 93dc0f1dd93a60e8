"""BYOL: Bootstrap Your Own Latent.

An online network (body f, projector g, predictor q) learns to predict, from one augmented view of an
image, the projection that a target network (body and projector only) gives for another view of the
same image. The target network is not trained by gradients: its weights are an exponential moving
average (EMA) of the online weights, and the stop-gradient on its output plus the online-only
predictor avoid collapse without negative pairs. The loss is symmetrised by swapping the two views.

        l2n(x)   = x / ||x||_2
        loss     = mean_b [ ||l2n(p_1) - l2n(sg(z'_2))||^2 + ||l2n(p_2) - l2n(sg(z'_1))||^2 ]
        xi      <- tau * xi + (1 - tau) * theta        (target weights xi, online weights theta)

where p_v is the online prediction of view v, z'_v the target projection of view v, sg the
stop-gradient, and tau rises from base_ema to 1 along a cosine.

Paper: J.-B. Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020, https://arxiv.org/abs/2006.07733. Checked against deepmind/deepmind-research byol/: the
loss, schedules and EMA, and four whole official steps (`update` on the case's views, with the Haiku
ResNet and a separately drawn target: `python scripts/check_reference.py tests/reference/steps/byol_*`).

    python byol/train.py --config byol/config.py --workdir runs/byol

Augmentations follow the official JAX/TensorFlow-semantics code (byol/utils/augmentations.py): additive
brightness, per-channel contrast, HSV saturation and hue in random order with clipping after each,
zero-padded blur, and the asymmetric recipe (view 1 always blurred, never solarised; view 2 blurred
with p = 0.1, solarised with p = 0.2). The README's benchmark table gives what the default preset
reaches, and on which machine.
"""

import functools
import math
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


class MLP(nnx.Module):
    """The projector g and the predictor q (App. A): Linear-BN-ReLU-Linear, as the official MLP (the
    hidden Linear has a bias, the output Linear none; BN with a scale and a shift, Haiku's biased
    running variance). Matmuls in `dtype` (float32 parameters); the output is float32."""

    def __init__(self, in_dim, hidden_dim, out_dim, bn_momentum, rngs, dtype=None):
        self.fc1 = nnx.Linear(in_dim, hidden_dim, dtype=dtype, rngs=rngs)
        self.bn = models.BatchNorm(hidden_dim, unbiased=False, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)
        self.fc2 = nnx.Linear(hidden_dim, out_dim, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x):  # [B, in_dim] -> [B, out_dim]
        return models.to_f32(self.fc2(jax.nn.relu(self.bn(self.fc1(x)))))


def create_body(model, img_size, rngs):
    """The body f named in the config, as the official Haiku ResNet where the config says so: 'SAME'
    padding on every conv and the max-pool (model.padding='haiku'), the last batch-norm scale of each
    bottleneck at 0 (model.zero_init_residual) and the biased running variance of Haiku's BatchNorm."""
    return models.create_body(
        model.name,
        stem=model.stem,
        img_size=img_size,
        bn_momentum=model.bn_momentum,
        padding=model.padding,
        zero_init_residual=model.zero_init_residual,
        bn_unbiased=False,
        dtype=model.get("dtype"),
        rngs=rngs,
    )


def haiku_init(module, key):
    """Redraws every conv and Linear kernel of `module` as Haiku's default initialiser draws the official
    networks': a normal truncated at 2 sigma, sigma = 1 / sqrt(fan_in). Biases (0) and batch-norm scales
    (1, or 0 for zero_init_residual) are the same in both conventions."""
    kernels = [m.kernel for _, m in nnx.iter_graph(module) if isinstance(m, (nnx.Conv, nnx.Linear))]
    for i, kernel in enumerate(kernels):
        init = jax.nn.initializers.truncated_normal(math.prod(kernel.shape[:-1]) ** -0.5)
        kernel[...] = init(jax.random.fold_in(key, i), kernel.shape, kernel[...].dtype)


class Encoder(nnx.Module):
    """z = g(f(x)): body and projector. The online network's encoder, and the whole target."""

    def __init__(self, body, model, rngs):
        self.body = body
        dims = body.num_features, model.proj_hidden_dim, model.proj_dim
        self.projector = MLP(*dims, model.bn_momentum, rngs, models.compute_dtype(model))

    def __call__(self, x):  # [B, S, S, 3] -> [B, proj_dim]
        return self.projector(self.body(x))


class BYOL(nnx.Module):
    """The online network: p = q(g(f(x))). Only these weights (theta) are trained by gradients."""

    def __init__(self, encoder, model, rngs):
        self.encoder = encoder
        dims = model.proj_dim, model.pred_hidden_dim, model.proj_dim
        self.predictor = MLP(*dims, model.bn_momentum, rngs, models.compute_dtype(model))

    def __call__(self, x):  # [B, S, S, 3] -> [B, proj_dim]
        return self.predictor(self.encoder(x))


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def color_transform(key, image, cfg):
    """BYOL's colour transform on one image [H, W, 3] in [0, 1] (official `color_transform`).

    With probability color_p: brightness + U[-b, b] (additive), contrast x U[1 - c, 1 + c] around the
    per-channel means, saturation x U[1 - s, 1 + s] and hue + U[-h, h] in HSV, in a random order,
    clipped to [0, 1] after each. Then grayscale with probability gray_p. A zero strength skips its op.
    Each step of the order computes its one op (a scan over the order): under vmap a switch over the
    four ops would compute all four at every step, as the official lax.conds do.
    """
    k_apply, k_order, k_factors, k_gray = jax.random.split(key, 4)
    strengths = tuple(cfg.color_jitter)  # b, c, s, h
    u = jax.random.uniform(k_factors, (4,), minval=-1.0, maxval=1.0)  # one draw per op
    delta = jnp.asarray(strengths) * u  # brightness delta, contrast and saturation factor - 1, hue delta
    with_hsv = strengths[2] > 0 or strengths[3] > 0

    def step(x, op):  # op: the traced index (0-3: brightness, contrast, saturation, hue) of this step
        mean = jnp.where(op == 1, jnp.mean(x, axis=(0, 1), keepdims=True), 0.0)  # [1, 1, C]
        out = jnp.where(op == 0, x + delta[0], (x - mean) * (1 + delta[1]) + mean)
        if with_hsv:  # one trip through HSV: S scaled (op 2) or H rotated (op 3), as tf.image
            h, s, v = augment.rgb_to_hsv(x)
            h = jnp.where(op == 3, augment.wrap_hue(h + delta[3]), h)
            s = jnp.where(op == 2, jnp.clip(s * (1 + delta[2]), 0.0, 1.0), s)
            out = jnp.where(op >= 2, augment.hsv_to_rgb(h, s, v), out)
        if 0 in strengths:
            out = jnp.where(jnp.asarray(strengths)[op] > 0, out, x)
        return jnp.clip(out, 0.0, 1.0), None

    jittered = jax.lax.scan(step, image, jax.random.permutation(k_order, 4))[0]
    x = jnp.where(jax.random.uniform(k_apply) < cfg.color_p, jittered, image)
    return augment.random_grayscale(k_gray, x, p=cfg.gray_p)


def make_view(key, image, cfg, blur_p, solarize_p, extent=None):
    """One BYOL view of one float image [H, W, 3] in [0, 1] (Sec. 3.3, Table 6): crop (inside the image's
    valid `extent` of the canvas; None: all of it), flip, colour, blur with probability blur_p, solarize
    with probability solarize_p, clip, normalise."""
    k_crop, k_flip, k_color, k_blur, k_sigma, k_solarize = jax.random.split(key, 6)
    x = augment.random_resized_crop(
        k_crop, image, cfg.crop_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, extent=extent
    )
    x = augment.random_flip(k_flip, x, p=cfg.flip_p)
    x = color_transform(k_color, x, cfg)
    if blur_p > 0:  # kernel 10% of the side, sigma ~ U(0.1, 2.0), zero padding as the official code
        sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
        blurred = augment.simclr_gaussian_blur(x, cfg.crop_size // 10, sigma)
        x = jnp.where(jax.random.uniform(k_blur) < blur_p, blurred, x)
    if solarize_p > 0:
        x = augment.random_solarize(k_solarize, x, p=solarize_p, threshold=0.5)
    return augment.normalize(jnp.clip(x, 0.0, 1.0), cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] (extents [B, 2]: the batch's `extent`) -> two stacks of views [B, S, S, 3],
    one key per image and view.

    The recipe is asymmetric (Table 6): views.blur_p and views.solarize_p hold (view 1, view 2).
    """
    images = augment.to_float(images)
    k1, k2 = jax.random.split(key)
    view1 = functools.partial(make_view, cfg=cfg, blur_p=cfg.blur_p[0], solarize_p=cfg.solarize_p[0])
    view2 = functools.partial(make_view, cfg=cfg, blur_p=cfg.blur_p[1], solarize_p=cfg.solarize_p[1])
    return (
        augment.apply_per_image(view1, k1, images, extents=extents),
        augment.apply_per_image(view2, k2, images, extents=extents),
    )


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / ||x||, with the official epsilon on the *squared* norm: x * rsqrt(max(sum(x^2), eps)).

    Args:
        x: [..., D].
    Returns:
        [..., D], unit norm along `axis` (a zero vector stays zero).
    """
    square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(square_sum, epsilon))


def regression_loss(prediction, target):
    """Per-example ||l2n(prediction) - l2n(target)||^2 = 2 - 2 cos(prediction, target).

    Written as the squared distance of the normalised vectors, as in the official helper, rather
    than as 2 - 2cos: the two agree mathematically and the distance form is what was checked.

    Args:
        prediction, target: [B, D].
    Returns:
        [B], each in [0, 4].
    """
    return jnp.sum(jnp.square(l2_normalize(prediction) - l2_normalize(target)), axis=-1)


def byol_loss(online_pred_1, online_pred_2, target_proj_1, target_proj_2):
    """Symmetrised BYOL loss (paper eq. 2 plus its view-swapped twin).

    Args:
        online_pred_1, online_pred_2: [B, D] online predictions q_theta(z_theta) of views 1 and 2.
        target_proj_1, target_proj_2: [B, D] target projections z'_xi of views 1 and 2.
    Returns:
        Scalar in [0, 8]: mean over the global batch of the SUM of both directions (the official
        code adds the two regression losses per example and then averages; it does not halve).
    """
    # Stop-gradient on the target branch (paper Sec. 3.1, "sg"): only the online network is trained
    # by this loss; the target follows it through `ema_update`.
    target_proj_1 = jax.lax.stop_gradient(target_proj_1)
    target_proj_2 = jax.lax.stop_gradient(target_proj_2)
    # Each view's prediction regresses the target projection of the OTHER view.
    per_example = regression_loss(online_pred_1, target_proj_2) + regression_loss(online_pred_2, target_proj_1)  # [B]
    return jnp.mean(per_example)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def _cosine_decay(step, decay_steps, initial_value):
    """initial_value * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2; flat after."""
    step = jnp.minimum(step, decay_steps)
    return initial_value * 0.5 * (1 + jnp.cos(jnp.pi * step / decay_steps))


def target_ema_decay(step, base_ema, max_steps):
    """EMA decay tau(k) = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2 (paper Sec. 3.2).

    Args:
        step: int scalar or array, the global step k (may be traced).
        base_ema: tau_base, e.g. 0.996 (1000 epochs) or 0.99 (300 epochs).
        max_steps: K, the total number of training steps; tau stays 1 after it.
    Returns:
        float32, same shape as `step`: tau_base at step 0, rising to 1 at max_steps.
    """
    return 1 - (1 - base_ema) * _cosine_decay(step, max_steps, 1.0)


def learning_rate_schedule(step, batch_size, base_learning_rate, total_steps, warmup_steps):
    """Linear warmup then cosine decay of the batch-scaled learning rate (paper App. C.1).

    lr = base_learning_rate * batch_size / 256; linear from 0 over `warmup_steps`, then a cosine
    from lr to 0 over the remaining `total_steps - warmup_steps` steps, and 0 after.

    Args:
        step: int scalar or array, the global step (may be traced).
        batch_size: global batch size.
    Returns:
        float32, same shape as `step`.
    """
    scaled_lr = base_learning_rate * batch_size / 256.0
    # max(., 1) only keeps the unselected branch finite when there is no warmup: jnp.where then
    # always picks the cosine branch, as the official `if warmup_steps > 0` does.
    warmup_lr = jnp.asarray(step, jnp.float32) / max(warmup_steps, 1) * scaled_lr
    cosine_lr = _cosine_decay(step - warmup_steps, total_steps - warmup_steps, scaled_lr)
    return jnp.where(step < warmup_steps, warmup_lr, cosine_lr)


def schedule_steps(cfg, steps_per_epoch):
    """(total_steps, warmup_steps) of a run: K for the tau and learning-rate cosines, and the warmup
    (at most total_steps - 1, so the cosine has at least one step)."""
    total = max(1, int(cfg.epochs * steps_per_epoch))
    return total, min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))


def make_optimizer(cfg, schedule):
    """LARS as the official `optimizers.lars` (App. C.1): weight decay, the trust ratio
    eta ||w|| / ||u||, momentum, then the learning rate. Biases and batch-norm parameters (ndim 1) skip
    decay and trust ratio, as `exclude_bias_and_norm`. (optax.lars takes the momentum after the
    learning rate, which differs from this while the rate changes.)"""
    is_kernel = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.masked(optax.add_decayed_weights(cfg.weight_decay), is_kernel),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=cfg.trust_coefficient), is_kernel),
        optax.trace(decay=cfg.momentum),
        optax.scale_by_learning_rate(schedule),
    )


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the parts {online, target, optimizer} split into a static graph
    and a pytree of arrays, and step_fn(state, batch, key) -> (state, metrics), pure, for jax.jit. The
    learning rate and tau are functions of the optimizer's step counter, which is in the state, so a
    resumed run continues both schedules exactly.
    """
    encoder = lambda rngs: Encoder(create_body(config.model, config.views.crop_size, rngs), config.model, rngs)
    rngs = nnx.Rngs(config.seed)
    online = BYOL(encoder(rngs), config.model, rngs)
    if config.model.init == "haiku":
        haiku_init(online, jax.random.fold_in(jax.random.key(config.seed), 2))
    if config.method.target_init == "independent":  # official: xi drawn with a key of its own
        rngs = nnx.Rngs(jax.random.fold_in(jax.random.key(config.seed), 1))
        target = encoder(rngs)
        if config.model.init == "haiku":
            haiku_init(target, jax.random.fold_in(jax.random.key(config.seed), 3))
    else:  # 'copy': xi starts as theta (body and projector), in buffers of its own, because the loop's
        # jit donates the state and one buffer cannot be donated twice
        target = nnx.clone(online.encoder, arrays=True)
    total_steps, warmup_steps = schedule_steps(config.optim, steps_per_epoch)
    lr_schedule = functools.partial(
        learning_rate_schedule,
        batch_size=config.data.batch_size,
        base_learning_rate=config.optim.lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    tau_schedule = functools.partial(target_ema_decay, base_ema=config.method.base_ema, max_steps=total_steps)
    optimizer = nnx.Optimizer(online, make_optimizer(config.optim, lr_schedule), wrt=nnx.Param)
    graphdef, state = nnx.split({"online": online, "target": target, "optimizer": optimizer})
    return graphdef, state, functools.partial(train_step, graphdef, config, lr_schedule, tau_schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def ema_update(target, online, tau):
    """Target update xi <- tau * xi + (1 - tau) * theta, on matching pytrees of arrays.

    Written as xi + (1 - tau)(theta - xi), the official form. Apply it after the optimizer update of
    the online weights, with tau = target_ema_decay(step) at the current step.
    """
    return jax.tree.map(lambda xi, theta: xi + (1 - tau) * (theta - xi), target, online)


def update(parts, views, lr_schedule, tau_schedule):
    """The step after the views: the loss, the LARS update of theta, the EMA of xi.

    parts: {"online", "target", "optimizer"}, updated in place. views: (x1, x2), two normalised stacks
    [B, S, S, 3] of the same images (make_views' output, or a reference case's stored views).
    Returns the step's metrics.
    """
    online, target, optimizer = parts["online"], parts["target"], parts["optimizer"]
    x1, x2 = views
    # Target projections z'_1, z'_2. As the official code, each view is a separate forward pass in
    # training mode (batch-norm statistics of that view over the global batch), and the target keeps
    # its own running statistics. No gradient reaches it: value_and_grad below differentiates the
    # online network only, and byol_loss puts the paper's stop-gradient on these.
    target_proj_1, target_proj_2 = target(x1), target(x2)

    def loss_fn(online):
        return byol_loss(online(x1), online(x2), target_proj_1, target_proj_2)

    loss, grads = nnx.value_and_grad(loss_fn)(online)
    step = optimizer.step[...]  # k: the step being taken; lr and tau are read at it (Sec. 3.2)
    optimizer.update(online, grads)
    tau = tau_schedule(step)
    # The EMA after the online update (Algorithm 1), on the weights only; batch-norm statistics are
    # the target's own.
    nnx.update(target, ema_update(nnx.state(target, nnx.Param), nnx.state(online.encoder, nnx.Param), tau))
    return {
        "loss": loss,
        "lr": lr_schedule(step),
        "tau": tau,
        "finite": checkpoint.all_finite(loss, nnx.state({"online": online, "target": target}, nnx.Param)),
    }


def train_step(graphdef, config, lr_schedule, tau_schedule, state, batch, key):
    """One step on the global batch: the views, then `update`; jitted with the first four bound."""
    parts = nnx.merge(graphdef, state)
    views = make_views(key, batch["image"], config.views, batch.get("extent"))
    metrics = update(parts, views, lr_schedule, tau_schedule)
    return nnx.state(parts), metrics


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses (the online body), as a fresh module in eval mode
    (a copy: switching it to eval leaves the training graph untouched)."""
    body = nnx.merge(graphdef, state)["online"].encoder.body
    body.eval()
    return body


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    if config.data.batch_size < 2:
        problems.append(f"data.batch_size={config.data.batch_size}: batch norm needs at least 2 images")
    if not 0.0 <= config.method.base_ema <= 1.0:
        problems.append(f"method.base_ema={config.method.base_ema} must be in [0, 1]")
    for name in ("blur_p", "solarize_p"):
        p = config.views[name]
        if len(p) != 2 or not all(0.0 <= v <= 1.0 for v in p):
            problems.append(f"views.{name}={tuple(p)} must be two probabilities (view 1, view 2)")
    if config.method.target_init not in ("copy", "independent"):
        problems.append(f"method.target_init={config.method.target_init!r} must be 'copy' or 'independent'")
    if config.model.init not in ("torch", "haiku"):
        problems.append(f"model.init={config.model.init!r} must be 'torch' or 'haiku' (official)")
    if config.model.padding not in ("torch", "haiku"):
        problems.append(f"model.padding={config.model.padding!r} must be 'torch' or 'haiku' (official)")
    if config.optim.epochs <= 0 or config.optim.warmup_epochs < 0:
        problems.append("optim.epochs must be > 0 and optim.warmup_epochs >= 0")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    return loop.train(config, workdir, create_state, get_body, epochs=config.optim.epochs)


if __name__ == "__main__":
    loop.cli(main)
