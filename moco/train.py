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

    python moco/train.py --config moco/config.py --workdir runs/moco
    python moco/train.py --config moco/config.py:imagenet_v1 --workdir runs/moco_v1   # MoCo v1

Shuffling BN. The official code trains on 8 GPUs with per-GPU batch norm, and computes the keys on a
batch shuffled across GPUs, so that a query and its key never share batch-norm statistics (which
would let the model find its positive through the statistics, and "cheat"). Here the batch is one
global array over a data mesh, and batch norm would be global by default. Instead both encoders use
ghost batch norm: statistics per group of B / method.bn_groups contiguous rows (the official 8 GPUs'
local batches, or the official CIFAR-10 demo's SplitBatchNorm), and the key encoder sees the batch
in a random order, then un-shuffles its outputs. This equals the official behaviour on bn_groups GPUs
and gives the same numbers on any device count (tests/test_contract.py runs it on 1 and 8 devices).
Augmentations follow the official torchvision pipeline. The README's benchmark table gives what the
default preset reaches, and on which machine.
"""

import functools
import pathlib
import sys

if __package__ in (None, ""):  # run as a script: put the monorepo root (marked by WORKSPACE) on sys.path
    _root = pathlib.Path(__file__).resolve().parent
    while not (_root / "WORKSPACE").exists():
        _root = _root.parent
    sys.path.insert(0, str(_root))

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common import augment, checkpoint, loop, models

# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class Encoder(nnx.Module):
    """The body f(.) and the official fc head: v2's MLP (Linear-ReLU-Linear, with biases, `--mlp`)
    or v1's single Linear. [B, S, S, 3] -> [B, proj_dim] float32, not normalised. `body`: a ready-made
    body instead of config.model.name's (the reference checker passes the official case's tiny ResNet)."""

    def __init__(self, config, rngs, body=None):
        self.body = body or models.create_body(
            config.model.name,
            stem=config.model.stem,
            img_size=config.views.crop_size,
            bn_momentum=config.model.bn_momentum,
            dtype=config.model.get("dtype"),
            rngs=rngs,
        )
        width, dtype = self.body.num_features, models.compute_dtype(config.model)
        if config.model.mlp:
            self.fc1 = nnx.Linear(width, config.model.proj_hidden_dim, dtype=dtype, rngs=rngs)
            width = config.model.proj_hidden_dim
        else:
            self.fc1 = None
        self.fc2 = nnx.Linear(width, config.model.proj_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.body(x)
        if self.fc1 is not None:
            h = jax.nn.relu(self.fc1(h))
        return models.to_f32(self.fc2(h))


class Queue(nnx.Variable):
    """MoCo's dictionary and its pointer: buffers, changed by the step but never by the optimizer."""


def key_encoder(encoder_q):
    """The key encoder at initialisation: a copy of the query encoder (the official code copies param_q
    into param_k). nnx.clone shares the arrays; jnp.copy gives it buffers of its own, which the jitted
    step can donate."""
    encoder_k = nnx.clone(encoder_q)
    nnx.update(encoder_k, jax.tree.map(jnp.copy, nnx.state(encoder_k)))
    return encoder_k


