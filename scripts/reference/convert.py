"""Conversion cases (tests/reference/convert/, and the checkpoint files of tests/reference/steps/) through
common/convert.py and the project's bodies.

* forward_formula: every tensor of an official full-size body by the README's weight formula, keyed by its
  official name; the state dict goes through the converter into `models.ResNet` / `models.VisionTransformer`
  and the eval-mode outputs are compared with `out_f64/` (SimCLR v2 also with the NOT-official symmetric
  max-pool cross-check).
* container: the stored checkpoint files are read without torch (`convert.read_checkpoint`); the body
  tensors must equal `expect/*` bit for bit, and the converted body (and the heads, computed here from the
  converted NNX-layout heads) must reproduce `out_f64/`.
* checkpoint (steps/): the file's tensors equal the `final/` arrays of the step case it was saved after,
  and its body converts into a strict-checked model.
* checkpoint_layout (BYOL): a Haiku pickle laid out as the recorded ResNet-50 experiment state is
  written and read back through `convert.load_haiku` and mapped into ResNet-50 (padding 'haiku').
"""

import json
import os
import pickle
import re
import tempfile
import zlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import convert, models

# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def formula(name, shape, layout="torch", salt=0, gain=1.0):
    """The README's weight formula for the official tensor `name` (None for num_batches_tracked)."""
    rng = np.random.default_rng((zlib.crc32(name.encode("utf-8")) + salt) % 2**32)
    leaf = re.split(r"[./]", name.replace(":0", ""))[-1]
    shape = tuple(shape)
    if leaf == "num_batches_tracked":
        return None
    if leaf in ("running_var", "moving_variance"):
        value = 0.5 + rng.random(shape)
    elif leaf in ("running_mean", "moving_mean"):
        value = 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1 and leaf in ("weight", "gamma"):
        value = 1 + 0.1 * rng.standard_normal(shape)
    elif leaf in ("bias", "beta"):
        value = 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2 and leaf in ("weight", "kernel", "weight_v"):
        fan_in = np.prod(shape[1:]) if layout == "torch" else np.prod(shape[:-1])
        value = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
    else:
        value = rng.standard_normal(shape)
    return value.astype(np.float32)


def formula_weights(entry):
    w = entry["weights"]
    layout = w.get("layout", "torch")
    out = {}
    for row in w["params"]:
        value = formula(row[0], row[1], layout, w.get("salt", 0), w.get("gain", 1.0))
        if value is not None:
            out[row[0]] = value
    total = sum(float(v.astype(np.float64).sum()) for v in out.values())
    if not np.isclose(total, w["checksum"]["sum"], rtol=1e-9, atol=1e-6):
        raise AssertionError(f"the weight formula gives sum {total}, the case records {w['checksum']['sum']}")
    return out


def input_batch(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def build_body(arch, num_heads=None):
    """The project body for an architecture of convert.body_to_nnx / simclr_tf2 / byol_haiku, abstract
    (nnx.eval_shape: no initialisation is computed, `convert.assign` fills every variable)."""
    return nnx.eval_shape(lambda: _body(arch, num_heads))


def _body(arch, num_heads):
    rngs = nnx.Rngs(0)
    if arch["kind"] == "vit":
        return models.VisionTransformer(
            patch_size=arch["patch_size"],
            embed_dim=arch["embed_dim"],
            depth=arch["depth"],
            num_heads=num_heads or arch["embed_dim"] // 64,
            img_size=arch["img_size"],
            rngs=rngs,
        )
    block = models.Bottleneck if arch["block"] == "bottleneck" else models.BasicBlock
    return models.ResNet(
        arch["stage_sizes"],
        block,
        width=arch["width"],
        stem="imagenet" if arch.get("stem_kernel", 7) == 7 else "cifar",  # 3x3 stems: the shapes are the same
        padding=arch.get("padding", "torch"),
        bn_unbiased=arch.get("bn_unbiased", True),
        rngs=rngs,
    )


def load_body(flat, arch, num_heads=None):
    body = build_body(arch, num_heads)
    convert.assign(body, flat, strict=True)
    body.eval()
    return body


# One compiled program per model and input shape (eager NNX compiles every op on its own: slower here).
forward = nnx.jit(lambda body, x: body(x))
last_attention = nnx.jit(lambda body, x: body.get_last_selfattention(x))


def tolerance(entry, key):
    """(rtol, atol) of `out/<key>` in the entry's tolerance table."""
    t = entry["tolerance"][f"out/{key}" if f"out/{key}" in entry["tolerance"] else key]
    return t["rtol"], t["atol"]


def compare_outputs(entry, arrays, ours):
    """[(name, ours, out_f64, rtol, atol)] for every output the runner computed."""
    out = []
    for key, value in ours.items():
        tol_key = f"out/{key}" if f"out/{key}" in entry["tolerance"] else key
        t = entry["tolerance"][tol_key]
        want = t.get("compare_to", f"out_f64/{key}")
        out.append((f"out/{key}", np.asarray(value), arrays[want], t["rtol"], t["atol"]))
    return out


def exact(name, ours, expected):
    return (name, np.asarray(ours, np.float64), np.asarray(expected, np.float64), 0.0, 0.0)


def stage_means(body, x):
    """ResNet stem (after the max-pool) and stage outputs, averaged over H, W: [mean_stem, mean_1..4]."""
    h = nnx.relu(body.bn1(body.conv1(x)))
    pad = "SAME" if body.pool_same else ((1, 1), (1, 1))
    h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=pad)
    means = [jnp.mean(h, axis=(1, 2))]
    for stage in body.stages:
        for block in stage:
            h = block(h)
        means.append(jnp.mean(h, axis=(1, 2)))
    return means


