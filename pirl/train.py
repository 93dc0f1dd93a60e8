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

    python pirl/train.py --config pirl/config.py --workdir runs/pirl

Augmentations follow VISSL, i.e. torchvision (random resized crops, colour jitter, grayscale, flip) and
PIL (posterize, sharpness, solarize, autocontrast, as float analogues). Batch norm runs per group of
B / method.bn_groups images (VISSL: per GPU, 32 images). The memory bank is REPLICATED on every device,
as in VISSL: each example scores K rows drawn from the whole bank, and even ImageNet's (656 MB) fits on
any accelerator; the update after the loss writes the global batch's rows on every device alike. The
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
import numpy as np
import optax
from flax import nnx

from common import augment, checkpoint, data, evaluate, loop, models

# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class PIRL(nnx.Module):
    """One body for the image and every patch, and the paper's heads (Sec. 3.3, VISSL's config).

    f(v_I): body -> linear to D. g(v_It): each patch through the body -> a shared linear to D per
    patch -> the patch embeddings concatenated in their (shuffled) order [B, n * D] -> linear to D.
    The heads are linear, without batch norm or ReLU, as VISSL's pirl heads; they compute in
    config.model.dtype (float32 parameters) and return float32 embeddings.
    """

    def __init__(self, config, rngs):
        m = config.model
        kw = dict(stem=m.stem, img_size=config.views.crop_size, bn_momentum=m.bn_momentum, dtype=m.get("dtype"))
        self.body = models.create_body(m.name, **kw, rngs=rngs)
        dim, num_patches, dtype = m.embed_dim, config.views.grid**2, models.compute_dtype(m)
        self.image_head = nnx.Linear(self.body.num_features, dim, dtype=dtype, rngs=rngs)
        self.patch_head = nnx.Linear(self.body.num_features, dim, dtype=dtype, rngs=rngs)
        self.jigsaw_head = nnx.Linear(num_patches * dim, dim, dtype=dtype, rngs=rngs)

    def embed_image(self, images, bn_groups=1):
        """f(v_I): images [B, S, S, 3] -> [B, D]. Batch norm per group of B / bn_groups images (ghost BN,
        models.grouped_forward): VISSL's per-GPU batch norm over its 32 images."""
        return models.to_f32(self.image_head(models.grouped_forward(self.body, images, bn_groups)))

    def embed_jigsaw(self, patches, bn_groups=1):
        """g(v_It): patches [B, n, P, P, 3] -> [B, D]. The body sees the B * n patches as one batch apart
        from the images (its own batch-norm statistics, as VISSL's separate forward passes), in
        bn_groups groups of B / bn_groups images' patches (image-major rows: a GPU's 32 x 9 patches)."""
        b, n = patches.shape[:2]
        h = models.grouped_forward(self.body, patches.reshape(b * n, *patches.shape[2:]), bn_groups)
        return models.to_f32(self.jigsaw_head(self.patch_head(h).reshape(b, -1)))  # [B * n, D] -> [B, n * D] -> [B, D]


class Memory(nnx.Variable):
    """The memory bank: one unit embedding per training image, [N, D]; moved by momentum, not SGD."""


class NormConstant(nnx.Variable):
    """Z, the NCE model's normalisation constant: < 0 until estimated at the first step, then fixed."""


