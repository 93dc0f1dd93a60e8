"""PAWS reference cases (facebookresearch/suncet) through the project's own code (paws/train.py).

* loss cases (tests/reference/paws_loss_*.npz): snn, sharpen and paws_loss on the recorded embeddings.
* paws_step_r6small_mc2_B4_C3.npz (train_step): the case's tiny torchvision-named ResNet + the
  official heads, loaded from init/ with common.convert, runs five steps of paws.update (the step
  after the views: the same function train_step calls) on the recorded supports, views and
  multi-crops; per-step loss / xent / me-max, h and z, the LARS trust-ratio statistics, the step-0
  gradients, the schedule values of paws.learning_rate_schedule, and every final parameter, batch-norm
  buffer and momentum buffer are compared with the float64 run (as the case's note recommends for a
  float32 implementation).
* paws_step_snn_eval_r6small.npz (eval): the final model in eval mode, embeddings z, and
  paws.snn_classify (the classifier of semi_supervised_eval).

The official names are translated with `torch_name`, this runner's own small inverse of the
project's layout (common.convert maps the other way; both are checked against each other here).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import convert, evaluate, models
from paws import config as paws_config
from paws import train as paws
from scripts.reference import tolerance

NUM_BATCHES = "num_batches_tracked"  # torch's BN step counter: the project keeps none


def run(entry, arrays, path):
    kind = entry.get("kind", "loss")
    if kind == "train_step":
        return run_train_step(entry, arrays)
    if kind == "eval":
        return run_snn_eval(entry, arrays)
    return run_loss(entry, arrays)


# ------------------------------------------------------------------------------------------------
# Loss cases
# ------------------------------------------------------------------------------------------------


def run_loss(entry, z):
    h = entry["hyper"]
    inputs = [jnp.asarray(z[k]) for k in ("anchor_views", "anchor_supports", "anchor_support_labels")]
    targets = [jnp.asarray(z[k]) for k in ("target_views", "target_supports", "target_support_labels")]
    snn, sharpen = jax.jit(paws.snn), jax.jit(paws.sharpen)
    paws_loss = jax.jit(paws.paws_loss, static_argnames=("me_max", "multicrop"))
    anchor_probs = snn(*inputs, h["tau"])
    target_probs = snn(*targets, h["tau"])
    sharpened = sharpen(jnp.asarray(z["target_probs"], jnp.float32), h["T"])
    loss, me_max_reg = paws_loss(*inputs, *targets, h["tau"], h["T"], me_max=h["me_max"], multicrop=h["multicrop"])
    out = [
        ("anchor_probs", anchor_probs, z["anchor_probs"], *tolerance(entry, "probs")),
        ("target_probs", target_probs, z["target_probs"], *tolerance(entry, "probs")),
        ("target_probs_sharpened", sharpened, z["target_probs_sharpened"], *tolerance(entry, "probs")),
        ("loss", loss, z["loss_f64"], *tolerance(entry, "loss")),
        ("me_max_reg", me_max_reg, z["me_max_reg_f64"], *tolerance(entry, "me_max_reg")),
    ]
    # The loss does not swap the views itself: the natural order must give another value.
    unswapped_targets = (jnp.asarray(z["target_views_unswapped"]), *targets[1:])
    unswapped, _ = paws_loss(
        *inputs, *unswapped_targets, h["tau"], h["T"], me_max=h["me_max"], multicrop=h["multicrop"]
    )
    out.append(("loss differs unswapped", abs(float(unswapped) - float(z["loss_f64"])) > 1e-4, True, 0.0, 0.0))
    return out


# ------------------------------------------------------------------------------------------------
# The case's model, and the official names of its variables
# ------------------------------------------------------------------------------------------------


def case_config(entry):
    """A PAWS config with the case's architecture and hyperparameters."""
    h = entry.get("hyper", {})
    c = paws_config.get_config("smoke")
    c.model.proj_hidden_dim = 48  # = the body's 48 features (init_model's rule)
    c.model.proj_dim = h.get("output_dim", 32)
    c.model.pred_hidden_dim = c.model.proj_dim // 4  # official 4x bottleneck
    c.model.bn_momentum = 0.9  # torch momentum 0.1
    if "classes_per_batch" in h:
        c.method.classes_per_batch = h["classes_per_batch"]
        c.method.s_per_class = h["supervised_imgs_per_class"]
        c.method.tau = h["temperature_tau"]
        c.method.T = h["sharpen_T"]
        c.method.me_max = h["me_max"]
        c.method.label_smoothing = h["label_smoothing"]
        c.views.supervised_views = h["supervised_views"]
        c.views.local_crops_number = h["multicrop"]
        c.optim.epochs = float(h["epochs"])
        c.optim.warmup_epochs = float(h["warmup_epochs"])
        c.optim.start_lr = h["start_lr"]
        c.optim.lr = h["lr"]
        c.optim.final_lr = h["final_lr"]
        c.optim.weight_decay = h["weight_decay"]
        c.optim.momentum = h["momentum"]
        c.optim.trust_coefficient = h["lars_trust_coefficient"]
    return c


