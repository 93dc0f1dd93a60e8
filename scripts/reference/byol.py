"""BYOL reference cases (deepmind-research byol/, JAX + Haiku) run through byol/train.py.

* Loss, schedule and target-update cases (tests/reference/byol_*.npz): `byol_loss`,
  `learning_rate_schedule`, `target_ema_decay`, `ema_update` on the stored inputs.
* The whole-step case (tests/reference/steps/byol_step_*.npz): the case's tiny bottleneck ResNet
  (Haiku 'SAME' padding, biased running variance) with the projector and predictor of byol/train.py,
  online and target networks loaded SEPARATELY from `init/` (the official target has its own init),
  then `byol.update` (the function the method's jitted step calls after its views) on the stored views,
  normalised with the project's `augment.normalize` and the case's ImageNet mean/std, with the
  project's LARS (`make_optimizer`) and schedules (`learning_rate_schedule`, `target_ema_decay`) at the
  case's hyperparameters. Compared against the float64 arrays: per-step BYOL losses (`repr_loss`; the
  official online classifier is not part of the project, so `loss`, `classif_loss`, `top*_accuracy`
  and `classifier/*` are left out), learning rate and tau, the forward outputs before every step,
  the step-0 gradients, and every final parameter, momentum buffer and batch-norm state.

Haiku -> project names (a small mapping of this runner's; common/convert.py has torch layouts only):
`res_net_torso/~/initial_conv` -> body.conv1, `initial_batchnorm` -> body.bn1,
`block_group_g/~/block_b/~/conv_k|batchnorm_k` -> body.stages[g][b].conv{k+1}|bn{k+1},
`shortcut_conv|shortcut_batchnorm` -> downsample_conv|downsample_bn; `projector|predictor/linear,
batch_norm, linear_1` -> fc1, bn, fc2; leaves w -> kernel, b -> bias, scale -> scale, offset -> bias
(the [1, .., C] batch-norm leaves squeezed).

Batch-norm state. Haiku keeps, per statistic, an ExponentialMovingAverage with `counter`, `hidden`
(= d hidden + (1 - d) value, from 0) and the zero-debiased `average` = hidden / (1 - d^counter), which
eval mode reads. NNX keeps running = d running + (1 - d) value from mean 0 / var 1, so the project's
state holds the same information: mean = hidden_mean and var = hidden_var + d^counter exactly, with
counter = the number of train-mode calls (2 per step, one per view). The runner loads `init/` that way
and compares the final state as hidden = (mean, var - d^c), average = hidden / (1 - d^c), and counter
= 2 x the optimizer's step count (the project has no counter of its own: this one is derived).
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from byol import train as byol
from common import augment, convert, models
from scripts.reference import tolerance

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # dataset.normalize_images of the official code
IMAGENET_STD = (0.229, 0.224, 0.225)
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run(entry, arrays, path):
    if entry.get("kind") == "train_step":
        return _step_case(entry, arrays)
    name = entry["case"]
    if name.startswith("byol_loss"):
        return _loss_case(entry, arrays)
    if name == "byol_target_ema_schedule":
        tau = byol.target_ema_decay(jnp.asarray(arrays["steps"], jnp.int32), **entry["hyper"])
        return [("tau", tau, arrays["tau"], *tolerance(entry, "tau"))]
    if name == "byol_learning_rate_schedule":
        lr = byol.learning_rate_schedule(jnp.asarray(arrays["steps"], jnp.int32), **entry["hyper"])
        return [("learning_rate", lr, arrays["learning_rate"], *tolerance(entry, "learning_rate"))]
    if name == "byol_target_update":
        h = entry["hyper"]
        tau = byol.target_ema_decay(h["step"], h["base_ema"], h["max_steps"])
        target = {"w": arrays["target_w"], "b": arrays["target_b"]}
        online = {"w": arrays["online_w"], "b": arrays["online_b"]}
        new = byol.ema_update(target, online, arrays["tau"])
        rtol, atol = tolerance(entry, "new_target")
        return [
            ("tau (target_ema_decay at the case's step)", tau, arrays["tau"], 0.0, 1e-7),
            ("new_target_w", new["w"], arrays["new_target_w"], rtol, atol),
            ("new_target_b", new["b"], arrays["new_target_b"], rtol, atol),
        ]
    raise NotImplementedError(f"no BYOL runner branch for case {name!r}")


def _loss_case(entry, z):
    inputs = [z[k] for k in ("online_pred_1", "online_pred_2", "target_proj_1", "target_proj_2")]
    loss = byol.byol_loss(*inputs)
    # The per-example terms pin down the pairing (prediction of view 1 with projection of view 2).
    per_example = z["per_example_12"] + z["per_example_21"]
    return [
        ("loss", loss, z["loss_f64"], *tolerance(entry, "loss")),
        ("loss = mean of per_example_12 + per_example_21", loss, per_example.mean(), *tolerance(entry, "loss")),
    ]


# ---------------------------------------------------------------------------------------------------
# The whole-step case
# ---------------------------------------------------------------------------------------------------


def _module_path(module):
    """Haiku module path -> the project's path inside an Encoder / BYOL (None: not in the project)."""
    parts = module.split("/~/")
    if parts[0] == "res_net_torso":
        rename = {"initial_conv": "conv1", "initial_batchnorm": "bn1"}
        if len(parts) == 2:
            return ("body", rename[parts[1]])
        g, b, layer = int(parts[1].split("_")[-1]), int(parts[2].split("_")[-1]), parts[3]
        kind, _, k = layer.rpartition("_")
        names = {"shortcut_conv": "downsample_conv", "shortcut_batchnorm": "downsample_bn"}
        leaf = names.get(layer) or {"conv": "conv", "batchnorm": "bn"}[kind] + str(int(k) + 1)
        return ("body", "stages", g, b, leaf)
    head, _, layer = module.partition("/")
    if head in ("projector", "predictor"):
        return (head, {"linear": "fc1", "batch_norm": "bn", "linear_1": "fc2"}[layer])
    return None  # classifier: the official online classifier has no counterpart here


