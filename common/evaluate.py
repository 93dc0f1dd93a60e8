"""Method-neutral evaluation of a learnt body: kNN, linear probe, fine-tuning, and the baselines.

Protocols (each returns {'top1': %, 'top5': %} on the test split):

  knn       The weighted kNN classifier of DINO's evaluation (Wu et al. 2018, "Unsupervised feature
            learning via non-parametric instance discrimination"; Caron et al. 2021): features are
            L2-normalised, a test image's k nearest training images by cosine similarity vote for
            their class with weight exp(similarity / T), and the classes are ranked by their summed
            votes. Defaults k=20, T=0.07, as DINO. Also the monitor every train.py runs.
  linear    A linear classifier on the frozen body (eval mode, running batch-norm statistics), trained
            with SGD + momentum and a cosine schedule on random-resized crops and flips of the training
            images (the usual protocol of SimCLR/MoCo/DINO); the test images are used whole. The
            features are standardised with fixed statistics of un-augmented training features (a
            batch norm without affine parameters in front of the classifier, as MoCo v3 / MAE).
            `precompute=True` instead extracts un-augmented features once and trains on those: much
            faster on a CPU, usually a little lower; the JSON records which was used.
  finetune  Body + linear head trained end to end (body in train mode) on a class-balanced labelled
            fraction of the training split (1%, 10% or 100%), same augmentation, SGD + momentum, cosine.

Every protocol sees the images through the run's evaluation view (`protocol_view(config)`, read
from `config.eval` with defaults when absent): `eval.image_size` (default: the data's image size, 0 =
the canvas the host delivers), `eval.crop_fraction` (default 1.0) and `eval.crop_style` ('torch',
default: Resize(size / crop_fraction) + CenterCrop(size) as the torch methods evaluate at 224 / 0.875;
'tf': SimCLR's 87.5% centre crop + bicubic resize), applied by `augment.center_crop` inside each
image's extent. The defaults reproduce the whole host image for square data sets. The trained
protocols' augmentation is a random resized crop inside the extent to the same size, and a flip.

Baselines on the same body and data:
  supervised  "Strong Sup" (fraction 1.0) / "Weak Sup" (0.01, 0.1): `finetune` from a random
              initialisation of the run's body, with the same epochs, augmentation and optimiser.
  pixels      kNN and linear probe on the raw pixels themselves (uint8 / 255, flattened).

Command line (reads the run's results.json for the method and config.json for the config; the only
place in common/ that imports a method, by the name the run wrote):

    python -m common.evaluate --workdir runs/simclr --protocol linear [--epochs 10] [--precompute]
    python -m common.evaluate --workdir runs/simclr --protocol finetune --label_fraction 0.1
    python -m common.evaluate --workdir runs/simclr --protocol supervised --label_fraction 0.01
    python -m common.evaluate --workdir runs/simclr --protocol pixels

prints top-1/top-5 and writes them to W/eval_<protocol>[_<pct>pct].json (or --output).
"""

import argparse
import functools
import importlib
import inspect
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import augment, checkpoint, data

# --------------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------------


def extract_features(embed_fn, dataset, batch_size, mesh):
    """Runs `embed_fn` over every example of `dataset` once, in order.

    embed_fn: a jitted function, uint8 images [B, H, W, 3] (sharded over 'data') -> features [B, D];
    one made by frozen_embed_fn (attribute `takes_extent`) also gets the batch's extents [B, 2].
    Returns (features float32 [N, D], labels int32 [N]) as host numpy arrays.
    """
    feats, labels = [], []
    takes_extent = getattr(embed_fn, "takes_extent", False)
    for batch, n_valid in data.eval_batches(dataset, batch_size, mesh):
        f = embed_fn(batch["image"], batch["extent"]) if takes_extent else embed_fn(batch["image"])
        y = batch["label"]
        feats.append(_to_host(f)[:n_valid])
        labels.append(_to_host(y)[:n_valid])
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