def case_model(config, width=6):
    """paws.PAWS with the case's body, models.ResNet((1, 1, 1, 1), BasicBlock, width 6, stem 'small'),
    with zeros in every variable: `load` replaces them all (random initialisation would cost ~20 s of
    XLA:CPU compilation of the random-number generator, for values that are overwritten)."""

    def build():
        body = models.ResNet(
            (1, 1, 1, 1), models.BasicBlock, width=width, stem="small", bn_momentum=0.9, rngs=nnx.Rngs(0)
        )
        return paws.PAWS(config, nnx.Rngs(0), body=body)

    graphdef, state = nnx.split(nnx.eval_shape(build))
    return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state))


def official_layout(sd):
    """Official encoder.state_dict() (no 'module.') -> the flat state of paws.PAWS, via common.convert."""
    flat = {("body", *k): v for k, v in convert.torchvision_resnet(sd).items()}
    for head, ours, layers in (
        ("fc", "head", ("fc1", "bn1", "fc2", "bn2", "fc3")),
        ("pred", "pred", ("bn1", "fc1", "bn2", "fc2")),
    ):
        for layer in layers:
            name = f"{head}.{layer}"
            if layer.startswith("fc"):
                flat.update(convert.linear(sd, name, (ours, layer)))
            else:
                flat.update(convert.batch_norm(sd, name, (ours, layer)))
    return flat


def torch_name(path):
    """This project's variable path -> the official state_dict name (the inverse of official_layout)."""
    parts = [str(p) for p in path]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[
        parts[-1]
    ]
    if parts[0] == "body":
        parts = parts[1:-1]
        if parts[0] == "stages":
            block = f"layer{int(parts[1]) + 1}.{parts[2]}"
            module = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(parts[3], parts[3])
            return f"{block}.{module}.{leaf}"
        return f"{parts[0]}.{leaf}"
    return f"{ {'head': 'fc', 'pred': 'pred'}[parts[0]] }.{parts[1]}.{leaf}".replace(" ", "")


def torch_layout(path, value):
    """A project array -> the official layout (conv [kh, kw, in, out] -> [out, in, kh, kw], Linear transposed)."""
    value = np.asarray(value)
    if value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:
        return value.T
    return value


def load(model, arrays, prefix):
    sd = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix) and not k.endswith(NUM_BATCHES)}
    flat = official_layout(sd)
    names = {torch_name(p) for p in flat}
    assert names == set(sd), f"name translation disagrees with common.convert: {sorted(names ^ set(sd))[:6]}"
    convert.assign(model, flat, what=f"{prefix} arrays")


def flat_variables(module):
    return {p: np.asarray(v[...] if hasattr(v, "__getitem__") else v) for p, v in nnx.to_flat_state(nnx.state(module))}


# ------------------------------------------------------------------------------------------------
# Train step case
# ------------------------------------------------------------------------------------------------