def _prefix(key_prefix, head):
    """Where a Haiku head sits in the project: the online network (whose trees are the params, the
    state, the grads and the momentum) wraps body + projector in `encoder`."""
    if ("online" in key_prefix or "opt_state" in key_prefix) and head != "predictor":
        return ("encoder",)
    return ()


def _params(arrays, prefix):
    """{haiku key: (project path, array)} of the params under `prefix` (e.g. 'init/online_params/')."""
    out = {}
    for key, value in arrays.items():
        if not key.startswith(prefix):
            continue
        module, leaf = key[len(prefix) :].rsplit("/", 1)
        path = _module_path(module)
        if path is None or (path[0] == "predictor" and "target" in prefix):
            continue  # the classifier, and the target's predictor (official: built, EMA'd, never used)
        ours = {"w": "kernel", "b": "bias", "scale": "scale", "offset": "bias"}[leaf]
        out[key] = ((*_prefix(prefix, path[0]), *path, ours), value)
    return out


def _bn_state(arrays, prefix):
    """{haiku key: (project path, statistic 'mean'|'var', leaf 'hidden'|'average'|'counter')} under prefix."""
    out = {}
    for key in arrays:
        if not key.startswith(prefix):
            continue
        module, leaf = key[len(prefix) :].rsplit("/", 1)
        bn, _, ema = module.rpartition("/~/")
        path = _module_path(bn)
        if path[0] == "predictor" and "target" in prefix:
            continue
        stat = {"mean_ema": "mean", "var_ema": "var"}[ema]
        out[key] = ((*_prefix(prefix, path[0]), *path, stat), stat, leaf)
    return out


