"""PAWS: Predicting view Assignments With Support samples.

PAWS is semi-supervised: each step draws an unlabelled batch (two large views per image plus small
multi-crops) and a small labelled "support" batch, and a soft nearest-neighbour classifier assigns
every view a distribution over the classes from its similarity to the labelled supports. The
prediction of a view is trained to match the sharpened prediction of the other large view of the
same image (a stop-gradient target, so no negatives and no momentum encoder are needed), and a
mean-entropy-maximisation term keeps the average prediction spread over all classes.

Loss, for anchor views z (after the prediction head), targets h (before it), supports z_S, h_S with
label matrix y_S ([S, C]), and rho(p) = p^(1/T) / sum_c p_c^(1/T) (sharpening):

    pi(x, x_S, y_S) = softmax(<x, x_S> / tau) y_S                 (soft nearest neighbours, cosines)
    p_i   = pi(z_i, z_S, y_S),   p+_i = rho(pi(h_i+, h_S, y_S))   (h_i+: the other view, no gradient)
    L     = 1/n sum_i H(p+_i, p_i)  +  sum_c pbar_c log pbar_c,   pbar = 1/n sum_i rho(p_i)

Paper: M. Assran et al., "Semi-Supervised Learning of Visual Features by Non-Parametrically
Predicting View Assignments with Support Samples", ICCV 2021, https://arxiv.org/abs/2104.13963.
Checked against facebookresearch/suncet src/losses.py (init_paws_loss) and src/paws_train.py.
"""

import jax
import jax.numpy as jnp


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, eps): torch.nn.functional.normalize, as the official snn uses it."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), epsilon)


def sharpen(p, T):
    """Sharpening rho(p)_c = p_c^(1/T) / sum_c' p_c'^(1/T) (paper Sec. 3); T < 1 lowers the entropy.

    Args:
        p: [N, C] class probabilities.
        T: sharpening temperature (paper 0.25).

    Returns:
        [N, C] sharpened probabilities; rows sum to 1.
    """
    sharp_p = p ** (1.0 / T)
    return sharp_p / jnp.sum(sharp_p, axis=1, keepdims=True)


def snn(query, supports, support_labels, tau):
    """Soft nearest-neighbour classifier pi (paper Sec. 3).

        pi(q) = softmax_s(<q/|q|, x_s/|x_s|> / tau) @ y_S

    Args:
        query: [N, d] embeddings to classify (raw; normalised here).
        supports: [S, d] embeddings of the labelled support samples (raw).
        support_labels: [S, C] (label-smoothed) one-hot labels of the supports.
        tau: cosine-similarity temperature (paper 0.1).

    Returns:
        [N, C] class probabilities.
    """
    similarity = l2_normalize(query) @ l2_normalize(supports).T  # [N, S]
    return jax.nn.softmax(similarity / tau, axis=1) @ support_labels


def paws_loss(
    anchor_views,
    anchor_supports,
    anchor_support_labels,
    target_views,
    target_supports,
    target_support_labels,
    tau,
    T,
    me_max,
    multicrop,
):
    """PAWS cross-entropy to the sharpened targets, and the mean-entropy-maximisation term.

    `target_views` arrive ALREADY SWAPPED, as at the official call site (paws_train.py builds
    target_views = cat([h[B:2B], h[:B]])): row i is the target of anchor row i, so the loss itself
    never permutes views. The targets of the 2 large views are sharpened; each multi-crop view of an
    image gets the mean of that image's two sharpened targets. As in the official code, target
    entries below 1e-4 are set to 0.

        loss       = mean_i sum_c -p+_ic log p_ic
        me_max_reg = sum_c pbar_c log pbar_c   (= -H(pbar); pbar = mean_i sharpen(p_i), all anchor
                                                rows, multi-crops included); 0 if not me_max

    The training objective is loss + me_max_reg. Written for the global batch: the mean over the
    anchors is the official AllReduce of pbar.

    Args:
        anchor_views: [(2 + multicrop) * B, d] anchor (after-head) embeddings, crop-major: view 1
            [0:B], view 2 [B:2B], then the multi-crops.
        anchor_supports: [S, d] anchor embeddings of the support samples.
        anchor_support_labels: [S, C] support labels.
        target_views: [2B, d] target (before-head) embeddings, swapped: rows [0:B] are view 2.
        target_supports: [S, d] target embeddings of the supports.
        target_support_labels: [S, C] support labels (the same matrix as anchor_support_labels).
        tau: snn temperature (paper 0.1).
        T: sharpening temperature (paper 0.25).
        me_max: Python bool, add the mean-entropy-maximisation regulariser (paper True).
        multicrop: Python int, number of small views per image (paper 6).

    Returns:
        (loss, me_max_reg): two scalars.
    """
    batch_size = anchor_views.shape[0] // (2 + multicrop)
    probs = snn(anchor_views, anchor_supports, anchor_support_labels, tau)  # [(2+mc)B, C]

    # Stop-gradient: the targets are fixed pseudo-labels (paper Sec. 3; official torch.no_grad),
    # so no gradient reaches the target views or the target supports.
    targets = sharpen(snn(target_views, target_supports, target_support_labels, tau), T)  # [2B, C]
    targets = jax.lax.stop_gradient(targets)
    multicrop_targets = 0.5 * (targets[:batch_size] + targets[batch_size:])  # [B, C]
    targets = jnp.concatenate([targets] + multicrop * [multicrop_targets], axis=0)  # [(2+mc)B, C]
    # Official convention: negligible target mass is zeroed (targets[targets < 1e-4] *= 0), and the
    # rows are not renormalised afterwards.
    targets = jnp.where(targets < 1e-4, 0.0, targets)

    # The official log(probs ** -targets) is -targets * log(probs) with 0 * log(0) = 0.
    loss = jnp.mean(jnp.sum(-jax.scipy.special.xlogy(targets, probs), axis=1))

    me_max_reg = jnp.zeros((), probs.dtype)
    if me_max:
        avg_probs = jnp.mean(sharpen(probs, T), axis=0)  # [C]
        me_max_reg = jnp.sum(jax.scipy.special.xlogy(avg_probs, avg_probs))
    return loss, me_max_reg