def _to_host(x):
    """A global array -> one host numpy array, gathered from every process when it spans several."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


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


def knn_classify(
    train_features, train_labels, test_features, test_labels, num_classes, k=20, temperature=0.07, chunk=1024
):
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
        scores = _knn_chunk(train, train_labels, test[start : start + chunk], k, temperature, num_classes)
        ranked = np.argsort(-np.asarray(scores), axis=1, kind="stable")
        truth = test_labels[start : start + chunk, None]
        top1 += int(np.sum(ranked[:, :1] == truth))
        top5 += int(np.sum(np.any(ranked[:, :5] == truth, axis=1)))
    n = len(test_labels)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def load_knn_data(config):
    """The kNN monitor's train and test splits of `config.data`, cut to the first
    `config.eval.knn_train_examples` / `knn_test_examples` examples when those are positive."""
    knn_train = data.load(config.data, config.data.train_split)
    knn_test = data.load(config.data, config.data.eval_split)
    if config.eval.knn_train_examples:
        knn_train = knn_train.subset(range(min(config.eval.knn_train_examples, knn_train.num_examples)))
    if config.eval.knn_test_examples:
        knn_test = knn_test.subset(range(min(config.eval.knn_test_examples, knn_test.num_examples)))
    return knn_train, knn_test


def knn_scores(body, config, knn_train, knn_test, mesh):
    """The kNN monitor of a training run: {'knn_top1', 'knn_top5'} of `body` (an NNX module in eval
    mode, normalised images -> features) with config.eval's k, temperature and batch size, on the
    run's evaluation view (protocol_view)."""
    embed_fn = frozen_embed_fn(body, tuple(config.views.mean), tuple(config.views.std), protocol_view(config))
    knn = knn_monitor(
        embed_fn,
        knn_train,
        knn_test,
        config.eval.batch_size,
        mesh,
        k=config.eval.knn_k,
        temperature=config.eval.knn_temperature,
    )
    return {"knn_top1": knn["top1"], "knn_top5": knn["top5"]}


def knn_monitor(embed_fn, train_dataset, test_dataset, batch_size, mesh, k=20, temperature=0.07):
    """Extracts features of both splits with `embed_fn` and returns knn_classify's {'top1', 'top5'}."""
    train_f, train_y = extract_features(embed_fn, train_dataset, batch_size, mesh)
    test_f, test_y = extract_features(embed_fn, test_dataset, batch_size, mesh)
    num_classes = max(train_dataset.num_classes, int(train_y.max()) + 1)
    return knn_classify(train_f, train_y, test_f, test_y, num_classes, k=k, temperature=temperature)


# --------------------------------------------------------------------------------------------------
# Shared pieces: accuracy, the optimiser, preprocessing, a frozen body's embed function
# --------------------------------------------------------------------------------------------------


def topk_accuracy(logits, labels):
    """{'top1', 'top5'} in percent for class scores [N, C] and labels [N] (top-5 is 100 when C <= 5).

    Ties are broken towards the lower class index, as knn_classify does.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    ranked = np.argsort(-logits, axis=1, kind="stable")
    return {
        "top1": 100.0 * float(np.mean(ranked[:, 0] == labels)),
        "top5": 100.0 * float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1))),
    }


def sgd_cosine(lr, momentum, weight_decay, total_steps, nesterov=False):
    """SGD with momentum, learning rate lr * (1 + cos(pi t / T)) / 2, decoupled from nothing: the
    weight decay is added to the gradient (PyTorch's SGD weight_decay) on kernels only (ndim > 1)."""
    schedule = optax.cosine_decay_schedule(lr, max(1, total_steps))
    is_kernel = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=is_kernel),
        optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
    )


