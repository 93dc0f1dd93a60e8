"""Pictures of a run: training curves, a t-SNE of test features, nearest-neighbour retrieval.

    python scripts/plots.py --workdir runs/simclr [--tsne_examples 1000] [--queries 8]

writes into the workdir:
  curves.png     every scalar the run logged to TensorBoard (loss, lr, kNN top-1/top-5, ...) over steps
  tsne.png       an exact t-SNE (van der Maaten & Hinton 2008, perplexity 30) of the restored body's
                 features of the first test images, one colour per class (sklearn is not needed: the
                 affinities are found by bisection in numpy and the embedding by gradient descent in JAX)
  retrieval.png  a few test queries (first column) and their nearest training images by cosine
                 similarity of the body's features; a green frame marks a neighbour of the query's class

The body comes from the workdir alone, as `python -m common.evaluate` builds it (results.json names the
method, config.json holds the config, checkpoints/ the weights).
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import data, evaluate  # noqa: E402

FIRST_CURVES = ("loss", "lr", "knn_top1", "knn_top5")
SKIPPED_CURVES = ("uptime", "steps_per_sec")


# --------------------------------------------------------------------------------------------------
# Training curves from TensorBoard events
# --------------------------------------------------------------------------------------------------


def read_scalars(workdir):
    """{tag: (steps int [n], values float [n])} of every scalar in the workdir's TensorBoard events.

    CLU's writers store scalars as tensor summaries; plain scalar summaries are read too.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(workdir, size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["tensors"]:
        points = [
            (e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)).reshape(-1)[0]))
            for e in events.Tensors(tag)
        ]
        curves[tag] = points
    for tag in events.Tags()["scalars"]:
        curves[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    return {tag: (np.array([s for s, _ in p]), np.array([v for _, v in p])) for tag, p in curves.items() if p}


def plot_curves(curves, path, title):
    tags = [t for t in FIRST_CURVES if t in curves]
    tags += sorted(t for t in curves if t not in FIRST_CURVES and t not in SKIPPED_CURVES)
    if not tags:
        raise ValueError("No scalars in the run's TensorBoard events.")
    cols = min(3, len(tags))
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        steps, values = curves[tag]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, lw=1.2)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# t-SNE
# --------------------------------------------------------------------------------------------------


def tsne_affinities(x, perplexity=30.0, tol=1e-5, iters=64):
    """Symmetric joint probabilities P [N, N] of t-SNE: a Gaussian per point whose bandwidth gives
    the perplexity (bisection on the precision beta), then P = (P_j|i + P_i|j) / 2N."""
    x = np.asarray(x, np.float64)
    d = np.sum(x * x, 1)
    dist = np.maximum(d[:, None] + d[None, :] - 2 * x @ x.T, 0.0)  # squared distances [N, N]
    n = len(x)
    np.fill_diagonal(dist, np.inf)
    target = np.log(perplexity)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    beta = np.ones(n) / max(np.median(dist[np.isfinite(dist)]), 1e-12)
    for _ in range(iters):
        logits = -dist * beta[:, None]
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), 1)
        too_flat = entropy > target  # entropy too high: sharpen (raise beta)
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2, (lo + hi) / 2)
        if np.max(np.abs(entropy - target)) < tol:
            break
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne(x, perplexity=30.0, steps=1000, seed=0):
    """Exact t-SNE of x [N, D] -> [N, 2]: early exaggeration 12 for 250 steps, momentum 0.5 then 0.8,
    learning rate max(N / 12, 50) (the 'auto' rate of openTSNE / sklearn), plain gradient descent."""
    p = jnp.asarray(tsne_affinities(x, perplexity), jnp.float32)
    n = p.shape[0]
    lr = max(n / 12.0, 50.0)
    y0 = 1e-4 * jax.random.normal(jax.random.key(seed), (n, 2))

    def gradient(y, exaggeration):
        diff = y[:, None, :] - y[None, :, :]  # [N, N, 2]
        w = 1.0 / (1.0 + jnp.sum(diff * diff, -1))  # Student-t kernel
        w = w * (1.0 - jnp.eye(n))
        q = w / jnp.sum(w)
        return 4.0 * jnp.sum(((exaggeration * p - q) * w)[..., None] * diff, axis=1)

    def step(t, carry):
        y, velocity = carry
        early = t < 250
        velocity = jnp.where(early, 0.5, 0.8) * velocity - lr * gradient(y, jnp.where(early, 12.0, 1.0))
        y = y + velocity
        return y - y.mean(0), velocity

    y, _ = jax.jit(lambda y: jax.lax.fori_loop(0, steps, step, (y, jnp.zeros_like(y))))(y0)
    return np.asarray(y)


