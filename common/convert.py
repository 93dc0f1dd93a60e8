"""Official checkpoints -> this project's modules, without torch.

    python -m common.convert moco_v2_800ep_pretrain.pth.tar --format moco --workdir runs/moco_v2_official \
        --config moco/config.py:imagenet
    python -m common.evaluate --workdir runs/moco_v2_official --protocol knn

Three parts:

* Reading. `.pth` / `.pth.tar` / `.torch` files (what `torch.save` writes) are read with `zipfile` and a
  RESTRICTED unpickler: the pickle may name only the few globals a checkpoint needs (tensor rebuilding,
  storage types, OrderedDict, argparse.Namespace as a plain dict, numpy scalars); anything else (a pickle
  asking for os.system or eval) is refused with `CheckpointError`, never run. Tensors become numpy arrays
  read from the raw little-endian storages. The pre-1.6 (non-zip) torch format and BYOL's Haiku pickle
  (numpy arrays) go through the same unpickler; TensorFlow checkpoints (SimCLR v2) through
  `tf.train.load_checkpoint`.
* Formats (`FORMATS`): where each official repo keeps the body (and the heads) inside its container:
  moco, swav, dino, paws, vissl, torchvision, simclr_tf2, byol. `read_checkpoint(path, fmt)` returns
  {'body': {...}, ...} state dicts with the official names.
* Layouts: a PyTorch conv weight is [out, in, kh, kw], NNX's kernel [kh, kw, in, out]; a Linear weight
  is [out, in], NNX's kernel [in, out]; BatchNorm's weight / bias / running_mean / running_var are NNX's
  scale / bias / mean / var. The mappings take a flat {name: numpy array} state dict (the official
  `state_dict()` names, after stripping a prefix such as 'module.' or 'backbone.') and return a flat
  {path tuple: array} for `assign`, which checks every name and shape before it writes anything.

The command line builds the method's state with its own `create_state`, writes the converted body (and
the heads the checkpoint has and the config's model matches) into it, and saves a checkpoint, config.json
and results.json, so `common.evaluate` and fine-tuning take the workdir like a trained run's.
"""

import collections
import io
import json
import os
import pickle
import re
import sys
import zipfile

import jax.numpy as jnp
import numpy as np
from flax import nnx


def conv_kernel(w):
    """PyTorch conv weight [out, in, kh, kw] -> NNX kernel [kh, kw, in, out]."""
    return np.transpose(np.asarray(w), (2, 3, 1, 0))


def linear_kernel(w):
    """PyTorch Linear weight [out, in] -> NNX kernel [in, out]."""
    return np.transpose(np.asarray(w))


def batch_norm(sd, name, path):
    """A PyTorch BatchNorm `name` -> {path + ('scale'|'bias'|'mean'|'var'): array}."""
    out = {}
    for theirs, ours in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")):
        if f"{name}.{theirs}" in sd:
            out[(*path, ours)] = np.asarray(sd[f"{name}.{theirs}"])
    return out


def linear(sd, name, path):
    """A PyTorch Linear `name` -> {path + ('kernel', 'bias'): array} (bias only if it has one)."""
    out = {(*path, "kernel"): linear_kernel(sd[f"{name}.weight"])}
    if f"{name}.bias" in sd:
        out[(*path, "bias")] = np.asarray(sd[f"{name}.bias"])
    return out


def strip(sd, prefix):
    """The entries of `sd` whose names start with `prefix`, with it removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def torchvision_resnet(sd, prefix=""):
    """A torchvision-named ResNet (conv1, bn1, layer{1..4}.{j}.conv{1,2,3} / bn{1,2,3} /
    downsample.{0,1}; fc.* is ignored) -> flat state of `models.ResNet`."""
    sd = strip(sd, prefix)
    out = {("conv1", "kernel"): conv_kernel(sd["conv1.weight"]), **batch_norm(sd, "bn1", ("bn1",))}
    stage = 0
    while any(k.startswith(f"layer{stage + 1}.") for k in sd):
        block = 0
        while f"layer{stage + 1}.{block}.conv1.weight" in sd:
            name, path = f"layer{stage + 1}.{block}", ("stages", stage, block)
            for i in (1, 2, 3):
                if f"{name}.conv{i}.weight" in sd:
                    out[(*path, f"conv{i}", "kernel")] = conv_kernel(sd[f"{name}.conv{i}.weight"])
                    out.update(batch_norm(sd, f"{name}.bn{i}", (*path, f"bn{i}")))
            if f"{name}.downsample.0.weight" in sd:
                out[(*path, "downsample_conv", "kernel")] = conv_kernel(sd[f"{name}.downsample.0.weight"])
                out.update(batch_norm(sd, f"{name}.downsample.1", (*path, "downsample_bn")))
            block += 1
        stage += 1
    return out


def dino_vit(sd, prefix=""):
    """A DINO/timm-named ViT (cls_token, pos_embed, patch_embed.proj, blocks.{i}.norm1 / attn.qkv /
    attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm; head.* is ignored) -> flat state of
    `models.VisionTransformer`."""
    sd = strip(sd, prefix)
    out = {
        ("cls_token",): np.asarray(sd["cls_token"]),
        ("pos_embed",): np.asarray(sd["pos_embed"]),
        ("patch_embed", "kernel"): conv_kernel(sd["patch_embed.proj.weight"]),
        ("patch_embed", "bias"): np.asarray(sd["patch_embed.proj.bias"]),
        ("norm", "scale"): np.asarray(sd["norm.weight"]),
        ("norm", "bias"): np.asarray(sd["norm.bias"]),
    }
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b, p = f"blocks.{i}", ("blocks", i)
        for norm in ("norm1", "norm2"):
            out[(*p, norm, "scale")] = np.asarray(sd[f"{b}.{norm}.weight"])
            out[(*p, norm, "bias")] = np.asarray(sd[f"{b}.{norm}.bias"])
        out.update(linear(sd, f"{b}.attn.qkv", (*p, "attn", "qkv")))
        out.update(linear(sd, f"{b}.attn.proj", (*p, "attn", "proj")))
        out.update(linear(sd, f"{b}.mlp.fc1", (*p, "fc1")))
        out.update(linear(sd, f"{b}.mlp.fc2", (*p, "fc2")))
        i += 1
    return out


def assign(module, flat, strict=True, what="checkpoint"):
    """Writes `flat` ({path tuple: array}) into `module`'s variables, after checking every path and
    shape. strict: every variable of the module (BatchNorm statistics included) must be given.
    Raises ValueError naming the missing, unexpected or mis-shaped entries; nothing is written then."""
    state = nnx.state(module)
    ours = dict(nnx.to_flat_state(state))
    missing = sorted(set(ours) - set(flat)) if strict else []
    unexpected = sorted(set(flat) - set(ours))
    shapes = [
        (p, flat[p].shape, ours[p].shape) for p in flat if p in ours and tuple(flat[p].shape) != tuple(ours[p].shape)
    ]
    if missing or unexpected or shapes:
        show = lambda ps: ", ".join("/".join(map(str, p)) for p in ps[:6]) + (" ..." if len(ps) > 6 else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} variables missing from the {what} ({show(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} entries the model does not have ({show(unexpected)})")
        if shapes:
            problems.append(
                "shapes differ: " + "; ".join(f"{'/'.join(map(str, p))} {a} vs model {b}" for p, a, b in shapes[:6])
            )
        raise ValueError(f"The {what} does not fit the model: " + "; ".join(problems))
    for path, value in flat.items():
        var = ours[path]
        # get_value / set_value also work on an abstract module (nnx.eval_shape), where var[...] cannot.
        var.set_value(jnp.asarray(np.asarray(value, dtype=var.get_value().dtype)))
    nnx.update(module, nnx.from_flat_state(ours))


# ---------------------------------------------------------------------------------------------------
# Reading checkpoint files without torch
# ---------------------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely: damaged, truncated, or asking for code to run."""