def preprocess(images, mean, std, view=None, extents=None):
    """uint8 images [B, H, W, 3] -> normalised float32 images, as every train.py's `embed` feeds them;
    with a `view` (protocol_view's (size, crop_fraction, style)), first each image's centre crop
    inside its extent ([B, 2], None = whole arrays) -> [B, size, size, 3]."""
    x = augment.to_float(images)
    if view is not None:
        size, crop_fraction, style = view
        size = size or images.shape[1]
        if extents is None:
            extents = jnp.tile(jnp.array(images.shape[1:3], jnp.int32), (images.shape[0], 1))
        x = jax.vmap(lambda img, e: augment.center_crop(img, e, size, crop_fraction, style))(x, extents)
    return augment.normalize(x, mean, std)


def protocol_view(config):
    """(size, crop_fraction, style) of the run's evaluation view, from config.eval with defaults:
    eval.image_size (default data.image_size; 0 = the host canvas), eval.crop_fraction (1.0) and
    eval.crop_style ('torch'). See the module docstring."""
    ev = config.get("eval") or {}
    size = int(ev.get("image_size", config.data.get("image_size", 0)) or 0)
    return size, float(ev.get("crop_fraction", 1.0)), str(ev.get("crop_style", "torch"))


def train_view(key, image, crop_scale, size=None, extent=None):
    """The light augmentation of the linear and fine-tuning protocols on one float image [H, W, 3] in
    [0, 1]: a random resized crop inside its extent (None = the whole array) to size x size (None or
    0: H; scale `crop_scale`, ratio 3/4-4/3) and a flip."""
    k_crop, k_flip = jax.random.split(key)
    x = augment.random_resized_crop(k_crop, image, size or image.shape[0], scale=tuple(crop_scale), extent=extent)
    return augment.random_flip(k_flip, x)


def _calls_with_key(body):
    """True when the body's __call__ takes a `key` (a ViT with stochastic depth in train mode)."""
    return "key" in inspect.signature(type(body).__call__).parameters


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _embed(graphdef, state, images, mean, std, view, extents):
    return nnx.merge(graphdef, state)(preprocess(images, mean, std, view, extents))


def frozen_embed_fn(body, mean, std, view=None):
    """A jitted (uint8 images [B, H, W, 3], extents [B, 2] or None) -> features [B, D] of `body` in
    eval mode (a frozen copy), on the evaluation `view` (protocol_view; None: the whole images).
    One compiled function per body structure, reused by every call (the kNN monitor runs often)."""
    body = nnx.clone(body)
    body.eval()
    graphdef, state = nnx.split(body)
    view = None if view is None else tuple(view)

    def embed(images, extents=None):
        return _embed(graphdef, state, images, tuple(mean), tuple(std), view, extents)

    embed.takes_extent = True
    return embed


def _view_size(view, image_shape):
    """The side of the protocol's images: the view's size, or the canvas side without one."""
    return (view[0] if view is not None else 0) or image_shape[0]