jit_stage_means = nnx.jit(stage_means)


def bn_eval(flat, prefix, x, eps=1e-5):
    """An eval-mode batch norm from NNX names (scale, bias, mean, var; scale/bias optional)."""
    y = (x - flat[(*prefix, "mean")]) / np.sqrt(flat[(*prefix, "var")] + eps)
    if (*prefix, "scale") in flat:
        y = y * flat[(*prefix, "scale")]
    if (*prefix, "bias") in flat:
        y = y + flat[(*prefix, "bias")]
    return y


def dense(flat, prefix, x):
    y = x @ flat[(*prefix, "kernel")]
    return y + flat[(*prefix, "bias")] if (*prefix, "bias") in flat else y


def l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------
# forward_formula cases
# ------------------------------------------------------------------------------------------------


def run_formula(entry, arrays):
    weights = formula_weights(entry)
    case = entry["case"]
    if case == "convert_resnet50_torchvision":
        flat, arch = convert.body_to_nnx({k: v for k, v in weights.items() if not k.startswith("fc.")})
        body = load_body(flat, arch)
        x = arrays["input/x_nhwc"]
        means = [np.asarray(m) for m in jit_stage_means(body, jnp.asarray(x))]
        features = means[-1]
        ours = {"features": features, "logits": features @ weights["fc.weight"].T + weights["fc.bias"]}
        ours.update({"maxpool_mean": means[0], **{f"layer{i}_mean": means[i] for i in (1, 2, 3, 4)}})
        return compare_outputs(entry, arrays, ours)
    if case.startswith("convert_dino_vit"):
        flat, arch = convert.body_to_nnx(weights)
        body = load_body(flat, arch, num_heads=6)
        ours = {}
        for size, spec in entry["hyper"]["inputs"].items():
            key = f"input/x_{size}_nhwc"
            if key in arrays:
                x = arrays[key]
            else:
                x = input_batch(spec["seed"], spec["shape_nhwc"])
                check = entry["hyper"]["inputs_not_stored"][f"x_{size}_nhwc"]
                assert np.isclose(float(x.astype(np.float64).sum()), check["sum"]), "regenerated input differs"
            ours[f"cls_{size}"] = np.asarray(forward(body, jnp.asarray(x)))
            if f"out/attn_cls_{size}" in arrays:
                attn = np.asarray(last_attention(body, jnp.asarray(x)))
                ours[f"attn_cls_{size}"] = attn[:, :, 0, 1:]
                ours[f"attn_cls_self_{size}"] = attn[:, :, 0, 0]
        return compare_outputs(entry, arrays, ours)
    if case == "convert_simclr2_r50_1x_sk0_tf2":
        converted = convert.simclr_tf2(weights, case)
        # The same variables under a TF2 SavedModel's positional checkpoint keys (weights.params' last column).
        keys = {row[0]: row[5][0] for row in entry["weights"]["params"]}
        positional = convert.simclr_tf2({keys[k]: v for k, v in weights.items()}, case)["body"]
        same = set(positional) == set(converted["body"])
        same = same and all(np.array_equal(positional[k], converted["body"][k]) for k in positional)
        positional_check = ("SavedModel positional keys give the same body", float(same), 1.0, 0.0, 0.0)
        x = jnp.asarray(arrays["input/x_nhwc"])
        body = load_body(converted["body"], converted["arch"])
        means = [np.asarray(m) for m in jit_stage_means(body, x)]
        features = means[-1]
        head = {(str(k[0]), *k[1:]): v for k, v in converted["heads"]["head"].items()}
        h = features
        layers = sorted({int(k[0]) for k in head})
        for j in layers:
            h = bn_eval(head, (str(j), "bn"), h @ head[(str(j), "fc", "kernel")])
            h = np.maximum(h, 0) if j != layers[-1] else h
        ours = {
            "final_avg_pool": features,
            "proj_head_output": h,
            "logits_sup": dense(converted["heads"]["classifier"], (), features),
            "initial_max_pool_mean": means[0],
            **{f"block_group{i}_mean": means[i] for i in (1, 2, 3, 4)},
        }
        # The NOT-official cross-check: the same converted weights with the symmetric (PyTorch) max-pool.
        body.pool_same = False
        ours["crosscheck/final_avg_pool_symmetric_maxpool"] = np.asarray(forward(body, x))
        return compare_outputs(entry, arrays, ours) + [positional_check]
    raise NotImplementedError(f"no forward_formula branch for case {case}")


