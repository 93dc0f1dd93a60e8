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

    python paws/train.py --config paws/config.py --workdir runs/paws
    python -m common.evaluate --workdir runs/paws --protocol supervised --label_fraction 0.1  # baseline

The labelled fraction (data.label_fraction of the training split, class-balanced, a function of the
seed) is written to the workdir (labelled.json). Evaluation is the paper's: soft nearest-neighbour
classification (snn, tau as in training) of the test split against the labelled fraction's
embeddings, beside the kNN monitor of every method. The baseline is common.evaluate's `supervised`
protocol: the same body trained from scratch on the same labelled fraction. The README's benchmark
table gives what the default preset reaches, and on which machine.
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


class ProjectionHead(nnx.Module):
    """The official encoder.fc: Linear-BN-ReLU-Linear-BN-ReLU-Linear, hidden width = body width."""

    def __init__(self, in_dim, hidden_dim, out_dim, bn_momentum, rngs):
        self.fc1 = nnx.Linear(in_dim, hidden_dim, rngs=rngs)
        self.bn1 = nnx.BatchNorm(hidden_dim, momentum=bn_momentum, rngs=rngs)
        self.fc2 = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.bn2 = nnx.BatchNorm(hidden_dim, momentum=bn_momentum, rngs=rngs)
        self.fc3 = nnx.Linear(hidden_dim, out_dim, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.bn1(self.fc1(x)))
        return self.fc3(jax.nn.relu(self.bn2(self.fc2(x))))


class PredictionHead(nnx.Module):
    """The official encoder.pred (ImageNet only): BN-Linear-BN-ReLU-Linear with a bottleneck."""

    def __init__(self, dim, hidden_dim, bn_momentum, rngs):
        self.bn1 = nnx.BatchNorm(dim, momentum=bn_momentum, rngs=rngs)
        self.fc1 = nnx.Linear(dim, hidden_dim, rngs=rngs)
        self.bn2 = nnx.BatchNorm(hidden_dim, momentum=bn_momentum, rngs=rngs)
        self.fc2 = nnx.Linear(hidden_dim, dim, rngs=rngs)

    def __call__(self, h):
        return self.fc2(jax.nn.relu(self.bn2(self.fc1(self.bn1(h)))))


class PAWS(nnx.Module):
    """x -> (h, z): h = head(body(x)) is the target representation, z = pred(h) the anchor one
    (z = h without a prediction head, as the official code's CIFAR-10 setting)."""

    def __init__(self, config, rngs):
        m = config.model
        self.body = models.create_body(
            m.name, stem=m.stem, img_size=config.views.crop_size, bn_momentum=m.bn_momentum, rngs=rngs
        )
        self.head = ProjectionHead(self.body.num_features, m.proj_hidden_dim, m.proj_dim, m.bn_momentum, rngs)
        self.pred = None
        if m.pred_hidden_dim:
            self.pred = PredictionHead(m.proj_dim, m.pred_hidden_dim, m.bn_momentum, rngs)

    def __call__(self, x):
        h = self.head(self.body(x))
        return h, (h if self.pred is None else self.pred(h))


class LabelledSet(nnx.Module):
    """The labelled fraction, sorted by class: the pool every support batch is drawn from.

    It never changes, but it lives in the state so that the step stays a pure function of
    (state, batch, key) that draws its own supports, and so that a checkpoint records the subset.
    """

    def __init__(self, images, indices):
        self.images = nnx.Variable(jnp.asarray(images))  # uint8 [C, n, H, W, 3], n per class
        self.indices = nnx.Variable(jnp.asarray(indices, jnp.int32))  # [C, n] into the train split


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


def make_views(key, images, cfg):
    """Unlabelled views, torchvision semantics: uint8 [B, H, W, 3] -> (global [2, B, S, S, 3],
    local [local_crops_number, B, s, s, 3]) crop-major; local is None without multi-crop."""
    sizes, scales, counts = [cfg.crop_size], [cfg.crop_scale], [2]
    if cfg.local_crops_number:
        sizes.append(cfg.local_crop_size)
        scales.append(cfg.local_crop_scale)
        counts.append(cfg.local_crops_number)
    view = functools.partial(make_view, cfg=cfg)
    stacks = augment.multi_crop(key, augment.to_float(images), sizes, scales, counts, view, cfg.crop_ratio)
    return stacks[0], (stacks[1] if cfg.local_crops_number else None)