def _progress(what, step, total, start):
    """A progress line about every 10% of a protocol's steps (process 0): step, rate and ETA."""
    if jax.process_index() == 0 and step and (step % max(1, total // 10) == 0 or step == total):
        rate = step / max(time.time() - start, 1e-9)
        print(f"{what}: step {step}/{total}  {rate:.2f} steps/s  ETA {(total - step) / rate:.0f} s", flush=True)


def batch_size_for(batch_size, num_examples, mesh):
    """The largest multiple of the device count that is <= both batch_size and num_examples."""
    devices = mesh.devices.size
    size = min(batch_size, num_examples) // devices * devices
    if size <= 0:
        raise ValueError(f"{num_examples} training examples cannot fill one batch on {devices} devices.")
    return size


# --------------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------------


def feature_statistics(features):
    """Per-dimension mean and std [D] (std floored at 1e-6) for the standardisation before the probe."""
    features = np.asarray(features, np.float64)
    return features.mean(0).astype(np.float32), np.maximum(features.std(0), 1e-6).astype(np.float32)


def init_linear(num_features, num_classes):
    """The probe's parameters: zero weights and biases (the probe is convex, so zero is fine and
    deterministic)."""
    return {"w": jnp.zeros((num_features, num_classes), jnp.float32), "b": jnp.zeros((num_classes,), jnp.float32)}


def linear_logits(params, features, mean, std):
    """features [N, D] -> class scores [N, C] of the standardised features."""
    return ((features - mean) / std) @ params["w"] + params["b"]


def _linear_loss(params, features, labels, mean, std):
    logits = linear_logits(params, features, mean, std)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@functools.partial(jax.jit, static_argnames=("tx", "epochs", "batch_size"))
def _fit_linear(params, features, labels, mean, std, key, tx, epochs, batch_size):
    """All epochs in one compiled loop: each epoch a fresh permutation, remainder dropped."""
    n = features.shape[0]
    steps = n // batch_size
    opt_state = tx.init(params)

    def epoch(carry, epoch_key):
        def step(carry, idx):
            params, opt_state = carry
            grads = jax.grad(_linear_loss)(params, features[idx], labels[idx], mean, std)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        order = jax.random.permutation(epoch_key, n)[: steps * batch_size].reshape(steps, batch_size)
        return jax.lax.scan(step, carry, order)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
    return params


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes,
    *,
    epochs=100,
    batch_size=256,
    lr=0.1,
    momentum=0.9,
    weight_decay=0.0,
    seed=0,
):
    """Linear probe on precomputed features: {'top1', 'top5'} on the test features, in percent.

    train_features [N, D], train_labels [N], test_features [M, D], test_labels [M]. Features are
    standardised with the training features' statistics; SGD + momentum with a cosine schedule over
    `epochs` epochs of batches of `batch_size`; cross-entropy on the softmax of W f + b.
    """
    train_features = jnp.asarray(train_features, jnp.float32)
    mean, std = feature_statistics(train_features)
    batch_size = min(batch_size, len(train_features))
    total = epochs * (len(train_features) // batch_size)
    tx = sgd_cosine(lr, momentum, weight_decay, total)
    params = _fit_linear(
        init_linear(train_features.shape[1], num_classes),
        train_features,
        jnp.asarray(train_labels, jnp.int32),
        mean,
        std,
        jax.random.key(seed),
        tx,
        epochs,
        batch_size,
    )
    logits = jax.jit(linear_logits)(params, jnp.asarray(test_features, jnp.float32), mean, std)
    return topk_accuracy(logits, test_labels)


def linear_probe_augmented(
    body,
    mean,
    std,
    train_dataset,
    test_dataset,
    mesh,
    *,
    epochs=10,
    batch_size=256,
    lr=0.1,
    momentum=0.9,
    weight_decay=0.0,
    crop_scale=(0.08, 1.0),
    stats_examples=10000,
    eval_batch_size=1000,
    seed=0,
    view=None,
):
    """Linear probe on a frozen body with random-resized-crop + flip augmentation.

    body: an NNX module, uint8-free: normalised images [B, H, W, 3] -> features [B, D]; used in eval
    mode (a copy) and never updated. mean, std: the per-channel normalisation the body was trained with.
    The features are standardised with statistics of un-augmented features of the first
    `stats_examples` training images. Returns {'top1', 'top5'} on the test images' evaluation view
    (`view`, protocol_view's; None: the whole images), in percent; the training crops have its size.
    """
    embed_fn = frozen_embed_fn(body, mean, std, view)
    size = _view_size(view, train_dataset.image_shape)
    stats_set = train_dataset.subset(range(min(stats_examples, train_dataset.num_examples)))
    feat_mean, feat_std = feature_statistics(
        extract_features(embed_fn, stats_set, batch_size_for(eval_batch_size, stats_set.num_examples, mesh), mesh)[0]
    )
    num_classes = train_dataset.num_classes
    frozen = nnx.clone(body)
    frozen.eval()
    graphdef, body_state = nnx.split(frozen)
    batch_size = batch_size_for(batch_size, train_dataset.num_examples, mesh)
    loader = data.Loader(train_dataset, batch_size, seed, mesh)
    total = max(1, int(epochs * loader.steps_per_epoch))
    tx = sgd_cosine(lr, momentum, weight_decay, total)
    params = checkpoint.replicate(init_linear(int(feat_mean.shape[0]), num_classes), mesh)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, body_state, images, extents, labels, key):
        views = augment.apply_per_image(
            functools.partial(train_view, crop_scale=crop_scale, size=size),
            key,
            augment.to_float(images),
            extents=extents,
        )
        # The body is frozen: no gradient reaches it (it is not differentiated at all).
        features = nnx.merge(graphdef, body_state)(augment.normalize(views, mean, std))
        grads = jax.grad(_linear_loss)(params, features, labels, feat_mean, feat_std)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    root, start = jax.random.key(seed), time.time()
    batches = loader.iterate(0)
    for s, batch in batches:
        if s >= total:
            break
        params, opt_state = step(
            params, opt_state, body_state, batch["image"], batch["extent"], batch["label"], jax.random.fold_in(root, s)
        )
        _progress("linear probe", s + 1, total, start)
    batches.close()
    test_f, test_y = extract_features(
        embed_fn, test_dataset, batch_size_for(eval_batch_size, test_dataset.num_examples, mesh), mesh
    )
    return topk_accuracy(jax.jit(linear_logits)(params, test_f, feat_mean, feat_std), test_y)


# --------------------------------------------------------------------------------------------------
# Fine-tuning (and the supervised baselines, which fine-tune a randomly initialised body)
# --------------------------------------------------------------------------------------------------


class Classifier(nnx.Module):
    """body + linear head, trained end to end."""

    def __init__(self, body, num_features, num_classes, rngs):
        self.body = body
        self.head = nnx.Linear(num_features, num_classes, rngs=rngs)

    def __call__(self, x, key=None):
        features = self.body(x, key) if key is not None else self.body(x)
        return self.head(features)


def finetune(
    body,
    mean,
    std,
    train_dataset,
    test_dataset,
    mesh,
    *,
    epochs=30,
    batch_size=256,
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-4,
    crop_scale=(0.08, 1.0),
    eval_batch_size=1000,
    seed=0,
    view=None,
):
    """Trains a copy of `body` with a new linear head end to end on `train_dataset` (the labelled
    fraction), body in train mode (batch-norm statistics update), SGD + Nesterov momentum, cosine
    schedule, random-resized-crop + flip (inside each image's extent, to the view's size). Returns
    {'top1', 'top5'} on `test_dataset`'s evaluation view (`view`; None: whole images), in percent."""
    body = nnx.clone(body)
    body.train()
    size = _view_size(view, train_dataset.image_shape)
    num_features = jax.eval_shape(
        lambda: frozen_embed_fn(body, mean, std)(jnp.zeros((1, size, size, 3), jnp.uint8))
    ).shape[-1]
    model = Classifier(body, num_features, train_dataset.num_classes, nnx.Rngs(seed))
    uses_key = _calls_with_key(body)
    batch_size = batch_size_for(batch_size, train_dataset.num_examples, mesh)
    loader = data.Loader(train_dataset, batch_size, seed, mesh)
    total = max(1, int(epochs * loader.steps_per_epoch))
    optimizer = nnx.Optimizer(model, sgd_cosine(lr, momentum, weight_decay, total, nesterov=True), wrt=nnx.Param)
    graphdef, state = nnx.split({"model": model, "optimizer": optimizer})
    state = checkpoint.replicate(state, mesh)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, images, extents, labels, key):
        parts = nnx.merge(graphdef, state)
        model, optimizer = parts["model"], parts["optimizer"]
        k_view, k_drop = jax.random.split(key)
        views = augment.apply_per_image(
            functools.partial(train_view, crop_scale=crop_scale, size=size),
            k_view,
            augment.to_float(images),
            extents=extents,
        )
        x = augment.normalize(views, mean, std)

        def loss_fn(model):
            logits = model(x, k_drop if uses_key else None)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state(parts), loss

    root, start = jax.random.key(seed), time.time()
    batches = loader.iterate(0)
    for s, batch in batches:
        if s >= total:
            break
        state, loss = step(state, batch["image"], batch["extent"], batch["label"], jax.random.fold_in(root, s))
        _progress("fine-tuning", s + 1, total, start)
    batches.close()
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"Fine-tuning diverged (loss {float(loss)}); lower --lr.")
    classify = frozen_embed_fn(nnx.merge(graphdef, state)["model"], mean, std, view)  # logits, eval mode
    logits, labels = extract_features(
        classify, test_dataset, batch_size_for(eval_batch_size, test_dataset.num_examples, mesh), mesh
    )
    return topk_accuracy(logits, labels)