def shuffled_keys(encoder_k, x, shuffle, groups):
    """Keys with shuffling BN: the key encoder sees the batch in the random order `shuffle` (a
    permutation of the B rows, the official idx_shuffle), so each key's batch-norm group (ghost BN,
    models.grouped_forward) differs from its query's; the outputs are put back in the original order.
    x: [B, ...] -> k: [B, proj_dim], without gradient (the official code computes keys under no_grad)."""
    k = models.grouped_forward(encoder_k, x[shuffle], groups)
    return jax.lax.stop_gradient(k[jnp.argsort(shuffle)])


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def make_view(key, image, cfg, extent=None):
    """One MoCo view of one float image [H, W, 3] in [0, 1], torchvision semantics (main_moco.py); the
    crop is drawn inside the image's valid top-left `extent` (height, width) of the canvas (None: all).

    v2 (`aug_plus`): crop, colour jitter with probability color_p, grayscale, blur, flip.
    v1: crop, grayscale, then colour jitter on every image, flip. The blur kernel is ~10% of the side
    (PIL's blur, used by the official code, has a radius sigma instead of a fixed kernel).
    """
    k_crop, k_color, k_gray, k_blur, k_flip = jax.random.split(key, 5)
    x = augment.random_resized_crop(
        k_crop, image, cfg.crop_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, extent=extent
    )
    if cfg.aug_plus:
        x = augment.random_color_jitter(k_color, x, *cfg.color_jitter, p=cfg.color_p)
        x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
        x = augment.random_gaussian_blur(k_blur, x, p=cfg.blur_p, sigma=cfg.blur_sigma)
    else:
        x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
        x = augment.color_jitter(k_color, x, *cfg.color_jitter)
    x = augment.random_flip(k_flip, x, p=cfg.flip_p)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] (extents [B, 2]: the batch's `extent`) -> query views and key views, each
    [B, S, S, 3], one key per image and view."""
    images = augment.to_float(images)
    k1, k2 = jax.random.split(key)
    view = functools.partial(make_view, cfg=cfg)
    return tuple(augment.apply_per_image(view, k, images, extents=extents) for k in (k1, k2))


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, eps) along `axis`, as torch's F.normalize. [..., D] -> [..., D]."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), epsilon)


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
    q = l2_normalize(q)
    # Stop-gradient on the keys and the queue: the key encoder is trained only through the momentum
    # update (the official code computes keys under no_grad; the queue is a buffer).
    k = jax.lax.stop_gradient(l2_normalize(k))
    queue = jax.lax.stop_gradient(queue)
    l_pos = jnp.sum(q * k, axis=-1, keepdims=True)  # [N, 1]
    # The queue holds keys of EARLIER batches only: the current keys are enqueued after the loss,
    # so they are never negatives for their own queries.
    l_neg = q @ queue.T  # [N, K]
    logits = jnp.concatenate([l_pos, l_neg], axis=1) / temperature  # [N, 1 + K]
    # Cross-entropy with the positive in column 0.
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def update_queue(queue, ptr, k):
    """Dequeue the oldest N keys and enqueue the current ones: queue[ptr:ptr+N] = l2_normalize(k).

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
    k = jax.lax.stop_gradient(l2_normalize(k)).astype(queue.dtype)
    ptr = jnp.asarray(ptr)
    queue = jax.lax.dynamic_update_slice(queue, k, (ptr, jnp.zeros_like(ptr)))  # one index dtype (x64 too)
    return queue, (ptr + n_new) % n_keys


def momentum_update(params_k, params_q, m):
    """Key-encoder update theta_k <- m * theta_k + (1 - m) * theta_q (MoCo eq. 2), on pytrees.

    The official forward runs it before computing the keys of the current batch.
    """
    return jax.tree.map(lambda theta_k, theta_q: theta_k * m + theta_q * (1 - m), params_k, params_q)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, batch_size, steps_per_epoch):
    """The learning rate at each step (an optax schedule of the step count), no warmup.

    v2 (`--cos`): lr * 0.5 * (1 + cos(pi * epoch / epochs)). With cfg.lr_schedule = 'per_epoch' the
    epoch is the integer epoch, so the rate is constant within an epoch and changes at its start
    (main_moco.py's adjust_learning_rate); 'per_step' uses the fractional epoch, a smooth decay.
    v1: x0.1 at each epoch listed in cfg.schedule (the same in both modes: its steps fall on epoch
    starts). cfg.scale_lr multiplies lr by B / 256 (the linear scaling rule); the official code uses
    --lr as given (0.03 for its batch of 256).
    """
    peak = cfg.lr * batch_size / 256 if cfg.scale_lr else cfg.lr
    if not cfg.cos:
        return optax.piecewise_constant_schedule(peak, {int(e * steps_per_epoch): 0.1 for e in cfg.schedule})

    def schedule(step):
        epoch = step / steps_per_epoch
        if cfg.lr_schedule == "per_epoch":
            epoch = jnp.floor(epoch)
        return peak * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(epoch, cfg.epochs) / cfg.epochs))

    return schedule


