"""SimCLRv2: big self-supervised models are strong semi-supervised learners.

SimCLRv2 pretrains a large network with SimCLR's contrastive loss (a deeper, 3-layer projection
head, fine-tuned from its first layer), fine-tunes it on the few labelled examples, and then
distils it into a student (of the same or a smaller size) on the unlabelled data, where the
student matches the teacher's temperature-softened class distribution. This file holds the two
losses: NT-Xent for pretraining and the distillation loss for the last stage.

Losses, for normalised projections h_i of 2N views (i and i' two views of one image) and
temperature tau, and for teacher/student logits with distillation temperature T:

    l(i, i')      = -log exp(<h_i, h_i'> / tau) / sum_{k != i} exp(<h_i, h_k> / tau)
    L_contrastive = 1/N sum_i [ l(i, i') + l(i', i) ]       (official: sum of the two directions)
    L_distill     = -T^2 1/N sum_x sum_y P_T(y|x; T) log P_S(y|x; T),  P(y|x; T) = softmax(logits / T)

Paper: T. Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised Learners",
NeurIPS 2020, https://arxiv.org/abs/2006.10029. Checked against google-research/simclr
tf2/objective.py (add_contrastive_loss) and tf2/colabs/distillation_self_training.ipynb (add_kd_loss).
"""

import jax
import jax.numpy as jnp
import optax


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


def distillation_loss(student_logits, teacher_logits, temperature):
    """Knowledge distillation of the fine-tuned teacher into the student (official add_kd_loss).

        L = mean_n T^2 CE(softmax(teacher_logits / T), student_logits / T)

    The T^2 factor is in the official code, not in the paper's equation: it keeps the gradient
    scale independent of T (Hinton et al., 2015).

    Args:
        student_logits: [N, C] student logits.
        teacher_logits: [N, C] teacher logits.
        temperature: distillation temperature T (paper 1 for self-distillation).

    Returns:
        Scalar loss.
    """
    # Stop-gradient: the teacher is fixed during distillation (paper Sec. 2); only the student
    # learns.
    teacher_probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=1)
    per_example = optax.softmax_cross_entropy(student_logits / temperature, teacher_probs)  # [N]
    return jnp.mean(temperature**2 * per_example)
