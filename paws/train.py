"""PAWS: Predicting view Assignments With Support samples.

Semi-supervised: a soft nearest-neighbour classifier gives every view of an unlabelled image (two
large views, small multi-crops) a distribution over the classes of a labelled "support" batch; each
view's prediction is trained to match the sharpened prediction of the other large view (a
stop-gradient target: no negatives, no momentum encoder), and mean-entropy maximisation keeps the
average prediction spread over all classes.

Loss, for anchor views z (after the prediction head), targets h (before it), supports z_S, h_S with
label matrix y_S ([S, C]), and rho(p) = p^(1/T) / sum_c p_c^(1/T) (sharpening):

    pi(x, x_S, y_S) = softmax(<x, x_S> / tau) y_S                 (soft nearest neighbours, cosines)
    p_i   = pi(z_i, z_S, y_S),   p+_i = rho(pi(h_i+, h_S, y_S))   (h_i+: the other view, no gradient)
    L     = 1/n sum_i H(p+_i, p_i)  +  sum_c pbar_c log pbar_c,   pbar = 1/n sum_i rho(p_i)

Paper: M. Assran et al., "Semi-Supervised Learning of Visual Features by Non-Parametrically
Predicting View Assignments with Support Samples", ICCV 2021, https://arxiv.org/abs/2104.13963.
Checked against facebookresearch/suncet src/losses.py (init_paws_loss) and src/paws_train.py.

    python paws/train.py --config paws/config.py --workdir runs/paws
    python -m common.evaluate --workdir runs/paws --protocol supervised --label_fraction 0.1  # baseline

    python -m paws.finetune --workdir runs/paws  # the official fine-tuning (src/fine_tune.py)

The labelled fraction (class-balanced, a function of the seed) is written to labelled.json.
Evaluation: soft nearest neighbours (snn_eval.py) of the test split against the labelled fraction,
beside the kNN monitor; the baseline is the same body trained from scratch on the same labels.
"""

import functools
import os
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


def torch_linear(in_dim, out_dim, rngs, dtype=None):
    """nn.Linear with PyTorch's default init (kept by the official heads), U(+-1/sqrt(in_dim)), in `dtype`."""
    bound = 1.0 / np.sqrt(in_dim)
    bias_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return nnx.Linear(in_dim, out_dim, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype, rngs=rngs)


def torch_batch_norm(dim, bn_momentum, rngs):
    """BatchNorm1d: eps 1e-5, running variance from the unbiased batch variance, as PyTorch."""
    return models.BatchNorm(dim, unbiased=True, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)


class ProjectionHead(nnx.Module):
    """The official encoder.fc: Linear-BN-ReLU-Linear-BN-ReLU-Linear, hidden width = body width."""

    def __init__(self, in_dim, hidden_dim, out_dim, bn_momentum, rngs, dtype=None):
        self.fc1 = torch_linear(in_dim, hidden_dim, rngs, dtype)
        self.bn1 = torch_batch_norm(hidden_dim, bn_momentum, rngs)
        self.fc2 = torch_linear(hidden_dim, hidden_dim, rngs, dtype)
        self.bn2 = torch_batch_norm(hidden_dim, bn_momentum, rngs)
        self.fc3 = torch_linear(hidden_dim, out_dim, rngs, dtype)

    def __call__(self, x):  # the output in float32
        x = jax.nn.relu(self.bn1(self.fc1(x)))
        return models.to_f32(self.fc3(jax.nn.relu(self.bn2(self.fc2(x)))))


class PredictionHead(nnx.Module):
    """The official encoder.pred (ImageNet only): BN-Linear-BN-ReLU-Linear with a bottleneck."""

    def __init__(self, dim, hidden_dim, bn_momentum, rngs, dtype=None):
        self.bn1 = torch_batch_norm(dim, bn_momentum, rngs)
        self.fc1 = torch_linear(dim, hidden_dim, rngs, dtype)
        self.bn2 = torch_batch_norm(hidden_dim, bn_momentum, rngs)
        self.fc2 = torch_linear(hidden_dim, dim, rngs, dtype)

    def __call__(self, h):  # the output in float32
        return models.to_f32(self.fc2(jax.nn.relu(self.bn2(self.fc1(self.bn1(h))))))


