"""SwAV: Swapping Assignments between multiple Views.

SwAV clusters the embeddings of each image crop online by scoring them against K learnable,
L2-normalised prototypes and turning the scores of a batch into soft codes q with a few
Sinkhorn-Knopp iterations that spread the batch evenly over the prototypes. It then trains every
crop of an image (two large crops plus several small multi-crops) to predict, with a softmax over
the prototype scores, the code computed from another crop of the same image ("swapped
prediction"). No negatives, queue of pairs or momentum encoder is needed; the equipartition
constraint inside Sinkhorn is what prevents collapse. When the batch is small next to K, a queue
of past embeddings enlarges the set that Sinkhorn spreads over the prototypes.

Loss, for scores z_v = normalize(f(x_v)) C^T of crop v ([n_crops, B, K]) and the assigned crops A:

    q_a = sinkhorn(z_a / eps)                            (no gradient)
    L   = 1/|A| sum_{a in A} 1/(V-1) sum_{v != a} -1/B sum_b sum_k q_a[b,k] log softmax(z_v[b] / tau)_k

Paper: M. Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020, https://arxiv.org/abs/2006.09882. Checked against
facebookresearch/swav main_swav.py.

    python swav/train.py --config swav/config.py --workdir runs/swav

Augmentations follow the official PyTorch code (torchvision semantics: RandomResizedCrop per crop size,
flip, ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, grayscale p 0.2, Gaussian blur p 0.5 on every
crop). SwAV has no target network: the codes come from the same network, under a stop-gradient. The
README's benchmark table gives what the default preset reaches, and on which machine.
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


def torch_linear(in_dim, out_dim, rngs, use_bias=True, dtype=None):
    """nn.Linear with PyTorch's default initialisation (the official heads keep it): weight and bias
    ~ U(-1/sqrt(in_dim), 1/sqrt(in_dim)). Computes in `dtype`; the parameters are float32."""
    bound = in_dim**-0.5
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=use_bias,
        kernel_init=jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
        bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound),
        dtype=dtype,
        rngs=rngs,
    )


class ProjectionHead(nnx.Module):
    """Linear-BN-ReLU-Linear, as the official `projection_head` (hidden_mlp, then feat_dim); its
    BatchNorm1d keeps PyTorch's unbiased running variance. Matmuls in `dtype`; the output is float32."""

    def __init__(self, in_dim, hidden_dim, out_dim, bn_momentum, rngs, dtype=None):
        self.fc1 = torch_linear(in_dim, hidden_dim, rngs, dtype=dtype)
        self.bn1 = models.BatchNorm(hidden_dim, unbiased=True, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)
        self.fc2 = torch_linear(hidden_dim, out_dim, rngs, dtype=dtype)

    def __call__(self, h):
        return models.to_f32(self.fc2(jax.nn.relu(self.bn1(self.fc1(h)))))


class Queue(nnx.Variable):
    """Embeddings of past batches [A, L, D], of the A assigned crops: state, not a parameter (no
    gradient, no optimizer state), checkpointed as the state's "queue". The official queue is per GPU
    (queue_length / world_size rows each) and its Sinkhorn sums are all-reduced, so over all devices
    it is one queue of queue_length rows: this one."""