# ------------------------------------------------------------------------------------------------
# container cases
# ------------------------------------------------------------------------------------------------

_FORMAT_OF = {
    "moco_v2_tiny": "moco",
    "swav_tiny": "swav",
    "paws_tiny": "paws",
    "pirl_vissl_tiny": "vissl",
    "dino_vit_tiny": "dino",
    "torchvision_resnet_tiny_bottleneck": "torchvision",
}


def run_container(entry, arrays, folder):
    fmt = _FORMAT_OF[entry["case"]]
    expect = {k[len("expect/") :]: v for k, v in arrays.items() if k.startswith("expect/")}
    heads_match = re.search(r"heads (\d+)", entry["architecture"])
    num_heads = int(heads_match.group(1)) if heads_match else None
    results = []
    for name in entry["checkpoint_files"]:
        file = os.path.join(folder, name)
        converted = convert.read_checkpoint(file, fmt)
        tag = os.path.basename(name)
        body_sd = converted["body"]
        if set(body_sd) != set(expect):
            raise AssertionError(f"{tag}: body keys differ from expect/: {sorted(set(body_sd) ^ set(expect))[:6]}")
        results += [exact(f"{tag}: expect/{k}", body_sd[k], expect[k]) for k in sorted(expect)]
        flat, arch = convert.body_to_nnx(body_sd)
        body = load_body(flat, arch, num_heads)
        heads = convert.heads_to_nnx(fmt, converted.get("heads", {}))
        ours = {}
        if fmt == "dino":
            for key in arrays:
                m = re.fullmatch(r"input/x_(\d+)_nhwc", key)
                if m:
                    ours[f"teacher_cls_{m.group(1)}"] = np.asarray(forward(body, jnp.asarray(arrays[key])))
            x = jnp.asarray(arrays["input/x_32_nhwc"])
            ours["teacher_attn_cls_32"] = np.asarray(last_attention(body, x))[:, :, 0, 1:]
            if "other" in converted:
                s_flat, s_arch = convert.body_to_nnx(converted["other"]["body"])
                ours["student_cls_32"] = np.asarray(forward(load_body(s_flat, s_arch, num_heads), x))
            results += [(f"{tag}: {n}", o, e, r, a) for n, o, e, r, a in compare_outputs(entry, arrays, ours)]
            continue
        x = jnp.asarray(arrays["input/x_nhwc"])
        features = np.asarray(forward(body, x))
        ours["features" if "out/features" in arrays else "features_q"] = features
        if fmt == "moco":
            fc = heads["fc"]
            ours["q"] = dense(fc, ("fc2",), np.maximum(dense(fc, ("fc1",), features), 0))
            k_flat, k_arch = convert.body_to_nnx(converted["other"]["body"])
            features_k = np.asarray(forward(load_body(k_flat, k_arch), x))
            k_fc = convert.heads_to_nnx(fmt, converted["other"]["heads"])["fc"]
            ours["features_k"] = features_k
            ours["k"] = dense(k_fc, ("fc2",), np.maximum(dense(k_fc, ("fc1",), features_k), 0))
            queue = converted["buffers"]["queue"]  # the project's [K, dim]
            results.append(exact(f"{tag}: expect_buffers/queue", queue.T, arrays["expect_buffers/queue"]))
            results.append(
                exact(
                    f"{tag}: expect_buffers/queue_ptr",
                    converted["buffers"]["queue_ptr"],
                    arrays["expect_buffers/queue_ptr"],
                )
            )
        elif fmt == "swav":
            head = heads["head"]
            z = l2n(dense(head, ("fc2",), np.maximum(bn_eval(head, ("bn1",), dense(head, ("fc1",), features)), 0)))
            ours["embedding"], ours["prototype_scores"] = z, z @ heads["prototypes"][("kernel",)]
            for k in sorted(a for a in arrays if a.startswith("expect_head/")):
                group, rest = k[len("expect_head/") :].split(".", 1)
                results.append(exact(f"{tag}: {k}", converted["heads"][group][rest], arrays[k]))
        elif fmt == "paws":
            head, pred = heads["head"], heads["pred"]
            h = np.maximum(bn_eval(head, ("bn1",), dense(head, ("fc1",), features)), 0)
            h = dense(head, ("fc3",), np.maximum(bn_eval(head, ("bn2",), dense(head, ("fc2",), h)), 0))
            z = bn_eval(pred, ("bn1",), h)
            z = dense(pred, ("fc2",), np.maximum(bn_eval(pred, ("bn2",), dense(pred, ("fc1",), z)), 0))
            ours["h"], ours["z"] = h, z
        elif fmt == "vissl":
            ours["image_embedding"] = dense(heads["image_head"], (), features)
        elif fmt == "torchvision":
            ours["logits"] = dense(heads["fc"], (), features)
        results += [(f"{tag}: {n}", o, e, r, a) for n, o, e, r, a in compare_outputs(entry, arrays, ours)]
    return results