class PAWS(nnx.Module):
    """x -> (h, z): h = head(body(x)) is the target representation, z = pred(h) the anchor one
    (z = h without a prediction head, as the official code's CIFAR-10 setting)."""

    def __init__(self, config, rngs, body=None):
        m, dtype = config.model, models.compute_dtype(config.model)
        if body is None:  # the config's body (a reference check passes its own small one)
            kw = dict(stem=m.stem, img_size=config.views.crop_size, bn_momentum=m.bn_momentum, dtype=m.get("dtype"))
            body = models.create_body(m.name, **kw, rngs=rngs)
        self.body, has_pred = body, bool(m.pred_hidden_dim)
        self.head = ProjectionHead(self.body.num_features, m.proj_hidden_dim, m.proj_dim, m.bn_momentum, rngs, dtype)
        self.pred = PredictionHead(m.proj_dim, m.pred_hidden_dim, m.bn_momentum, rngs, dtype) if has_pred else None

    def __call__(self, x):  # [B, S, S, 3] -> (h, z), each [B, proj_dim] float32
        h = self.head(self.body(x))
        return h, (h if self.pred is None else self.pred(h))


class LabelledSet(nnx.Module):
    """The labelled fraction, sorted by class: the pool of the support batches. Constant, but in
    the state so that the step is a pure function of (state, batch, key) and a checkpoint records it."""

    def __init__(self, images, indices, extents=None):
        self.images = nnx.Variable(jnp.asarray(images))  # uint8 [C, n, H, W, 3], n per class
        self.indices = nnx.Variable(jnp.asarray(indices, jnp.int32))  # [C, n] into the train split
        whole = jnp.broadcast_to(jnp.asarray(images.shape[2:4], jnp.int32), (*images.shape[:2], 2))
        self.extents = nnx.Variable(whole if extents is None else jnp.asarray(extents, jnp.int32))  # [C, n, 2]


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def make_view(key, image, crop, cfg):
    """Flip and colour distortion of one crop [S, S, 3] in [0, 1], as the official torchvision code:
    RandomApply(ColorJitter(0.8s, 0.8s, 0.8s, 0.2s), 0.8), then (ImageNet) grayscale and blur, or
    (CIFAR-10) solarize with a threshold uniform in [0, 1]."""
    del crop  # every crop of PAWS gets the same recipe
    k_flip, k_color, k_gray, k_sol, k_thr, k_blur = jax.random.split(key, 6)
    s = cfg.color_strength
    x = augment.random_flip(k_flip, image, p=cfg.flip_p)
    x = augment.random_color_jitter(k_color, x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=cfg.color_p)
    x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
    if cfg.solarize_p > 0:
        solarized = augment.solarize(x, jax.random.uniform(k_thr))
        x = jnp.where(jax.random.uniform(k_sol) < cfg.solarize_p, solarized, x)
    if cfg.blur_p > 0:
        x = augment.random_gaussian_blur(k_blur, x, p=cfg.blur_p)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """Unlabelled views, torchvision semantics: uint8 [B, H, W, 3] -> (global [2, B, S, S, 3],
    local [local_crops_number, B, s, s, 3]) crop-major (local None without multi-crop); every crop
    inside its image's valid `extents` [B, 2] of the canvas (None: all of it)."""
    sizes, scales, counts = [cfg.crop_size], [cfg.crop_scale], [2]
    if cfg.local_crops_number:
        sizes.append(cfg.local_crop_size)
        scales.append(cfg.local_crop_scale)
        counts.append(cfg.local_crops_number)
    view = functools.partial(make_view, cfg=cfg)
    stacks = augment.multi_crop(
        key, augment.to_float(images), sizes, scales, counts, view, cfg.crop_ratio, extents=extents
    )
    return stacks[0], (stacks[1] if cfg.local_crops_number else None)


def make_support_views(key, images, cfg, extents=None):
    """Labelled views: `supervised_views` large crops of each support image, as the unlabelled
    global views (inside each image's `extents`). uint8 [S, H, W, 3] -> [supervised_views * S, S', S', 3],
    view-major."""
    view, sizes, scales = functools.partial(make_view, cfg=cfg), [cfg.crop_size], [cfg.crop_scale]
    args = sizes, scales, [cfg.supervised_views], view, cfg.crop_ratio
    (crops,) = augment.multi_crop(key, augment.to_float(images), *args, extents=extents)
    return crops.reshape(-1, *crops.shape[2:])


