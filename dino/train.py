"""DINO: self-DIstillation with NO labels.

A student network is trained to match, on every crop of an image (two global crops and several
small local crops), the output distribution that a teacher network gives on the global crops only,
which teaches local-to-global correspondence. The teacher has the student's architecture and is an
exponential moving average of it, and no gradient flows through it. Collapse is avoided by centring
the teacher's outputs with a running mean over batches and sharpening them with a low temperature.

    P_s(x)[k] = softmax(g_s(x) / tau_s)[k]
    P_t(x)[k] = softmax((g_t(x) - c) / tau_t)[k]
    loss      = sum_{x in {x1_g, x2_g}} sum_{x' in crops, x' != x} H(sg(P_t(x)), P_s(x')) / n_terms
    c        <- m * c + (1 - m) * mean_batch g_t(x)
    theta_t  <- lambda * theta_t + (1 - lambda) * theta_s

with H(a, b) = -sum_k a_k log b_k averaged over the batch, and n_terms = 2 * n_crops - 2.

Paper: M. Caron, H. Touvron, I. Misra, H. Jegou, J. Mairal, P. Bojanowski, A. Joulin, "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021, https://arxiv.org/abs/2104.14294.
Checked against facebookresearch/dino (main_dino.py, utils.py, vision_transformer.py).

    python dino/train.py --config dino/config.py --workdir runs/dino
    python dino/visualize_attention.py --workdir runs/dino        # a ViT run's attention maps, as a PNG

Augmentations follow the official torchvision pipeline (DataAugmentationDINO). The representation
that evaluation uses is the TEACHER's body, as in the official kNN and linear evaluations (the paper
finds the teacher better than the student throughout training). The README's benchmark table gives
what the default preset reaches, and on which machine.
"""

import functools
import math
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

from common import augment, checkpoint, loop, models

# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

# DINO initialises its head's linear layers with trunc_normal_(std=.02) (truncated at +-2 in absolute
# value, i.e. effectively untruncated) and zero biases.
_trunc_normal = jax.nn.initializers.truncated_normal(0.02, lower=-2 / 0.02, upper=2 / 0.02)


class WeightNormLinear(nnx.Module):
    """The head's last layer: y = x W with W = g * v / ||v||, the norm over the inputs of each output
    (PyTorch's weight_norm on a Linear, dim=0), no bias. With `norm_last_layer` the norm g is fixed at
    1 (no parameter), which the paper finds stabilises training; otherwise g is learned. W is formed in
    float32; the product runs in `dtype` (None: float32)."""

    def __init__(self, in_dim, out_dim, norm_last_layer, rngs, dtype=None):
        # PyTorch's default Linear init, U(-1/sqrt(in), 1/sqrt(in)): DINO creates this layer after
        # applying its trunc-normal init to the MLP. Only the direction of each column matters.
        bound = 1.0 / math.sqrt(in_dim)
        self.v = nnx.Param(jax.random.uniform(rngs.params(), (in_dim, out_dim), minval=-bound, maxval=bound))
        self.g = None if norm_last_layer else nnx.Param(jnp.ones((out_dim,)))
        self.dtype = dtype

    def __call__(self, x):  # [N, in_dim] -> [N, out_dim]
        v = self.v[...]
        w = v / jnp.sqrt(jnp.sum(v * v, axis=0, keepdims=True))
        if self.g is not None:
            w = w * self.g[...]
        if self.dtype is not None:
            x, w = x.astype(self.dtype), w.astype(self.dtype)
        return x @ w


def l2_normalize(x, axis=-1, epsilon=1e-12):
    # F.normalize: x / max(||x||, eps)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), epsilon)


