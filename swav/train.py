"""SwAV: Swapping Assignments between multiple Views.

SwAV clusters the embeddings of each image crop online by scoring them against K learnable,
L2-normalised prototypes and turning the scores of a batch into soft codes q with a few
Sinkhorn-Knopp iterations that spread the batch evenly over the prototypes. It then trains every
crop of an image (two large crops plus several small multi-crops) to predict, with a softmax over
the prototype scores, the code computed from another crop of the same image ("swapped
prediction"). No negatives, queue of pairs or momentum encoder is needed; the equipartition
constraint inside Sinkhorn is what prevents collapse.

Loss, for scores z_v = normalize(f(x_v)) C^T of crop v ([n_crops, B, K]) and the assigned crops A:

    q_a = sinkhorn(z_a / eps)                            (no gradient)
    L   = 1/|A| sum_{a in A} 1/(V-1) sum_{v != a} -1/B sum_b sum_k q_a[b,k] log softmax(z_v[b] / tau)_k

Paper: M. Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020, https://arxiv.org/abs/2006.09882. Checked against
facebookresearch/swav main_swav.py.
"""

import jax
import jax.numpy as jnp


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def sinkhorn(scores, epsilon, n_iters):
    """Soft codes of one crop: Sinkhorn-Knopp equipartition of the batch over the prototypes.

    Solves max_Q Tr(Q^T z) + eps H(Q) over the transportation polytope in which every prototype
    receives 1/K of the mass and every sample 1/B (paper Sec. 3.1), by alternately rescaling the
    columns and rows of Q = exp(z / eps) (official `distributed_sinkhorn`):

        Q <- Q / sum(Q)
        repeat n_iters:  Q[:, k] <- Q[:, k] / (K sum_b Q[b, k])   (each prototype gets mass 1/K)
                         Q[b, :] <- Q[b, :] / (B sum_k Q[b, k])   (each sample gets mass 1/B)
        return B Q                                                (each sample's code sums to 1)

    The official code works on exp(z / eps) directly, which overflows in float32 once
    eps < 1/88.7 (scores are cosines in [-1, 1]); and for small eps a prototype far from the whole
    batch underflows to an all-zero column, which then divides 0 by 0. Subtracting the global max
    of z / eps before exp would cancel in the first normalisation and cure the overflow, but not
    that underflow. Every step above is a multiplicative rescaling, so here it is done in the log
    domain: a division by a sum becomes the subtraction of a logsumexp, and logsumexp subtracts its
    own maximum. This is the same algebra (no approximation), so the result equals the official one
    up to float32 rounding (checked against the references to rtol 1e-4), and it stays finite for
    any eps > 0.

    Written for the GLOBAL batch: under jit with the batch axis sharded, the sums over the batch
    become the all-reduces the official code does by hand (its B is the global batch size).

    Args:
        scores: [B, K] prototype scores of one crop (cosines, z_normalized @ prototypes_normalized.T).
        epsilon: entropic regularisation (paper 0.05).
        n_iters: number of Sinkhorn iterations (paper 3); a Python int, the loop is unrolled.

    Returns:
        [B, K] codes q; each row sums to 1.
    """
    batch_size, n_prototypes = scores.shape
    log_q = scores / epsilon  # [B, K]; the official [K, B] layout is the transpose
    log_q = log_q - jax.nn.logsumexp(log_q)  # Q /= sum(Q)
    for _ in range(n_iters):
        log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(n_prototypes)
        log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - jnp.log(batch_size)
    return jnp.exp(log_q + jnp.log(batch_size))


def swav_loss(scores, temperature, epsilon, n_iters, crops_for_assign):
    """Swapped prediction loss over all crops (official `train()` loop, without the queue).

    Each assigned crop a gets codes q_a = sinkhorn(scores[a]); every OTHER crop v (large and small)
    predicts them with p_v = softmax(scores[v] / tau):

        L = 1/|A| sum_{a in A} 1/(V-1) sum_{v != a} mean_b CE(q_a[b], p_v[b])

    The two normalisations follow the official code: by (n_crops - 1) per assigned crop, then by
    the number of assigned crops.

    Args:
        scores: [n_crops, B, K] prototype scores, crop-major (the large crops first, then the small
            multi-crops); the official `output` is scores.reshape(n_crops * B, K).
        temperature: softmax temperature tau of the predictions (paper 0.1).
        epsilon: Sinkhorn regularisation (paper 0.05).
        n_iters: Sinkhorn iterations (paper 3), a Python int.
        crops_for_assign: Python sequence of crop indices whose codes are computed (paper [0, 1]).

    Returns:
        Scalar loss.
    """
    n_crops, batch_size, _ = scores.shape
    assigned = jnp.asarray(crops_for_assign)  # [A]
    # Stop-gradient: the codes are targets, computed under torch.no_grad in the official code;
    # gradients reach the prototypes and the encoder only through the predictions p_v.
    q = jax.vmap(lambda s: sinkhorn(s, epsilon, n_iters))(
        jax.lax.stop_gradient(scores[assigned])
    )  # [A, B, K]
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)  # [n_crops, B, K]
    cross_entropy = -jnp.einsum("abk,vbk->av", q, log_p) / batch_size  # [A, n_crops]
    # A crop never predicts its own code.
    other_crop = jnp.arange(n_crops)[None, :] != assigned[:, None]  # [A, n_crops]
    per_assigned = jnp.sum(jnp.where(other_crop, cross_entropy, 0.0), axis=1) / (n_crops - 1)
    return jnp.mean(per_assigned)
