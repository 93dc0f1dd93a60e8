"""PIRL: Pretext-Invariant Representation Learning.

PIRL learns a representation that is invariant to a pretext transformation (here the jigsaw
shuffle of 3x3 patches) instead of one that predicts it: the embedding g(v_It) of the transformed
image and the embedding f(v_I) of the image itself should both be close to the image's entry m_I
in a memory bank, and far from the entries of other images, sampled as negatives. The memory bank
holds an exponential moving average of f(v_I) for every image of the data set, so the negatives
come from the whole data set at the cost of one embedding per image.

Loss, with s(a, b) = exp(<a/|a|, b/|b|> / tau) / Z, N negatives drawn from the memory bank D_N,
and the NCE posterior h(a, b) = s(a, b) / (s(a, b) + N/|D| + eps) (data-set size |D|):

    L_NCE(m_I, v) = -log h(m_I, v) - sum_{m' in D_N} log(1 - h(m', v))
    L             = 0.5 L_NCE(m_I, g(v_It)) + 0.5 L_NCE(m_I, f(v_I))
    m_I          <- normalize(0.5 m_I + 0.5 f(v_I)/|f(v_I)|)       (after the loss)

Paper: I. Misra and L. van der Maaten, "Self-Supervised Learning of Pretext-Invariant
Representations", CVPR 2020, https://arxiv.org/abs/1912.01991. There is no stand-alone official
release; checked against the authors' implementation in facebookresearch/vissl
(vissl/losses/nce_loss.py, NCELossWithMemory, config pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml).
"""

import jax
import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, eps): torch.nn.functional.normalize, as the official loss uses it."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), epsilon)


def memory_scores(embedding, memory, neg_idx, temperature):
    """Scaled cosines between each embedding and its K + 1 memory rows.

    Args:
        embedding: [B, D] raw embeddings (normalised here).
        memory: [N_mem, D] memory bank (unit rows); a buffer, it receives no gradient.
        neg_idx: [B, K + 1] memory rows to score; column 0 is the positive.
        temperature: tau.

    Returns:
        [B, K + 1] scores <m, e> / tau.
    """
    # Stop-gradient: the memory bank is updated by momentum, never by gradient (official .detach()).
    rows = jax.lax.stop_gradient(memory)[neg_idx]  # [B, K + 1, D]
    return jnp.einsum("bkd,bd->bk", rows, l2_normalize(embedding)) / temperature


def nce_loss(scores, Z, n_mem):
    """Noise-contrastive estimation with a uniform noise distribution (official NCECriterion).

        x = exp(scores) / Z,   Pn = 1 / N_mem,   K = number of negatives
        L = -1/B sum_b [ log(x_b0 / (x_b0 + K Pn + eps))
                         + sum_{k>=1} log(K Pn / (x_bk + K Pn + eps)) ]

    The sum over the batch is divided by B, and the negatives are summed, not averaged. eps is the
    float32 machine epsilon, as in the official code. The scores are cosines / tau <= 1 / tau, so
    exp cannot overflow for any usual tau (0.07 gives at most exp(14.3)).

    Args:
        scores: [B, K + 1] cosines / tau; column 0 is the positive.
        Z: scalar normalisation constant of the model distribution.
        n_mem: Python int, the data-set (memory-bank) size N_mem.

    Returns:
        Scalar loss.
    """
    n_negatives = scores.shape[1] - 1
    eps = np.finfo(np.float32).eps
    noise = n_negatives / n_mem  # K * Pn
    x = jnp.exp(scores) / Z  # [B, K + 1]
    log_h_positive = jnp.log(x[:, 0] / (x[:, 0] + noise + eps))  # [B]
    log_h_negatives = jnp.log(noise / (x[:, 1:] + noise + eps))  # [B, K]
    return -(jnp.sum(log_h_positive) + jnp.sum(log_h_negatives)) / scores.shape[0]