class SwAV(nnx.Module):
    """Body f, projection head g and prototypes C (a bias-free linear layer; its kernel [D, K] holds
    one prototype per column). `body`: a ready body module instead of config.model's (e.g. the
    reference cases' tiny ResNet)."""

    def __init__(self, config, rngs, body=None):
        self.body = body or models.create_body(
            config.model.name,
            stem=config.model.stem,
            img_size=config.views.crop_size,
            bn_momentum=config.model.bn_momentum,
            dtype=config.model.get("dtype"),
            rngs=rngs,
        )
        m, dtype = config.model, models.compute_dtype(config.model)
        self.head = ProjectionHead(self.body.num_features, m.proj_hidden_dim, m.proj_dim, m.bn_momentum, rngs, dtype)
        self.prototypes = torch_linear(m.proj_dim, m.num_prototypes, rngs, use_bias=False, dtype=dtype)
        self.bn_groups = config.method.bn_groups

    def __call__(self, crops):
        """crops: one crop-major stack [n_g, B, S_g, S_g, 3] per crop size.

        Returns the embeddings z [V, B, D] (unit norm) and the prototype scores z C [V, B, K], V crops.
        """
        groups, batch_size = self.bn_groups, crops[0].shape[1]

        def by_group(x):  # [n, B, ...] -> [G * n * B/G, ...]: the rows of one BN group (one "GPU group") together
            x = x.reshape(x.shape[0], groups, batch_size // groups, *x.shape[2:])
            return x.swapaxes(0, 1).reshape(-1, *x.shape[3:])

        # Official MultiCropWrapper-like forward: one body pass per crop size (batch norm statistics per
        # size), then ONE head pass over all crops. Batch norm runs per group of B / bn_groups images
        # (the official SyncBN process groups), over the global batch when bn_groups = 1.
        h = [models.grouped_forward(self.body, by_group(c), groups) for c in crops]  # [G * n_g * B/G, F] each
        h = jnp.concatenate([x.reshape(groups, -1, x.shape[-1]) for x in h], axis=1)  # [G, V * B/G, F]
        z = l2_normalize(models.grouped_forward(self.head, h.reshape(-1, h.shape[-1]), groups))
        z = z.reshape(groups, -1, batch_size // groups, z.shape[-1]).swapaxes(0, 1).reshape(-1, batch_size, z.shape[-1])
        return z, models.to_f32(self.prototypes(z))  # [V, B, D], [V, B, K], float32 (z normalised in float32)


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def make_view(key, image, index, cfg):
    """Flip, colour distortion and blur of one crop [S, S, 3] in [0, 1] (official MultiCropDataset: the
    same recipe for every crop, whatever its size or `index`), then normalisation."""
    k_flip, k_color, k_gray, k_blur = jax.random.split(key, 4)
    s = cfg.color_strength
    x = augment.random_flip(k_flip, image, p=cfg.flip_p)
    x = augment.random_color_jitter(k_color, x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=cfg.color_p)
    x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
    if cfg.blur_p > 0:  # PIL's blur, radius ~ U(0.1, 2); here a kernel of about 10% of the side
        x = augment.random_gaussian_blur(k_blur, x, p=cfg.blur_p, sigma=(0.1, 2.0))
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] -> multi-crop views, torchvision semantics, one key per image and crop: the two
    large crops [2, B, S, S, 3] and, when views.local_crops_number > 0, the small crops [n, B, s, s, 3];
    every crop inside its image's valid `extents` [B, 2] of the canvas (None: all of it)."""
    groups = [(cfg.crop_size, tuple(cfg.crop_scale), 2)]  # (size, area range, count) per crop size
    if cfg.local_crops_number:
        groups.append((cfg.local_crop_size, tuple(cfg.local_crop_scale), cfg.local_crops_number))
    sizes, scales, counts = zip(*groups)
    return augment.multi_crop(
        key,
        augment.to_float(images),
        sizes,
        scales,
        counts,
        view_fn=functools.partial(make_view, cfg=cfg),
        ratio=tuple(cfg.crop_ratio),
        extents=extents,
    )


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def l2_normalize(x, axis=-1, epsilon=1e-12):
    # torch.nn.functional.normalize: x / max(||x||, eps)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), epsilon)


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


def swav_loss(scores, temperature, epsilon, n_iters, crops_for_assign, queue_scores=None):
    """Swapped prediction loss over all crops (official `train()` loop).

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
        queue_scores: optional [A, L, K] scores of the queued embeddings of each assigned crop. They
            are put before the batch's scores, Sinkhorn runs over all L + B rows, and only the codes
            of the last B rows (the batch) are kept, as the official code does once its queue is full.

    Returns:
        Scalar loss.
    """
    n_crops, batch_size, _ = scores.shape
    assigned = jnp.asarray(crops_for_assign)  # [A]
    to_assign = scores[assigned]  # [A, B, K]
    if queue_scores is not None:
        to_assign = jnp.concatenate([queue_scores, to_assign], axis=1)  # [A, L + B, K]
    # Stop-gradient: the codes are targets, computed under torch.no_grad in the official code;
    # gradients reach the prototypes and the encoder only through the predictions p_v.
    q = jax.vmap(lambda s: sinkhorn(s, epsilon, n_iters))(jax.lax.stop_gradient(to_assign))[
        :, -batch_size:
    ]  # [A, B, K]
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)  # [n_crops, B, K]
    cross_entropy = -jnp.einsum("abk,vbk->av", q, log_p) / batch_size  # [A, n_crops]
    # A crop never predicts its own code.
    other_crop = jnp.arange(n_crops)[None, :] != assigned[:, None]  # [A, n_crops]
    per_assigned = jnp.sum(jnp.where(other_crop, cross_entropy, 0.0), axis=1) / (n_crops - 1)
    return jnp.mean(per_assigned)


