"""SimCLRv2: big self-supervised models are strong semi-supervised learners.

Three stages, one run each, chosen by `config.stage`: (1) `pretrain` a body with SimCLR's contrastive
loss and a deeper, 3-layer projection head; (2) `finetune` the body plus the head's first layer and a new
linear classifier on a small labelled fraction of the training set; (3) `distill` the fine-tuned
teacher's temperature-softened predictions on all (unlabelled) training images into a student of the
same or a smaller body. Each stage starts from the trained model of the previous stage's run in
`config.init_workdir`, which `main` reads and hands to `create_state`.

For normalised projections h_i of 2N views (i and i' two views of one image), temperature tau, and
teacher/student logits with distillation temperature T:

    l(i, i')      = -log exp(<h_i, h_i'> / tau) / sum_{k != i} exp(<h_i, h_k> / tau)
    L_contrastive = 1/N sum_i [ l(i, i') + l(i', i) ]       (official: sum of the two directions)
    L_finetune    = cross-entropy of the classifier on the labelled fraction
    L_distill     = -T^2 1/N sum_x sum_y P_T(y|x; T) log P_S(y|x; T),  P(y|x; T) = softmax(logits / T)

Paper: T. Chen, S. Kornblith, K. Swersky, M. Norouzi, G. Hinton, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", NeurIPS 2020, https://arxiv.org/abs/2006.10029. Checked against
google-research/simclr tf2/objective.py (add_contrastive_loss), tf2/model.py (the projection head and
its fine-tuning layer) and tf2/colabs/distillation_self_training.ipynb (add_kd_loss).

    python simclr2/train.py --config simclr2/config.py --workdir runs/simclr2/pretrain
    python simclr2/train.py --config simclr2/config.py --config.stage=finetune \
        --config.init_workdir=runs/simclr2/pretrain --workdir runs/simclr2/finetune
    python simclr2/train.py --config simclr2/config.py --config.stage=distill \
        --config.init_workdir=runs/simclr2/finetune --workdir runs/simclr2/distill

The supervised baseline is stage `finetune` with `--config.init_workdir=''` (the same network from a random
initialisation). Pretraining views follow the official TensorFlow code (as simclr/); fine-tuning and
distillation use random crop and flip only, as the paper. The README's benchmark table gives what the
default preset reaches, and on which machine.
"""

import functools
import json
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

STAGES = ("pretrain", "finetune", "distill")


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class HeadLayer(nnx.Module):
    """One layer of the projection head: Linear-BN(-ReLU). As the official code, no linear bias (the
    BN shift replaces it) and the last layer has neither a BN shift nor a ReLU. Batch norm as the
    official Keras layer: decay bn_momentum (0.9), epsilon 1e-5, biased running variance; the kernel
    ~ N(0, 0.01^2) as the official LinearLayer. The matmul in `dtype` (float32 parameters)."""

    def __init__(self, in_dim, out_dim, last, bn_momentum, rngs, dtype=None):
        init = jax.nn.initializers.normal(0.01)
        self.fc = nnx.Linear(in_dim, out_dim, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
        self.bn = models.BatchNorm(
            out_dim, unbiased=False, momentum=bn_momentum, epsilon=1e-5, use_bias=not last, rngs=rngs
        )
        self.last = last

    def __call__(self, x):
        x = self.bn(self.fc(x))
        return x if self.last else jax.nn.relu(x)


def create_body(config, name, rngs):
    """The official TF ResNet (resnet.py): 'SAME' stem max-pool, biased BN running variance, and the
    last BN gamma of every residual block initialised to 0 (each block starts as the identity)."""
    m = config.model
    kw = dict(stem=m.stem, img_size=config.views.crop_size, bn_momentum=m.bn_momentum, dtype=m.get("dtype"))
    return models.create_body(
        name, **kw, padding="tf", bn_unbiased=False, zero_init_residual=m.zero_init_residual, rngs=rngs
    )


def projection_head(in_dim, cfg, num_layers, rngs):
    """The first num_layers of the cfg.proj_layers layers of g(.) (Sec. 2: 3 layers), widths in_dim ->
    proj_hidden_dim -> ... -> proj_dim (the official hidden width is in_dim, the body's)."""
    dims = [in_dim] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1) + [cfg.proj_dim]
    last, dtype = cfg.proj_layers - 1, models.compute_dtype(cfg)
    return nnx.List(
        [HeadLayer(dims[i], dims[i + 1], i == last, cfg.bn_momentum, rngs, dtype) for i in range(num_layers)]
    )


