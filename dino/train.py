"""DINO: self-DIstillation with NO labels.

A student network is trained to match, on every crop of an image (two global crops and several
small local crops), the output distribution that a teacher network gives on the global crops only,
which teaches local-to-global correspondence. The teacher has the student's architecture and is an
exponential moving average of it, and no gradient flows through it. Collapse is avoided by centring
the teacher's outputs with a running mean over batches and sharpening them with a low temperature.

    P_s(x)[k] = softmax(g_s(x) / tau_s)[k]
    P_t(x)[k] = softmax((g_t(x) - c) / tau_t)[k]
    loss      = sum_{x in {x1_g, x2_g}} sum_{x' in crops, x' != x} H(sg(P_t(x)), P_s(x')) / n_terms
    c        <- m * c + (1 - m) * mean_batch g_t(x)
    theta_t  <- lambda * theta_t + (1 - lambda) * theta_s

with H(a, b) = -sum_k a_k log b_k averaged over the batch, and n_terms = 2 * n_crops - 2.

Paper: M. Caron, H. Touvron, I. Misra, H. Jegou, J. Mairal, P. Bojanowski, A. Joulin, "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021, https://arxiv.org/abs/2104.14294.
Checked against facebookresearch/dino (main_dino.py, utils.py).
"""

import jax
import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def dino_loss(student_out, teacher_out, center, student_temp, teacher_temp, center_momentum):
    """Cross-entropy between the centred, sharpened teacher and the student over crop pairs.

    Args:
        student_out: [n_crops, B, K] student head outputs (before temperature); crops 0 and 1 are
            the global crops, the rest local crops.
        teacher_out: [2, B, K] teacher head outputs on the two global crops.
        center: [1, K] running centre of the teacher outputs (a buffer, zeros at the start).
        student_temp: tau_s (0.1).
        teacher_temp: tau_t at the current EPOCH, from `teacher_temp_schedule` (may be traced).
        center_momentum: m of the centre EMA (0.9).
    Returns:
        (loss, new_center): scalar loss, averaged over the (teacher crop, student crop) pairs with
        different crops and over the global batch; new_center [1, K].
    """
    n_global, n_crops = teacher_out.shape[0], student_out.shape[0]
    log_p_student = jax.nn.log_softmax(student_out / student_temp, axis=-1)  # [n_crops, B, K]
    # The teacher is centred with the centre from BEFORE this batch, then sharpened (tau_t < tau_s).
    # Stop-gradient on the teacher (paper Alg. 1, `t.detach()`): it learns only through the EMA.
    p_teacher = jax.lax.stop_gradient(
        jax.nn.softmax((teacher_out - center) / teacher_temp, axis=-1)
    )  # [2, B, K]
    # One cross-entropy term per (teacher crop t, student crop s) pair, each a mean over the batch.
    # A crop is not compared with itself, but the two global crops ARE compared with each other.
    # The loops are over static crop indices (unrolled under jit); element-wise products rather than
    # an einsum keep the sums off the matmul units, whose float32 precision is reduced on GPU/TPU.
    total, n_terms = 0.0, 0
    for t in range(n_global):
        for s in range(n_crops):
            if s == t:
                continue
            total += jnp.mean(-jnp.sum(p_teacher[t] * log_p_student[s], axis=-1))
            n_terms += 1
    # The official code divides the sum by the number of terms, 2 * n_crops - 2.
    loss = total / n_terms

    # Centre update (paper eq. 4) from the RAW teacher outputs of the whole global batch (the
    # official code all-reduces the sum over devices); it is applied after the loss.
    batch_center = jnp.mean(teacher_out, axis=(0, 1))[None, :]  # [1, K]
    new_center = center * center_momentum + batch_center * (1 - center_momentum)
    # The centre is a buffer (updated under no_grad upstream): nothing is trained through it.
    return loss, jax.lax.stop_gradient(new_center)


def ema_update(teacher, student, m):
    """Teacher update theta_t <- m * theta_t + (1 - m) * theta_s (paper Sec. 3.1), on pytrees.

    m follows `cosine_scheduler(momentum_teacher, 1, epochs, niter_per_ep)`, indexed by iteration.
    """
    return jax.tree.map(lambda theta_t, theta_s: theta_t * m + (1 - m) * theta_s, teacher, student)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------
# Host-side numpy arrays, as in the official code: one value per epoch or per iteration, indexed
# by the loop and passed into the jitted step as a scalar argument.


def teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs):
    """Teacher temperature per EPOCH: linear warmup, then constant. Returns [nepochs] float64.

    np.linspace includes its endpoint, so the last warmup epoch already has `teacher_temp`.
    """
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
    ))


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0):
    """One value per ITERATION: linear warmup, then a half cosine from base to final value.

    Used for the learning rate, the weight decay and the teacher momentum. Returns
    [epochs * niter_per_ep] float64.

    Official conventions kept: the warmup linspace includes its endpoint, so `base_value` appears
    twice (last warmup iteration and first cosine one); the cosine over L iterations uses
    i / L for i = 0..L-1, so the last value stays just short of `final_value`.
    """
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters))
    )
    return np.concatenate((warmup, cosine))