# torch storage class -> numpy dtype of its elements.
_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """What the pickle's `torch.FloatStorage` (etc.) stands for: only the element type."""

    def __init__(self, name):
        self.name = name
        if _STORAGES[name] == "bfloat16":
            import ml_dtypes

            self.dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            self.dtype = np.dtype(_STORAGES[name])


class Namespace(dict):
    """argparse.Namespace (DINO's and VISSL's `args`), read back as a plain dict of its fields."""

    def __setstate__(self, state):
        self.update(state)


class _Record(tuple):
    """An optimizer or experiment state named by a class of the official code (BYOL's
    `_ByolExperimentState`, optax's `ScaleByLarsState`, ...): its fields as a tuple, attributes (if
    any) in `.fields`."""

    def __new__(cls, *args):
        return super().__new__(cls, args)

    def __setstate__(self, state):
        self.fields = state


class _HaikuMapping(dict):
    """haiku's FlatMapping / frozendict, read back as a plain dict."""

    def __init__(self, *args, **kwargs):
        if args and isinstance(args[0], tuple) and len(args[0]) == 2 and not isinstance(args[0][0], str):
            raise CheckpointError("a haiku FlatMapping stored as flattened leaves cannot be read without haiku")
        super().__init__(*args, **kwargs)

    def __setstate__(self, state):
        self.update(state if isinstance(state, dict) else {})


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2: a view (offset, size, stride in elements) of a storage."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not isinstance(storage, np.ndarray) or len(size) != len(stride):
        raise CheckpointError("a tensor refers to something that is not a storage")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = int(storage_offset) + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise CheckpointError(
            f"a tensor of shape {size} at offset {storage_offset} reaches past its storage of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[int(storage_offset) :], size, tuple(s * storage.itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    return data  # torch._utils._rebuild_parameter: an nn.Parameter is its tensor


def _encode(text, encoding="utf-8"):
    """_codecs.encode, as protocol 2 stores bytes: only str -> bytes in latin-1."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise CheckpointError("the pickle calls _codecs.encode with arguments a checkpoint never uses")
    return text.encode("latin-1")


def _dtype(spec, *args):
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise CheckpointError("the pickle holds a numpy array of Python objects, which a checkpoint never needs")
    return dtype


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("the pickle holds a numpy scalar that is not a number")
    return np.frombuffer(data, dtype, count=1)[0]


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise CheckpointError("the pickle rebuilds an array of a class other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("argparse", "Namespace"): Namespace,
    ("_codecs", "encode"): _encode,
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{("torch", name): _StorageType(name) for name in _STORAGES},
}
# BYOL's experiment state and the optimizer states inside it (read as tuples), haiku's mappings.
_HAIKU_GLOBALS = {
    ("byol.byol_experiment", "_ByolExperimentState"): _Record,
    ("haiku._src.data_structures", "FlatMapping"): _HaikuMapping,
    ("haiku._src.data_structures", "frozendict"): _HaikuMapping,
    ("builtins", "dict"): dict,  # haiku's FlatMapping.__reduce__ in some versions
}
_HAIKU_STATE_MODULES = ("byol.utils.optimizers", "optax._src.base", "optax._src.transform", "optax._src.alias")


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the allow-listed globals (Python docs, "Restricting
    Globals") and maps torch's persistent storage ids to numpy arrays through `storage(pid)`."""

    def __init__(self, file, path, storage=None, haiku=False, lazy=False):
        super().__init__(file)
        self.path, self.storage, self.haiku, self.lazy = path, storage, haiku, lazy

    def find_class(self, module, name):
        if self.lazy and (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _LegacyTensor  # the legacy format stores the storages after the pickle
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if self.haiku and (module, name) in _HAIKU_GLOBALS:
            return _HAIKU_GLOBALS[module, name]
        if self.haiku and module in _HAIKU_STATE_MODULES and name.endswith("State"):
            return _Record
        raise CheckpointError(
            f"{self.path}: refused: the pickle asks for the global {module}.{name}, which no checkpoint needs "
            "(only tensors, dicts, numbers and the few classes listed in common/convert.py). The file may be "
            "malicious; nothing in it was run."
        )

    def persistent_load(self, pid):
        if self.storage is None:
            raise CheckpointError(f"{self.path}: the pickle refers to external storages, which this format has none of")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: a persistent id that is not a torch storage: {str(pid)[:80]}")
        return self.storage(pid)


def _unpickle(data, path, storage=None, haiku=False, lazy=False):
    try:
        return _RestrictedUnpickler(data, path, storage, haiku, lazy).load()
    except CheckpointError as e:
        raise CheckpointError(str(e) if str(e).startswith(path) else f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError) as e:
        raise CheckpointError(f"{path}: damaged: its pickle cannot be read ({type(e).__name__}: {e})") from None


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_torch(path):
    """The object `torch.save` wrote to `path` (a dict of numpy arrays, nested dicts, numbers), read
    without torch. Raises CheckpointError naming the file and the problem when it is damaged or asks
    for anything but tensors and plain data."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return _load_torch_zip(path)
    if head[:1] == b"\x80":
        return _load_torch_legacy(path)
    raise CheckpointError(
        f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a legacy torch pickle)"
    )


def _load_torch_zip(path):
    """torch >= 1.6: a zip of <root>/data.pkl and one raw little-endian file <root>/data/<key> per storage."""
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: damaged: not a complete zip archive ({e}); the file may be truncated") from None
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(
            f"{path}: damaged: a torch.save archive holds one <root>/data.pkl, this one {len(pickles)}"
        )
    root = pickles[0][: -len("/data.pkl")]
    if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() not in (b"little", b""):
        raise CheckpointError(f"{path}: written on a big-endian machine; only little-endian files are supported")
    cache = {}

    def read(name):
        try:
            return archive.read(name)
        except KeyError:
            raise CheckpointError(f"{path}: damaged: the storage {name} is missing from the archive") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: damaged: {name} cannot be read ({e})") from None

    def storage(pid):
        _, kind, key, _location, numel = pid[:5]
        if key not in cache:
            raw = read(f"{root}/data/{key}")
            want = int(numel) * kind.dtype.itemsize
            if len(raw) < want:
                raise CheckpointError(
                    f"{path}: damaged: the storage data/{key} holds {len(raw)} bytes, its {numel} {kind.dtype} "
                    f"elements need {want}"
                )
            cache[key] = np.frombuffer(raw, kind.dtype, count=int(numel))
        return cache[key]

    try:
        return _unpickle(io.BytesIO(read(f"{root}/data.pkl")), path, storage)
    finally:
        archive.close()


class _LegacyStorage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class _LegacyTensor:
    def __init__(self, storage, offset, size, stride, *_):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _load_torch_legacy(path):
    """torch < 1.6: pickles of the magic number, the protocol, system info and the object (storages as
    persistent ids), then the storage keys and each storage's raw bytes after an 8-byte count."""
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)
    if _unpickle(stream, path) != _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a torch checkpoint (a pickle without torch's magic number)")
    _unpickle(stream, path)  # protocol version
    _unpickle(stream, path)  # system info (byte order, type sizes)
    storages = {}

    def storage(pid):
        _, kind, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"{path}: storage views of the legacy format are not supported")
        return storages.setdefault(key, _LegacyStorage(kind, key, int(numel)))

    obj = _unpickle(stream, path, storage, lazy=True)
    keys = _unpickle(stream, path)
    arrays = {}
    for key in keys:
        if key not in storages:
            raise CheckpointError(f"{path}: damaged: the storage {key} is listed but no tensor uses it")
        kind = storages[key].kind
        head = stream.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: damaged: the file ends before storage {key} (truncated)")
        numel = int.from_bytes(head, "little")
        raw = stream.read(numel * kind.dtype.itemsize)
        if len(raw) < numel * kind.dtype.itemsize:
            raise CheckpointError(f"{path}: damaged: storage {key} is cut short (truncated file)")
        arrays[key] = np.frombuffer(raw, kind.dtype, count=numel)
    missing = sorted(set(storages) - set(arrays))
    if missing:
        raise CheckpointError(f"{path}: damaged: the storages {missing[:4]} are missing")

    def resolve(x):
        if isinstance(x, _LegacyTensor):
            return _rebuild_tensor(arrays[x.storage.key], x.offset, x.size, x.stride)
        if isinstance(x, dict):
            out = type(x)() if isinstance(x, (collections.OrderedDict, Namespace)) else {}
            out.update({k: resolve(v) for k, v in x.items()})
            return out
        if isinstance(x, (list, tuple)) and not isinstance(x, _Record):
            return type(x)(resolve(v) for v in x)
        return x

    return resolve(obj)


def load_haiku(path):
    """BYOL's checkpoint (`dill.dump` of {'experiment_state': _ByolExperimentState(online_params,
    target_params, online_state, target_state, opt_state), 'step', 'rng'}, numpy leaves), read with
    the restricted unpickler (numpy arrays, haiku mappings as dicts, state classes as tuples)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return _unpickle(f, path, haiku=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e})") from None


def load_tf(path):
    """{variable key: array} of a TensorFlow checkpoint: a checkpoint prefix, a folder holding one, or a
    SavedModel folder (its variables/variables)."""
    import tensorflow as tf

    path = os.fspath(path)
    for candidate in (
        os.path.join(path, "variables", "variables"),
        os.path.join(path, "saved_model", "variables", "variables"),
    ):
        if os.path.exists(candidate + ".index"):
            path = candidate
            break
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as e:  # TensorFlow raises its own error types (NotFoundError, DataLossError, ...)
        raise CheckpointError(f"{path}: not a readable TensorFlow checkpoint ({type(e).__name__}: {e})") from None
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


# ---------------------------------------------------------------------------------------------------
# The official formats: where each repo keeps the body and the heads
# ---------------------------------------------------------------------------------------------------

FORMATS = ("moco", "swav", "dino", "paws", "vissl", "torchvision", "simclr_tf2", "byol")


def _unwrap(sd, *prefixes):
    """`sd` with each prefix removed where every key has it (DDP's 'module.', DINO's 'backbone.')."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = strip(sd, prefix)
    return sd


def _tensors(obj, path, what):
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointError(f"{path}: {what} is not a state dict of tensors; is --format right?")
    return dict(obj)


def _split(sd, *heads):
    """(body, {head: its entries with the prefix removed}) of a state dict."""
    body = {k: v for k, v in sd.items() if not any(k.startswith(h + ".") for h in heads)}
    return body, {h: strip(sd, h + ".") for h in heads if any(k.startswith(h + ".") for k in sd)}


def read_checkpoint(path, fmt):
    """The networks in an official checkpoint, in the official names and layouts.

    Returns {'body': state dict of the network evaluation uses, 'heads': {name: state dict}, and where
    the format has them 'other': the second network's {'body', 'heads'} (MoCo's key encoder, DINO's
    student, BYOL's target), 'buffers': {name: array} (MoCo's queue [K, dim])}. For simclr_tf2 and
    byol the body and heads are already NNX flat states (their layouts are not torch's)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = os.fspath(path)
    if fmt == "simclr_tf2":
        return simclr_tf2(load_tf(path), path)
    if fmt == "byol":
        return byol_haiku(load_haiku(path), path)
    ck = load_torch(path)
    if fmt == "torchvision":
        sd = _tensors(_unwrap(ck.get("state_dict", ck), "module."), path, "the file")
        body, heads = _split(sd, "fc")
        return {"body": body, "heads": heads}
    if fmt == "moco":  # main_moco.py: state_dict 'module.encoder_q.*', 'module.encoder_k.*', 'module.queue'
        sd = _unwrap(_tensors(ck.get("state_dict", ck), path, "state_dict"), "module.")
        if not any(k.startswith("encoder_q.") for k in sd):
            raise CheckpointError(f"{path}: no encoder_q.* tensors: not a main_moco.py checkpoint")
        body, heads = _split(strip(sd, "encoder_q."), "fc")
        out = {"body": body, "heads": heads}
        if any(k.startswith("encoder_k.") for k in sd):
            k_body, k_heads = _split(strip(sd, "encoder_k."), "fc")
            out["other"] = {"body": k_body, "heads": k_heads}
        if "queue" in sd:
            out["buffers"] = {"queue": np.ascontiguousarray(sd["queue"].T), "queue_ptr": sd.get("queue_ptr")}
        return out
    if fmt == "swav":  # main_swav.py {'state_dict': 'module.*'} or the released 'module.*' state dict
        sd = _unwrap(_tensors(ck.get("state_dict", ck), path, "state_dict"), "module.")
        body, heads = _split(sd, "projection_head", "prototypes")
        return {"body": body, "heads": heads}
    if fmt == "dino":  # main_dino.py {'student', 'teacher', ...} or the released backbone state dict
        if "teacher" in ck:
            # MultiCropWrapper: 'backbone.*' and 'head.*' (the student, and a ResNet's teacher, in DDP: 'module.')
            teacher = _unwrap(_tensors(ck["teacher"], path, "teacher"), "module.")
            out = {"body": strip(teacher, "backbone."), "heads": {"head": strip(teacher, "head.")}}
            if "student" in ck:
                student = _unwrap(_tensors(ck["student"], path, "student"), "module.")
                out["other"] = {"body": strip(student, "backbone."), "heads": {"head": strip(student, "head.")}}
            if isinstance(ck.get("dino_loss"), dict) and "center" in ck["dino_loss"]:
                out["buffers"] = {"center": ck["dino_loss"]["center"]}
            return out
        sd = _unwrap(_tensors(ck.get("state_dict", ck), path, "the file"), "module.", "backbone.")
        body, heads = _split(sd, "head", "fc")
        return {"body": body, "heads": heads}
    if fmt == "paws":  # paws_train.py {'encoder': 'module.*' with fc.* and pred.*, ...}
        sd = _unwrap(_tensors(ck.get("encoder", ck), path, "encoder"), "module.")
        body, heads = _split(sd, "fc", "pred")
        return {"body": body, "heads": heads}
    # vissl: classy_state_dict.base_model.model.{trunk '_feature_blocks.*', heads}
    try:
        model = ck["classy_state_dict"]["base_model"]["model"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: no classy_state_dict.base_model.model: not a VISSL checkpoint") from None
    trunk = _unwrap(_tensors(model["trunk"], path, "the trunk"), "_feature_blocks.")
    return {"body": trunk, "heads": {"heads": dict(model.get("heads", {}))}}


def body_to_nnx(sd):
    """An official torch body state dict (torchvision ResNet or DINO ViT names) -> (flat NNX state,
    the architecture it needs: {'kind': 'resnet'|'vit', ...})."""
    if "cls_token" in sd:
        flat = dino_vit(sd)
        dim = sd["cls_token"].shape[-1]
        patch = sd["patch_embed.proj.weight"].shape[-1]
        grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        return flat, {"kind": "vit", "patch_size": patch, "embed_dim": dim, "depth": depth, "img_size": grid * patch}
    if "conv1.weight" not in sd:
        raise CheckpointError(f"the body has neither conv1.weight (ResNet) nor cls_token (ViT): {sorted(sd)[:4]} ...")
    return torchvision_resnet(sd), resnet_architecture(sd)


def resnet_architecture(sd):
    """stage_sizes, block and width of a torchvision-named ResNet state dict."""
    stages = []
    while any(k.startswith(f"layer{len(stages) + 1}.") for k in sd):
        i = len(stages) + 1
        stages.append(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}))
    return {
        "kind": "resnet",
        "stage_sizes": tuple(stages),
        "block": "bottleneck" if "layer1.0.conv3.weight" in sd else "basic",
        "width": int(sd["conv1.weight"].shape[0]),
        "stem_kernel": int(sd["conv1.weight"].shape[-1]),
    }


def heads_to_nnx(fmt, heads):
    """The heads of a torch-format checkpoint as NNX flat states, keyed like the method's modules:
    {module name: flat}. moco 'fc' (fc1, fc2; v1: fc2 only), swav 'head' (fc1, bn1, fc2) and
    'prototypes', dino 'head' (fc1..fc3, last_layer v [in, out] and g [out]), paws 'head' (fc1, bn1, fc2,
    bn2, fc3) and 'pred' (bn1, fc1, bn2, fc2), vissl PIRL 'image_head', 'patch_head', 'jigsaw_head',
    torchvision 'fc'."""
    out = {}
    if fmt == "moco" and "fc" in heads:
        fc = heads["fc"]
        out["fc"] = (
            {**_lin(fc, "0", ("fc1",)), **_lin(fc, "2", ("fc2",))} if "0.weight" in fc else _lin(fc, "", ("fc2",))
        )
    if fmt == "swav":
        if "projection_head" in heads:
            ph = heads["projection_head"]
            if "3.weight" in ph:
                out["head"] = {
                    **linear(ph, "0", ("fc1",)),
                    **batch_norm(ph, "1", ("bn1",)),
                    **linear(ph, "3", ("fc2",)),
                }
            else:  # hidden_mlp 0: one Linear
                out["head"] = _lin(ph, "", ("fc2",))
        if "prototypes" in heads:
            out["prototypes"] = {("kernel",): linear_kernel(heads["prototypes"]["weight"])}
    if fmt == "dino" and "head" in heads:
        h = heads["head"]
        flat = {}
        linears = sorted(
            {int(k.split(".")[1]) for k in h if k.startswith("mlp.") and k.endswith(".weight") and h[k].ndim == 2}
        )
        for n, i in enumerate(linears):
            flat.update(linear(h, f"mlp.{i}", (f"fc{n + 1}",)))
            if f"mlp.{i + 1}.running_mean" in h:  # use_bn_in_head: BatchNorm1d after each hidden Linear
                flat.update(batch_norm(h, f"mlp.{i + 1}", (f"bn{n + 1}",)))
        flat[("last_layer", "v")] = linear_kernel(h["last_layer.weight_v"])
        g = np.asarray(h["last_layer.weight_g"]).reshape(-1)  # [out, 1] -> [out]
        if not np.all(g == 1):  # norm_last_layer fixes g at 1: the project's layer then has no g
            flat[("last_layer", "g")] = g
        out["head"] = flat
    if fmt == "paws":
        if "fc" in heads:
            fc = heads["fc"]
            out["head"] = {
                **{
                    k: v
                    for i in (1, 2, 3)
                    if f"fc{i}.weight" in fc
                    for k, v in linear(fc, f"fc{i}", (f"fc{i}",)).items()
                },
                **{k: v for i in (1, 2) for k, v in batch_norm(fc, f"bn{i}", (f"bn{i}",)).items()},
            }
        if "pred" in heads:
            p = heads["pred"]
            out["pred"] = {
                **linear(p, "fc1", ("fc1",)),
                **linear(p, "fc2", ("fc2",)),
                **batch_norm(p, "bn1", ("bn1",)),
                **batch_norm(p, "bn2", ("bn2",)),
            }
    if fmt == "vissl" and "heads" in heads:
        h = heads["heads"]
        for name, prefix in (("patch_head", "0.0.clf.0"), ("jigsaw_head", "0.2.clf.0"), ("image_head", "1.0.clf.0")):
            if f"{prefix}.weight" in h:
                out[name] = linear(h, prefix, ())
    if fmt == "torchvision" and "fc" in heads:
        out["fc"] = _lin(heads["fc"], "", ())
    return out


def _lin(sd, name, path):
    """`linear` where `name` may be '' (the keys are then 'weight' and 'bias')."""
    return linear({f"_.{k}": v for k, v in sd.items()}, f"_.{name}" if name else "_", path)


def _counter(component):
    """The global creation counter of a TF/Keras layer name: 'conv2d_17' -> 17, 'conv2d' -> 0."""
    m = re.search(r"_(\d+)$", component)
    return int(m.group(1)) if m else 0


def tf_resnet(kernels, norms):
    """A TF ResNet (SimCLR's layout: per bottleneck the projection shortcut first, then the three
    convs) from its conv kernels [kh, kw, in, out] and batch norms {gamma, beta, moving_mean,
    moving_variance} in creation order -> (flat state of models.ResNet(padding='tf'), architecture)."""
    if len(kernels) != len(norms):
        raise CheckpointError(f"{len(kernels)} conv kernels but {len(norms)} batch norms: not a SimCLR ResNet")
    if kernels[0].shape[:2] != (7, 7):
        raise CheckpointError(
            "the first conv is not the 7x7 stem: selective-kernel (sk1) SimCLR checkpoints are not supported"
        )

    def bn(i, path):
        n = norms[i]
        names = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
        return {(*path, names[k]): np.asarray(v) for k, v in n.items()}

    flat = {("conv1", "kernel"): np.asarray(kernels[0]), **bn(0, ("bn1",))}
    # A stage opens with its projection shortcut (1x1, in -> 4w), whose next conv (the block's first,
    # in -> w) is 4x narrower; inside a stage a block's first conv (4w -> w) is as wide as its second.
    opens = lambda i: i + 1 < len(kernels) and kernels[i].shape[-1] == 4 * kernels[i + 1].shape[-1]
    stages, i = [], 1
    while i < len(kernels):
        if not opens(i) or i + 4 > len(kernels):
            raise CheckpointError(f"conv {i} {kernels[i].shape} is not where a SimCLR ResNet stage starts")
        stage, blocks = len(stages), 0
        while True:
            path = ("stages", stage, blocks)
            convs = ("downsample", 1, 2, 3) if blocks == 0 else (1, 2, 3)
            if i + len(convs) > len(kernels):
                raise CheckpointError("the conv kernels end inside a bottleneck block")
            for n in convs:
                conv, norm = ("downsample_conv", "downsample_bn") if n == "downsample" else (f"conv{n}", f"bn{n}")
                flat[(*path, conv, "kernel")] = np.asarray(kernels[i])
                flat.update(bn(i, (*path, norm)))
                i += 1
            blocks += 1
            if i >= len(kernels) or opens(i):
                break
        stages.append(blocks)
    arch = {"kind": "resnet", "stage_sizes": tuple(stages), "block": "bottleneck", "width": int(kernels[0].shape[-1])}
    return flat, {**arch, "stem_kernel": 7, "padding": "tf", "bn_unbiased": False}


_TF_LEAVES = ("kernel", "gamma", "beta", "moving_mean", "moving_variance", "bias")


def simclr_tf2(variables, path="checkpoint"):
    """SimCLR (v1/v2) TensorFlow variables {key: array} -> {'body': flat NNX ResNet state, 'arch',
    'heads': {'head': projection head layers, 'classifier': supervised head}}.

    Three spellings of the same variables are understood, always mapped by creation order (the numbers
    in the names are global Keras counters): the TF2 code's variable names ('resnet/.../conv2d_5/kernel',
    'projection_head/nl_0/...', 'head_supervised/...'); the TF1 checkpoints' ('base_model/conv2d_5/kernel',
    'head_contrastive/nl_0/...'); and a TF2 SavedModel's positional keys
    ('trainable_variables_list/<i>/...' for the weights in model order, 'model/resnet_model/variables/<j>/...'
    and 'model/_projection_head/variables/<j>/...' for the batch-norm moving statistics).
    """
    named = {}
    for key, value in variables.items():
        parts = key.replace(":0", "").split("/")
        if parts[-1] == ".ATTRIBUTES" or len(parts) < 2 or parts[-1] not in _TF_LEAVES:
            continue
        named["/".join(parts)] = np.asarray(value)
    positional = [k for k in variables if k.startswith("trainable_variables_list/")]
    if positional and not any(k.startswith(("resnet/", "base_model/", "model/resnet/")) for k in named):
        return _simclr_positional(variables, path)
    body_prefix = next(
        (p for p in ("resnet/", "model/resnet/", "base_model/") if any(k.startswith(p) for k in named)), None
    )
    if body_prefix is None:
        raise CheckpointError(f"{path}: no SimCLR ResNet variables (resnet/..., base_model/... or a SavedModel's)")
    body = {k[len(body_prefix) :]: v for k, v in named.items() if k.startswith(body_prefix)}

    def layer_order(kind):  # {counter: {leaf: array}} of the layers whose name starts with `kind`
        layers = {}
        for k, v in body.items():
            parts = k.split("/")
            owner = next((p for p in reversed(parts[:-1]) if re.fullmatch(kind + r"(_\d+)?", p)), None)
            if owner is not None:
                layers.setdefault(_counter(owner), {})[parts[-1]] = v
        return [layers[n] for n in sorted(layers)]

    kernels = [layer["kernel"] for layer in layer_order("conv2d")]
    norms = layer_order("(sync_)?batch_normalization")
    flat, arch = tf_resnet(kernels, norms)
    return {"body": flat, "arch": arch, "heads": _simclr_heads(named)}


def _simclr_heads(named):
    """The projection head (layers nl_<j>: dense kernel, batch norm; the last without beta) and the
    supervised head, as {'head': {(j, 'fc'|'bn', leaf): array}, 'classifier': {...}}, NNX names."""
    heads, proj = {}, {}
    names = {"kernel": "kernel", "gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
    for k, v in named.items():
        m = re.search(r"(projection_head|head_contrastive)/nl_(\d+)/", k)
        if m:
            leaf = k.split("/")[-1]
            part = "fc" if leaf == "kernel" else "bn"
            proj[(int(m.group(2)), part, names[leaf])] = v
        if k.startswith("head_supervised/"):
            heads.setdefault("classifier", {})[(k.split("/")[-1],)] = v
    if proj:
        heads["head"] = proj
    return heads


def _simclr_positional(variables, path):
    """A TF2 SavedModel's variables by position: the body's trainable variables come first in
    trainable_variables_list (conv kernel, then gamma, beta of each layer in creation order), its moving
    statistics in model/resnet_model/variables/<j> from j = the number of its trainable variables."""
    value = lambda k: np.asarray(variables[k])
    index = lambda prefix: sorted(
        (int(k.split("/")[len(prefix.split("/")) - 1]), k) for k in variables if k.startswith(prefix)
    )
    stats = index("model/resnet_model/variables/")
    if not stats:
        raise CheckpointError(f"{path}: a SavedModel without model/resnet_model variables: not SimCLR's")
    n_train = stats[0][0]
    trainable = [value(k) for _, k in index("trainable_variables_list/")]
    kernels, norms, j = [], [], 0
    moving = [value(k) for _, k in stats]
    for v in trainable[:n_train]:
        if v.ndim == 4:
            kernels.append(v)
            norms.append({})
        elif v.ndim == 1:
            norm = norms[-1]
            norm["beta" if "gamma" in norm else "gamma"] = v
    for norm in norms:
        norm["moving_mean"], norm["moving_variance"] = moving[j], moving[j + 1]
        j += 2
    flat, arch = tf_resnet(kernels, norms)
    return {"body": flat, "arch": arch, "heads": {}}


def _haiku_flat(tree, prefix=""):
    """{module path: {leaf: array}} (or already flat 'path/leaf' keys) -> {'path/leaf': array}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_haiku_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def haiku_resnet(params, state, path="checkpoint"):
    """BYOL's Haiku ResNet (`res_net50/~/initial_conv`, `block_group_<g>/~/block_<b>/~/conv_<i>`,
    `batchnorm_<i>`, `shortcut_conv`, `shortcut_batchnorm`; state `<bn>/~/mean_ema|var_ema`) -> flat state
    of models.ResNet(padding='haiku', bn_unbiased=False), the BN statistics from the zero-debiased
    `average` (what Haiku's eval mode uses)."""
    roots = {k.split("/~/initial_conv")[0] for k in params if "/~/initial_conv/" in k}
    if len(roots) != 1:
        raise CheckpointError(f"{path}: no single Haiku ResNet (…/~/initial_conv) in the parameters")
    root = roots.pop()

    def bn(name, out_path):
        p = f"{root}/~/{name}"
        try:
            return {
                (*out_path, "scale"): params[f"{p}/scale"].reshape(-1),
                (*out_path, "bias"): params[f"{p}/offset"].reshape(-1),
                (*out_path, "mean"): state[f"{p}/~/mean_ema/average"].reshape(-1),
                (*out_path, "var"): state[f"{p}/~/var_ema/average"].reshape(-1),
            }
        except KeyError as e:
            raise CheckpointError(f"{path}: the batch norm {p} lacks {e}") from None

    flat = {("conv1", "kernel"): params[f"{root}/~/initial_conv/w"], **bn("initial_batchnorm", ("bn1",))}
    stages = []
    while any(f"/~/block_group_{len(stages)}/" in k for k in params):
        g, blocks = len(stages), 0
        while f"{root}/~/block_group_{g}/~/block_{blocks}/~/conv_0/w" in params:
            name, out_path = f"block_group_{g}/~/block_{blocks}", ("stages", g, blocks)
            if f"{root}/~/{name}/~/conv_2/w" not in params:
                raise CheckpointError(f"{path}: basic-block Haiku ResNets (BYOL's ResNet-18/34) are not supported")
            for i in (0, 1, 2):
                flat[(*out_path, f"conv{i + 1}", "kernel")] = params[f"{root}/~/{name}/~/conv_{i}/w"]
                flat.update(bn(f"{name}/~/batchnorm_{i}", (*out_path, f"bn{i + 1}")))
            if f"{root}/~/{name}/~/shortcut_conv/w" in params:
                flat[(*out_path, "downsample_conv", "kernel")] = params[f"{root}/~/{name}/~/shortcut_conv/w"]
                flat.update(bn(f"{name}/~/shortcut_batchnorm", (*out_path, "downsample_bn")))
            blocks += 1
        stages.append(blocks)
    width = int(flat[("conv1", "kernel")].shape[-1])
    arch = {"kind": "resnet", "stage_sizes": tuple(stages), "block": "bottleneck", "width": width, "stem_kernel": 7}
    return flat, {**arch, "padding": "haiku", "bn_unbiased": False}