def update_queue(queue, z):
    """First in, first out, newest first (official: queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = z).

    queue [A, L, D], z [A, B, D] (this batch's embeddings of the assigned crops) -> [A, L, D]: the
    oldest B rows drop out at the end.
    """
    return jnp.concatenate([z, queue[:, : queue.shape[1] - z.shape[1]]], axis=1)


def queue_is_full(queue):
    """Official test of a full queue: its last row is not all zeros (embeddings have unit norm)."""
    return jnp.any(queue[:, -1] != 0)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, steps_per_epoch):
    """Per-step rate of the official `lr_schedule`: np.linspace(start_lr, lr, warmup) (endpoint
    included: the last warmup step is already at lr), then cosine from lr to final_lr over the rest.

    The rate is the one for the configured batch: SwAV gives it per batch size (4.8 at 4096, 0.6 at 256).
    """
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    decay_steps = max(1, int(cfg.epochs * steps_per_epoch) - warmup)

    def schedule(step):
        ramp = cfg.start_lr + (cfg.lr - cfg.start_lr) * step / max(1, warmup - 1)
        t = jnp.clip(step - warmup, 0, decay_steps)
        cosine = cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + jnp.cos(jnp.pi * t / decay_steps))
        return jnp.where(step < warmup, ramp, cosine)

    return schedule


