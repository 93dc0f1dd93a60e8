"""BYOL: Bootstrap Your Own Latent.

An online network (encoder, projector, predictor) learns to predict, from one augmented view of an
image, the projection that a target network gives for another view of the same image. The target
network is not trained by gradients: its weights are an exponential moving average (EMA) of the
online weights, and the stop-gradient on its output plus the online-only predictor avoid collapse
without negative pairs. The loss is symmetrised by swapping the two views.

        l2n(x)   = x / ||x||_2
        loss     = mean_b [ ||l2n(p_1) - l2n(sg(z'_2))||^2 + ||l2n(p_2) - l2n(sg(z'_1))||^2 ]
        xi      <- tau * xi + (1 - tau) * theta        (target weights xi, online weights theta)

where p_v is the online prediction of view v, z'_v the target projection of view v, sg the
stop-gradient, and tau rises from base_ema to 1 along a cosine.

Paper: J.-B. Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020, https://arxiv.org/abs/2006.07733. Checked against deepmind/deepmind-research byol/.
"""

import jax
import jax.numpy as jnp


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
    per_example = (
        regression_loss(online_pred_1, target_proj_2)
        + regression_loss(online_pred_2, target_proj_1)
    )  # [B]
    return jnp.mean(per_example)


def ema_update(target, online, tau):
    """Target update xi <- tau * xi + (1 - tau) * theta, on matching pytrees of arrays.

    Written as xi + (1 - tau)(theta - xi), the official form. Apply it after the optimizer update of
    the online weights, with tau = target_ema_decay(step) at the current step.
    """
    return jax.tree.map(lambda xi, theta: xi + (1 - tau) * (theta - xi), target, online)


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