def haiku_mlp(params, state, name):
    """BYOL's MLP `name` (linear, batch_norm, linear_1) -> flat state of byol's MLP (fc1, bn, fc2)."""
    p = lambda k: params[f"{name}/{k}"]
    flat = {("fc1", "kernel"): p("linear/w"), ("fc1", "bias"): p("linear/b"), ("fc2", "kernel"): p("linear_1/w")}
    if f"{name}/linear_1/b" in params:
        flat[("fc2", "bias")] = p("linear_1/b")
    flat[("bn", "scale")] = p("batch_norm/scale").reshape(-1)
    flat[("bn", "bias")] = p("batch_norm/offset").reshape(-1)
    flat[("bn", "mean")] = state[f"{name}/batch_norm/~/mean_ema/average"].reshape(-1)
    flat[("bn", "var")] = state[f"{name}/batch_norm/~/var_ema/average"].reshape(-1)
    return flat


def byol_haiku(ck, path="checkpoint"):
    """BYOL's pretrain.pkl -> {'body', 'arch', 'heads': {'projector', 'predictor'}, 'other': the target's}."""
    try:
        exp = ck["experiment_state"]
        online_params, target_params, online_state, target_state = (_haiku_flat(t) for t in exp[:4])
    except (KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(f"{path}: no experiment_state (online_params, target_params, ...): not BYOL's") from None
    body, arch = haiku_resnet(online_params, online_state, path)
    heads = {
        n: haiku_mlp(online_params, online_state, n)
        for n in ("projector", "predictor")
        if f"{n}/linear/w" in online_params
    }
    out = {"body": body, "arch": arch, "heads": heads}
    if any("/~/initial_conv/" in k for k in target_params):
        t_body, _ = haiku_resnet(target_params, target_state, path)
        t_heads = (
            {"projector": haiku_mlp(target_params, target_state, "projector")}
            if "projector/linear/w" in target_params
            else {}
        )
        out["other"] = {"body": t_body, "heads": t_heads}
    return out


# ---------------------------------------------------------------------------------------------------
# The command line: an official checkpoint -> a workdir that common.evaluate and train.py accept
# ---------------------------------------------------------------------------------------------------

# The input normalisation each official release was trained with (torch / Haiku: ImageNet's mean and
# std (SwAV: 0.228 for red); SimCLR's TensorFlow pipeline: none, images in [0, 1]).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISATION = {fmt: (IMAGENET_MEAN, IMAGENET_STD) for fmt in FORMATS} | {
    "simclr_tf2": ((0.0,) * 3, (1.0,) * 3),
    "swav": (IMAGENET_MEAN, (0.228, 0.224, 0.225)),  # main_swav.py's std
}
# The method a format's checkpoints come from (the default --config is its :imagenet preset).
DEFAULT_METHOD = {
    "moco": "moco",
    "swav": "swav",
    "dino": "dino",
    "paws": "paws",
    "vissl": "pirl",
    "torchvision": "moco",
    "simclr_tf2": "simclr2",
    "byol": "byol",
}
# Where the second network of a checkpoint goes: state paths containing one of these names.
OTHER_NETWORK = {"moco": ("encoder_k",), "dino": ("student",), "byol": ("target",)}