class DINOHead(nnx.Module):
    """g(.) (Sec. 3.1, Appendix): Linear-GELU-Linear-GELU-Linear to a bottleneck, l2 normalisation,
    then the weight-normalised layer to K outputs. With `use_bn` (official use_bn_in_head, for
    ResNets) each hidden Linear is followed by batch norm over all crops; the ViT head has none.
    Matmuls in `dtype` (float32 parameters); the normalisation and the output are float32."""

    def __init__(self, in_dim, hidden_dim, bottleneck_dim, out_dim, norm_last_layer, rngs, use_bn=False, dtype=None):
        init = dict(kernel_init=_trunc_normal, bias_init=jax.nn.initializers.zeros)
        linear = functools.partial(nnx.Linear, **init, dtype=dtype, rngs=rngs)
        # PyTorch BatchNorm1d (momentum 0.1 is 0.9 in the NNX convention; running variance unbiased);
        # always batch statistics: the head runs only in training, the teacher's in train mode too.
        bn = lambda: models.BatchNorm(hidden_dim, unbiased=True, momentum=0.9, epsilon=1e-5, rngs=rngs)
        norm = bn if use_bn else (lambda: None)
        self.fc1, self.bn1 = linear(in_dim, hidden_dim), norm()
        self.fc2, self.bn2 = linear(hidden_dim, hidden_dim), norm()
        self.fc3 = linear(hidden_dim, bottleneck_dim)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_last_layer, rngs, dtype)

    def __call__(self, h):  # [N, D] -> [N, K]
        # nn.GELU in PyTorch is the exact (erf) form.
        for fc, bn in ((self.fc1, self.bn1), (self.fc2, self.bn2)):
            h = fc(h)
            h = jax.nn.gelu(h if bn is None else bn(h), approximate=False)
        x = models.to_f32(self.fc3(h))
        return models.to_f32(self.last_layer(l2_normalize(x)))


class Network(nnx.Module):
    """Body then head over all crops of a batch (the official MultiCropWrapper)."""

    def __init__(self, config, rngs, body=None):
        m = config.model
        # ViTs: `depth` blocks (the CPU presets use shallow ViTs) and the student's stochastic depth
        # (paper 0.1); ResNets: the stem and batch norm momentum. The ViT's position embeddings are
        # built for 224 px whatever the crop size and interpolated, as the official code (which never
        # passes img_size). `body` replaces config.model's body (the reference cases' tiny ones).
        if body is None:
            kw = dict(stem=m.stem, bn_momentum=m.bn_momentum, patch_size=m.patch_size, depth=m.depth)
            body = models.create_body(m.name, **kw, drop_path_rate=m.drop_path_rate, dtype=m.get("dtype"), rngs=rngs)
        self.body = body
        sizes = (self.body.num_features, m.head_hidden_dim, m.head_bottleneck_dim, m.out_dim)
        self.head = DINOHead(*sizes, m.norm_last_layer, rngs, m.use_bn_in_head, models.compute_dtype(m))

    def __call__(self, crops, key=None):
        """crops: list of crop-major stacks [n, B, S, S, 3], one per resolution -> [sum of n, B, K].

        The body runs once per resolution on the crops of that resolution batched together (so batch
        norm sees all crops of one size at once, as the official code); the head runs on all of them.
        `key` drives the student's stochastic depth (ViTs only).
        """
        features = []
        for i, stack in enumerate(crops):
            x = stack.reshape(-1, *stack.shape[2:])  # [n * B, S, S, 3], crop-major
            features.append(self.body(x) if key is None else self.body(x, jax.random.fold_in(key, i)))
        out = self.head(jnp.concatenate(features))  # [n_crops * B, K]
        return out.reshape(-1, crops[0].shape[1], out.shape[-1])


def make_teacher(student):
    """The teacher starts as a copy of the student (Alg. 1) and is trained only by the EMA below."""
    teacher = nnx.clone(student)
    # with arrays of its own: the jitted step donates the state, and one buffer cannot be donated twice.
    nnx.update(teacher, jax.tree.map(jnp.copy, nnx.state(teacher)))
    # It has no stochastic depth (the official teacher is built without); batch norm, in a ResNet,
    # stays in train mode as in the official code, which never calls teacher.eval().
    teacher.set_attributes(deterministic=True, raise_if_not_found=False)
    return teacher