def pirl_loss(
    patch_embedding,
    image_embedding,
    memory,
    indices,
    neg_idx_patch,
    neg_idx_image,
    temperature,
    Z,
    loss_type,
):
    """PIRL loss of both branches against the memory bank (official NCELossWithMemory.forward).

        L = 0.5 L(m_I, g(v_It)) + 0.5 L(m_I, f(v_I))

    Z < 0 means "not yet known": the official code then sets, once, at its first call and from
    the FIRST output (the patch branch), Z = mean(exp(scores_patch)) * N_mem, freezes it, and uses
    it for both branches from then on. Here the caller keeps Z in the train state and passes back the
    returned value. The 'cross_entropy' variant (InfoNCE, label 0 over the K + 1 columns) needs no Z
    and returns it unchanged.

    The negatives are drawn by the caller, uniformly WITH replacement and separately for each
    branch; a negative may repeat or equal the positive, as in the official sampler. Column 0 is
    overwritten with `indices`, as the official sampler does, so a plain uniform draw of shape
    [B, K + 1] can be passed.

    Written for the global batch: the official code all-gathers the batch means for Z; under jit
    with sharded inputs, the mean over the global batch does the same.

    Args:
        patch_embedding: [B, D] raw embedding g(v_It) of the jigsaw view (official output 0).
        image_embedding: [B, D] raw embedding f(v_I) of the image view (official output 1).
        memory: [N_mem, D] memory bank before this step (unit rows).
        indices: [B] int, data-set indices of the batch images (the positives).
        neg_idx_patch: [B, K + 1] int, memory rows scored against the patch embedding.
        neg_idx_image: [B, K + 1] int, memory rows scored against the image embedding.
        temperature: tau (paper 0.07).
        Z: scalar normalisation constant; negative to compute it from this batch.
        loss_type: Python str, 'nce' (paper) or 'cross_entropy' (InfoNCE).

    Returns:
        (loss, Z): the scalar loss and the normalisation constant to use from now on.
    """
    n_mem = memory.shape[0]
    patch_scores = memory_scores(
        patch_embedding, memory, neg_idx_patch.at[:, 0].set(indices), temperature
    )  # [B, K + 1]
    image_scores = memory_scores(
        image_embedding, memory, neg_idx_image.at[:, 0].set(indices), temperature
    )  # [B, K + 1]
    if loss_type == "nce":
        # Z is a constant of the model (the official code computes it under no_grad and keeps it
        # as a Python float), hence the stop-gradient.
        estimated_Z = jax.lax.stop_gradient(jnp.mean(jnp.exp(patch_scores)) * n_mem)
        Z = jnp.where(Z < 0, estimated_Z, Z)
        patch_loss, image_loss = nce_loss(patch_scores, Z, n_mem), nce_loss(image_scores, Z, n_mem)
    elif loss_type == "cross_entropy":
        # InfoNCE: cross-entropy over the K + 1 columns, the positive (column 0) being the label.
        patch_loss = -jnp.mean(jax.nn.log_softmax(patch_scores, axis=1)[:, 0])
        image_loss = -jnp.mean(jax.nn.log_softmax(image_scores, axis=1)[:, 0])
        Z = jnp.asarray(Z, patch_scores.dtype)
    else:
        raise ValueError(f"loss_type must be 'nce' or 'cross_entropy', got {loss_type!r}")
    # Paper lambda = 0.5 (official loss_weights [0.5, 0.5]).
    return 0.5 * patch_loss + 0.5 * image_loss, Z


def update_memory(memory, indices, image_embedding, momentum):
    """Momentum update of the batch's memory rows with the IMAGE embedding (paper Sec. 3.2).

        m_I <- normalize(momentum * m_I + (1 - momentum) * f(v_I)/|f(v_I)|)

    Done after the loss, so both branches of this step were scored against the old memory. The
    batch indices are assumed distinct (one view per image); with duplicates, which write wins is
    unspecified, as with the official index_copy_.

    Args:
        memory: [N_mem, D] memory bank (unit rows).
        indices: [B] int, data-set indices of the batch images.
        image_embedding: [B, D] raw embedding f(v_I) (normalised here).
        momentum: memory momentum (paper 0.5).

    Returns:
        [N_mem, D] updated memory bank.
    """
    # Stop-gradient: the memory bank is a buffer, updated outside back-propagation (official
    # torch.no_grad).
    embedding = l2_normalize(jax.lax.stop_gradient(image_embedding))  # [B, D]
    updated = l2_normalize(momentum * memory[indices] + (1 - momentum) * embedding)  # [B, D]
    return memory.at[indices].set(updated)