class SimCLRv2(nnx.Module):
    """Pretraining network: z = g(f(x)) with the deeper projection head g."""

    def __init__(self, config, rngs):
        self.body = create_body(config, config.model.name, rngs)
        self.head = projection_head(self.body.num_features, config.model, config.model.proj_layers, rngs)

    def __call__(self, x):
        h = self.body(x)
        for layer in self.head:
            h = layer(h)
        return models.to_f32(h)


class Classifier(nnx.Module):
    """Fine-tuned network and distillation student: body, the first `head_layers` layers of the
    projection head (Sec. 2: fine-tune "from the first layer of the projection head"), then a new
    linear classifier. The student has head_layers = 0. zero_init: the classifier's kernel and bias
    start at 0 (the official fine-tuning command's --zero_init_logits_layer=True)."""

    def __init__(self, config, body_name, head_layers, rngs, zero_init=False):
        self.body = create_body(config, body_name, rngs)
        self.head = projection_head(self.body.num_features, config.model, head_layers, rngs)
        width = self.head[-1].fc.out_features if head_layers else self.body.num_features
        # The official supervised head: a linear layer with bias, kernel ~ N(0, 0.01^2) or zeros.
        init = jax.nn.initializers.zeros if zero_init else jax.nn.initializers.normal(0.01)
        dtype = models.compute_dtype(config.model)
        self.classifier = nnx.Linear(width, config.data.num_classes, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x):  # [B, S, S, 3] -> float32 logits [B, num_classes]
        h = self.body(x)
        for layer in self.head:
            h = layer(h)
        return models.to_f32(self.classifier(h))


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def make_view(key, image, cfg, extent=None):
    """One SimCLR view of one float image [H, W, 3] in [0, 1] (Appendix A of SimCLR)."""
    k_crop, k_flip, k_color, k_gray, k_blur, k_sigma = jax.random.split(key, 6)
    # TensorFlow's sample_distorted_bounding_box (min_object_covered 0.1, 100 attempts) + bicubic resize.
    x = augment.tf_random_crop(k_crop, image, cfg.crop_size, area=cfg.crop_scale, ratio=cfg.crop_ratio, extent=extent)
    x = augment.random_flip(k_flip, x, p=cfg.flip_p)
    x = augment.simclr_color_jitter(k_color, x, cfg.color_strength, p=cfg.color_p)
    x = jnp.clip(augment.random_grayscale(k_gray, x, p=cfg.gray_p), 0.0, 1.0)  # official: clip, then blur
    if cfg.blur_p > 0:  # kernel 10% of the side, sigma ~ U(0.1, 2.0), zero padding as the official code
        sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
        blurred = augment.simclr_gaussian_blur(x, cfg.crop_size // 10, sigma)
        x = jnp.where(jax.random.uniform(k_blur) < cfg.blur_p, blurred, x)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """Pretraining: uint8 [B, H, W, 3] -> two stacks of views [B, S, S, 3], one key per image and view."""
    images = augment.to_float(images)
    k1, k2 = jax.random.split(key)
    view = functools.partial(make_view, cfg=cfg)
    return tuple(augment.apply_per_image(view, k, images, extents=extents) for k in (k1, k2))


def make_crop_flip_view(key, image, cfg, extent=None):
    """Fine-tuning and distillation: random crop and horizontal flip only (paper, Appendix; the
    official code turns colour distortion off outside pretraining). [H, W, 3] -> [S, S, 3]."""
    k_crop, k_flip = jax.random.split(key)
    x = augment.tf_random_crop(k_crop, image, cfg.crop_size, area=cfg.crop_scale, ratio=cfg.crop_ratio, extent=extent)
    x = jnp.clip(augment.random_flip(k_flip, x, p=cfg.flip_p), 0.0, 1.0)  # bicubic can overshoot [0, 1]
    return augment.normalize(x, cfg.mean, cfg.std)


def make_crop_flip_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] -> one stack of crop-and-flip views [B, S, S, 3]."""
    view = functools.partial(make_crop_flip_view, cfg=cfg)
    return augment.apply_per_image(view, key, augment.to_float(images), extents=extents)


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def l2_normalize(x, axis=-1, epsilon=1e-12):
    # tf.math.l2_normalize: x / sqrt(max(sum x^2, epsilon))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), epsilon))


def nt_xent_loss(z1, z2, temperature):
    """NT-Xent over the global batch. z1, z2: [N, D] raw projections of view 1 and view 2 -> scalar.

    As the official code: for view-1 anchors the logits are [h1 h2^T | h1 h1^T] / T, with each anchor's
    own similarity masked by subtracting 1e9; the positive is column i of the first block. The loss is
    mean over anchors of view 1 PLUS mean over anchors of view 2 (twice the "average over 2N anchors").
    """
    h1, h2 = l2_normalize(z1), l2_normalize(z2)
    n = h1.shape[0]
    mask = 1e9 * jnp.eye(n, dtype=h1.dtype)
    logits_ab = h1 @ h2.T / temperature
    logits_aa = h1 @ h1.T / temperature - mask
    logits_ba = h2 @ h1.T / temperature
    logits_bb = h2 @ h2.T / temperature - mask
    labels = jnp.arange(n)
    loss_a = optax.softmax_cross_entropy_with_integer_labels(jnp.concatenate([logits_ab, logits_aa], 1), labels)
    loss_b = optax.softmax_cross_entropy_with_integer_labels(jnp.concatenate([logits_ba, logits_bb], 1), labels)
    return jnp.mean(loss_a) + jnp.mean(loss_b)


def distillation_loss(student_logits, teacher_logits, temperature):
    """Knowledge distillation of the fine-tuned teacher into the student (official add_kd_loss):
    L = mean_n T^2 CE(softmax(teacher_logits / T), student_logits / T), logits [N, C] -> scalar. The
    T^2 factor is in the official code, not in the paper's equation: it keeps the gradient scale
    independent of T (Hinton et al., 2015)."""
    # Stop-gradient: the teacher is fixed during distillation (paper Sec. 2); only the student learns.
    teacher_probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=1)
    per_example = optax.softmax_cross_entropy(student_logits / temperature, teacher_probs)  # [N]
    return jnp.mean(temperature**2 * per_example)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def stage_optim(config):
    """The optimiser settings of the configured stage (epochs, warmup, rate, decay)."""
    return {"pretrain": config.optim, "finetune": config.finetune, "distill": config.distill}[config.stage]


def stage_batch_size(config):
    """The global batch of the configured stage: data.batch_size for pretraining, else the stage's own
    (the official fine-tuning command uses 1024 where pretraining uses 4096)."""
    return config.data.batch_size if config.stage == "pretrain" else stage_optim(config).batch_size


def learning_rate_schedule(cfg, batch_size, steps_per_epoch):
    """Linear warmup to the scaled rate, then cosine decay to 0 (SimCLR Sec. B.1); no warmup when
    warmup_epochs is 0 (fine-tuning, SimCLRv2 Appendix)."""
    if cfg.lr_scaling == "linear":
        peak = cfg.lr * batch_size / 256
    else:  # 'sqrt': e.g. 0.075 * sqrt(B), better for small batches (SimCLR Appendix B.1)
        peak = cfg.lr * batch_size**0.5
    total = max(1, int(cfg.epochs * steps_per_epoch))
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    if warmup == 0:
        return optax.cosine_decay_schedule(peak, total)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)


def lars_mask(params, excluded):
    """True for the parameters LARS decays (or adapts): as the official exclusion by name, False for
    every parameter whose path names one of `excluded` (batch-norm layers are named bn*)."""
    names = lambda path: [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(e in n for n in names(path) for e in excluded), params
    )


def make_optimizer(cfg, weight_decay, schedule):
    """LARS as the official lars_optimizer.py with classic momentum: v <- m v + lr * trust * (g + wd w),
    w <- w - v, trust = eta |w| / |g + wd w| (1 where a norm is 0); optax.lars is that chain. As the
    official exclude_from_weight_decay=['batch_normalization', 'bias', 'head_supervised'], batch-norm
    parameters and biases get neither decay nor trust ratio, and the classifier no trust ratio; its
    kernel is still decayed (officially by an L2 term added to the loss: the same gradient)."""
    return optax.lars(
        schedule,
        weight_decay=weight_decay,
        weight_decay_mask=functools.partial(lars_mask, excluded=("bn", "bias")),
        trust_coefficient=cfg.trust_coefficient,
        trust_ratio_mask=functools.partial(lars_mask, excluded=("bn", "bias", "classifier")),
        momentum=cfg.momentum,
    )


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch, init=None):
    """Everything that changes during training, and the step that changes it.

    pretrain: {model, optimizer}. finetune: {model, optimizer}, the classifier network; `init`, the
    pretraining run's model, gives the body and the first ft_proj_layer head layers (None: random,
    the supervised baseline). distill: {student, teacher, optimizer}; `init`, the fine-tuning run's
    model, is the teacher, fixed (eval mode, no optimizer); the student starts from random. Without
    `init` the teacher is random: a state of the right shape, only good for restoring.

    Returns (graphdef, state, step_fn): the parts split into a static graph and a pytree of arrays,
    and step_fn(state, batch, key) -> (state, metrics), pure, for jax.jit.
    """
    rngs = nnx.Rngs(config.seed)
    ocfg = stage_optim(config)
    schedule = learning_rate_schedule(ocfg, stage_batch_size(config), steps_per_epoch)
    if config.stage == "pretrain":
        model = SimCLRv2(config, rngs)
        parts = {"model": model}
    elif config.stage == "finetune":
        zero_init = config.finetune.zero_init_classifier
        model = Classifier(config, config.model.name, config.model.ft_proj_layer, rngs, zero_init)
        if init is not None:
            checkpoint.assign(model.body, init["body"])
            checkpoint.assign(model.head, {k: v for k, v in init["head"].items() if int(k) < len(model.head)})
        parts = {"model": model}
    else:
        model = Classifier(config, config.model.student_name, 0, rngs)
        teacher = Classifier(config, config.model.name, config.model.ft_proj_layer, rngs)
        if init is not None:
            checkpoint.assign(teacher, init)
        teacher.eval()  # a fixed teacher: batch norm with its running statistics, nothing updated
        parts = {"student": model, "teacher": teacher}
    # The optimizer of the trained network only (the teacher has none).
    parts["optimizer"] = nnx.Optimizer(model, make_optimizer(config.optim, ocfg.weight_decay, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split(parts)
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def pretrain_update(parts, x1, x2, temperature, schedule):
    """Pretraining after the views x1, x2 [B, S, S, 3]: NT-Xent and the LARS update of parts, in place."""
    model, optimizer = parts["model"], parts["optimizer"]

    def loss_fn(model):
        # Both views in one forward pass: batch norm statistics over all 2N views, as the official code.
        z1, z2 = jnp.split(model(jnp.concatenate([x1, x2])), 2)
        return nt_xent_loss(z1, z2, temperature)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    return {"loss": loss, "lr": lr, "finite": checkpoint.all_finite(loss, nnx.state(model, nnx.Param))}


def finetune_update(parts, x, labels, schedule):
    """Fine-tuning after the views x [B, S, S, 3]: cross-entropy with the labels [B], in place."""
    model, optimizer = parts["model"], parts["optimizer"]

    def loss_fn(model):
        logits = model(x)  # [B, C]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    (loss, accuracy), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    finite = checkpoint.all_finite(loss, nnx.state(model, nnx.Param))
    return {"loss": loss, "accuracy": accuracy, "lr": lr, "finite": finite}


def distill_update(parts, x, temperature, schedule):
    """Distillation after the views x [B, S, S, 3] (Eq. 2): teacher and student see the same view; only
    the student learns. In place."""
    student, teacher, optimizer = parts["student"], parts["teacher"], parts["optimizer"]
    teacher_logits = teacher(x)  # [B, C], outside loss_fn: only the student is differentiated

    def loss_fn(student):
        return distillation_loss(student(x), teacher_logits, temperature)

    loss, grads = nnx.value_and_grad(loss_fn)(student)
    lr = schedule(optimizer.step[...])
    optimizer.update(student, grads)
    return {"loss": loss, "lr": lr, "finite": checkpoint.all_finite(loss, nnx.state(student, nnx.Param))}


def train_step(graphdef, config, schedule, state, batch, key):
    """One step of the configured stage on the global batch: its views, then its update; jitted with
    `graphdef, config, schedule` bound. Distillation uses the images only, not their labels."""
    parts = nnx.merge(graphdef, state)
    if config.stage == "pretrain":
        x1, x2 = make_views(key, batch["image"], config.views, batch.get("extent"))
        metrics = pretrain_update(parts, x1, x2, config.method.temperature, schedule)
    elif config.stage == "finetune":
        metrics = finetune_update(
            parts,
            make_crop_flip_views(key, batch["image"], config.views, batch.get("extent")),
            batch["label"],
            schedule,
        )
    else:
        x = make_crop_flip_views(key, batch["image"], config.views, batch.get("extent"))
        metrics = distill_update(parts, x, config.method.distill_temperature, schedule)
    return nnx.state(parts), metrics


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def trained_model(parts):
    """The network the stage trains: the distillation student, else the model."""
    return parts["student"] if "student" in parts else parts["model"]


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses, as a fresh module in eval mode (a copy: switching
    it to eval leaves the training graph untouched): the body of the pretrained or fine-tuned model,
    or of the distilled student."""
    body = trained_model(nnx.merge(graphdef, state)).body
    body.eval()
    return body