def larc(trust_coefficient, weight_decay, eps=1e-8):
    """apex LARC (clip=False), which takes over SGD's weight decay, on every parameter (BN and biases
    included): g <- (g + wd p) * eta ||p|| / (||g|| + wd ||p|| + eps), and g unchanged (no decay) where
    ||p|| = 0 or ||g|| = 0. A frozen (zero-gradient) parameter therefore gets no decay and, after
    the momentum below, no update and an empty buffer: the official `p.grad = None`."""

    def update(grads, state, params):
        def scale(g, p):
            p_norm, g_norm = jnp.linalg.norm(p), jnp.linalg.norm(g)
            trust = trust_coefficient * p_norm / (g_norm + weight_decay * p_norm + eps)
            return jnp.where((p_norm > 0) & (g_norm > 0), (g + weight_decay * p) * trust, g)

        return jax.tree.map(scale, grads, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, schedule):
    """The official LARC(SGD(momentum)): LARC rescales the gradient, SGD's momentum buffer sums the
    rescaled gradients (buf = m buf + g) and the rate multiplies the buffer (p -= lr_t buf). optax.lars
    differs: it scales by the rate before its momentum, and uses another trust ratio."""
    return optax.chain(
        larc(cfg.trust_coefficient, cfg.weight_decay),
        optax.trace(decay=cfg.momentum),
        optax.scale_by_learning_rate(schedule),
    )


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch, body=None):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the parts {model, optimizer, queue} (no queue when
    method.queue_length is 0) split into a static graph and a pytree of arrays, and step_fn(state,
    batch, key) -> (state, metrics), pure, for jax.jit. `body`: optional ready body (see SwAV).
    """
    model = SwAV(config, nnx.Rngs(config.seed), body)
    schedule = learning_rate_schedule(config.optim, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    parts = {"model": model, "optimizer": optimizer}
    m = config.method
    if m.queue_length:
        parts["queue"] = Queue(jnp.zeros((len(m.crops_for_assign), m.queue_length, config.model.proj_dim)))
    graphdef, state = nnx.split(parts)
    queue_start_step = int(m.epoch_queue_starts * steps_per_epoch)
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule, queue_start_step)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def normalize_prototypes(model):
    """Prototypes back on the unit sphere before the forward pass, so that the scores are cosines
    (official: in place under torch.no_grad at the start of every iteration)."""
    model.prototypes.kernel[...] = l2_normalize(model.prototypes.kernel[...], axis=0)


def objective(model, crops, queued, use_queue, config):
    """The swapped-prediction loss of one batch of crops -> (loss, {"z": [V, B, D], "scores": [V, B, K]}).

    queued: the queue [A, L, D] (None without one); use_queue: whether it is full, so that Sinkhorn
    runs over its L rows and the batch's B rows.
    """
    m = config.method
    z, scores = model(crops)
    loss_at = functools.partial(
        swav_loss,
        temperature=m.temperature,
        epsilon=m.epsilon,
        n_iters=m.sinkhorn_iterations,
        crops_for_assign=tuple(m.crops_for_assign),
    )
    if queued is None:
        return loss_at(scores), {"z": z, "scores": scores}
    queue_scores = queued @ model.prototypes.kernel[...]  # [A, L, K], current prototypes; no gradient (Sinkhorn)
    loss = jax.lax.cond(use_queue, lambda: loss_at(scores, queue_scores=queue_scores), lambda: loss_at(scores))
    return loss, {"z": z, "scores": scores}


def train_step(graphdef, config, schedule, queue_start_step, state, batch, key):
    """One step on the global batch; jitted with `graphdef, config, schedule, queue_start_step` bound."""
    crops = make_views(key, batch["image"], config.views, batch.get("extent"))
    return update(graphdef, config, schedule, queue_start_step, state, crops)


def update(graphdef, config, schedule, queue_start_step, state, crops):
    """The step after the views (the reference cases feed their stored crops here) -> (state, metrics)."""
    parts = nnx.merge(graphdef, state)
    model, optimizer, queue = parts["model"], parts["optimizer"], parts.get("queue")
    m = config.method
    normalize_prototypes(model)
    queued = None if queue is None else queue[...]  # [A, L, D]
    queue_in_use = queue is not None and queue_is_full(queued)
    (loss, outputs), grads = nnx.value_and_grad(objective, has_aux=True)(model, crops, queued, queue_in_use, config)
    step = optimizer.step[...]
    # Prototypes frozen for the first steps (official: their gradient is None). A zero gradient gets
    # no weight decay from LARC and leaves the momentum buffer empty: no update at all.
    frozen = step < m.freeze_prototypes_steps
    grads["prototypes"] = jax.tree.map(lambda g: jnp.where(frozen, 0.0, g), grads["prototypes"])
    optimizer.update(model, grads)
    metrics = {"loss": loss, "lr": schedule(step), "finite": checkpoint.all_finite(loss, nnx.state(model, nnx.Param))}
    if queue is not None:
        # This batch's embeddings of the assigned crops join the queue once it has started (official:
        # from epoch `epoch_queue_starts`); it is used from the step after it is full.
        z_assigned = jax.lax.stop_gradient(outputs["z"][jnp.asarray(m.crops_for_assign)])  # [A, B, D]
        queue[...] = jnp.where(step >= queue_start_step, update_queue(queued, z_assigned), queued)
        metrics["queue_in_use"] = queue_in_use.astype(jnp.float32)
    return nnx.state(parts), metrics


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses, as a fresh module in eval mode (a copy: switching
    it to eval leaves the training graph untouched)."""
    body = nnx.merge(graphdef, state)["model"].body
    body.eval()
    return body


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    m = config.method
    n_crops = 2 + config.views.local_crops_number
    if config.views.local_crops_number < 0:
        problems.append(f"views.local_crops_number={config.views.local_crops_number} must be >= 0")
    if not m.crops_for_assign or any(not 0 <= a < n_crops for a in m.crops_for_assign):
        problems.append(f"method.crops_for_assign={tuple(m.crops_for_assign)} must index crops 0..{n_crops - 1}")
    if m.temperature <= 0 or m.epsilon <= 0:
        problems.append(f"method.temperature={m.temperature} and method.epsilon={m.epsilon} must be > 0")
    if m.sinkhorn_iterations < 1:
        problems.append(f"method.sinkhorn_iterations={m.sinkhorn_iterations} must be >= 1")
    if m.queue_length < 0 or m.queue_length % config.data.batch_size:
        problems.append(
            f"method.queue_length={m.queue_length} must be a multiple of data.batch_size="
            f"{config.data.batch_size} (0 = no queue)"
        )
    if m.bn_groups < 1 or config.data.batch_size % m.bn_groups:
        problems.append(
            f"method.bn_groups={m.bn_groups} must be >= 1 and divide data.batch_size={config.data.batch_size}"
        )
    if config.optim.epochs <= 0 or config.optim.warmup_epochs < 0:
        problems.append("optim.epochs must be > 0 and optim.warmup_epochs >= 0")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    return loop.train(config, workdir, create_state, get_body, epochs=config.optim.epochs)


if __name__ == "__main__":
    loop.cli(main)