def run_train_step(entry, z):
    h = entry["hyper"]
    config = case_config(entry)
    model = case_model(config)
    load(model, z, "init/")
    steps_per_epoch = h["iterations_per_epoch"]
    schedule = paws.learning_rate_schedule(config.optim, steps_per_epoch)
    optimizer = nnx.Optimizer(model, paws.make_optimizer(config.optim, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split({"model": model, "optimizer": optimizer})

    @jax.jit
    def step(state, x_s, x_g, x_l):
        """paws.update, and beside it (one compilation) the same objective's h, z and gradients."""
        model = nnx.merge(graphdef, state)["model"]
        (_, aux), grads = nnx.value_and_grad(paws.objective, has_aux=True)(nnx.clone(model), x_s, x_g, x_l, config)
        new_state, metrics = paws.update(graphdef, config, schedule, state, x_s, x_g, x_l)
        return new_state, metrics, aux, grads, nnx.state(model, nnx.Param)

    out = []
    m = config.method
    labels = np.tile(
        np.asarray(paws.labels_matrix(m.classes_per_batch, m.s_per_class, m.label_smoothing)),
        (config.views.supervised_views, 1),
    )
    out.append(("input/labels (labels_matrix)", labels, z["input/labels"], 1e-6, 1e-7))
    for k in range(h["n_steps"]):
        x_s, x_g, x_l = (jnp.asarray(z[f"input/{k}/{n}"]) for n in ("supports", "views", "multicrop"))
        state, metrics, aux, grads, params = step(state, x_s, x_g, x_l)
        for ours, theirs in (("loss", "loss"), ("xent", "ploss"), ("me_max_reg", "me_max")):
            out.append(
                (f"out/{k}/{theirs}", metrics[ours], z[f"out_f64/{k}/{theirs}"], *tolerance(entry, f"out/{k}/{theirs}"))
            )
        for name in ("h", "z"):
            out.append((f"out/{k}/{name}", aux[name], z[f"out_f64/{k}/{name}"], *tolerance(entry, f"out/{k}/{name}")))
        ratios = trust_ratios(params, grads, config.optim)
        for stat, value in (("avg", np.mean(ratios)), ("min", np.min(ratios)), ("max", np.max(ratios))):
            out.append(
                (
                    f"out/{k}/lars_{stat}",
                    value,
                    z[f"out_f64/{k}/lars_{stat}"],
                    *tolerance(entry, f"out/{k}/lars_{stat}"),
                )
            )
        out.append((f"hyper/lr/{k} (schedule)", [schedule(k)] * 2, z[f"hyper/lr/{k}"], 1e-6, 0.0))
        out.append((f"hyper/lr/{k} (used)", [metrics["lr"]] * 2, z[f"hyper/lr/{k}"], 1e-6, 0.0))
        if k == 0:
            for path, g in nnx.to_flat_state(grads):
                name = torch_name(path)
                out.append(
                    (
                        f"out/0/grad/{name}",
                        torch_layout(path, g[...]),
                        z[f"out_f64/0/grad/{name}"],
                        *tolerance(entry, f"out/0/grad/{name}"),
                    )
                )
    parts = nnx.merge(graphdef, state)
    for path, value in flat_variables(parts["model"]).items():
        name = torch_name(path)
        out.append(
            (f"final/{name}", torch_layout(path, value), z[f"final_f64/{name}"], *tolerance(entry, f"final/{name}"))
        )
    trace = momentum_buffers(parts["optimizer"])
    for path, value in nnx.to_flat_state(trace):
        name = torch_name(path)
        key = f"final/opt/momentum_buffer/{name}"
        out.append(
            (key, torch_layout(path, value[...]), z[f"final_f64/opt/momentum_buffer/{name}"], *tolerance(entry, key))
        )
    expected = {k for k in z if k.startswith("final_f64/") and not k.endswith(NUM_BATCHES)}
    compared = {r[0].replace("final/", "final_f64/", 1) for r in out if r[0].startswith("final/")}
    out.append(("every final array compared", sorted(expected - compared) == [], True, 0.0, 0.0))
    return out


def trust_ratios(params, grads, cfg, eps=1e-8):
    """LARS's recorded statistics: the trust ratios of the adapted parameters with |p| > 0 and |g| > 0."""
    ratios = []
    for (path, p), (_, g) in zip(nnx.to_flat_state(params), nnx.to_flat_state(grads)):
        if not paws.lars_adapted(path):
            continue
        p, g = np.asarray(p[...], np.float64), np.asarray(g[...], np.float64)
        p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        if p_norm > 0 and g_norm > 0:
            ratios.append(cfg.trust_coefficient * p_norm / (g_norm + cfg.weight_decay * p_norm + eps))
    return np.asarray(ratios)


def momentum_buffers(optimizer):
    """The optax.trace state of the optimizer (= the official SGD momentum_buffer, lr inside)."""
    import optax

    (trace,) = optax.tree_utils.tree_get_all_with_path(optimizer.opt_state, "trace")
    return trace[1]


# ------------------------------------------------------------------------------------------------
# snn evaluation case
# ------------------------------------------------------------------------------------------------


def run_snn_eval(entry, z):
    h = entry["hyper"]
    config = case_config(entry)
    model = case_model(config)
    load(model, z, "model/")
    model.eval()
    # z: after the prediction head; eval-mode batch norm, so one call for supports and queries.
    n_support = z["input/support_images"].shape[0]
    embeddings = jax.jit(lambda x: model(x)[1])(jnp.concatenate([z["input/support_images"], z["input/query_images"]]))
    support_z, query_z = embeddings[:n_support], embeddings[n_support:]
    support_y = np.asarray(z["input/support_labels"])
    probs = paws.snn_classify(query_z, support_z, support_y, h["num_classes"], h["temp"])
    scores = evaluate.topk_accuracy(probs, np.asarray(z["input/query_labels"]))
    out = []
    for name, ours in (
        ("support_embeddings", support_z),
        ("query_embeddings", query_z),
        ("one_hot", jax.nn.one_hot(support_y, h["num_classes"])),
        ("probs", probs),
        ("top1", scores["top1"]),
        ("top5", scores["top5"]),
    ):
        out.append((f"out/{name}", ours, z[f"out_f64/{name}"], *tolerance(entry, f"out/{name}")))
    return out