def _load(module, arrays, tree, decay):
    """Writes init/<tree>_params and init/<tree>_state into `module` (every variable, checked)."""
    params = _params(arrays, f"init/{tree}_params/").values()
    flat = {path: np.asarray(v).reshape(-1) if path[-1] in ("scale", "bias") else v for path, v in params}
    state = _bn_state(arrays, f"init/{tree}_state/")
    for key, (path, stat, leaf) in state.items():
        if leaf != "hidden":
            continue
        counter = int(arrays[key.rsplit("/", 1)[0] + "/counter"])
        hidden = np.asarray(arrays[key], np.float64).reshape(-1)
        flat[path] = (hidden + decay**counter if stat == "var" else hidden).astype(np.float32)
    convert.assign(module, flat, strict=True, what=f"case init/{tree}")


def _networks(hyper):
    """Online BYOL and target Encoder of the case: ResNet((1,1,1,1), Bottleneck, width 4), Haiku padding."""
    model = ml_collections.ConfigDict(
        dict(
            bn_momentum=hyper["bn_config"]["decay_rate"],
            proj_hidden_dim=hyper["projector_hidden_size"],
            proj_dim=hyper["projector_output_size"],
            pred_hidden_dim=hyper["predictor_hidden_size"],
        )
    )
    rngs = nnx.Rngs(0)
    body = lambda: models.ResNet(
        (1, 1, 1, 1),
        models.Bottleneck,
        width=4,
        stem="imagenet",
        padding="haiku",
        bn_unbiased=False,
        zero_init_residual=True,
        bn_momentum=model.bn_momentum,
        rngs=rngs,
    )
    online = byol.BYOL(byol.Encoder(body(), model, rngs), model, rngs)
    target = byol.Encoder(body(), model, rngs)
    return online, target


def _leaf(module_state, path):
    return np.asarray(dict(nnx.to_flat_state(module_state))[path][...])