class MemoryBank(nnx.Module):
    """The memory bank m (Sec. 3.2) and Z; checkpointed with the rest of the state."""

    def __init__(self, size, dim, norm_constant, rngs):
        # VISSL: uniform in a cube, then each row L2-normalised (norm_init); the cube's side cancels.
        rows = jax.random.uniform(rngs.params(), (size, dim), minval=-1.0, maxval=1.0)
        self.memory = Memory(l2_normalize(rows))
        self.Z = NormConstant(jnp.asarray(norm_constant, jnp.float32))


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def photometric(key, img, cfg):
    """The per-view recipe VISSL applies to the image and to EACH patch: colour jitter, PIL photometric
    ops, grayscale, flip, normalise. [P, P, 3] in [0, 1] -> [P, P, 3]."""
    k_color, k_pil, k_gray, k_flip = jax.random.split(key, 4)
    x = augment.color_jitter(k_color, img, *cfg.color_jitter)
    x = augment.random_pil_photometric(k_pil, x, cfg.photometric_p)
    x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
    x = augment.random_flip(k_flip, x, p=cfg.flip_p)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_jigsaw(key, image, cfg, extent=None):
    """The jigsaw view v_It of one float image [H, W, 3] (VISSL ImgPilToPatchesAndImage).

    A random resized crop of side patch_crop_size is cut into a grid x grid of cells; from each cell a
    patch of side cell - patch_jitter is taken at a random offset in [0, patch_jitter) along each
    axis (the gap stops the network from matching patch borders), and the patches are shuffled by a
    random permutation. The crop is drawn inside the image's valid `extent` of the canvas (None: all).
    Returns [grid^2, P, P, 3].
    """
    k_crop, k_jitter, k_perm, k_views = jax.random.split(key, 4)
    x = augment.random_resized_crop(
        k_crop, image, cfg.patch_crop_size, scale=cfg.patch_crop_scale, ratio=cfg.crop_ratio, extent=extent
    )
    cell = cfg.patch_crop_size // cfg.grid
    size = cell - cfg.patch_jitter
    rows, cols = jnp.meshgrid(jnp.arange(cfg.grid), jnp.arange(cfg.grid), indexing="ij")
    corners = cell * jnp.stack([rows.ravel(), cols.ravel()], axis=1)  # [n, 2]
    corners = corners + jax.random.randint(k_jitter, corners.shape, 0, cfg.patch_jitter)
    patches = jax.vmap(lambda c: jax.lax.dynamic_slice(x, (c[0], c[1], 0), (size, size, 3)))(corners)
    patches = patches[jax.random.permutation(k_perm, cfg.grid**2)]  # [n, P, P, 3]
    keys = jax.random.split(k_views, cfg.grid**2)
    return jax.vmap(functools.partial(photometric, cfg=cfg))(keys, patches)


def make_view(key, image, cfg, extent=None):
    """The image view v_I of one float image [H, W, 3]: random resized crop (inside `extent`), then
    `photometric`."""
    k_crop, k_view = jax.random.split(key)
    x = augment.random_resized_crop(
        k_crop, image, cfg.crop_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, extent=extent
    )
    return photometric(k_view, x, cfg)