def plot_tsne(points, labels, path, title):
    fig, ax = plt.subplots(figsize=(6.5, 6))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        m = labels == c
        ax.scatter(points[m, 0], points[m, 1], s=6, color=cmap(int(c) % cmap.N), label=str(c))
    ax.legend(title="class", markerscale=2.5, fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------


def nearest(train_f, query_f, k):
    """Indices [Q, k] of the k training features most cosine-similar to each query feature."""
    a = train_f / np.maximum(np.linalg.norm(train_f, axis=1, keepdims=True), 1e-12)
    b = query_f / np.maximum(np.linalg.norm(query_f, axis=1, keepdims=True), 1e-12)
    return np.argsort(-(b @ a.T), axis=1, kind="stable")[:, :k]


def plot_retrieval(queries, query_labels, neighbours, neighbour_labels, path, title):
    q, k = neighbours.shape[:2]
    fig, axes = plt.subplots(q, k + 1, figsize=(1.2 * (k + 1), 1.25 * q), squeeze=False)
    for i in range(q):
        axes[i, 0].imshow(queries[i])
        axes[i, 0].set_title(f"query {query_labels[i]}", fontsize=7)
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(neighbours[i, j])
            same = neighbour_labels[i, j] == query_labels[i]
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if same else "red")
                spine.set_linewidth(2)
            ax.set_title(str(neighbour_labels[i, j]), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tsne_examples", type=int, default=1000, help="First N test images in the t-SNE.")
    parser.add_argument(
        "--retrieval_train_examples", type=int, default=10000, help="Search the first N training images (0: all)."
    )
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--neighbours", type=int, default=8)
    parser.add_argument("--only", choices=("curves", "tsne", "retrieval"), default=None)
    args = parser.parse_args(argv)
    w = args.workdir
    written = []
    config, method, _ = evaluate.read_run(w)
    if args.only in (None, "curves"):
        plot_curves(read_scalars(w), os.path.join(w, "curves.png"), f"{method}: training curves ({w})")
        written.append("curves.png")
    if args.only in (None, "tsne", "retrieval"):
        mesh = data.make_mesh()
        train = data.load(config.data, config.data.train_split)
        test = data.load(config.data, config.data.eval_split)
        _, _, body, step = evaluate.load_body(w, max(1, train.num_examples // config.data.batch_size))
        mean, std = evaluate.normalization(config)
        embed_fn = evaluate.frozen_embed_fn(body, mean, std)
        batch = lambda n: evaluate.batch_size_for(int(config.eval.batch_size), n, mesh)
        if args.only in (None, "tsne"):
            subset = test.subset(range(min(args.tsne_examples, test.num_examples)))
            features, labels = evaluate.extract_features(embed_fn, subset, batch(subset.num_examples), mesh)
            plot_tsne(
                tsne(features),
                labels,
                os.path.join(w, "tsne.png"),
                f"{method} (step {step}): t-SNE of {len(labels)} test features",
            )
            written.append("tsne.png")
        if args.only in (None, "retrieval"):
            if args.retrieval_train_examples:
                train = train.subset(range(min(args.retrieval_train_examples, train.num_examples)))
            train_f, train_y = evaluate.extract_features(embed_fn, train, batch(train.num_examples), mesh)
            queries = test.get(np.linspace(0, test.num_examples - 1, args.queries).astype(int))
            query_f = np.asarray(embed_fn(jnp.asarray(queries["image"])))
            idx = nearest(train_f, query_f, args.neighbours)
            neighbours = train.get(idx.reshape(-1))["image"].reshape(*idx.shape, *train.image_shape)
            plot_retrieval(
                queries["image"],
                queries["label"],
                neighbours,
                train_y[idx],
                os.path.join(w, "retrieval.png"),
                f"{method} (step {step}): nearest of {train.num_examples} training images",
            )
            written.append("retrieval.png")
    print(f"wrote {', '.join(written)} into {w}")


if __name__ == "__main__":
    main()