def labelled_fraction(dataset, fraction, seed=0):
    """The class-balanced `fraction` of `dataset` (all of it for 1.0), as data.balanced_subset picks."""
    if fraction >= 1.0:
        return dataset
    return dataset.subset(data.balanced_subset(dataset.labels(), fraction, dataset.num_classes, seed))


# --------------------------------------------------------------------------------------------------
# Raw pixels baseline
# --------------------------------------------------------------------------------------------------


def pixel_features(dataset, mesh, batch_size=1000, view=None):
    """(uint8 images / 255 on the evaluation view (None: whole images) flattened, float32 [N, D],
    labels int32 [N])."""
    pixels = jax.jit(lambda images, extents: preprocess(images, (0.0,) * 3, (1.0,) * 3, view, extents))

    def flatten(images, extents):
        return pixels(images, extents).reshape(images.shape[0], -1)

    flatten.takes_extent = True
    return extract_features(flatten, dataset, batch_size_for(batch_size, dataset.num_examples, mesh), mesh)


def raw_pixels(
    train_dataset, test_dataset, mesh, *, k=20, temperature=0.07, epochs=100, batch_size=256, lr=0.1, seed=0, view=None
):
    """kNN and linear probe on raw pixels (of the evaluation view): {'knn': {...}, 'linear': {...}} in
    percent."""
    train_f, train_y = pixel_features(train_dataset, mesh, view=view)
    test_f, test_y = pixel_features(test_dataset, mesh, view=view)
    num_classes = train_dataset.num_classes
    return {
        "knn": knn_classify(train_f, train_y, test_f, test_y, num_classes, k=k, temperature=temperature),
        "linear": linear_probe(
            train_f, train_y, test_f, test_y, num_classes, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
        ),
    }