def make_support_views(key, images, cfg):
    """Labelled views: `supervised_views` large crops of each support image, as the unlabelled
    global views. uint8 [S, H, W, 3] -> [supervised_views * S, S', S', 3], view-major."""
    view = functools.partial(make_view, cfg=cfg)
    (crops,) = augment.multi_crop(
        key, augment.to_float(images), [cfg.crop_size], [cfg.crop_scale], [cfg.supervised_views], view, cfg.crop_ratio
    )
    return crops.reshape(-1, *crops.shape[2:])


def sample_supports(key, pool, classes_per_batch, s_per_class):
    """A class-balanced support batch from the class-sorted pool uint8 [C, n, H, W, 3].

    As the official ClassStratifiedSampler: `classes_per_batch` distinct classes, `s_per_class`
    distinct images of each, laid out as [a, b, c, a, b, c, ...] so that row j is of the j-th
    sampled class modulo classes_per_batch (the layout `labels_matrix` assumes).

    Returns:
        images uint8 [s_per_class * classes_per_batch, H, W, 3], classes int32 [same] (true labels).
    """
    k_classes, k_images = jax.random.split(key)
    num_classes, per_class = pool.shape[:2]
    classes = jax.random.permutation(k_classes, num_classes)[:classes_per_batch]  # [c]
    keys = jax.random.split(k_images, classes_per_batch)
    picks = jax.vmap(lambda k: jax.random.permutation(k, per_class)[:s_per_class])(keys)  # [c, s]
    images = pool[classes[None, :], picks.T]  # [s, c, H, W, 3]
    return images.reshape(-1, *pool.shape[2:]), jnp.tile(classes, s_per_class).astype(jnp.int32)


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


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, steps_per_epoch):
    """The official WarmupCosineSchedule: linear from start_lr to lr over the warmup, then cosine
    to final_lr at the last step (rates are absolute, as in the official configs)."""
    total = max(2, int(cfg.epochs * steps_per_epoch))  # a run of one step still has a schedule
    warmup = max(1, min(total - 1, int(cfg.warmup_epochs * steps_per_epoch)))
    return optax.warmup_cosine_decay_schedule(cfg.start_lr, cfg.lr, warmup, total, end_value=cfg.final_lr)