# ------------------------------------------------------------------------------------------------
# steps/ checkpoint files and the BYOL layout
# ------------------------------------------------------------------------------------------------


def run_step_checkpoint(entry, path):
    folder = os.path.dirname(os.path.abspath(path))
    method = entry["method"]
    step_case = entry.get("same_run_as") or re.search(r"case (\w+)", entry["function"]).group(1) + ".npz"
    final = {
        k[len("final/") :]: v for k, v in np.load(os.path.join(folder, step_case)).items() if k.startswith("final/")
    }
    ck = convert.load_torch(path)
    results = []
    if method == "moco":
        sd = convert.strip(ck["state_dict"], "module.")
        results += [exact(k, v, final[k]) for k, v in sd.items()]
        converted = convert.read_checkpoint(path, "moco")
        results.append(exact("queue [K, dim] (transposed back)", converted["buffers"]["queue"].T, final["queue"]))
    elif method == "paws":
        sd = convert.strip(ck["encoder"], "module.")
        results += [exact(k, v, final[k]) for k, v in sd.items()]
        converted = convert.read_checkpoint(path, "paws")
        heads = convert.heads_to_nnx("paws", converted["heads"])
        results.append(
            exact("heads converted (fc3 kernel = weight.T)", heads["head"][("fc3", "kernel")], final["fc.fc3.weight"].T)
        )
    elif method == "dino":
        student = convert.strip(ck["student"], "module.")
        results += [exact(f"student/{k}", v, final[f"student/{k}"]) for k, v in student.items()]
        results += [exact(f"teacher/{k}", v, final[f"teacher/{k}"]) for k, v in ck["teacher"].items()]
        results.append(exact("dino_loss/center", ck["dino_loss"]["center"], final["dino_loss/center"]))
        converted = convert.read_checkpoint(path, "dino")
        heads = convert.heads_to_nnx("dino", converted["heads"])
        g = final["teacher/head.last_layer.weight_g"].reshape(-1)
        # norm_last_layer: g is fixed at 1 and the project's layer has none, so the converter leaves it out.
        results.append(exact("head last_layer g [K]", heads["head"].get(("last_layer", "g"), np.ones_like(g)), g))
        v = final["teacher/head.last_layer.weight_v"]
        results.append(exact("head last_layer v [in, out] = weight_v.T", heads["head"][("last_layer", "v")], v.T))
        results.append(
            ("args (argparse.Namespace) read as a plain dict", float(isinstance(ck["args"], dict)), 1.0, 0, 0)
        )
    else:
        raise NotImplementedError(f"no checkpoint branch for method {method}")
    flat, arch = convert.body_to_nnx(converted["body"])
    body = build_body(arch, num_heads=None if arch["kind"] == "resnet" else _vit_heads(folder, step_case))
    convert.assign(body, flat, strict=True)  # raises (a failed case) when a name or shape does not fit
    results.append(("body converted into the project's model (strict names and shapes)", 1.0, 1.0, 0.0, 0.0))
    return results