def sample_supports(key, num_classes, per_class, classes_per_batch, s_per_class):
    """A support batch from a class-sorted pool [num_classes, per_class, ...] as the official
    ClassStratifiedSampler draws it: `classes_per_batch` distinct classes, `s_per_class` distinct
    images of each, rows [a, b, c, a, b, c, ...] (the layout `labels_matrix` assumes). Returns the
    rows' indices into the pool, (class int32 [s * c], image int32 [s * c]): pool[class, image] is the
    support batch, of any array of the pool (its images, their extents), and `class` its true labels."""
    k_classes, k_images = jax.random.split(key)
    classes = jax.random.permutation(k_classes, num_classes)[:classes_per_batch]  # [c]
    keys = jax.random.split(k_images, classes_per_batch)
    picks = jax.vmap(lambda k: jax.random.permutation(k, per_class)[:s_per_class])(keys)  # [c, s]
    return jnp.tile(classes, s_per_class).astype(jnp.int32), picks.T.reshape(-1).astype(jnp.int32)


def labels_matrix(classes_per_batch, s_per_class, smoothing):
    """The official make_labels_matrix: [s * c, c] label-smoothed one-hot rows for the support
    layout above; column k is "the k-th sampled class" (the loss needs no true class ids)."""
    off = smoothing / classes_per_batch
    one_hot = jnp.tile(jnp.eye(classes_per_batch), (s_per_class, 1))
    return one_hot * (1.0 - smoothing) + off


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, eps): torch.nn.functional.normalize, as the official snn uses it."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), epsilon)


def sharpen(p, T):
    """Sharpening rho(p)_c = p_c^(1/T) / sum_c' p_c'^(1/T) of p [N, C] (paper Sec. 3; T 0.25)."""
    sharp_p = p ** (1.0 / T)
    return sharp_p / jnp.sum(sharp_p, axis=1, keepdims=True)


def snn(query, supports, support_labels, tau):
    """Soft nearest neighbours pi(q) = softmax_s(<q/|q|, x_s/|x_s|> / tau) @ y_S (paper Sec. 3):
    query [N, d], supports [S, d] (raw), support_labels [S, C] -> class probabilities [N, C]."""
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

    Objective: loss + me_max_reg, over the global batch (the mean is the official AllReduce of pbar).
    Shapes: anchor_views [(2 + multicrop) B, d] (after the head; view 1, view 2, multi-crops),
    target_views [2B, d] (before it), *_supports [S, d], *_labels [S, C]; me_max, multicrop static.
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


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, steps_per_epoch):
    """The official WarmupCosineSchedule: linear from start_lr to lr over the warmup, then cosine
    to final_lr at the last step (rates are absolute, as in the official configs)."""
    total = max(2, int(cfg.epochs * steps_per_epoch))  # a run of one step still has a schedule
    warmup = max(1, min(total - 1, int(cfg.warmup_epochs * steps_per_epoch)))
    return optax.warmup_cosine_decay_schedule(cfg.start_lr, cfg.lr, warmup, total, end_value=cfg.final_lr)


def lars_adapted(path):
    """The official init_opt's groups by PyTorch NAME: weight decay and LARS where the name has
    neither 'bias' nor 'bn': conv and Linear kernels, and the downsample batch norm's gamma (named
    layerX.0.downsample.1.weight there); nothing else. `path`: a key path in this project's model."""
    names = [str(getattr(k, "key", k)) for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
    return names[-1] == "kernel" or names[-2:] == ["downsample_bn", "scale"]


def lars_scaling(weight_decay, trust_coefficient, eps=1e-8):
    """The official src/lars.py step, before the wrapped SGD: for an adapted parameter p with
    gradient g, g <- (g + wd p) * eta |p| / (|g| + wd |p| + eps), and g unchanged (no decay either)
    when |p| or |g| is 0; the excluded parameters keep their raw gradient (weight decay 0)."""

    def one(path, g, p):
        if not lars_adapted(path):
            return g
        p_norm, g_norm = jnp.sqrt(jnp.sum(p * p)), jnp.sqrt(jnp.sum(g * g))
        ratio = trust_coefficient * p_norm / (g_norm + weight_decay * p_norm + eps)
        return jnp.where((p_norm > 0) & (g_norm > 0), (g + weight_decay * p) * ratio, g)

    update = lambda grads, state, params: (jax.tree_util.tree_map_with_path(one, grads, params), state)
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, schedule):
    """LARS around SGD as the official code: the LARS-scaled gradient d, then buf = m buf - lr d and
    p += buf (src/sgd.py keeps the learning rate inside the momentum buffer; no Nesterov)."""
    return optax.chain(
        lars_scaling(cfg.weight_decay, cfg.trust_coefficient),
        optax.scale_by_learning_rate(schedule),
        optax.trace(decay=cfg.momentum),
    )


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def labelled_indices(config, train_data):
    """The labelled fraction: a class-balanced function of the seed, [C, n] indices (row = class)."""
    labels = train_data.labels()
    chosen = data.balanced_subset(labels, config.data.label_fraction, train_data.num_classes, config.seed)
    chosen = chosen[np.argsort(labels[chosen], kind="stable")]
    return chosen.reshape(train_data.num_classes, -1)