def converted_networks(path, fmt):
    """read_checkpoint plus the NNX layouts: {'body': flat, 'arch', 'heads': {name: flat}, 'other': ...}."""
    raw = read_checkpoint(path, fmt)
    if fmt in ("simclr_tf2", "byol"):
        return raw
    out = {}
    for name, net in (("main", raw), ("other", raw.get("other"))):
        if net is None:
            continue
        flat, arch = body_to_nnx(net["body"])
        out[name] = {"body": flat, "arch": arch, "heads": heads_to_nnx(fmt, net.get("heads", {}))}
    result = out["main"]
    if "other" in out:
        result["other"] = out["other"]
    return result


def _bodies(parts):
    """[(path, module)] of every ResNet / VisionTransformer in the method's parts."""
    from common import models

    return [
        (path, node)
        for path, node in nnx.iter_graph(parts)
        if isinstance(node, (models.ResNet, models.VisionTransformer))
    ]


def _module_at(root, path):
    node = root
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, (list, nnx.List)):
            node = node[key] if isinstance(key, int) and key < len(node) else None
        else:
            node = getattr(node, str(key), None)
        if node is None:
            return None
    return node


def write_networks(parts, converted, fmt, log=print):
    """Writes the converted body into every body of the method's parts (the second network's, where the
    checkpoint has one, into the matching body: MoCo's encoder_k, DINO's student, BYOL's target) and
    each head into the module of that name beside its body (MoCo's fc1/fc2 into the encoder itself).
    Bodies must fit exactly (else ValueError naming what differs); a head that does not fit the
    config's head is skipped with a note. Returns {'bodies': [...], 'heads': [...], 'skipped': [...]}."""
    report = {"bodies": [], "heads": [], "skipped": []}
    bodies = _bodies(parts)
    if not bodies:
        raise ValueError("the method's state has no ResNet or VisionTransformer body to write into")
    for path, body in bodies:
        name = "/".join(map(str, path))
        is_other = "other" in converted and any(n in map(str, path) for n in OTHER_NETWORK.get(fmt, ()))
        net = converted["other"] if is_other else converted
        try:
            assign(body, net["body"], strict=True, what=f"{fmt} checkpoint's body")
        except ValueError as e:
            arch = {k: v for k, v in net["arch"].items() if k != "kind"}
            raise ValueError(
                f"{e}. The checkpoint's body is a {net['arch']['kind']} {arch}: choose a config whose "
                f"model builds it (e.g. the method's :imagenet preset), overriding --config.model.* if needed."
            ) from None
        report["bodies"].append(name)
        for head, flat in net.get("heads", {}).items():
            here = () if (fmt, head) == ("moco", "fc") else (head,)
            targets = [path[:-1] + here, path[:-2] + here] if len(path) > 1 else [here]
            target = next((t for t in targets if t and _module_at(parts, t) is not None), None)
            where = "/".join(map(str, target)) if target else None
            module = _module_at(parts, target) if target else (parts if not here else None)
            if module is None or isinstance(module, dict):
                report["skipped"].append(f"{head} (no module {head!r} beside {name})")
                continue
            try:
                assign(module, flat, strict=False, what=f"{fmt} checkpoint's {head}")
                report["heads"].append(f"{head} -> {where}")
            except ValueError as e:
                report["skipped"].append(f"{head} -> {where} ({e})")
    for line in report["skipped"]:
        log(f"convert: head not written: {line}")
    return report