def _vit_heads(folder, step_case):
    entries = json.load(open(os.path.join(folder, "cases.json")))["cases"]
    arch = next(e for e in entries if e["file"] == step_case)["architecture"]
    text = json.dumps(arch)
    m = re.search(r"num_heads\D{0,4}(\d+)", text) or re.search(r"(\d+) heads", text)
    return int(m.group(1))


class Global:
    """A global named in a crafted pickle (the class or function need not exist here)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Reduce:
    """fn(*args) in a crafted pickle (REDUCE), then BUILD with `state` if given."""

    def __init__(self, fn, args, state=None, newobj=False):
        self.fn, self.args, self.state, self.newobj = fn, tuple(args), state, newobj


class Storage:
    """A torch storage in a crafted torch.save archive: its element class and raw data."""

    def __init__(self, kind, data):
        self.kind, self.data = kind, np.ascontiguousarray(data).reshape(-1)


class CraftingPickler(pickle._Pickler):
    """A pickler that writes Global / Reduce as the GLOBAL, REDUCE / NEWOBJ and BUILD opcodes, so that
    files in the official formats (and malicious ones) can be made here without torch or haiku. With
    `storages` (a list), numpy arrays become torch tensors on storages, as torch.save writes them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, storages=None):
        super().__init__(file, protocol=2)
        self.storages = storages

    def save_global_placeholder(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def save_reduce_placeholder(self, obj):
        self.save(obj.fn)
        self.save(obj.args)
        self.write(pickle.NEWOBJ if obj.newobj else pickle.REDUCE)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    def save_array(self, obj):
        if self.storages is None:
            return pickle._Pickler.save_reduce(self, *obj.__reduce_ex__(2), obj=obj)
        kind = {np.float32: "FloatStorage", np.int64: "LongStorage", np.float64: "DoubleStorage"}[obj.dtype.type]
        storage = Storage(kind, obj)
        self.storages.append(storage)
        strides = tuple(int(s) for s in np.cumprod((1,) + obj.shape[::-1][:-1])[::-1]) if obj.ndim else ()
        odict = Reduce(Global("collections", "OrderedDict"), ())
        rebuild = Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (storage, 0, obj.shape, strides, False, odict))
        self.save(rebuild)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            key = str(self.storages.index(obj))
            return ("storage", Global("torch", obj.kind), key, "cpu", obj.data.size)
        return None

    dispatch[Global] = save_global_placeholder
    dispatch[Reduce] = save_reduce_placeholder
    dispatch[np.ndarray] = save_array


def write_torch_zip(path, obj, root=None, skip_storage=None):
    """`obj` (dicts, numbers, numpy arrays as tensors) saved in torch.save's zip layout. skip_storage:
    leave out that storage's file (a damaged archive, for the tests)."""
    import zipfile

    root = root or os.path.splitext(os.path.basename(path))[0]
    storages, buffer = [], __import__("io").BytesIO()
    CraftingPickler(buffer, storages).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", buffer.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        for i, storage in enumerate(storages):
            if str(i) != skip_storage:
                z.writestr(f"{root}/data/{i}", storage.data.tobytes())
        z.writestr(f"{root}/version", "3\n")


def write_torch_legacy(path, obj, truncate=0):
    """`obj` saved in torch's pre-1.6 format (magic number, protocol, system info, the object with
    storages as persistent ids, the storage keys, then each storage's 8-byte count and raw bytes).
    truncate: drop that many bytes from the end (a damaged file, for the tests)."""
    import io

    buffer, storages = io.BytesIO(), []
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    CraftingPickler(buffer, storages).dump(obj)
    pickle.dump([str(i) for i in range(len(storages))], buffer, protocol=2)
    for storage in storages:
        buffer.write(storage.data.size.to_bytes(8, "little") + storage.data.tobytes())
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