def make_optimizer(cfg, schedule):
    """torch.optim.SGD: weight decay added to the gradient before the momentum, on every parameter
    of the query encoder (biases and batch norm included, as the official code)."""
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.sgd(schedule, momentum=cfg.momentum))


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch, body=None):
    """Everything that changes during training, and the step that changes it (`body`: see Encoder).

    Returns (graphdef, state, step_fn): the parts, named as in the official module,
        encoder_q   the query encoder, trained by SGD
        encoder_k   the key encoder: a copy of encoder_q at initialisation, then its moving average
        queue       K unit keys [K, proj_dim] (the official buffer is its transpose), random at first
        queue_ptr   the row where the oldest keys start
        optimizer   SGD's state for encoder_q
    split into a static graph and a pytree of arrays, and step_fn(state, batch, key) -> (state,
    metrics), pure, for jax.jit.
    """
    rngs = nnx.Rngs(config.seed)
    encoder_q = Encoder(config, rngs, body)
    queue = jax.random.normal(rngs.params(), (config.method.queue_size, config.model.proj_dim))
    schedule = learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch)
    # Only the query encoder is optimised: the key encoder moves by the momentum update alone.
    optimizer = nnx.Optimizer(encoder_q, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split(
        {
            "encoder_q": encoder_q,
            "encoder_k": key_encoder(encoder_q),
            "queue": Queue(l2_normalize(queue)),
            "queue_ptr": Queue(jnp.zeros((), jnp.int32)),
            "optimizer": optimizer,
        }
    )
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def train_step(graphdef, config, schedule, state, batch, key):
    """One step on the global batch; jitted with `graphdef, config, schedule` bound: the two views and
    the key batch's shuffle are drawn here, the rest is `update`."""
    parts = nnx.merge(graphdef, state)
    k_views, k_shuffle = jax.random.split(key)
    x_q, x_k = make_views(k_views, batch["image"], config.views, batch.get("extent"))
    shuffle = jax.random.permutation(k_shuffle, x_k.shape[0])  # [B], the official idx_shuffle
    metrics = update(parts, x_q, x_k, shuffle, config, schedule)
    return nnx.state(parts), metrics


def update(parts, x_q, x_k, shuffle, config, schedule):
    """The step after the views, in the order of the official forward: momentum update, keys, loss,
    SGD, then the queue update. Changes `parts` in place and returns the metrics. x_q, x_k: [B, S, S, 3];
    shuffle: [B] permutation for shuffling BN. (The reference checker calls it with recorded views.)"""
    encoder_q, encoder_k, optimizer = parts["encoder_q"], parts["encoder_k"], parts["optimizer"]
    m, groups = config.method.momentum, config.method.bn_groups

    theta_k, theta_q = nnx.state(encoder_k, nnx.Param), nnx.state(encoder_q, nnx.Param)
    nnx.update(encoder_k, momentum_update(theta_k, theta_q, m))
    k = shuffled_keys(encoder_k, x_k, shuffle, groups)  # [N, D]
    queue = parts["queue"][...]  # [K, D], keys of earlier batches

    def loss_fn(encoder_q):
        q = models.grouped_forward(encoder_q, x_q, groups)  # [N, D]
        return moco_loss(q, k, queue, config.method.temperature), q

    (loss, q), grads = nnx.value_and_grad(loss_fn, has_aux=True)(encoder_q)
    lr = schedule(optimizer.step[...])
    optimizer.update(encoder_q, grads)
    parts["queue"][...], parts["queue_ptr"][...] = update_queue(queue, parts["queue_ptr"][...], k)

    # Instance-discrimination accuracy (main_moco.py's Acc@1): the positive beats every queued key.
    q, k = l2_normalize(q), l2_normalize(k)
    acc1 = jnp.mean(jnp.sum(q * k, axis=-1) > jnp.max(q @ queue.T, axis=-1))
    encoders = nnx.state({"encoder_q": encoder_q, "encoder_k": encoder_k}, nnx.Param)
    return {"loss": loss, "acc1": acc1, "lr": lr, "finite": checkpoint.all_finite(loss, encoders)}


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses: the query encoder's body, as a fresh module in eval
    mode (a copy: switching it to eval leaves the training graph untouched)."""
    body = nnx.merge(graphdef, state)["encoder_q"].body
    body.eval()
    return body


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    batch, groups, queue = config.data.batch_size, config.method.bn_groups, config.method.queue_size
    if groups < 1 or batch % groups or batch // groups < 2:
        problems.append(
            f"data.batch_size={batch} must split into method.bn_groups={groups} groups of "
            "at least 2 images (batch norm needs 2)"
        )
    if queue < batch or queue % batch:
        problems.append(
            f"method.queue_size={queue} must be a multiple of data.batch_size={batch}, "
            "so each enqueue fits without wrapping (as the official code asserts)"
        )
    if config.method.temperature <= 0:
        problems.append(f"method.temperature={config.method.temperature} must be > 0")
    if not 0.0 <= config.method.momentum <= 1.0:
        problems.append(f"method.momentum={config.method.momentum} must be in [0, 1]")
    if config.optim.epochs <= 0:
        problems.append("optim.epochs must be > 0")
    if config.optim.lr_schedule not in ("per_epoch", "per_step"):
        problems.append(f"optim.lr_schedule={config.optim.lr_schedule!r} must be 'per_epoch' or 'per_step'")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    return loop.train(config, workdir, create_state, get_body, epochs=config.optim.epochs)


if __name__ == "__main__":
    loop.cli(main)