# --------------------------------------------------------------------------------------------------
# A run's workdir -> its body; the command line
# --------------------------------------------------------------------------------------------------

PROTOCOLS = ("knn", "linear", "finetune", "supervised", "pixels")


def read_run(workdir):
    """(config, method, module) of the run in `workdir`: config.json as a ConfigDict, results.json's
    method name and the module path of the train.py that wrote it (e.g. 'mybyol.train')."""
    import ml_collections

    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: --workdir must be a training run's workdir.")
    with open(path) as f:
        results = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return config, results["method"], results.get("module", f"{results['method']}.train")


def load_body(workdir, steps_per_epoch, restore=True):
    """(config, method, body, step) of the run in `workdir`.

    Imports the module that wrote the run (results.json's `module`: the one place in common/ that
    reaches a method, by what the run recorded, so a forked folder is evaluated with its own code),
    rebuilds the state with its `create_state(config, steps_per_epoch)` (no stage inputs: the
    checkpoint supplies every weight), restores the parts of the latest checkpoint that state has
    (unless restore=False: a random initialisation of the same body, for the supervised baselines)
    and returns `get_body(graphdef, state)`.
    """
    config, method, module_name = read_run(workdir)
    module = importlib.import_module(module_name)
    # steps_per_epoch only shapes the run's learning-rate schedule, which evaluation never uses.
    graphdef, state, _ = module.create_state(config, steps_per_epoch)
    state = checkpoint.replicate(state, data.make_mesh())  # on every device of every process, as in training
    step = 0
    if restore:
        ckpt = checkpoint.Checkpointer(workdir)
        state, step = ckpt.restore_or(state, partial=True)
        ckpt.close()
        if step == 0:
            raise FileNotFoundError(
                f"No checkpoint in {workdir}/checkpoints; train the run first "
                f"(python {method}/train.py --workdir {workdir})."
            )
    return config, method, module.get_body(graphdef, state), step