def _method_module(config_path):
    """(name, module path) of the method whose config file is `config_path` ('moco/config.py' ->
    ('moco', 'moco.train')), importable from the monorepo root."""
    import importlib
    import pathlib

    path = pathlib.Path(config_path.split(":")[0]).resolve()
    root = path.parent
    while not (root / "WORKSPACE").exists() and root != root.parent:
        root = root.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = ".".join(path.parent.relative_to(root).parts + ("train",))
    return path.parent.name, module, importlib.import_module(module)


def convert_to_workdir(src, fmt, workdir, config, config_path, log=print):
    """The whole command: src (an official checkpoint) -> workdir with checkpoints/, config.json and
    results.json, as a training run of the config's method would leave them. Returns results.json's dict."""
    from common import checkpoint

    name, module_name, module = _method_module(config_path)
    converted = converted_networks(src, fmt)
    mean, std = NORMALISATION[fmt]
    if tuple(config.views.mean) != mean or tuple(config.views.std) != std:
        log(f"convert: views.mean/std set to {mean} / {std}, the normalisation the official {fmt} weights expect")
    padding = converted["arch"].get("padding", "torch")
    with config.unlocked():
        config.views.mean, config.views.std = mean, std
        if "padding" in config.model:  # the body's 'SAME' padding where the official framework has it
            config.model.padding = padding
        if config.model.get("dtype") not in (None, "float32"):  # :imagenet trains in bfloat16
            log(f"convert: model.dtype float32 (was {config.model.dtype}): the official weights evaluated exactly")
            config.model.dtype = "float32"
    graphdef, state, _ = module.create_state(config, 1)
    parts = nnx.merge(graphdef, state)
    report = write_networks(parts, converted, fmt, log)
    warning = None
    if padding != "torch" and "padding" not in config.model:
        warning = (
            f"the official {fmt} body pads like TensorFlow/Haiku ('SAME'), but {name}'s config has no "
            "model.padding: the converted body pads like PyTorch, and its features differ from the official ones "
            "(SimCLR's max-pool: by up to 1.2 on values ~10)"
        )
        log(f"convert: WARNING: {warning}")
    os.makedirs(workdir, exist_ok=True)
    if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints")):
        raise FileExistsError(f"{workdir}/checkpoints already holds checkpoints; convert into a new --workdir")
    ckpt = checkpoint.Checkpointer(workdir, config=config)
    ckpt.save(1, nnx.state(parts))  # step 1: evaluation refuses a workdir without a trained step
    ckpt.close()
    checkpoint.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    results = {
        "method": name,
        "module": module_name,
        "converted_from": os.path.abspath(src),
        "format": fmt,
        "architecture": {k: (list(v) if isinstance(v, tuple) else v) for k, v in converted["arch"].items()},
        "bodies_written": report["bodies"],
        "heads_written": report["heads"],
        "heads_skipped": report["skipped"],
        **({"warning": warning} if warning else {}),
        "step": 1,
        "wall_time_s": 0.0,
    }
    checkpoint.write_json(os.path.join(workdir, "results.json"), results)
    log(
        f"convert: {src} ({fmt}) -> {workdir}: body into {', '.join(report['bodies'])}"
        + (f"; heads {', '.join(report['heads'])}" if report["heads"] else "")
        + f". Evaluate with: python -m common.evaluate --workdir {workdir} --protocol knn"
    )
    return results