def state_inputs(config, train_data):
    """What create_state needs from the training set: {"labelled": {"images": uint8 [C, n, H, W, 3],
    "extents": int32 [C, n, 2] (each image's valid box in its canvas),
    "indices": [C, n]}}, the labelled fraction sorted by class. Refuses a support batch it cannot fill."""
    indices = labelled_indices(config, train_data)
    if config.method.s_per_class > indices.shape[1] or config.method.classes_per_batch > indices.shape[0]:
        raise ValueError(
            f"A support batch of {config.method.classes_per_batch} classes x {config.method.s_per_class} "
            f"images needs that many in the labelled fraction ({indices.shape[0]} classes x "
            f"{indices.shape[1]}); lower method.classes_per_batch / method.s_per_class or raise "
            "data.label_fraction."
        )
    rows = train_data.get(indices.ravel())
    images, extents = rows["image"], rows["extent"].reshape(*indices.shape, 2)
    images = images.reshape(*indices.shape, *images.shape[1:])
    return {"labelled": {"images": images, "indices": indices, "extents": extents}}


def create_state(config, steps_per_epoch, labelled=None):
    """(graphdef, state, step_fn): the parts {model, optimizer, labelled} split into a graph and a
    pytree, and the pure step_fn(state, batch, key) -> (state, metrics). Without `labelled`
    (state_inputs' pool) the state has no labelled part: enough to restore the model for evaluation."""
    model = PAWS(config, nnx.Rngs(config.seed))
    schedule = learning_rate_schedule(config.optim, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    parts = {"model": model, "optimizer": optimizer}
    if labelled is not None:
        parts["labelled"] = LabelledSet(labelled["images"], labelled["indices"], labelled.get("extents"))
    graphdef, state = nnx.split(parts)
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def objective(model, x_s, x_g, x_l, config):
    """The official train_step's loss on supports x_s [V * S, ...], large views x_g [2, B, ...] and
    multi-crops x_l [local, B, ...] (or None) -> (loss, {xent, me_max_reg, h, z}), h, z in its row order."""
    m = config.method
    b, num_support = x_g.shape[1], x_s.shape[0]
    y_s = labels_matrix(m.classes_per_batch, m.s_per_class, m.label_smoothing)  # [S, c]
    y_s = jnp.tile(y_s, (config.views.supervised_views, 1))  # [V * S, c]
    # As the official forward: supports and the two large views in one pass (one set of
    # batch-norm statistics), the smaller multi-crops in a second one.
    h, z = model(jnp.concatenate([x_s, x_g.reshape(2 * b, *x_g.shape[2:])]))
    if x_l is not None:
        h_l, z_l = model(x_l.reshape(-1, *x_l.shape[2:]))
        h, z = jnp.concatenate([h, h_l]), jnp.concatenate([z, z_l])
    # Stop-gradient on every target (official .detach()); the swap makes row i of the targets the
    # OTHER large view of anchor row i.
    target, n = jax.lax.stop_gradient(h), num_support
    target_views = jnp.concatenate([target[n + b : n + 2 * b], target[n : n + b]])
    anchors, local = (z[num_support:], z[:num_support], y_s), config.views.local_crops_number
    xent, me_max_reg = paws_loss(*anchors, target_views, target[:num_support], y_s, m.tau, m.T, m.me_max, local)
    return xent + me_max_reg, {"xent": xent, "me_max_reg": me_max_reg, "h": h, "z": z}


def update(graphdef, config, schedule, state, x_s, x_g, x_l):
    """The step after the views (train_step's sampled ones, or a reference case's): loss, LARS update."""
    parts = nnx.merge(graphdef, state)
    model, optimizer = parts["model"], parts["optimizer"]
    (loss, aux), grads = nnx.value_and_grad(objective, has_aux=True)(model, x_s, x_g, x_l, config)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    metrics = {"loss": loss, "xent": aux["xent"], "me_max_reg": aux["me_max_reg"], "lr": lr}
    metrics["finite"] = checkpoint.all_finite(loss, nnx.state(model, nnx.Param))
    return nnx.state(parts), metrics


def train_step(graphdef, config, schedule, state, batch, key):
    """One step on the global batch; jitted with `graphdef, config, schedule` bound."""
    labelled = nnx.merge(graphdef, state)["labelled"]
    k_views, k_supports, k_support_views = jax.random.split(key, 3)
    # Supports: a new class-balanced draw each step, a pure function of (seed, step) through `key`.
    rows = sample_supports(
        k_supports, *labelled.images.shape[:2], config.method.classes_per_batch, config.method.s_per_class
    )
    support_images, support_extents = labelled.images[...][rows], labelled.extents[...][rows]
    x_s = make_support_views(k_support_views, support_images, config.views, support_extents)  # [V * S, ...]
    x_g, x_l = make_views(k_views, batch["image"], config.views, batch.get("extent"))  # [2, B, ...], [local, B, ...]
    return update(graphdef, config, schedule, state, x_s, x_g, x_l)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses: a fresh copy of the body, in eval mode."""
    body = nnx.merge(graphdef, state)["model"].body
    body.eval()
    return body


@nnx.jit(static_argnums=(2, 3))
def predict(model, images, mean, std):
    """uint8 images [B, H, W, 3] -> the anchor embeddings z [B, d]."""
    return model(augment.normalize(augment.to_float(images), mean, std))[1]


def snn_classify(query_z, support_z, support_y, num_classes, tau, chunk=1000):
    """snn_eval.py's classifier: query_z [N, d] vs support_z [S, d] with one-hot labels -> [N, C]."""
    support_labels = jax.nn.one_hot(support_y, num_classes)
    classify = jax.jit(lambda z: snn(z, support_z, support_labels, tau))
    return np.concatenate([classify(query_z[i : i + chunk]) for i in range(0, len(query_z), chunk)])


def semi_supervised_eval(graphdef, state, config, labelled_data, test_data, mesh):
    """Top-1 (%) of snn_classify on test_data's z (eval mode) against the labelled fraction's (tau as trained)."""
    model = nnx.merge(graphdef, state)["model"]
    model.eval()
    predict_fn = lambda images: predict(model, images, tuple(config.views.mean), tuple(config.views.std))
    test_z, test_y = evaluate.extract_features(predict_fn, test_data, config.eval.batch_size, mesh)
    support_z, support_y = evaluate.extract_features(predict_fn, labelled_data, config.eval.batch_size, mesh)
    probs = snn_classify(test_z, support_z, support_y, labelled_data.num_classes, config.method.tau)
    return 100.0 * float(np.mean(np.argmax(probs, axis=1) == test_y))


def scores(config, labelled_data, graphdef, state, knn_train, knn_test, mesh):
    """The kNN monitor of every method, and the paper's snn top-1 on the same test images."""
    knn = evaluate.knn_scores(get_body(graphdef, state), config, knn_train, knn_test, mesh)
    return {**knn, "snn_top1": semi_supervised_eval(graphdef, state, config, labelled_data, knn_test, mesh)}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    m, v, o = config.method, config.views, config.optim
    checks = [
        (0 < config.data.label_fraction <= 1, f"data.label_fraction={config.data.label_fraction} must lie in (0, 1]"),
        (m.tau > 0 and m.T > 0, f"method.tau={m.tau} and method.T={m.T} must be > 0"),
        (m.classes_per_batch >= 2, f"method.classes_per_batch={m.classes_per_batch} must be >= 2"),
        (m.s_per_class >= 1 and v.supervised_views >= 1, "method.s_per_class and views.supervised_views must be >= 1"),
        (0 <= m.label_smoothing < 1, f"method.label_smoothing={m.label_smoothing} must lie in [0, 1)"),
        (v.local_crops_number >= 0, f"views.local_crops_number={v.local_crops_number} must be >= 0"),
        (o.epochs > 0 and o.warmup_epochs >= 0, "optim.epochs must be > 0 and optim.warmup_epochs >= 0"),
    ]
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    train_data = data.load(config.data, config.data.train_split)
    inputs = state_inputs(config, train_data)
    indices = inputs["labelled"]["indices"].ravel()  # recorded with the run; snn's supports
    fraction = config.data.label_fraction
    record = {"label_fraction": fraction, "seed": config.seed, "indices": indices.tolist()}
    checkpoint.write_json(os.path.join(workdir, "labelled.json"), record)
    snn_scores = functools.partial(scores, config, train_data.subset(indices))
    create, results = functools.partial(create_state, **inputs), {"label_fraction": fraction}
    kw = dict(epochs=config.optim.epochs, train_data=train_data, scores=snn_scores, results=results)
    return loop.train(config, workdir, create, get_body, **kw)


if __name__ == "__main__":
    loop.cli(main)