class Centre(nnx.Variable):
    """c, the running mean of the teacher's outputs [1, K] (eq. 4): state, not a trained parameter."""


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def make_view(key, image, crop, cfg):
    """Flip, colour, blur and solarize for crop number `crop` (static: 0, 1 global, >= 2 local) of one
    float crop [S, S, 3] in [0, 1] (DataAugmentationDINO): blur p=1.0 on global crop 1, p=0.1 and
    solarize p=0.2 on global crop 2, blur p=0.5 on the local crops."""
    k_flip, k_color, k_gray, k_blur, k_solarize = jax.random.split(key, 5)
    x = augment.random_flip(k_flip, image, p=cfg.flip_p)
    x = augment.random_color_jitter(k_color, x, *cfg.color_jitter, p=cfg.color_p)
    x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
    # torchvision's GaussianBlur, sigma ~ U(0.1, 2.0), kernel ~10% of the side; the official code uses
    # PIL's blur with radius ~ U(0.1, 2.0).
    x = augment.random_gaussian_blur(k_blur, x, p=cfg.blur_p[min(crop, 2)])
    if crop == 1:
        x = augment.random_solarize(k_solarize, x, p=cfg.solarize_p)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg, extents=None):
    """uint8 [B, H, W, 3] -> [global [2, B, S, S, 3], local [n, B, s, s, 3]] (local only when n > 0);
    every crop inside its image's valid `extents` [B, 2] of the canvas (None: all of it).

    torchvision semantics throughout, as the official code; the random resized crops are bilinear
    (the official code: bicubic).
    """
    images = augment.to_float(images)
    sizes, scales, counts = [cfg.crop_size], [cfg.crop_scale], [2]
    if cfg.local_crops_number > 0:
        sizes.append(cfg.local_crop_size)
        scales.append(cfg.local_crop_scale)
        counts.append(cfg.local_crops_number)
    view = functools.partial(make_view, cfg=cfg)
    return augment.multi_crop(key, images, sizes, scales, counts, view, ratio=tuple(cfg.crop_ratio), extents=extents)


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def dino_loss(student_out, teacher_out, center, student_temp, teacher_temp, center_momentum):
    """Cross-entropy between the centred, sharpened teacher and the student over crop pairs.

    student_out: [n_crops, B, K] student head outputs (before temperature), crops 0 and 1 global;
    teacher_out: [2, B, K] teacher outputs on the global crops; center: [1, K] running centre c;
    student_temp: tau_s (0.1); teacher_temp: tau_t at the current EPOCH (may be traced);
    center_momentum: m (0.9). Returns (loss, new_center [1, K]): the loss averaged over the
    (teacher crop, student crop) pairs of different crops and over the global batch.
    """
    n_global, n_crops = teacher_out.shape[0], student_out.shape[0]
    log_p_student = jax.nn.log_softmax(student_out / student_temp, axis=-1)  # [n_crops, B, K]
    # The teacher is centred with the centre from BEFORE this batch, then sharpened (tau_t < tau_s).
    # Stop-gradient on the teacher (paper Alg. 1, `t.detach()`): it learns only through the EMA.
    p_teacher = jax.lax.stop_gradient(jax.nn.softmax((teacher_out - center) / teacher_temp, axis=-1))  # [2, B, K]
    # One cross-entropy term per (teacher crop t, student crop s) pair, each a mean over the batch.
    # A crop is not compared with itself, but the two global crops ARE compared with each other.
    # The loops are over static crop indices (unrolled under jit); element-wise products rather than
    # an einsum keep the sums off the matmul units, whose float32 precision is reduced on GPU/TPU.
    total, n_terms = 0.0, 0
    for t in range(n_global):
        for s in range(n_crops):
            if s == t:
                continue
            total += jnp.mean(-jnp.sum(p_teacher[t] * log_p_student[s], axis=-1))
            n_terms += 1
    # The official code divides the sum by the number of terms, 2 * n_crops - 2.
    loss = total / n_terms

    # Centre update (paper eq. 4) from the RAW teacher outputs of the whole global batch (the
    # official code all-reduces the sum over devices); it is applied after the loss.
    batch_center = jnp.mean(teacher_out, axis=(0, 1))[None, :]  # [1, K]
    new_center = center * center_momentum + batch_center * (1 - center_momentum)
    # The centre is a buffer (updated under no_grad upstream): nothing is trained through it.
    return loss, jax.lax.stop_gradient(new_center)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs):
    """Teacher temperature per EPOCH: linear warmup, then constant. Returns [nepochs] float64.

    np.linspace includes its endpoint, so the last warmup epoch already has `teacher_temp`.
    """
    warmup = np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
    return np.concatenate((warmup, np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp))


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """One value per ITERATION: linear warmup, then a half cosine from base to final value.

    Used for the learning rate, the weight decay and the teacher momentum. Returns
    [epochs * niter_per_ep] float64.

    Official conventions kept: the warmup linspace includes its endpoint, so `base_value` appears
    twice (last warmup iteration and first cosine one); the cosine over L iterations uses
    i / L for i = 0..L-1, so the last value stays just short of `final_value`.
    """
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, cosine))