def haiku_pickle(layout, path):
    """A BYOL pretrain.pkl as `Checkpointer.maybe_save_checkpoint` writes it (dill protocol 2: the
    experiment-state namedtuple as NEWOBJ of its class, numpy leaves), values by the weight formula."""

    def nested(flat):
        out = {}
        for k, v in flat.items():
            module, leaf = k.rsplit("/", 1)
            out.setdefault(module, {})[leaf] = v
        return out

    def leaf(name, shape, dtype):
        return np.full(shape, 3, dtype) if name.endswith("counter") else formula(name, shape, "tf")

    record = lambda cls, *fields: Reduce(Global(*cls.rsplit(".", 1)), fields, newobj=True)
    params = nested({k: leaf(k, *v) for k, v in layout["online_params"].items()})
    state = nested({k: leaf(k, *v) for k, v in layout["online_state"].items()})
    opt = tuple(record(name) for name in layout["opt_state"])
    exp = record("byol.byol_experiment._ByolExperimentState", params, params, state, state, opt)
    with open(path, "wb") as f:
        CraftingPickler(f).dump({"experiment_state": exp, "step": 5, "rng": np.zeros(2, np.uint32)})
    return params, state


def run_byol_layout(entry, path):
    layout = json.load(open(path))
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "pretrain.pkl")
        params, state = haiku_pickle(layout, file)
        converted = convert.read_checkpoint(file, "byol")
    body = build_body(converted["arch"])
    convert.assign(body, converted["body"], strict=True)  # every variable of ResNet-50, names and shapes
    root = "res_net50/~/"
    n_body = sum(1 for k in layout["online_params"] if k.startswith(root))
    n_stats = sum(1 for k in layout["online_state"] if k.startswith(root) and k.endswith("/average"))
    bn3 = "res_net50/~/block_group_3/~/block_2/~/batchnorm_2"
    return [
        ("body leaves mapped (params + BN averages)", len(converted["body"]), n_body + n_stats, 0.0, 0.0),
        exact("conv1 kernel", converted["body"][("conv1", "kernel")], params["res_net50/~/initial_conv"]["w"]),
        exact(
            "stage 4 block 3 bn3 var = var_ema average",
            converted["body"][("stages", 3, 2, "bn3", "var")],
            state[f"{bn3}/~/var_ema"]["average"].reshape(-1),
        ),
        exact(
            "stage 4 block 3 bn3 scale",
            converted["body"][("stages", 3, 2, "bn3", "scale")],
            params[bn3]["scale"].reshape(-1),
        ),
        exact(
            "projector fc1 kernel", converted["heads"]["projector"][("fc1", "kernel")], params["projector/linear"]["w"]
        ),
        exact(
            "target predictor absent, target projector",
            converted["other"]["heads"]["projector"][("fc2", "kernel")],
            params["projector/linear_1"]["w"],
        ),
        exact(
            "architecture (3, 4, 6, 3), width 64",
            np.array(converted["arch"]["stage_sizes"] + (converted["arch"]["width"],)),
            np.array([3, 4, 6, 3, 64]),
        ),
    ]


# ------------------------------------------------------------------------------------------------


def run(entry, arrays, path):
    kind = entry.get("kind")
    if kind == "forward_formula":
        return run_formula(entry, arrays)
    if kind == "container":
        folder = os.path.dirname(os.path.abspath(path))
        if not path.endswith(".npz"):  # one of the entry's checkpoint_files: its outputs are in the entry's npz
            folder = os.path.dirname(folder) if os.path.basename(folder) != "convert" else folder
            arrays = dict(np.load(os.path.join(folder, entry["file"])))
            name = next(
                f
                for f in entry["checkpoint_files"]
                if os.path.abspath(os.path.join(folder, f)) == os.path.abspath(path)
            )
            entry = {**entry, "checkpoint_files": [name]}
        return run_container(entry, arrays, folder)
    if kind == "checkpoint_layout":
        return run_byol_layout(entry, path)
    if path.endswith((".pth", ".tar", ".torch")):
        return run_step_checkpoint(entry, path)
    raise NotImplementedError(f"{path}: no conversion runner for kind {kind!r}")
