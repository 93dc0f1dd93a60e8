"""Official checkpoints -> this project's modules (PyTorch and TensorFlow layouts to NNX).

Layouts: a PyTorch conv weight is [out, in, kh, kw], NNX's kernel [kh, kw, in, out]; a Linear weight is
[out, in], NNX's kernel [in, out]; BatchNorm's weight / bias / running_mean / running_var are NNX's
scale / bias / mean / var. The mappings below take a flat {name: numpy array} state dict (the official
`state_dict()` names, after stripping a prefix such as 'module.' or 'backbone.') and return a flat
{path tuple: array} for `assign`, which checks every name and shape before it writes anything.
"""

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
    shapes = [(p, flat[p].shape, ours[p].shape) for p in flat if p in ours and tuple(flat[p].shape) != tuple(ours[p].shape)]
    if missing or unexpected or shapes:
        show = lambda ps: ", ".join("/".join(map(str, p)) for p in ps[:6]) + (" ..." if len(ps) > 6 else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} variables missing from the {what} ({show(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} entries the model does not have ({show(unexpected)})")
        if shapes:
            problems.append("shapes differ: " + "; ".join(f"{'/'.join(map(str, p))} {a} vs model {b}" for p, a, b in shapes[:6]))
        raise ValueError(f"The {what} does not fit the model: " + "; ".join(problems))
    for path, value in flat.items():
        var = ours[path]
        var[...] = np.asarray(value, dtype=var[...].dtype)
    nnx.update(module, nnx.from_flat_state(ours))