def step_schedules(config, steps_per_epoch):
    """{'lr', 'weight_decay', 'momentum', 'teacher_temp', 'last_layer_frozen'}: float64 arrays (the
    official numpy values) indexed by the step; the jitted step reads them (as float32) at the
    checkpointed step counter, so resume is exact. cosine_scheduler called with iterations as 'epochs'
    and niter_per_ep = 1 gives the official arrays and allows the CPU presets' fractions of an epoch."""
    o, m = config.optim, config.method
    total = max(1, int(o.epochs * steps_per_epoch))
    warmup = min(total, int(o.warmup_epochs * steps_per_epoch))
    # Linear scaling of the learning rate with the batch size (official: lr * batch / 256).
    lr = cosine_scheduler(o.lr * config.data.batch_size / 256, o.final_lr, total, 1, warmup)
    weight_decay = cosine_scheduler(o.weight_decay, o.weight_decay_end, total, 1)
    momentum = cosine_scheduler(m.momentum_teacher, 1.0, total, 1)  # lambda: cosine to 1 (Sec. 3.1)
    # Whole epochs the run touches, never fewer than the warmup (a shorter run stays in it).
    epochs = max(math.ceil(total / steps_per_epoch), m.warmup_teacher_temp_epochs)
    per_epoch = teacher_temp_schedule(m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs, epochs)
    teacher_temp = per_epoch[np.arange(total) // steps_per_epoch]  # official: indexed by epoch
    # The head's last layer is fixed during the first epoch(s) (official: while epoch < freeze_last_layer).
    frozen = (np.arange(total) < int(o.freeze_last_layer * steps_per_epoch)).astype(np.float64)
    return dict(
        lr=lr, weight_decay=weight_decay, momentum=momentum, teacher_temp=teacher_temp, last_layer_frozen=frozen
    )


_name = lambda key: getattr(key, "key", getattr(key, "name", None))  # a pytree path entry's name


def regularized(params):
    """The parameters that are weight-decayed (and, with LARS, adapted): all but biases and 1-D
    tensors (official get_params_groups). The last layer's g counts as 2-D: the official weight_g is
    [K, 1], so when it is trained (norm_last_layer False) it is decayed like a kernel."""
    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim > 1 or _name(path[-1]) == "g", params)


