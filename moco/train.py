"""MoCo v2: Momentum Contrast with an MLP head and stronger augmentation.

A query encoder learns by instance discrimination: the query of one augmented view must pick out the
key of another view of the same image among many negative keys. The keys come from a momentum (key)
encoder, a slowly moving average of the query encoder, and the negatives are the keys of earlier
batches kept in a first-in first-out queue, so the dictionary is large and consistent without a
large batch. v2 adds to v1 an MLP projection head, blur augmentation, T = 0.2 and a cosine schedule.

    q, k     = q / ||q||, k / ||k||          (queue rows: unit keys of earlier batches)
    loss     = mean_n -log( e^{q_n.k_n / T} / (e^{q_n.k_n / T} + sum_j e^{q_n.queue_j / T}) )
    theta_k <- m * theta_k + (1 - m) * theta_q

Papers: K. He, H. Fan, Y. Wu, S. Xie, R. Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, https://arxiv.org/abs/1911.05722; X. Chen, H. Fan,
R. Girshick, K. He, "Improved Baselines with Momentum Contrastive Learning", 2020,
https://arxiv.org/abs/2003.04297. Checked against facebookresearch/moco (moco/builder.py).
"""

import jax
import jax.numpy as jnp


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def normalize(x, epsilon=1e-12):
    """x / max(||x||, eps) along the last axis, as torch's F.normalize. [..., D] -> [..., D]."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), epsilon)


def moco_loss(q, k, queue, temperature):
    """InfoNCE over one positive key and the K queued negatives (MoCo eq. 1).

    Args:
        q: [N, D] raw query-encoder outputs (normalised here, as inside the official forward).
        k: [N, D] raw key-encoder outputs of the other view (normalised here).
        queue: [K, D] negative keys, one unit vector per row (the official buffer is its transpose).
        temperature: T (0.2 for v2, 0.07 for v1).
    Returns:
        Scalar: the cross-entropy of the logits [N, 1 + K] with label 0 (the positive), averaged
        over the global batch of N queries.
    """
    q = normalize(q)
    # Stop-gradient on the keys and the queue: the key encoder is trained only through the momentum
    # update (the official code computes keys under no_grad; the queue is a buffer).
    k = jax.lax.stop_gradient(normalize(k))
    queue = jax.lax.stop_gradient(queue)
    l_pos = jnp.sum(q * k, axis=-1, keepdims=True)  # [N, 1]
    # The queue holds keys of EARLIER batches only: the current keys are enqueued after the loss,
    # so they are never negatives for their own queries.
    l_neg = q @ queue.T  # [N, K]
    logits = jnp.concatenate([l_pos, l_neg], axis=1) / temperature  # [N, 1 + K]
    # Cross-entropy with the positive in column 0.
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def update_queue(queue, ptr, k):
    """Dequeue the oldest N keys and enqueue the current ones: queue[ptr:ptr+N] = normalize(k).

    Call it after the loss, with the keys of the whole global batch.

    Args:
        queue: [K, D] unit keys.
        ptr: int scalar, the row where the oldest keys start.
        k: [N, D] key-encoder outputs of this batch (normalised here; idempotent on unit keys).
    Returns:
        (queue [K, D], ptr) with ptr = (ptr + N) % K.
    """
    n_keys, n_new = queue.shape[0], k.shape[0]
    # As in the official code, K must be a multiple of N, so a write never runs past the end.
    assert n_keys % n_new == 0, f"queue size {n_keys} is not a multiple of the batch size {n_new}"
    k = jax.lax.stop_gradient(normalize(k)).astype(queue.dtype)
    queue = jax.lax.dynamic_update_slice(queue, k, (ptr, 0))
    return queue, (ptr + n_new) % n_keys


def momentum_update(params_k, params_q, m):
    """Key-encoder update theta_k <- m * theta_k + (1 - m) * theta_q (MoCo eq. 2), on pytrees.

    The official forward runs it before computing the keys of the current batch.
    """
    return jax.tree.map(
        lambda theta_k, theta_q: theta_k * m + theta_q * (1 - m), params_k, params_q
    )
