"""MoCo reference cases -> comparisons for scripts/check_reference.py.

Loss cases (tests/reference/moco_loss_*.npz): `moco_loss` against the official loss (float64 run) and
`update_queue` against the official `_dequeue_and_enqueue`. `moco_momentum_update.npz`: `momentum_update`.

Step case (tests/reference/steps/moco_step_*.npz): six official steps through moco's own `update` (the
train step after the views): the case's tiny ResNet is built with `models.ResNet` and handed to
`create_state`, `init/` is loaded with common.convert, and each step is fed the stored views and the
stored `idx_shuffle`. The learning rate comes from moco's own schedule with the case's hyperparameters
(`optim.lr_schedule='per_epoch'`, no B / 256 scaling) and is compared with `hyper/lr_per_step`. Compared:
per-step loss, acc1 (the step's metric, in percent as main_moco.accuracy), the raw q and k (the project's
encoders re-run on the step's views: q by encoder_q before the step, k by encoder_k after its momentum
update, in train mode, as inside the step), the logits and acc5 recomputed from those q and k with the
queue before the step, the queue and its pointer after each step, the step-0 gradients (read back from
SGD's momentum buffer after step 0: buffer = grad + wd * p), every final parameter, running statistic
and momentum buffer, and the final queue. `num_batches_tracked` has no counterpart (NNX BatchNorm keeps
none) and is not compared. Run in float64 (the case's recommended check, `rules_f64` against the `*_f64`
arrays) unless the entry has no `rules_f64`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import convert, models
from moco import config as moco_config
from moco import train as moco
from scripts.reference import tolerance


def run(entry, arrays, path):
    if entry["case"].startswith("moco_step"):
        return _step_case(entry, arrays)
    if entry["case"] == "moco_momentum_update":
        return _momentum_case(entry, arrays)
    if entry["case"].startswith("moco_loss"):
        return _loss_case(entry, arrays)
    raise NotImplementedError(f"no MoCo runner for case {entry['case']!r}")


def _loss_case(entry, z):
    temperature = entry["hyper"]["temperature"]
    loss = moco.moco_loss(z["q"], z["k"], z["queue"], temperature)
    new_queue, new_ptr = jax.jit(moco.update_queue)(jnp.asarray(z["queue"]), int(z["queue_ptr"]), z["k"])
    return [
        ("loss", loss, z["loss_f64"], *tolerance(entry, "loss")),
        ("new_queue", new_queue, z["new_queue"], *tolerance(entry, "new_queue")),
        ("new_queue_ptr", new_ptr, z["new_queue_ptr"], 0.0, 0.0),
    ]


def _momentum_case(entry, z):
    params_k = {"w": z["param_k_w"], "b": z["param_k_b"]}
    params_q = {"w": z["param_q_w"], "b": z["param_q_b"]}
    new = moco.momentum_update(params_k, params_q, entry["hyper"]["m"])
    tol = tolerance(entry, "new_param_k")
    return [
        ("new_param_k_w", new["w"], z["new_param_k_w"], *tol),
        ("new_param_k_b", new["b"], z["new_param_k_b"], *tol),
    ]


# ------------------------------------------------------------------------------------------------
# The step case
# ------------------------------------------------------------------------------------------------


def _encoder_names(sd, prefix):
    """{project path under the encoder: official state_dict name} for encoder `prefix` ('encoder_q.'),
    found by converting arrays that hold their key's number (the conversions only transpose)."""
    names = sorted(k for k in sd if k.startswith(prefix) and not k.endswith("num_batches_tracked"))
    ids = {k: np.full(np.shape(sd[k]), i) for i, k in enumerate(names)}
    return {path: names[int(np.ravel(a)[0])] for path, a in _encoder_flat(ids, prefix).items()}