def make_optimizer(name, schedules, frozen_steps):
    """The official optimizers, as PyTorch runs them, with the per-step learning rate and weight decay.

    'adamw' (the ViT default): torch.optim.AdamW, p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p).
    'sgd' (the official ResNet-50 recipe): torch.optim.SGD(momentum=0.9) with coupled decay,
        buf <- 0.9 buf + (g + wd p), p <- p - lr buf.
    'lars': DINO's utils.LARS, d = g + wd p, mu <- 0.9 mu + eta |p| / |d| d (eta = 0.001; a ratio of 1
        where a norm is 0), p <- p - lr mu: the learning rate after the momentum (optax.lars: before).
    Decay and LARS adaptation apply to the `regularized` parameters only.

    The head's last layer is frozen for the first `frozen_steps` steps: the official code sets its
    gradients to None, and a PyTorch optimizer skips such a parameter entirely (no moments, no step
    count, no decay, no momentum buffer). So the last layer has an optimizer state of its own that is
    left untouched while frozen: AdamW's bias corrections start again at the unfreeze, and its schedule
    values are read at the global step (its own count + frozen_steps).
    """

    def optimizer(offset):
        at_step = lambda values: lambda count: values[jnp.minimum(count + offset, values.shape[0] - 1)]
        lr, wd = at_step(schedules["lr"]), at_step(schedules["weight_decay"])
        if name == "adamw":
            return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd, mask=regularized)
        decay = optax.add_decayed_weights(wd, mask=regularized)
        if name == "sgd":
            return optax.chain(decay, optax.trace(decay=0.9), optax.scale_by_learning_rate(lr))
        trust_ratio = optax.masked(optax.scale_by_trust_ratio(trust_coefficient=0.001), regularized)
        return optax.chain(decay, trust_ratio, optax.trace(decay=0.9), optax.scale_by_learning_rate(lr))

    last_layer = optax.transforms.conditionally_mask(optimizer(frozen_steps), lambda count: count >= frozen_steps)
    group = lambda path, _: "last_layer" if any(_name(k) == "last_layer" for k in path) else "trained"
    labels = lambda params: jax.tree_util.tree_map_with_path(group, params)
    return optax.multi_transform({"trained": optimizer(0), "last_layer": last_layer}, labels)


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def create_state(config, steps_per_epoch, student=None):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the parts {student, teacher, centre, optimizer (the
    student's)} split into a static graph and a pytree of arrays, and step_fn(state, batch, key) ->
    (state, metrics), pure, for jax.jit. `student`: a Network to start from instead of a fresh one
    (the reference cases load the official initial weights into theirs); the teacher copies it.
    """
    student = Network(config, nnx.Rngs(config.seed)) if student is None else student
    teacher = make_teacher(student)
    centre = Centre(jnp.zeros((1, config.model.out_dim)))
    schedules = {name: jnp.asarray(v, jnp.float32) for name, v in step_schedules(config, steps_per_epoch).items()}
    frozen_steps = int(np.sum(schedules["last_layer_frozen"]))
    tx = make_optimizer(config.optim.optimizer, schedules, frozen_steps)
    optimizer = nnx.Optimizer(student, tx, wrt=nnx.Param)
    graphdef, state = nnx.split({"student": student, "teacher": teacher, "centre": centre, "optimizer": optimizer})
    return graphdef, state, functools.partial(train_step, graphdef, config, schedules)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------


def ema_update(teacher, student, m):
    """Teacher update theta_t <- m * theta_t + (1 - m) * theta_s (paper Sec. 3.1), on pytrees; m follows
    `cosine_scheduler(momentum_teacher, 1, epochs, niter_per_ep)`, indexed by iteration."""
    return jax.tree.map(lambda theta_t, theta_s: theta_t * m + (1 - m) * theta_s, teacher, student)


def clip_gradients(grads, clip):
    """Each parameter's gradient scaled down to norm <= clip, one tensor at a time (official
    utils.clip_gradients; not a global norm). Returns (clipped grads, the norms before clipping)."""
    norms = jax.tree.map(lambda g: jnp.sqrt(jnp.sum(g * g)), grads)
    return jax.tree.map(lambda g, n: g * jnp.minimum(1.0, clip / (n + 1e-6)), grads, norms), norms


def train_step(graphdef, config, schedules, state, batch, key):
    """One step on the global batch (jitted with `graphdef, config, schedules` bound): views, then update."""
    parts = nnx.merge(graphdef, state)
    step = parts["optimizer"].step[...]
    s = {name: values[jnp.minimum(step, values.shape[0] - 1)] for name, values in schedules.items()}
    k_views, k_drop = jax.random.split(key)
    crops = make_views(k_views, batch["image"], config.views, batch.get("extent"))  # [[2, B, ...], [n, B, ...]]
    metrics, _ = update(config, parts, crops, s, k_drop)
    return nnx.state(parts), metrics


def update(config, parts, crops, s, key):
    """Everything after the views, in the official order: teacher and student forwards, loss and centre,
    per-tensor clipping, the student's optimizer step (see make_optimizer for the frozen last layer),
    the teacher's EMA. Changes `parts` in place. crops: [global [2, B, S, S, 3], local [n, B, s, s, 3]];
    s: this step's schedule values; key: the student's stochastic depth. Returns (metrics, outputs):
    outputs = {'student_out', 'teacher_out', 'grad_norm'} for the reference checks."""
    student, teacher, centre, optimizer = (parts[k] for k in ("student", "teacher", "centre", "optimizer"))
    # The teacher sees the two global crops only. It is outside the differentiated function, and the
    # paper's stop-gradient (Alg. 1, t.detach()) is also inside dino_loss.
    teacher_out = jax.lax.stop_gradient(teacher(crops[:1]))  # [2, B, K]
    center = centre[...]  # c from before this batch

    def loss_fn(student):
        student_out = student(crops, key if config.model.drop_path_rate > 0 else None)  # [n_crops, B, K]
        tau_s, m = config.method.student_temp, config.method.center_momentum
        loss, new_center = dino_loss(student_out, teacher_out, center, tau_s, s["teacher_temp"], m)
        return loss, (new_center, student_out)

    (loss, (new_center, student_out)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(student)
    # The centre's update over the global batch (the official all-reduce follows from sharding).
    centre[...] = new_center
    grad_norm = None
    if config.optim.clip_grad > 0:
        grads, grad_norm = clip_gradients(grads, config.optim.clip_grad)
    optimizer.update(student, grads)
    # theta_t <- lambda theta_t + (1 - lambda) theta_s with the updated student (Sec. 3.1).
    nnx.update(teacher, ema_update(nnx.state(teacher, nnx.Param), nnx.state(student, nnx.Param), s["momentum"]))
    finite = checkpoint.all_finite(loss, nnx.state(parts, nnx.Param))  # student and teacher parameters
    metrics = {"loss": loss, "finite": finite, **{k: s[k] for k in ("lr", "weight_decay", "momentum", "teacher_temp")}}
    return metrics, {"student_out": student_out, "teacher_out": teacher_out, "grad_norm": grad_norm}


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses, as a fresh module in eval mode (a copy: switching
    it to eval leaves the training graph untouched). DINO's is the teacher's body, as the official
    evaluations (eval_knn.py, eval_linear.py)."""
    body = nnx.merge(graphdef, state)["teacher"].body
    body.eval()
    return body


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    v, m, o = config.views, config.method, config.optim
    sizes = ("crop_size", "local_crop_size")
    if config.data.batch_size < 1:
        problems.append(f"data.batch_size={config.data.batch_size} must be >= 1")
    if m.student_temp <= 0 or m.teacher_temp <= 0 or m.warmup_teacher_temp <= 0:
        problems.append("method.student_temp, method.teacher_temp and method.warmup_teacher_temp must be > 0")
    if not 0 <= m.center_momentum <= 1 or not 0 <= m.momentum_teacher <= 1:
        problems.append("method.center_momentum and method.momentum_teacher must be in [0, 1]")
    if o.epochs <= 0 or o.warmup_epochs < 0 or o.freeze_last_layer < 0 or o.clip_grad < 0:
        problems.append("optim.epochs must be > 0; warmup_epochs, freeze_last_layer and clip_grad >= 0")
    elif m.warmup_teacher_temp_epochs > math.ceil(o.epochs):
        problems.append(f"method.warmup_teacher_temp_epochs={m.warmup_teacher_temp_epochs} exceeds the run's epochs")
    if o.optimizer not in ("adamw", "sgd", "lars"):
        problems.append(f"optim.optimizer={o.optimizer!r} is not one of 'adamw', 'sgd', 'lars'")
    if v.local_crops_number < 0 or len(v.blur_p) != 3:
        problems.append("views.local_crops_number must be >= 0 and views.blur_p three probabilities")
    if config.model.name.startswith("vit"):
        p = config.model.patch_size
        problems += [f"views.{n}={v[n]} is not a multiple of model.patch_size={p}" for n in sizes if v[n] % p]
    elif config.model.drop_path_rate > 0:
        problems.append("model.drop_path_rate > 0 needs a ViT body")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    check_config(config)
    return loop.train(config, workdir, create_state, get_body, epochs=config.optim.epochs)


if __name__ == "__main__":
    loop.cli(main)
