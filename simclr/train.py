"""SimCLR: contrastive learning of visual representations from two augmented views of each image.

Each image in a batch of N is augmented twice; a body f and a projection head g map both views to
z = g(f(x)). The two views of one image are a positive pair, and the other 2(N - 1) views in the global
batch are its negatives. After training, g is thrown away and f(x) is the representation.

    l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T) ),  sim = cosine
    L = mean_i l(i, i+N) + mean_i l(i+N, i)            (the official code sums the two directions)

Paper: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Checked against google-research/simclr (tf2/objective.py).

    python simclr/train.py --config simclr/config.py --workdir runs/simclr

Augmentations follow the official TensorFlow code (multiplicative brightness, per-channel contrast, HSV
saturation, colour ops in random order with clipping after each, zero-padded blur). The README's
benchmark table gives what the default preset reaches, and on which machine.
"""

import functools
import json
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: put the monorepo root (marked by WORKSPACE) on sys.path
    _root = pathlib.Path(__file__).resolve().parent
    while not (_root / "WORKSPACE").exists():
        _root = _root.parent
    sys.path.insert(0, str(_root))

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common import augment, checkpoint, data, evaluate, models


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

class ProjectionHead(nnx.Module):
    """g(.): Linear-BN-ReLU-Linear-BN, as the official code's non-linear head. The linear layers have no
    bias because the batch norm after each supplies the shift; the output batch norm has no shift."""

    def __init__(self, in_dim, hidden_dim, out_dim, bn_momentum, rngs):
        self.fc1 = nnx.Linear(in_dim, hidden_dim, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(hidden_dim, momentum=bn_momentum, rngs=rngs)
        self.fc2 = nnx.Linear(hidden_dim, out_dim, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(out_dim, momentum=bn_momentum, use_bias=False, rngs=rngs)

    def __call__(self, h):
        return self.bn2(self.fc2(jax.nn.relu(self.bn1(self.fc1(h)))))


class SimCLR(nnx.Module):
    def __init__(self, config, rngs):
        self.body = models.create_body(config.model.name, stem=config.model.stem,
                                       img_size=config.views.crop_size,
                                       bn_momentum=config.model.bn_momentum, rngs=rngs)
        self.head = ProjectionHead(self.body.num_features, config.model.proj_hidden_dim,
                                   config.model.proj_dim, config.model.bn_momentum, rngs)

    def __call__(self, x):
        return self.head(self.body(x))


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------

def make_view(key, image, cfg):
    """One SimCLR view of one float image [H, W, 3] in [0, 1] (Appendix A)."""
    k_crop, k_flip, k_color, k_gray, k_blur, k_sigma = jax.random.split(key, 6)
    x = augment.random_resized_crop(k_crop, image, cfg.crop_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio)
    x = augment.random_flip(k_flip, x, p=cfg.flip_p)
    x = augment.simclr_color_jitter(k_color, x, cfg.color_strength, p=cfg.color_p)
    x = augment.random_grayscale(k_gray, x, p=cfg.gray_p)
    if cfg.blur_p > 0:  # kernel 10% of the side, sigma ~ U(0.1, 2.0), zero padding as the official code
        sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
        blurred = augment.simclr_gaussian_blur(x, cfg.crop_size // 10, sigma)
        x = jnp.where(jax.random.uniform(k_blur) < cfg.blur_p, blurred, x)
    return augment.normalize(x, cfg.mean, cfg.std)


def make_views(key, images, cfg):
    """uint8 [B, H, W, 3] -> two stacks of views [B, S, S, 3], one key per image and view."""
    images = augment.to_float(images)
    k1, k2 = jax.random.split(key)
    view = functools.partial(make_view, cfg=cfg)
    return augment.apply_per_image(view, k1, images), augment.apply_per_image(view, k2, images)


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

def l2_normalize(x, axis=-1):
    # tf.math.l2_normalize: x / sqrt(max(sum x^2, 1e-12))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


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


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------

def learning_rate_schedule(cfg, batch_size, steps_per_epoch):
    """Linear warmup to the scaled rate, then cosine decay to 0 (Sec. B.1)."""
    if cfg.lr_scaling == "linear":
        peak = cfg.lr * batch_size / 256
    else:  # 'sqrt': 0.075 * sqrt(B), better for small batches (Appendix B.1)
        peak = cfg.lr * batch_size ** 0.5
    total = max(1, int(cfg.epochs * steps_per_epoch))
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1), total, end_value=0.0)


def make_optimizer(cfg, schedule):
    """LARS; weight decay and trust-ratio adaptation skip biases and batch-norm parameters (ndim 1)."""
    is_kernel = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.lars(schedule, weight_decay=cfg.weight_decay, weight_decay_mask=is_kernel,
                      trust_coefficient=cfg.trust_coefficient, trust_ratio_mask=is_kernel,
                      momentum=cfg.momentum)


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------

def create_state(config, steps_per_epoch):
    """Everything that changes during training, and the step that changes it.

    Returns (graphdef, state, step_fn): the model and its optimizer split into a static graph and a
    pytree of arrays, and step_fn(state, batch, key) -> (state, metrics), pure, for jax.jit.
    """
    model = SimCLR(config, nnx.Rngs(config.seed))
    schedule = learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optim, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state, functools.partial(train_step, graphdef, config, schedule)


# ------------------------------------------------------------------------------------------------
# Train step
# ------------------------------------------------------------------------------------------------

def train_step(graphdef, config, schedule, state, batch, key):
    """One step on the global batch; jitted with `graphdef, config, schedule` bound."""
    model, optimizer = nnx.merge(graphdef, state)
    x1, x2 = make_views(key, batch["image"], config.views)

    def loss_fn(model):
        # Both views in one forward pass: batch norm statistics over all 2N views, as the official code.
        z1, z2 = jnp.split(model(jnp.concatenate([x1, x2])), 2)
        return nt_xent_loss(z1, z2, config.method.temperature)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    metrics = {"loss": loss, "lr": lr, "finite": checkpoint.all_finite(loss, nnx.state(model, nnx.Param))}
    return nnx.state((model, optimizer)), metrics


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------

@nnx.jit(static_argnums=(2, 3))
def embed(body, images, mean, std):
    """uint8 images [B, H, W, 3] -> body features f(x) [B, D]."""
    return body(augment.normalize(augment.to_float(images), mean, std))


def get_body(graphdef, state):
    """The representation f(.) that evaluation uses, as a fresh module in eval mode (a copy: switching
    it to eval leaves the training graph untouched). common/evaluate.py calls this for every method."""
    model, _ = nnx.merge(graphdef, state)
    model.body.eval()
    return model.body


def knn_eval(graphdef, state, config, knn_train, knn_test, mesh):
    """kNN top-1/top-5 of the body's features in eval mode (running batch-norm statistics)."""
    body = get_body(graphdef, state)
    embed_fn = lambda images: embed(body, images, tuple(config.views.mean), tuple(config.views.std))
    return evaluate.knn_monitor(embed_fn, knn_train, knn_test, config.eval.batch_size, mesh,
                                k=config.eval.knn_k, temperature=config.eval.knn_temperature)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def check_config(config):
    """Fails fast, before any data loading or compiling, on values the method cannot run with."""
    problems = []
    if config.data.batch_size < 2:
        problems.append(f"data.batch_size={config.data.batch_size}: NT-Xent needs at least 2 images")
    if config.method.temperature <= 0:
        problems.append(f"method.temperature={config.method.temperature} must be > 0")
    if config.optim.lr_scaling not in ("linear", "sqrt"):
        problems.append(f"optim.lr_scaling={config.optim.lr_scaling!r} must be 'linear' or 'sqrt'")
    if config.optim.epochs <= 0 or config.optim.warmup_epochs < 0:
        problems.append("optim.epochs must be > 0 and optim.warmup_epochs >= 0")
    if problems:
        raise ValueError("Bad config: " + "; ".join(problems) + ". Fix it with --config.<field>=<value>.")


def main(config, workdir):
    from clu import metric_writers, periodic_actions

    check_config(config)
    checkpoint.maybe_initialize_distributed()
    mesh = data.make_mesh()
    data.check_batch_size(config.data.batch_size, mesh)
    train_data = data.load(config.data, config.data.train_split)
    knn_train, knn_test = evaluate.load_knn_data(config)
    loader = data.Loader(train_data, config.data.batch_size, config.seed, mesh)
    total_steps = max(1, int(config.optim.epochs * loader.steps_per_epoch))

    graphdef, state, step_fn = create_state(config, loader.steps_per_epoch)
    state = checkpoint.replicate(state, mesh)
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint_every_steps)
    state, start_step = ckpt.restore_or(state)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    results_path = os.path.join(workdir, "results.json")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    results = {"method": "simclr", "wall_time_s": 0.0}
    if start_step == 0:  # what the randomly initialised body scores, for comparison
        knn = knn_eval(graphdef, state, config, knn_train, knn_test, mesh)
        results.update(knn_top1_init=knn["top1"], knn_top5_init=knn["top5"])
        writer.write_scalars(0, {"knn_top1": knn["top1"], "knn_top5": knn["top5"]})
        checkpoint.write_results(results_path, results)
    else:
        with open(results_path) as f:
            results = json.load(f)

    step_fn = jax.jit(step_fn, donate_argnums=0)
    root_key = jax.random.key(config.seed)
    guard = checkpoint.FiniteGuard(ckpt)
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    start_time = time.time()
    step = start_step
    for step, batch in loader.iterate(start_step):
        if step >= total_steps:
            break
        state, metrics = step_fn(state, batch, jax.random.fold_in(root_key, step))
        step += 1  # steps completed
        guard.add(step, metrics["finite"])
        progress(step)
        if step % config.log_every_steps == 0 or step == total_steps:
            guard.check()
            writer.write_scalars(step, {k: float(v) for k, v in metrics.items() if k != "finite"})
        if config.eval.knn_every_steps and step % config.eval.knn_every_steps == 0 and step < total_steps:
            knn = knn_eval(graphdef, state, config, knn_train, knn_test, mesh)
            writer.write_scalars(step, {"knn_top1": knn["top1"], "knn_top5": knn["top5"]})
        if step % config.checkpoint_every_steps == 0 or step == total_steps:
            guard.check()
            ckpt.save(step, state, force=True)
        if ckpt.preempted(step):
            guard.check()
            ckpt.save(step, state, force=True)
            results["wall_time_s"] += time.time() - start_time
            checkpoint.write_results(results_path, results)
            writer.flush()
            ckpt.close()
            print(f"Pre-empted: saved step {step} to {ckpt.directory}; rerun with the same --workdir to resume.")
            return None

    guard.check()
    ckpt.save(step, state, force=True)
    knn = knn_eval(graphdef, state, config, knn_train, knn_test, mesh)
    writer.write_scalars(step, {"knn_top1": knn["top1"], "knn_top5": knn["top5"]})
    results.update(knn_top1=knn["top1"], knn_top5=knn["top5"], step=step,
                   wall_time_s=results["wall_time_s"] + time.time() - start_time)
    checkpoint.write_results(results_path, results)
    writer.flush()
    ckpt.close()
    print(f"kNN top-1 {knn['top1']:.2f}% (random init {results['knn_top1_init']:.2f}%), "
          f"top-5 {knn['top5']:.2f}%, step {step}; results in {results_path}")
    return results


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. simclr/config.py:smoke.",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", "runs/simclr", "Checkpoints, logs and results; rerun to resume.")
    def _run(argv):  # returns None: absl's app.run would exit with status 1 on main's results dict
        main(_CONFIG.value, _WORKDIR.value)

    app.run(_run)