def _encoder_flat(sd, prefix):
    """An official encoder (torchvision ResNet + fc.0 / fc.2 MLP, or fc) -> flat state of moco.Encoder."""
    flat = {("body", *p): a for p, a in convert.torchvision_resnet(sd, prefix).items()}
    if f"{prefix}fc.0.weight" in sd:
        flat.update(convert.linear(sd, f"{prefix}fc.0", ("fc1",)))
        flat.update(convert.linear(sd, f"{prefix}fc.2", ("fc2",)))
    else:
        flat.update(convert.linear(sd, f"{prefix}fc", ("fc2",)))
    return flat


def _step_config(hyper):
    c = moco_config.get_config("default")
    c.data.batch_size = hyper["batch_size"]
    c.views.crop_size = hyper["crop_size"]
    c.model.mlp = hyper["mlp"]
    c.model.proj_hidden_dim = 32  # the case's fc.0 (= the body width, as the official MLP)
    c.model.proj_dim = hyper["moco_dim"]
    c.method.queue_size = hyper["moco_k"]
    c.method.momentum = hyper["moco_m"]
    c.method.temperature = hyper["moco_t"]
    c.method.bn_groups = 1  # the single-process official run: one batch-norm group
    c.optim.lr = hyper["lr"]
    c.optim.momentum = hyper["momentum"]
    c.optim.weight_decay = hyper["weight_decay"]
    c.optim.epochs = float(hyper["epochs"])
    c.optim.cos = hyper["cos"]
    c.optim.lr_schedule = "per_epoch"  # the official adjust_learning_rate
    c.optim.scale_lr = False  # the official --lr as given
    return c


def _step_case(entry, z):
    hyper = entry["hyper"]
    f64 = "rules_f64" in entry["tolerance"]
    rules = entry["tolerance"]["rules_f64" if f64 else "rules"]
    out, final = ("out_f64", "final_f64") if f64 else ("out", "final")
    with jax.enable_x64(f64):
        return _run_steps(entry, z, hyper, rules, out, final, jnp.float64 if f64 else jnp.float32)