def normalization(config):
    """The per-channel (mean, std) the run normalised its views with: config.views.mean/std."""
    try:
        return tuple(float(m) for m in config.views.mean), tuple(float(s) for s in config.views.std)
    except AttributeError:
        raise ValueError(
            "The run's config has no views.mean / views.std; evaluation needs the "
            "normalisation the body was trained with."
        ) from None


def crop_scale_of(config):
    """The crop scale of the protocols' light augmentation: the run's own views.crop_scale when it has
    one (the paper protocols use (0.08, 1); 28-pixel images need a larger minimum), else (0.08, 1)."""
    if "views" in config and "crop_scale" in config.views:
        return tuple(float(s) for s in config.views.crop_scale)
    return (0.08, 1.0)


def default_epochs(protocol, fraction, precompute=False):
    """CPU-sized defaults: linear 10 epochs (100 with --precompute, cheap); fine-tuning and the
    supervised baselines 60 / 30 / 10 epochs for 1% / 10% / 100% of the labels (SimCLR fine-tunes
    60 epochs on 1% and 30 on 10%)."""
    if protocol == "linear":
        return 100 if precompute else 10
    if protocol in ("finetune", "supervised"):
        return 60 if fraction <= 0.01 else 30 if fraction <= 0.1 else 10
    return 100  # the pixels' linear probe on precomputed pixels


def output_name(protocol, fraction):
    if protocol in ("finetune", "supervised"):
        return f"eval_{protocol}_{round(100 * fraction):g}pct.json"
    return f"eval_{protocol}.json"


def machine():
    """Where the evaluation ran, in words (device kind x count, host CPU count)."""
    device = jax.devices()[0]
    return (
        f"{jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"{os.cpu_count()} CPU cores, {platform.machine()}"
    )


