"""SwAV reference cases through the project's code: Sinkhorn, the swapped-prediction loss, and whole
training steps of facebookresearch/swav `main_swav.train` (LARC + SGD, queue, frozen prototypes).

A step case runs `swav.update`, the part of the jitted train step after the views, on the case's stored
crops, starting from the case's `init/` state dict loaded with common.convert into the model that
`swav.create_state` builds (the case's tiny ResNet passed in as `body`). The learning rate of each
step is the project's `learning_rate_schedule` for the case's hyperparameters, compared with
`hyper/lr_per_step`. Compared: per-step loss, embeddings, scores, Sinkhorn codes, prototypes (as used
and after the step), queue, the step-0 gradients before and after LARC, every final parameter, batch
norm statistic, momentum buffer and the final queue (float32 run against the float64 official run
with the case's float32 `rules`, first matching pattern wins).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import convert, models
from scripts.reference import tolerance
from swav import config as swav_config
from swav import train as swav

# LLVM's backend optimisations take a large part of the compile time of these tiny steps.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run(entry, arrays, path):
    function = entry.get("function", "")
    if function.startswith("sinkhorn("):
        hyper = entry["hyper"]
        q = jax.jit(swav.sinkhorn, static_argnames="n_iters")(arrays["scores"], hyper["epsilon"], hyper["n_iters"])
        tol = entry["tolerance"]["q"]
        return [("q", q, arrays["q_f64"], tol["rtol"], tol["atol"])]
    if function.startswith("swav_loss("):
        hyper = entry["hyper"]
        loss = jax.jit(swav.swav_loss, static_argnames=("n_iters", "crops_for_assign"))(
            arrays["scores"], hyper["temperature"], hyper["epsilon"], hyper["n_iters"], tuple(hyper["crops_for_assign"])
        )
        tol = entry["tolerance"]["loss"]
        return [("loss", loss, arrays["loss_f64"], tol["rtol"], tol["atol"])]
    if entry["case"].startswith("swav_step_"):
        return run_steps(entry, arrays)
    raise NotImplementedError(f"{entry['case']}: no SwAV runner for {function or entry['case']!r}")


# ------------------------------------------------------------------------------------------------
# Whole steps
# ------------------------------------------------------------------------------------------------


def case_config(hyper):
    """The project's config with the case's hyperparameters (main_swav.args)."""
    c = swav_config.get_config("smoke")
    c.data.batch_size = hyper["batch_size"]
    c.views.crop_size, c.views.local_crop_size = hyper["size_crops"]
    c.views.local_crops_number = hyper["nmb_crops"][1]
    c.model.bn_momentum = 0.9  # torch momentum 0.1
    c.model.proj_hidden_dim = hyper["hidden_mlp"]
    c.model.proj_dim = hyper["feat_dim"]
    c.model.num_prototypes = hyper["nmb_prototypes"]
    m = c.method
    m.temperature, m.epsilon = hyper["temperature"], hyper["epsilon"]
    m.sinkhorn_iterations = hyper["sinkhorn_iterations"]
    m.crops_for_assign = tuple(hyper["crops_for_assign"])
    m.queue_length = hyper["queue_length"]
    m.epoch_queue_starts = float(hyper["epoch_queue_starts"])
    m.freeze_prototypes_steps = hyper["freeze_prototypes_niters"]
    m.bn_groups = 1  # one process: one BN group
    o = c.optim
    o.epochs, o.warmup_epochs = float(hyper["epochs"]), float(hyper["warmup_epochs"])
    o.lr, o.start_lr, o.final_lr = hyper["base_lr"], hyper["start_warmup"], hyper["final_lr"]
    o.weight_decay, o.momentum = hyper["wd"], hyper["sgd_momentum"]
    o.trust_coefficient = hyper["larc_trust_coefficient"]
    assert hyper["larc_eps"] == 1e-8 and not hyper["larc_clip"], (
        "the project's LARC is apex's with eps 1e-8, clip=False"
    )
    swav.check_config(c)
    return c


def official_to_project(sd):
    """Official src.resnet50.ResNet state dict -> flat {path: array} of swav.SwAV (common.convert's
    torchvision mapping for the body; projection_head.{0,1,3} -> head fc1/bn1/fc2; prototypes)."""
    flat = {("body", *p): v for p, v in convert.torchvision_resnet(sd).items()}
    flat.update(convert.linear(sd, "projection_head.0", ("head", "fc1")))
    flat.update(convert.batch_norm(sd, "projection_head.1", ("head", "bn1")))
    flat.update(convert.linear(sd, "projection_head.3", ("head", "fc2")))
    flat[("prototypes", "kernel")] = convert.linear_kernel(sd["prototypes.weight"])
    return flat


def official_names(sd):
    """{project path: (official name, the layout change back to the official array)}: the mapping above
    applied to arrays tagged with their name's index, so that the names come from the same code."""
    names = sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    tagged = {k: np.full(np.shape(sd[k]), i, np.int64) for i, k in enumerate(names)}
    out = {}
    for p, v in official_to_project(tagged).items():
        name = names[int(np.asarray(v).flat[0])]
        out[p] = (name, lambda a, shape=np.shape(sd[name]): to_official(a, shape))
    return out