def main():
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file(
        "config", None, "The method's config, e.g. moco/config.py:imagenet (default: the format's method, :imagenet)."
    )
    fmt = flags.DEFINE_enum("format", None, FORMATS, "The official checkpoint's format.")
    workdir = flags.DEFINE_string("workdir", None, "A new workdir for the converted run.")
    flags.mark_flags_as_required(["format", "workdir"])

    def run(argv):
        from common import loop

        if not (flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1):
            loop.quiet()
        if len(argv) != 2:
            raise app.UsageError(
                "usage: python -m common.convert SRC --format FMT --workdir W --config M/config.py[:preset]"
            )
        config_value = config.value
        config_path = flags.FLAGS["config"].config_filename if config_value is not None else None
        if config_value is None:  # the method whose official code wrote the format, its ImageNet preset
            import importlib

            method = DEFAULT_METHOD[fmt.value]
            config_value = importlib.import_module(f"{method}.config").get_config("imagenet")
            config_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), method, "config.py")
        try:
            convert_to_workdir(argv[1], fmt.value, workdir.value, config_value, config_path)
        except (CheckpointError, ValueError, FileNotFoundError, FileExistsError) as e:
            sys.exit(f"convert: {type(e).__name__}: {e}")

    app.run(run)


if __name__ == "__main__":
    main()
