"""Method-neutral evaluation of a frozen body: feature extraction and the weighted kNN classifier.

The kNN classifier is the one of DINO's evaluation (Wu et al. 2018, "Unsupervised feature learning via
non-parametric instance discrimination"; Caron et al. 2021): features are L2-normalised, a test image's
k nearest training images by cosine similarity vote for their class with weight exp(similarity / T),
and the classes are ranked by their summed votes. Defaults k=20, T=0.07, as DINO.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from common import data


def extract_features(embed_fn, dataset, batch_size, mesh):
    """Runs `embed_fn` over every example of `dataset` once, in order.

    embed_fn: a jitted function, uint8 images [B, H, W, 3] (sharded over 'data') -> features [B, D].
    Returns (features float32 [N, D], labels int32 [N]) as host numpy arrays.
    """
    feats, labels = [], []
    for batch, n_valid in data.eval_batches(dataset, batch_size, mesh):
        f = embed_fn(batch["image"])
        feats.append(np.asarray(jax.device_get(f))[:n_valid])
        labels.append(np.asarray(jax.device_get(batch["label"]))[:n_valid])
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


def _l2_normalize(x, axis=-1):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_chunk(train_features, train_labels, test_features, k, temperature, num_classes):
    """Class scores [b, num_classes] for one chunk of test features (all inputs normalised)."""
    sim = test_features @ train_features.T  # [b, N_train] cosine similarities
    top_sim, top_idx = jax.lax.top_k(sim, k)  # [b, k]
    weights = jnp.exp(top_sim / temperature)
    votes = jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None]  # [b, k, C]
    return jnp.sum(votes, axis=1)


def knn_classify(train_features, train_labels, test_features, test_labels, num_classes, k=20,
                 temperature=0.07, chunk=1024):
    """Weighted kNN accuracy in percent: returns {'top1': float, 'top5': float}.

    train_features [N, D], train_labels [N], test_features [M, D], test_labels [M]. Features need not
    be normalised; they are L2-normalised here. top-5 counts a hit when the true class is among the
    five classes with the largest vote (with fewer than 5 classes, it is 100).
    """
    if len(train_features) < k:
        raise ValueError(f"kNN with k={k} needs at least {k} training examples, got {len(train_features)}.")
    train = _l2_normalize(jnp.asarray(train_features, jnp.float32))
    train_labels = jnp.asarray(train_labels, jnp.int32)
    test = _l2_normalize(jnp.asarray(test_features, jnp.float32))
    test_labels = np.asarray(test_labels)
    top1 = top5 = 0
    for start in range(0, len(test), chunk):
        scores = _knn_chunk(train, train_labels, test[start:start + chunk], k, temperature, num_classes)
        ranked = np.argsort(-np.asarray(scores), axis=1, kind="stable")
        truth = test_labels[start:start + chunk, None]
        top1 += int(np.sum(ranked[:, :1] == truth))
        top5 += int(np.sum(np.any(ranked[:, :5] == truth, axis=1)))
    n = len(test_labels)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def knn_monitor(embed_fn, train_dataset, test_dataset, batch_size, mesh, k=20, temperature=0.07):
    """Extracts features of both splits with `embed_fn` and returns knn_classify's {'top1', 'top5'}."""
    train_f, train_y = extract_features(embed_fn, train_dataset, batch_size, mesh)
    test_f, test_y = extract_features(embed_fn, test_dataset, batch_size, mesh)
    num_classes = max(train_dataset.num_classes, int(train_y.max()) + 1)
    return knn_classify(train_f, train_y, test_f, test_y, num_classes, k=k, temperature=temperature)