def make_optimizer(cfg, schedule):
    """LARS; weight decay and trust-ratio adaptation skip biases and batch-norm parameters (ndim 1)."""
    is_kernel = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    decay = dict(weight_decay=cfg.weight_decay, weight_decay_mask=is_kernel)
    trust = dict(trust_coefficient=cfg.trust_coefficient, trust_ratio_mask=is_kernel)
    return optax.lars(schedule, **decay, **trust, momentum=cfg.momentum)


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
    "indices": [C, n]}}, the labelled fraction sorted by class. Refuses a support batch it cannot fill."""
    indices = labelled_indices(config, train_data)
    if config.method.s_per_class > indices.shape[1] or config.method.classes_per_batch > indices.shape[0]:
        raise ValueError(
            f"A support batch of {config.method.classes_per_batch} classes x {config.method.s_per_class} "
            f"images needs that many in the labelled fraction ({indices.shape[0]} classes x "
            f"{indices.shape[1]}); lower method.classes_per_batch / method.s_per_class or raise "
            "data.label_fraction."
        )
    images = train_data.get(indices.ravel())["image"]
    return {"labelled": {"images": images.reshape(*indices.shape, *images.shape[1:]), "indices": indices}}


def create_state(config, steps_per_epoch, labelled=None):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the parts {model, optimizer, labelled} split into a static
    graph and a pytree of arrays, and step_fn(state, batch, key) -> (state, metrics), pure, for
    jax.jit. `labelled` is state_inputs' labelled fraction; without it the state has no labelled
    part (enough to restore the model for evaluation) and the step cannot run.
    """
    model = PAWS(config, nnx.Rngs(config.seed))
    schedule = learning_rate_schedule(config.optim, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    parts = {"model": model, "optimizer": optimizer}
    if labelled is not None:
        parts["labelled"] = LabelledSet(labelled["images"], labelled["indices"])
    graphdef, state = nnx.split(parts)
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def train_step(graphdef, config, schedule, state, batch, key):
    """One step on the global batch; jitted with `graphdef, config, schedule` bound."""
    parts = nnx.merge(graphdef, state)
    model, optimizer, labelled = parts["model"], parts["optimizer"], parts["labelled"]
    m = config.method
    k_views, k_supports, k_support_views = jax.random.split(key, 3)
    # Supports: a new class-balanced draw each step, a pure function of (seed, step) through `key`.
    support_images, _ = sample_supports(k_supports, labelled.images[...], m.classes_per_batch, m.s_per_class)
    x_s = make_support_views(k_support_views, support_images, config.views)  # [V * S, ...]
    x_g, x_l = make_views(k_views, batch["image"], config.views)  # [2, B, ...], [local, B, ...]
    b, num_support = x_g.shape[1], x_s.shape[0]
    y_s = labels_matrix(m.classes_per_batch, m.s_per_class, m.label_smoothing)  # [S, c]
    y_s = jnp.tile(y_s, (config.views.supervised_views, 1))  # [V * S, c]

    def loss_fn(model):
        # As the official forward: supports and the two large views in one pass (one set of
        # batch-norm statistics), the smaller multi-crops in a second one.
        h, z = model(jnp.concatenate([x_s, x_g.reshape(2 * b, *x_g.shape[2:])]))
        anchor_views = z[num_support:]  # [2B, d]
        if x_l is not None:
            _, z_l = model(x_l.reshape(-1, *x_l.shape[2:]))
            anchor_views = jnp.concatenate([anchor_views, z_l])  # [(2 + local)B, d]
        # Stop-gradient on every target (official .detach()); the swap makes row i of the
        # targets the OTHER large view of anchor row i.
        h = jax.lax.stop_gradient(h)
        target_views = jnp.concatenate([h[num_support + b :], h[num_support : num_support + b]])
        z_s, h_s = z[:num_support], h[:num_support]  # the supports' anchor and target embeddings
        local = config.views.local_crops_number
        xent, me_max_reg = paws_loss(anchor_views, z_s, y_s, target_views, h_s, y_s, m.tau, m.T, m.me_max, local)
        return xent + me_max_reg, (xent, me_max_reg)

    (loss, (xent, me_max_reg)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    metrics = {"loss": loss, "xent": xent, "me_max_reg": me_max_reg, "lr": lr}
    metrics["finite"] = checkpoint.all_finite(loss, nnx.state(model, nnx.Param))
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


@nnx.jit(static_argnums=(2, 3))
def predict(model, images, mean, std):
    """uint8 images [B, H, W, 3] -> the anchor embeddings z [B, d]."""
    return model(augment.normalize(augment.to_float(images), mean, std))[1]


def semi_supervised_eval(graphdef, state, config, labelled_data, test_data, mesh, chunk=1000):
    """Top-1 (%) on test_data: snn of the test embeddings z against the labelled fraction's, with
    one-hot labels and the training tau (as the official snn_eval.py)."""
    model = nnx.merge(graphdef, state)["model"]
    model.eval()
    predict_fn = lambda images: predict(model, images, tuple(config.views.mean), tuple(config.views.std))
    test_z, test_y = evaluate.extract_features(predict_fn, test_data, config.eval.batch_size, mesh)
    support_z, support_y = evaluate.extract_features(predict_fn, labelled_data, config.eval.batch_size, mesh)
    support_labels = jax.nn.one_hot(support_y, labelled_data.num_classes)
    classify = jax.jit(lambda z: snn(z, support_z, support_labels, config.method.tau))
    probs = np.concatenate([classify(test_z[i : i + chunk]) for i in range(0, len(test_z), chunk)])
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
    problems = []
    if not 0 < config.data.label_fraction <= 1:
        problems.append(f"data.label_fraction={config.data.label_fraction} must lie in (0, 1]")
    if m.tau <= 0 or m.T <= 0:
        problems.append(f"method.tau={m.tau} and method.T={m.T} must be > 0")
    if m.classes_per_batch < 2 or m.s_per_class < 1 or v.supervised_views < 1:
        problems.append(
            "method.classes_per_batch >= 2, method.s_per_class >= 1 and "
            "views.supervised_views >= 1 are needed for a support batch"
        )
    if not 0 <= m.label_smoothing < 1:
        problems.append(f"method.label_smoothing={m.label_smoothing} must lie in [0, 1)")
    if v.local_crops_number < 0:
        problems.append(f"views.local_crops_number={v.local_crops_number} must be >= 0")
    if o.epochs <= 0 or o.warmup_epochs < 0:
        problems.append("optim.epochs must be > 0 and optim.warmup_epochs >= 0")
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
    return loop.train(
        config,
        workdir,
        functools.partial(create_state, **inputs),
        get_body,
        epochs=config.optim.epochs,
        train_data=train_data,
        scores=snn_scores,
        results={"label_fraction": fraction},
    )


if __name__ == "__main__":
    loop.cli(main)