def _run_steps(entry, z, hyper, rules, out, final, dtype):
    config = _step_config(hyper)
    moco.check_config(config)
    body = models.ResNet((1, 1, 1, 1), models.BasicBlock, width=4, stem="small", rngs=nnx.Rngs(0))
    graphdef, state, _ = moco.create_state(config, hyper["iterations_per_epoch"], body=body)
    parts = nnx.merge(graphdef, state)
    init = {k[len("init/") :]: z[k] for k in z if k.startswith("init/")}
    for name in ("encoder_q", "encoder_k"):
        convert.assign(parts[name], _encoder_flat(init, f"{name}."), what=f"case init/{name}")
    parts["queue"][...] = init["queue"].T  # official [dim, K] -> project [K, dim]
    parts["queue_ptr"][...] = jnp.asarray(init["queue_ptr"][0], jnp.int32)
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    state = jax.tree.map(cast, nnx.state(parts))
    schedule = moco.learning_rate_schedule(config.optim, config.data.batch_size, hyper["iterations_per_epoch"])

    @jax.jit
    def step(state, x_q, x_k, shuffle):
        parts = nnx.merge(graphdef, state)
        metrics = moco.update(parts, x_q, x_k, shuffle, config, schedule)
        return nnx.state(parts), metrics

    @jax.jit
    def encode(state_q, state_k, x_q, x_k, shuffle):  # the step's raw q and k, re-run on copies
        encoder_q, encoder_k = nnx.merge(graphdef, state_q)["encoder_q"], nnx.merge(graphdef, state_k)["encoder_k"]
        q = models.grouped_forward(encoder_q, x_q, config.method.bn_groups)
        return q, moco.shuffled_keys(encoder_k, x_k, shuffle, config.method.bn_groups)

    results = []
    add = lambda name, ours, want: results.append((name, ours, want, *tolerance(rules, name)))
    params0 = nnx.state(nnx.merge(graphdef, state)["encoder_q"], nnx.Param)
    for i in range(hyper["n_steps"]):
        x_q, x_k = (jnp.asarray(z[f"input/{i}/{v}"], dtype) for v in ("im_q", "im_k"))
        shuffle = jnp.asarray(z[f"input/{i}/idx_shuffle"], jnp.int32)
        queue_before = np.asarray(nnx.merge(graphdef, state)["queue"][...])
        new_state, metrics = step(state, x_q, x_k, shuffle)
        q, k = encode(state, new_state, x_q, x_k, shuffle)
        qn, kn = np.asarray(moco.l2_normalize(q)), np.asarray(moco.l2_normalize(k))
        logits = np.concatenate([np.sum(qn * kn, 1, keepdims=True), qn @ queue_before.T], 1) / hyper["moco_t"]
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        parts = nnx.merge(graphdef, new_state)
        add(f"out/{i}/loss", metrics["loss"], z[f"{out}/{i}/loss"])
        add(f"out/{i}/acc1", 100 * metrics["acc1"], z[f"{out}/{i}/acc1"])
        add(f"out/{i}/acc5", 100 * np.mean(np.any(top5 == 0, axis=1)), z[f"{out}/{i}/acc5"])
        add(f"out/{i}/q", q, z[f"{out}/{i}/q"])
        add(f"out/{i}/k", k, z[f"{out}/{i}/k"])
        add(f"out/{i}/logits", logits, z[f"{out}/{i}/logits"])
        add(f"out/{i}/queue", parts["queue"][...].T, z[f"{out}/{i}/queue"])
        add(f"out/{i}/queue_ptr", parts["queue_ptr"][...][None], z[f"{out}/{i}/queue_ptr"])
        # The schedule value this step used, from moco's own schedule function (no recorded tolerance).
        results.append((f"hyper/lr_per_step/{i}", metrics["lr"], z["hyper/lr_per_step"][i], 1e-6, 0.0))
        if i == 0:  # SGD's buffer after its first step is d = grad + wd * p (torch: buf = d)
            trace, p0 = _flat(_trace(parts["optimizer"])), _flat(params0)
            grads = {path: b - config.optim.weight_decay * p0[path] for path, b in trace.items()}
            results += _compare_encoder(z, grads, "encoder_q.", "out/0/grad/", "out/0/grad/", rules, params=True)
        state = new_state

    parts = nnx.merge(graphdef, state)
    for name in ("encoder_q", "encoder_k"):
        results += _compare_encoder(z, _flat(nnx.state(parts[name])), f"{name}.", f"{final}/", "final/", rules)
    trace = _flat(_trace(parts["optimizer"]))
    results += _compare_encoder(
        z, trace, "encoder_q.", f"{final}/momentum_buffer/", "final/momentum_buffer/", rules, params=True
    )
    add("final/queue", parts["queue"][...].T, z[f"{final}/queue"])
    add("final/queue_ptr", parts["queue_ptr"][...][None], z[f"{final}/queue_ptr"])
    return results


def _trace(optimizer):
    """SGD's momentum buffer (optax.trace) of the query encoder, as an nnx.State of its parameters."""
    is_trace = lambda s: isinstance(s, optax.TraceState)
    (trace,) = [s.trace for s in jax.tree.leaves(optimizer.opt_state, is_leaf=is_trace) if is_trace(s)]
    return trace


def _flat(state):
    """An nnx.State -> {path tuple: numpy array}."""
    return {path: np.asarray(v[...] if isinstance(v, nnx.Variable) else v) for path, v in nnx.to_flat_state(state)}


def _compare_encoder(z, flat, prefix, source, label, rules, params=False):
    """Comparisons of an encoder's flat state {path: array} (parameters and, unless `params`, BN statistics) with the
    case's official arrays `source + prefix + name`, named and matched to rules as `label + ...`."""
    sd = {k[len(source) :]: z[k] for k in z if k.startswith(source + prefix)}
    names = _encoder_names(sd, prefix)
    expected = _encoder_flat(sd, prefix)
    found = []
    for path, want in expected.items():
        if params and path[-1] in ("mean", "var"):
            continue
        name = label + names[path]
        found.append((name, flat[path], want, *tolerance(rules, name)))
    return found