def evaluate_stage(config, graphdef, state, knn_train, knn_test, mesh):
    """The stage's scores: kNN top-1/top-5 of the body after pretraining; after fine-tuning and
    distillation the test top-1 (%) of the classifier in eval mode on whole, unaugmented images."""
    if config.stage == "pretrain":
        return evaluate.knn_scores(get_body(graphdef, state), config, knn_train, knn_test, mesh)
    classify = evaluate.frozen_embed_fn(
        trained_model(nnx.merge(graphdef, state)), config.views.mean, config.views.std
    )  # eval-mode copy: images -> logits [B, C]
    logits, labels = evaluate.extract_features(classify, knn_test, config.eval.batch_size, mesh)
    return {"top1": evaluate.topk_accuracy(logits, labels)["top1"]}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    if config.stage not in STAGES:
        problems.append(f"stage={config.stage!r} must be one of {', '.join(STAGES)}")
    elif config.stage == "distill" and not config.init_workdir:
        problems.append("stage='distill' needs init_workdir, the workdir of a finished 'finetune' run")
    if config.init_workdir and not os.path.isdir(os.path.join(config.init_workdir, "checkpoints")):
        problems.append(f"init_workdir={config.init_workdir!r} holds no checkpoints/ folder")
    if config.data.batch_size < 2 or config.finetune.batch_size < 1 or config.distill.batch_size < 1:
        problems.append("data.batch_size must be >= 2 (NT-Xent) and finetune/distill.batch_size >= 1")
    if not 0 < config.data.label_fraction <= 1:
        problems.append(f"data.label_fraction={config.data.label_fraction} must lie in (0, 1]")
    if not 0 <= config.model.ft_proj_layer < config.model.proj_layers:
        problems.append(f"model.ft_proj_layer={config.model.ft_proj_layer} must lie in [0, model.proj_layers)")
    if config.method.temperature <= 0 or config.method.distill_temperature <= 0:
        problems.append("method.temperature and method.distill_temperature must be > 0")
    for name in ("optim", "finetune", "distill"):
        if config[name].lr_scaling not in ("linear", "sqrt"):
            problems.append(f"{name}.lr_scaling={config[name].lr_scaling!r} must be 'linear' or 'sqrt'")
        if config[name].epochs <= 0 or config[name].warmup_epochs < 0:
            problems.append(f"{name}.epochs must be > 0 and {name}.warmup_epochs >= 0")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    config = config.copy_and_resolve_references()  # the loop batches by data.batch_size: the stage's batch
    config.data.batch_size = stage_batch_size(config)
    train_data = data.load(config.data, config.data.train_split)
    if train_data.num_classes != config.data.num_classes:
        raise ValueError(
            f"data.num_classes={config.data.num_classes}, but {train_data!r} has {train_data.num_classes} classes."
        )
    results = {"stage": config.stage}
    if config.stage == "finetune":  # the class-balanced labelled fraction, a pure function of the seed
        labelled = data.balanced_subset(
            train_data.labels(), config.data.label_fraction, config.data.num_classes, config.seed
        )
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            np.save(os.path.join(workdir, "labelled_indices.npy"), labelled)
        train_data = train_data.subset(labelled)
        results["label_fraction"] = config.data.label_fraction
    elif config.stage == "distill":  # the teacher's labelled fraction, as its run recorded it
        with open(os.path.join(config.init_workdir, "results.json")) as f:
            results["label_fraction"] = json.load(f)["label_fraction"]
    # The earlier stage's trained model: the pretrained network to fine-tune, or the teacher.
    load = config.stage != "pretrain" and config.init_workdir
    init = checkpoint.load_part(config.init_workdir, "model") if load else None
    return loop.train(
        config,
        workdir,
        functools.partial(create_state, init=init),
        get_body,
        epochs=stage_optim(config).epochs,
        train_data=train_data,
        scores=functools.partial(evaluate_stage, config),
        results=results,
    )


if __name__ == "__main__":
    loop.cli(main)