def to_official(a, shape):
    """A project array -> the official layout of `shape` (conv kernel [kh, kw, in, out] -> [out, in, kh,
    kw], linear kernel [in, out] -> [out, in])."""
    a = np.asarray(a)
    if a.ndim == 4:
        a = np.transpose(a, (3, 2, 0, 1))
    elif a.ndim == 2:
        a = a.T
    assert a.shape == tuple(shape), (a.shape, shape)
    return a


def run_steps(entry, arrays):
    hyper = entry["hyper"]
    config = case_config(hyper)
    steps_per_epoch, n_steps = hyper["iterations_per_epoch"], hyper["n_steps"]
    init = {k[len("init/") :]: v for k, v in arrays.items() if k.startswith("init/")}
    body = models.ResNet((1, 1, 1, 1), models.BasicBlock, width=4, stem="imagenet", bn_momentum=0.9, rngs=nnx.Rngs(0))
    graphdef, state, step_fn = swav.create_state(config, steps_per_epoch, body=body)
    parts = nnx.merge(graphdef, state)
    convert.assign(parts["model"], official_to_project(init), what=entry["case"] + " init")
    state = nnx.state(parts)
    names = official_names(init)
    rules = entry["tolerance"]["rules"]
    results = []

    def compare(name, ours, expected_key=None):
        expected = arrays[expected_key or name.replace("out/", "out_f64/", 1).replace("final/", "final_f64/", 1)]
        results.append((name, np.asarray(ours), expected, *tolerance(rules, name)))

    schedule = step_fn.args[2]
    lrs = np.array([schedule(jnp.asarray(k)) for k in range(n_steps)])
    results.append(("hyper/lr_per_step", lrs, arrays["hyper/lr_per_step"], 1e-6, 1e-7))

    def outputs(state, crops):
        """What step k computes before its update, recomputed with the project's functions on a copy."""
        parts = nnx.clone(nnx.merge(graphdef, state))  # a copy: merge shares the state's variables with update
        model, queued = parts["model"], parts["queue"][...]
        swav.normalize_prototypes(model)
        use_queue = swav.queue_is_full(queued)
        (loss, out), grads = nnx.value_and_grad(swav.objective, has_aux=True)(model, crops, queued, use_queue, config)
        kernel = model.prototypes.kernel[...]
        assigned = out["scores"][jnp.asarray(config.method.crops_for_assign)]  # [A, B, K]
        with_queue = jnp.concatenate([queued @ kernel, assigned], axis=1)  # [A, L + B, K]
        m = config.method
        codes = [
            jnp.where(
                use_queue,
                swav.sinkhorn(with_queue[i], m.epsilon, m.sinkhorn_iterations)[-assigned.shape[1] :],
                swav.sinkhorn(assigned[i], m.epsilon, m.sinkhorn_iterations),
            )
            for i in range(assigned.shape[0])
        ]
        params = nnx.state(model, nnx.Param)
        larc = swav.larc(config.optim.trust_coefficient, config.optim.weight_decay)
        grads_larc = larc.update(grads, optax.EmptyState(), params)[0]
        return {"z": out["z"], "scores": out["scores"], "q": jnp.stack(codes), "kernel": kernel}, grads, grads_larc

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # one compilation for both halves
    def step(state, crops):
        return outputs(state, crops), swav.update(*step_fn.args, state, crops)  # train_step's bound arguments

    for k in range(n_steps):
        crops = (jnp.asarray(arrays[f"input/{k}/crops_large"]), jnp.asarray(arrays[f"input/{k}/crops_small"]))
        (out, grads, grads_larc), (state, metrics) = step(state, crops)
        parts = nnx.merge(graphdef, state)
        compare(f"out/{k}/loss", metrics["loss"])
        compare(f"out/{k}/embedding", out["z"])
        compare(f"out/{k}/scores", out["scores"])
        compare(f"out/{k}/q", out["q"])
        compare(f"out/{k}/prototypes_used", np.asarray(out["kernel"]).T)
        compare(f"out/{k}/prototypes", np.asarray(parts["model"].prototypes.kernel[...]).T)
        if f"out/{k}/queue" in arrays:
            compare(f"out/{k}/queue", parts["queue"][...])
        results.append(
            (f"hyper/queue_used_per_step/{k}", metrics["queue_in_use"], arrays["hyper/queue_used_per_step"][k], 0, 0)
        )
        if k == 0:
            for kind, tree in (("grad", grads), ("grad_larc", grads_larc)):
                for path, g in nnx.to_flat_state(tree):
                    name, back = names[path]
                    if f"out/0/{kind}/{name}" in arrays:  # the frozen prototypes have none
                        compare(f"out/0/{kind}/{name}", back(g[...]))

    final = dict(nnx.to_flat_state(nnx.state(parts["model"])))
    for path, (name, back) in names.items():
        compare(f"final/{name}", back(final[path][...]))
    trace = parts["optimizer"].opt_state[1].trace
    for path, buf in nnx.to_flat_state(trace):
        name, back = names[path]
        compare(f"final/momentum_buffer/{name}", back(buf[...]))
    if "final/queue" in arrays:
        compare("final/queue", parts["queue"][...])
    return results