def _step_case(entry, z):
    hyper = entry["hyper"]
    rules = entry["tolerance"]["rules"]
    decay = hyper["bn_config"]["decay_rate"]
    assert hyper["bn_config"]["eps"] == 1e-5  # the MLP's and the body's BatchNorm epsilon
    # Abstract modules (no initialiser runs: every variable comes from the case), made concrete by _load.
    online, target = nnx.eval_shape(lambda: _networks(hyper))
    _load(online, z, "online", decay)
    _load(target, z, "target", decay)

    lr_schedule = lambda k: byol.learning_rate_schedule(
        k, hyper["batch_size"], hyper["base_learning_rate"], hyper["max_steps"], hyper["warmup_steps"]
    )
    tau_schedule = lambda k: byol.target_ema_decay(k, hyper["base_target_ema"], hyper["max_steps"])
    optim = ml_collections.ConfigDict(
        dict(weight_decay=hyper["weight_decay"], trust_coefficient=hyper["eta"], momentum=hyper["momentum"])
    )
    optimizer = nnx.Optimizer(online, byol.make_optimizer(optim, lr_schedule), wrt=nnx.Param)
    parts = {"online": online, "target": target, "optimizer": optimizer}
    graphdef, state = nnx.split(parts)

    # As the method's loop runs train_step: a pure function of the state, jitted (here with XLA's cheap
    # CPU backend passes, which keep this case's compile time in bounds and change no result beyond
    # rounding).
    jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)

    @jit
    def step(state, views):
        parts = nnx.merge(graphdef, state)
        metrics = byol.update(parts, views, lr_schedule, tau_schedule)
        return nnx.state(parts), metrics

    @jit
    def outputs(state, views):
        """Train-mode forwards at the state before a step (their BN updates discarded; in train mode an
        output does not depend on the running statistics)."""
        parts, out = nnx.merge(graphdef, state), {}
        for v, x in zip("12", views):
            out[f"online/projection_view{v}"] = parts["online"].encoder(x)
            out[f"online/prediction_view{v}"] = parts["online"](x)
            out[f"target/projection_view{v}"] = parts["target"](x)
        return out

    @jit
    def gradients(state, views):  # d loss / d theta at step 0, the loss as `update` builds it
        parts = nnx.merge(graphdef, state)
        tp1, tp2 = parts["target"](views[0]), parts["target"](views[1])
        return nnx.state(nnx.grad(lambda m: byol.byol_loss(m(views[0]), m(views[1]), tp1, tp2))(parts["online"]))

    results, out_keys = [], [k for k in z if k.startswith("out_f64/")]
    normalize = jax.vmap(lambda x: augment.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    for k in range(hyper["n_steps"]):
        views = tuple(normalize(jnp.asarray(z[f"input/{k}/view{v}"])) for v in (1, 2))
        ours = {f"out/{k}/{name}": value for name, value in outputs(state, views).items()}
        if k == 0:
            grads = gradients(state, views)
            for key, (path, want) in _params(z, "out_f64/0/grad/online_params/").items():
                ours[key.replace("out_f64/", "out/")] = _leaf(grads, path).reshape(want.shape)
        state, metrics = step(state, views)
        ours[f"out/{k}/repr_loss"] = metrics["loss"]
        ours[f"out/{k}/learning_rate"] = metrics["lr"]
        ours[f"out/{k}/tau"] = metrics["tau"]
        for name, value in ours.items():
            results.append((name, value, z[name.replace("out/", "out_f64/", 1)], *tolerance(rules, name)))
        # The project's schedule functions against the case's per-step values.
        results.append(
            (
                f"hyper/learning_rate_per_step[{k}]",
                lr_schedule(k),
                hyper["learning_rate_per_step"][k],
                *tolerance(rules, "out/0/learning_rate"),
            )
        )
        results.append(
            (f"hyper/tau_per_step[{k}]", tau_schedule(k), hyper["tau_per_step"][k], *tolerance(rules, "out/0/tau"))
        )
    compared = {r[0] for r in results}
    skipped = [k for k in out_keys if k.replace("out_f64/", "out/", 1) not in compared]
    assert all(("loss" in k and "repr" not in k) or "accuracy" in k or "classifier" in k for k in skipped), skipped

    # Final parameters of both networks, the LARS momentum, and the batch-norm state.
    nnx.update(parts, state)
    n_updates = 2 * int(optimizer.step[...])  # train-mode calls per BN: one per view and step
    for tree, module in (("online", online), ("target", target)):
        state = nnx.state(module)
        for key, (path, want) in _params(z, f"final_f64/{tree}_params/").items():
            results.append(
                (
                    key,
                    _leaf(state, path).reshape(want.shape),
                    want,
                    *tolerance(rules, key.replace("final_f64/", "final/")),
                )
            )
        for key, (path, stat, leaf) in _bn_state(z, f"final_f64/{tree}_state/").items():
            value = _leaf(state, path).astype(np.float64)
            hidden = value - decay**n_updates if stat == "var" else value
            ours = {"hidden": hidden, "average": hidden / (1 - decay**n_updates), "counter": np.float64(n_updates)}[
                leaf
            ]
            want = z[key]
            results.append(
                (key, np.reshape(ours, want.shape), want, *tolerance(rules, key.replace("final_f64/", "final/")))
            )
    mu = nnx.state(optimizer)
    for key, (path, want) in _params(z, "final_f64/opt_state/mu/").items():
        path = ("opt_state", 2, "trace", *path)
        results.append(
            (key, _leaf(mu, path).reshape(want.shape), want, *tolerance(rules, key.replace("final_f64/", "final/")))
        )
    return results


if __name__ == "__main__":  # python scripts/reference/byol.py: the BYOL cases through check_reference
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cases = sorted(
        os.path.join(d, f)
        for d in (os.path.join(root, "tests/reference"), os.path.join(root, "tests/reference/steps"))
        for f in os.listdir(d)
        if f.startswith("byol") and f.endswith(".npz")
    )
    sys.exit(subprocess.call([sys.executable, os.path.join(root, "scripts/check_reference.py"), *cases]))