def make_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] (extents [B, 2]: the batch's `extent`) -> (patches [B, grid^2, P, P, 3], image
    views [B, S, S, 3]); torchvision semantics (VISSL), one key per image and view."""
    images = augment.to_float(images)
    k_jigsaw, k_image = jax.random.split(key)
    return (
        augment.apply_per_image(functools.partial(make_jigsaw, cfg=cfg), k_jigsaw, images, extents=extents),
        augment.apply_per_image(functools.partial(make_view, cfg=cfg), k_image, images, extents=extents),
    )


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
    patch_embedding, image_embedding, memory, indices, neg_idx_patch, neg_idx_image, temperature, Z, loss_type
):
    """PIRL loss of both branches against the memory bank (official NCELossWithMemory.forward).

        L = 0.5 L(m_I, g(v_It)) + 0.5 L(m_I, f(v_I))

    Z < 0 means "not yet known": the official code then sets Z = mean(exp(scores_patch)) * N_mem once,
    from the FIRST output (the patch branch), and keeps it for both branches; here the caller keeps Z
    in the train state. 'cross_entropy' (InfoNCE, label 0 over the K + 1 columns) returns Z unchanged.
    The negatives come from the caller, uniform WITH replacement and per branch (they may repeat or
    equal the positive, as in the official sampler); column 0 is overwritten with `indices`. For the
    global batch: the mean for Z over the sharded batch is the official all-gathered mean.

    Args (arrays as NumPy or JAX arrays):
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
    patch_embedding, image_embedding, memory, indices, neg_idx_patch, neg_idx_image = map(
        jnp.asarray, (patch_embedding, image_embedding, memory, indices, neg_idx_patch, neg_idx_image)
    )
    n_mem = memory.shape[0]
    patch_scores = memory_scores(patch_embedding, memory, neg_idx_patch.at[:, 0].set(indices), temperature)
    image_scores = memory_scores(image_embedding, memory, neg_idx_image.at[:, 0].set(indices), temperature)
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

    Args (arrays as NumPy or JAX arrays):
        memory: [N_mem, D] memory bank (unit rows).
        indices: [B] int, data-set indices of the batch images.
        image_embedding: [B, D] raw embedding f(v_I) (normalised here).
        momentum: memory momentum (paper 0.5).

    Returns:
        [N_mem, D] updated memory bank.
    """
    memory, indices = jnp.asarray(memory), jnp.asarray(indices)
    # Stop-gradient: the memory bank is a buffer, updated outside back-propagation (official
    # torch.no_grad).
    embedding = l2_normalize(jax.lax.stop_gradient(image_embedding))  # [B, D]
    updated = l2_normalize(momentum * memory[indices] + (1 - momentum) * embedding)  # [B, D]
    return memory.at[indices].set(updated)


def memory_from_features(config, train_data, graphdef, state, mesh):
    """The bank filled with f(x_i)/|f(x_i)| of every un-augmented training image x_i, by the network
    as it is (batch statistics, as in training), in data-set order (method.memory_init='features').

    VISSL starts the bank random (in the first epoch every positive is a random row); this makes the
    positives real from the first step, for short runs. Returns the state with the new bank, the network
    unchanged; main hands it to the loop, which applies it once to a fresh state, never on resume.
    """
    mean, std = tuple(config.views.mean), tuple(config.views.std)
    parts = nnx.merge(graphdef, state)
    scratch = nnx.merge(graphdef, state)["model"]  # a copy: its batch-norm statistics move and are dropped

    @nnx.jit
    def embed_image(model, images):
        return l2_normalize(model.embed_image(augment.normalize(augment.to_float(images), mean, std)))

    features, _ = evaluate.extract_features(
        lambda images: embed_image(scratch, images), train_data, config.eval.batch_size, mesh
    )
    parts["memory"].memory[...] = jnp.asarray(features)
    return nnx.state(parts)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, batch_size, steps_per_epoch):
    """lr(t) = end + 0.5 (peak - end) (1 + cos(pi t / epochs)), peak = lr x B/256, end = final_lr_fraction x
    peak, no warmup (VISSL: 0.03 per 256 images, 0.12 at 1024, to 0.00012); t the integer epoch for
    cfg.lr_schedule 'per_epoch' (VISSL update_interval: epoch) or the fractional one for 'per_step'."""
    peak = cfg.lr * batch_size / 256
    end = cfg.final_lr_fraction * peak

    def schedule(step):
        epoch = step / steps_per_epoch
        if cfg.lr_schedule == "per_epoch":
            epoch = jnp.floor(epoch)
        return end + 0.5 * (peak - end) * (1 + jnp.cos(jnp.pi * jnp.minimum(epoch, cfg.epochs) / cfg.epochs))

    return schedule


def make_optimizer(cfg, schedule):
    """PyTorch SGD with momentum: weight decay added to the gradient before the momentum; biases and
    batch-norm parameters (ndim 1) are not decayed (VISSL regularize_bias/regularize_bn False)."""
    is_kernel = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=is_kernel), optax.sgd(schedule, momentum=cfg.momentum)
    )


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the parts {model, memory (the bank with Z), optimizer} split
    into a static graph and a pytree of arrays, and step_fn(state, batch, key) -> (state, metrics),
    pure, for jax.jit. The bank starts random; main fills it with features when the config asks.
    """
    rngs = nnx.Rngs(config.seed)
    model = PIRL(config, rngs)
    bank = MemoryBank(config.method.memory_size, config.model.embed_dim, config.method.norm_constant, rngs)
    schedule = learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split({"model": model, "memory": bank, "optimizer": optimizer})
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def train_step(graphdef, config, schedule, state, batch, key):
    """One step on the global batch; jitted with `graphdef, config, schedule` bound.

    The key is split into (views, negatives of the patch branch, negatives of the image branch).
    """
    parts = nnx.merge(graphdef, state)
    model, bank, optimizer = parts["model"], parts["memory"], parts["optimizer"]
    k_views, k_patch, k_image = jax.random.split(key, 3)
    patches, images = make_views(k_views, batch["image"], config.views, batch.get("extent"))
    indices = batch["index"]  # [B] data-set indices: the positives' rows in the bank
    # K negatives per embedding, uniform with replacement over the whole bank and drawn separately for
    # each branch (VISSL's sampler); column 0 is replaced by the positive inside pirl_loss.
    shape = (indices.shape[0], config.method.num_negatives + 1)
    neg_idx_patch = jax.random.randint(k_patch, shape, 0, config.method.memory_size)  # [B, K + 1]
    neg_idx_image = jax.random.randint(k_image, shape, 0, config.method.memory_size)  # [B, K + 1]
    memory, Z = bank.memory[...], bank.Z[...]

    def loss_fn(model):
        patch_embedding = model.embed_jigsaw(patches, config.method.bn_groups)  # g(v_It) [B, D]
        image_embedding = model.embed_image(images, config.method.bn_groups)  # f(v_I) [B, D]
        m = config.method
        args = (patch_embedding, image_embedding, memory, indices, neg_idx_patch, neg_idx_image)
        loss, Z_used = pirl_loss(*args, m.temperature, Z, m.loss_type)
        return loss, (Z_used, image_embedding)

    (loss, (Z, image_embedding)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    # The bank moves after the loss, with the image embeddings of this step (Sec. 3.2); Z stays fixed
    # once estimated at the first step.
    bank.memory[...] = update_memory(memory, indices, image_embedding, config.method.memory_momentum)
    bank.Z[...] = Z
    finite = checkpoint.all_finite(loss, (nnx.state(model, nnx.Param), bank.memory[...]))
    metrics = {"loss": loss, "lr": lr, "Z": Z, "finite": finite}
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
    batch, groups = config.data.batch_size, config.method.bn_groups
    if groups < 1 or batch % groups or batch // groups < 2:  # batch norm needs 2 images per group
        problems.append(f"data.batch_size={batch} must split into method.bn_groups={groups} groups of >= 2 images")
    if config.optim.lr_schedule not in ("per_epoch", "per_step"):
        problems.append(f"optim.lr_schedule={config.optim.lr_schedule!r} must be 'per_epoch' or 'per_step'")
    if config.method.temperature <= 0:
        problems.append(f"method.temperature={config.method.temperature} must be > 0")
    if config.method.loss_type not in ("nce", "cross_entropy"):
        problems.append(f"method.loss_type={config.method.loss_type!r} must be 'nce' or 'cross_entropy'")
    if config.method.num_negatives < 1 or config.method.memory_size < 1:
        problems.append("method.num_negatives and method.memory_size must be >= 1")
    if not 0 <= config.method.memory_momentum < 1:
        problems.append(f"method.memory_momentum={config.method.memory_momentum} must be in [0, 1)")
    if config.method.memory_init not in ("random", "features"):
        problems.append(f"method.memory_init={config.method.memory_init!r} must be 'random' or 'features'")
    if config.method.norm_constant == 0:
        problems.append("method.norm_constant must be > 0, or < 0 to estimate Z at the first step")
    if config.views.patch_jitter < 1 or config.views.patch_crop_size // config.views.grid <= config.views.patch_jitter:
        problems.append(
            f"views.patch_jitter={config.views.patch_jitter} must be >= 1 and smaller than a grid "
            f"cell (views.patch_crop_size // views.grid = "
            f"{config.views.patch_crop_size // config.views.grid})"
        )
    if config.optim.epochs <= 0:
        problems.append("optim.epochs must be > 0")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    train_data = data.load(config.data, config.data.train_split)
    if train_data.num_examples != config.method.memory_size:  # one bank row per training image
        raise ValueError(
            f"Bad config: method.memory_size={config.method.memory_size} must equal the "
            f"{train_data.num_examples} training images. Fix it with "
            f"--config.method.memory_size={train_data.num_examples}."
        )
    initialize = None
    if config.method.memory_init == "features":
        initialize = functools.partial(memory_from_features, config, train_data)
    return loop.train(
        config,
        workdir,
        create_state,
        get_body,
        epochs=config.optim.epochs,
        train_data=train_data,
        initialize=initialize,
    )


if __name__ == "__main__":
    loop.cli(main)