def evaluate_run(
    workdir,
    protocol,
    *,
    label_fraction=1.0,
    epochs=None,
    precompute=False,
    batch_size=256,
    lr=None,
    train_examples=0,
    test_examples=0,
    seed=0,
    output=None,
):
    """Runs one protocol on the run in `workdir`, writes the JSON, and returns it as a dict."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    if not 0 < label_fraction <= 1:
        raise ValueError(f"--label_fraction must lie in (0, 1], got {label_fraction}.")
    start = time.time()
    config, method, _ = read_run(workdir)
    mesh = data.make_mesh()
    train = data.load(config.data, config.data.train_split)
    test = data.load(config.data, config.data.eval_split)
    if protocol == "pixels":  # needs no body
        body, step = None, 0
    else:
        config, method, body, step = load_body(
            workdir, max(1, train.num_examples // config.data.batch_size), restore=protocol != "supervised"
        )
    mean, std = normalization(config)
    view = protocol_view(config)
    if train_examples:
        train = train.subset(range(min(train_examples, train.num_examples)))
    if test_examples:
        test = test.subset(range(min(test_examples, test.num_examples)))
    if not train.num_classes:
        raise ValueError(f"{train!r} is unlabelled; evaluation needs a labelled train and test split.")
    epochs = default_epochs(protocol, label_fraction, precompute) if epochs is None else epochs
    # Fields every method's config shares (STYLE: shared concepts carry the same names).
    eval_batch = int(config.eval.batch_size)
    result = {
        "method": method,
        "protocol": protocol,
        "step": int(step),
        "body": "raw pixels" if protocol == "pixels" else str(config.model.name),
        "train_examples": train.num_examples,
        "test_examples": test.num_examples,
    }

    def trained(lr):  # the arguments the two trained protocols share
        return dict(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            crop_scale=crop_scale_of(config),
            eval_batch_size=eval_batch,
            seed=seed,
            view=view,
        )

    if protocol == "knn":
        k, t = int(config.eval.knn_k), float(config.eval.knn_temperature)
        scores = knn_monitor(
            frozen_embed_fn(body, mean, std, view),
            train,
            test,
            batch_size_for(eval_batch, min(train.num_examples, test.num_examples), mesh),
            mesh,
            k=k,
            temperature=t,
        )
        result.update(k=k, temperature=t)
    elif protocol == "linear":
        lr = 0.1 if lr is None else lr
        if precompute:
            embed_fn = frozen_embed_fn(body, mean, std, view)
            b = batch_size_for(eval_batch, min(train.num_examples, test.num_examples), mesh)
            train_f, train_y = extract_features(embed_fn, train, b, mesh)
            test_f, test_y = extract_features(embed_fn, test, b, mesh)
            scores = linear_probe(
                train_f,
                train_y,
                test_f,
                test_y,
                train.num_classes,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
            )
        else:
            scores = linear_probe_augmented(body, mean, std, train, test, mesh, **trained(lr))
        result.update(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            features="precomputed, no augmentation"
            if precompute
            else f"on the fly, random resized crop {list(crop_scale_of(config))} + flip",
        )
    elif protocol in ("finetune", "supervised"):
        lr = 0.05 if lr is None else lr
        labelled = labelled_fraction(train, label_fraction, seed)
        scores = finetune(body, mean, std, labelled, test, mesh, **trained(lr))
        result.update(
            label_fraction=label_fraction,
            labelled_examples=labelled.num_examples,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            init="random (supervised baseline)" if protocol == "supervised" else f"checkpoint step {step}",
        )
    else:  # pixels
        pixels = raw_pixels(
            train, test, mesh, epochs=epochs, batch_size=batch_size, lr=0.1 if lr is None else lr, seed=seed, view=view
        )
        scores = {
            "top1": pixels["linear"]["top1"],
            "top5": pixels["linear"]["top5"],
            "knn_top1": pixels["knn"]["top1"],
            "knn_top5": pixels["knn"]["top5"],
        }
        result.update(epochs=epochs, note="top1/top5: linear probe on pixels; knn_*: kNN on pixels")
    result.update(scores)
    result.update(eval_view={"image_size": view[0], "crop_fraction": view[1], "crop_style": view[2]})
    result.update(wall_time_s=round(time.time() - start, 1), machine=machine())
    path = output or os.path.join(workdir, output_name(protocol, label_fraction))
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(
            f"{method} {protocol}"
            + (f" {100 * label_fraction:g}% labels" if protocol in ("finetune", "supervised") else "")
            + f": top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%"
            + (f" (kNN top-1 {result['knn_top1']:.2f}%)" if protocol == "pixels" else "")
            + f"; wrote {path}"
        )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="A run's workdir (results.json, config.json, checkpoints/).")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--label_fraction", type=float, default=1.0, help="finetune/supervised: 0.01, 0.1 or 1.0.")
    parser.add_argument("--epochs", type=int, default=None, help="Default: see default_epochs().")
    parser.add_argument(
        "--precompute",
        action="store_true",
        help="linear: train on features extracted once without augmentation (fast on CPU).",
    )
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="Default 0.1 (linear, pixels), 0.05 (finetune).")
    parser.add_argument("--train_examples", type=int, default=0, help="Use the first N training examples (0: all).")
    parser.add_argument("--test_examples", type=int, default=0, help="Use the first N test examples (0: all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON path (default W/eval_<protocol>[_<pct>pct].json).")
    args = parser.parse_args(argv)
    checkpoint.maybe_initialize_distributed()  # several processes: JAX_COORDINATOR_ADDRESS etc., as training
    checkpoint.use_compilation_cache()
    return evaluate_run(
        args.workdir,
        args.protocol,
        label_fraction=args.label_fraction,
        epochs=args.epochs,
        precompute=args.precompute,
        batch_size=args.batch_size,
        lr=args.lr,
        train_examples=args.train_examples,
        test_examples=args.test_examples,
        seed=args.seed,
        output=args.output,
    )


if __name__ == "__main__":
    main()
