"""DINO's reference cases through the project's code (dino/train.py): the loss and the centre, the
teacher-temperature and cosine schedules, the teacher EMA, and whole official training steps.

A step case (`kind` train_step) builds its tiny body directly (the ViT or torchvision-style ResNet of
its `architecture`), puts it in dino's Network with the case's head sizes, loads the official initial
state (`init/`) with common.convert, builds the parts with dino's own `create_state`, and feeds every
step's stored crops to dino's `update` (the train step after `make_views`) with the schedule values
dino's `step_schedules` computes from the case's hyperparameters. It compares, per step, the loss, the
head outputs, the centre, the pre-clip gradient norms, the last layer and the schedule values, and at
the end every parameter and buffer of student and teacher, the centre and the optimizer state (AdamW
moments and per-parameter step counts, SGD momentum buffers), a float32 run against the float64
official arrays at the case's tolerances.

The head's state_dict names are mapped here (common.convert has the bodies only): `mlp.<i>` are
fc1/fc2/fc3 (and bn1/bn2 with use_bn_in_head), `last_layer.weight_v` [K, d] is `v` [d, K] and
`last_layer.weight_g` [K, 1] is `g` [K] (absent with norm_last_layer, where it stays 1).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import convert, models
from dino import config as dino_config
from dino import train as dino
from scripts.reference import tolerance


def run(entry, arrays, path):
    if entry.get("kind") == "train_step":
        return _train_steps(entry, arrays)
    case = entry["case"]
    if case.startswith("dino_loss"):
        h = entry["hyper"]
        args = [jnp.asarray(arrays[k]) for k in ("student_out", "teacher_out", "center")]
        loss, new_center = dino.dino_loss(*args, h["student_temp"], h["teacher_temp"], h["center_momentum"])
        return [
            ("loss", loss, arrays["loss_f64"], *tolerance(entry, "loss")),
            ("new_center", new_center, arrays["new_center_f64"], *tolerance(entry, "new_center")),
        ]
    if case == "dino_teacher_temp_schedule":
        got = dino.teacher_temp_schedule(**entry["hyper"])
        return [
            ("teacher_temp_schedule", got, arrays["teacher_temp_schedule"], *tolerance(entry, "teacher_temp_schedule"))
        ]
    if case == "dino_cosine_scheduler":
        return [
            (f"schedule_{i}", dino.cosine_scheduler(**cfg), arrays[f"schedule_{i}"], *tolerance(entry, "schedule"))
            for i, cfg in enumerate(entry["hyper"]["cosine_cfgs"])
        ]
    if case == "dino_teacher_update":
        teacher, student = {"w": jnp.asarray(arrays["teacher_param"])}, {"w": jnp.asarray(arrays["student_param"])}
        got = jax.jit(dino.ema_update)(teacher, student, float(arrays["m"]))["w"]
        return [("new_teacher_param", got, arrays["new_teacher_param"], *tolerance(entry, "new_teacher_param"))]
    raise NotImplementedError(f"no dino runner for case {case!r}")


# ------------------------------------------------------------------------------------------------
# Whole training steps
# ------------------------------------------------------------------------------------------------


def _config(h):
    """dino's config with the case's hyperparameters (README: 'Project settings that correspond')."""
    c = dino_config.get_config("smoke")
    c.unlock()
    c.data.batch_size = h["batch_size"] * h["world_size"]
    c.views.update(crop_size=h["global_crop_size"], local_crop_size=h["local_crop_size"])
    c.views.local_crops_number = h["n_local_crops"]
    c.model.update(head_hidden_dim=32, head_bottleneck_dim=16, out_dim=h["out_dim"])
    c.model.update(norm_last_layer=h["norm_last_layer"], use_bn_in_head=h["use_bn_in_head"])
    c.model.drop_path_rate = h["drop_path_rate"]
    c.method.update(
        student_temp=h["student_temp"],
        teacher_temp=h["teacher_temp"],
        warmup_teacher_temp=h["warmup_teacher_temp"],
        warmup_teacher_temp_epochs=h["warmup_teacher_temp_epochs"],
        center_momentum=h["center_momentum"],
        momentum_teacher=h["momentum_teacher"],
    )
    c.optim.update(
        optimizer=h["optimizer"],
        epochs=float(h["epochs"]),
        warmup_epochs=float(h["warmup_epochs"]),
        lr=h["lr"],
        final_lr=h["min_lr"],
        weight_decay=h["weight_decay"],
        weight_decay_end=h["weight_decay_end"],
        clip_grad=h["clip_grad"],
        freeze_last_layer=float(h["freeze_last_layer"]),
    )
    return c


def _head(sd, use_bn):
    """DINOHead state_dict (without 'head.') -> flat state of dino.DINOHead."""
    fcs, bns = ((0, 3, 6), (1, 4)) if use_bn else ((0, 2, 4), ())
    out = {}
    for name, i in zip(("fc1", "fc2", "fc3"), fcs):
        out.update(convert.linear(sd, f"mlp.{i}", (name,)))
    for name, i in zip(("bn1", "bn2"), bns):
        out.update(convert.batch_norm(sd, f"mlp.{i}", (name,)))
    out[("last_layer", "v")] = np.asarray(sd["last_layer.weight_v"]).T
    return out


def _network_state(sd, vit, use_bn, norm_last_layer):
    """An official student/teacher state_dict -> flat state of dino.Network (path tuples)."""
    body = convert.dino_vit(sd, "backbone.") if vit else convert.torchvision_resnet(sd, "backbone.")
    head = _head(convert.strip(sd, "head."), use_bn)
    if not norm_last_layer:
        head[("last_layer", "g")] = np.asarray(sd["head.last_layer.weight_g"])[:, 0]
    return {**{("body", *p): v for p, v in body.items()}, **{("head", *p): v for p, v in head.items()}}


def _official(arrays, prefix):
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _flat(tree):
    """{path tuple: numpy array} of an nnx State (MaskedNode placeholders of optax left out)."""
    flat = {}
    for path, v in nnx.to_flat_state(tree):
        v = v.get_value() if isinstance(v, nnx.Variable) else v
        if hasattr(v, "shape"):
            flat[tuple(path)] = np.asarray(v)
    return flat


def _optimizer_state(flat, path, optimizer):
    """The official optimizer state of the parameter at `path` -> {official key: array}: the moments
    and step count of AdamW (torch keeps one count per parameter: here, its branch's count) or SGD's
    momentum buffer."""
    found = {}
    for p, v in flat.items():
        for ours, theirs in (("mu", "exp_avg"), ("nu", "exp_avg_sq"), ("trace", "momentum_buffer")):
            if ours in p and p[p.index(ours) + 1 :] == path:
                found[theirs] = v
                if ours == "mu":
                    found["step"] = flat[p[: p.index(ours)] + ("count",)]
    return found


def _train_steps(entry, z):
    h = entry["hyper"]
    config = _config(h)
    vit = "init/student/backbone.cls_token" in z

    def network(rngs):
        if vit:
            size = h["global_crop_size"]
            body = models.VisionTransformer(patch_size=4, embed_dim=32, depth=2, num_heads=2, img_size=size, rngs=rngs)
        else:
            body = models.ResNet((1, 1, 1, 1), models.BasicBlock, width=4, stem="small", bn_momentum=0.9, rngs=rngs)
        return dino.Network(config, rngs, body=body)

    student = nnx.eval_shape(network, nnx.Rngs(0))  # shapes only: every value comes from init/ below
    to_ours = lambda sd: _network_state(sd, vit, h["use_bn_in_head"], h["norm_last_layer"])
    init = _official(z, "init/student/")
    if not all(np.array_equal(v, z[f"init/teacher/{k}"]) for k, v in init.items()):
        raise ValueError("the case's initial teacher differs from its student; dino's teacher starts as a copy")
    convert.assign(student, to_ours(init), what="case's init/student")
    graphdef, state, _ = dino.create_state(config, h["niter_per_ep"], student=student)
    schedules = dino.step_schedules(config, h["niter_per_ep"])  # float64, as the official numpy schedules

    @jax.jit
    def step(state, crops, s):
        parts = nnx.merge(graphdef, state)
        metrics, outputs = dino.update(config, parts, crops, s, None)
        return nnx.state(parts), metrics, outputs

    # official parameter name -> our path: the mapping applied to arrays tagged with their index
    names = list(init)
    tagged = {k: np.full(v.shape, i, np.float64) for i, (k, v) in enumerate(init.items())}
    path_of = {names[int(v.flat[0])]: p for p, v in to_ours(tagged).items()}
    tol = lambda key: tolerance(entry, key)

    results = [
        (f"schedule {ours}", schedules[ours], z[f"hyper/{theirs}"], *tol("schedules"))
        for ours, theirs in (("lr", "lr_schedule"), ("weight_decay", "wd_schedule"), ("momentum", "momentum_schedule"))
    ]
    for k in range(h["n_steps"]):
        # this step's schedule values: float64 for the comparison, float32 into the step (as create_state's)
        exact = {name: values[k] for name, values in schedules.items()}
        s = {name: np.float32(v) for name, v in exact.items()}
        crops = [jnp.asarray(z[f"input/{k}/global"]), jnp.asarray(z[f"input/{k}/local"])]
        state, metrics, outputs = step(state, crops, s)
        want = lambda name: z[f"out_f64/{k}/{name}"]
        grad_norm = _flat(outputs["grad_norm"])
        last_v = np.asarray(state["student"]["head"]["last_layer"]["v"][...]).T
        results += [
            (f"step {k} loss", metrics["loss"], want("loss"), *tol("loss")),
            (f"step {k} student_out", outputs["student_out"], want("student_out"), *tol("student_out")),
            (f"step {k} teacher_out", outputs["teacher_out"], want("teacher_out"), *tol("teacher_out")),
            (f"step {k} center", state["centre"][...], want("center"), *tol("center")),
            (
                f"step {k} grad_norm",
                np.array([grad_norm[path_of[n]] for n in entry["grad_norm_names"]]),
                want("grad_norm"),
                *tol("grad_norm"),
            ),
            (
                f"step {k} last_layer.weight_v",
                last_v,
                want("student/head.last_layer.weight_v"),
                *tol("final_params_and_buffers"),
            ),
            (f"step {k} lr", [exact["lr"]] * 2, z[f"out/{k}/lr"], *tol("schedules")),  # both parameter groups
            (f"step {k} wd", [exact["weight_decay"], 0.0], z[f"out/{k}/wd"], *tol("schedules")),  # group 1: none
            (f"step {k} teacher_temp", exact["teacher_temp"], z[f"out/{k}/teacher_temp"], *tol("schedules")),
            (f"step {k} momentum", exact["momentum"], z[f"out/{k}/momentum"], *tol("schedules")),
            (f"step {k} last_layer_frozen", exact["last_layer_frozen"], z[f"out/{k}/last_layer_frozen"], 0, 0),
        ]

    # every final parameter and buffer of student and teacher, in the official names
    for part in ("student", "teacher"):
        ours = _flat(state[part])
        for name, want in _official(z, f"final_f64/{part}/").items():
            if name.endswith("num_batches_tracked"):
                continue  # no counterpart (it has no effect with a fixed momentum)
            if name == "head.last_layer.weight_g" and h["norm_last_layer"]:
                got = np.ones_like(want)  # the fixed norm g = 1: not a parameter here
            elif name == "head.last_layer.weight_g":
                got = ours[path_of[name]][:, None]
            else:
                got = _to_official(ours[path_of[name]], z[f"init/student/{name}"])
            key = "final_attn_qkv_bias" if name.endswith("attn.qkv.bias") else "final_params_and_buffers"
            results.append((f"final {part}/{name}", got, want, *tol(key)))
    results.append(("final center", state["centre"][...], z["final_f64/dino_loss/center"], *tol("center")))

    # the optimizer state (float32 official run): max|ours - official| <= 1e-4 max|official| per tensor;
    # tensors of parameters that the float64 run leaves at their initial value (zero gradient) skipped
    rel = entry["tolerance"]["final_optimizer_state"]["per_tensor_rel_to_max"]
    flat_opt = _flat(state["optimizer"])
    for name in entry["grad_norm_names"]:
        if np.max(np.abs(z[f"final_f64/student/{name}"] - z[f"init/student/{name}"])) < 1e-9:
            continue
        ours = _optimizer_state(flat_opt, path_of[name], config.optim.optimizer)
        for key, want in _official(z, f"final/optimizer/{name}/").items():
            got = ours[key] if key == "step" else _to_official(ours[key], want)
            results.append((f"final optimizer {name}/{key}", got, want, 0.0, rel * float(np.max(np.abs(want)))))
    return results


def _to_official(ours, like):
    """An array in our layout -> the official layout of `like` (kernels transposed back)."""
    ours = np.asarray(ours)
    if ours.shape == like.shape and ours.ndim < 2:
        return ours
    if ours.ndim == 4:  # conv [kh, kw, in, out] -> [out, in, kh, kw]
        return np.transpose(ours, (3, 2, 0, 1))
    if ours.ndim == 2 and ours.shape[::-1] == like.shape:  # Linear kernel [in, out] -> [out, in]
        return ours.T
    return ours.reshape(like.shape)  # cls_token, pos_embed
