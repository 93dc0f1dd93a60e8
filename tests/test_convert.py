"""common/convert.py: the torch-free reader refuses malicious and damaged files with a clear error, reads
both torch formats, and `python -m common.convert` leaves a workdir that common.evaluate runs on.

The recorded conversion cases (tests/reference/convert/, steps/*.pth*) run through check_reference in
tests/test_reference.py; the files here are made by the test, with the pickle opcodes of the official
formats (scripts/reference/convert.py's CraftingPickler), so no torch is needed to write them either.
"""

import collections
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from common import convert
from scripts.reference.convert import CraftingPickler, Global, Reduce, write_torch_legacy, write_torch_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state_dict():
    return collections.OrderedDict(
        w=np.arange(12, dtype=np.float32).reshape(3, 4), n=np.array([5], np.int64), s=np.array(0.5, np.float32)
    )


def _zip_with_pickle(path, payload, root="evil"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/data.pkl", payload)
        z.writestr(f"{root}/byteorder", "little")


def _malicious_pickle(module, name, arg):
    buffer = io.BytesIO()
    CraftingPickler(buffer).dump({"state_dict": Reduce(Global(module, name), (arg,))})
    return buffer.getvalue()


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("posix", "system")])
def test_malicious_globals_are_refused_and_never_run(tmp_path, module, name):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()" if name == "eval" else f"touch {marker}"
    payload = _malicious_pickle(module, name, code)
    for path in (tmp_path / "evil.pth", tmp_path / "evil_legacy.pth", tmp_path / "pretrain.pkl"):
        if path.name == "evil.pth":
            _zip_with_pickle(path, payload)
            load = convert.load_torch
        elif path.name == "evil_legacy.pth":
            path.write_bytes(payload)  # a bare pickle: read as the legacy torch format
            load = convert.load_torch
        else:
            path.write_bytes(payload)
            load = convert.load_haiku
        with pytest.raises(convert.CheckpointError) as error:
            load(path)
        message = str(error.value)
        assert str(path) in message and f"{module}.{name}" in message and "refused" in message
        assert not marker.exists()


def test_torch_zip_and_legacy_formats_read_back(tmp_path):
    sd = _state_dict()
    obj = {"state_dict": sd, "epoch": 3, "args": Reduce(Global("argparse", "Namespace"), (), {"lr": 0.1}, True)}
    write_torch_zip(tmp_path / "new.pth.tar", obj)
    write_torch_legacy(tmp_path / "old.pth.tar", obj)
    for name in ("new.pth.tar", "old.pth.tar"):
        got = convert.load_torch(tmp_path / name)
        assert got["epoch"] == 3 and got["args"] == {"lr": 0.1}
        assert isinstance(got["state_dict"], collections.OrderedDict) and list(got["state_dict"]) == list(sd)
        for k, v in sd.items():
            assert got["state_dict"][k].dtype == v.dtype and np.array_equal(got["state_dict"][k], v)


def test_damaged_files_name_the_file_and_the_problem(tmp_path):
    obj = {"state_dict": _state_dict()}
    whole = tmp_path / "whole.pth"
    write_torch_zip(whole, obj)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    missing = tmp_path / "missing.pth"
    write_torch_zip(missing, obj, skip_storage="1")
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(short, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, data[:-4] if item.endswith("/data/0") else data)
    legacy = tmp_path / "legacy.pth"
    write_torch_legacy(legacy, obj, truncate=6)
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("hello")
    cases = {
        truncated: "truncated",
        missing: "data/1 is missing",
        short: "holds 44 bytes",
        legacy: "truncated",
        not_torch: "not a torch checkpoint",
    }
    for path, problem in cases.items():
        with pytest.raises(convert.CheckpointError) as error:
            convert.load_torch(path)
        assert str(path) in str(error.value) and problem in str(error.value), str(error.value)


def test_formats_find_the_body_in_the_official_containers():
    folder = os.path.join(ROOT, "tests", "reference", "convert")
    moco = convert.read_checkpoint(os.path.join(folder, "moco_v2_tiny.pth.tar"), "moco")
    assert "conv1.weight" in moco["body"] and not any(k.startswith("fc.") for k in moco["body"])
    assert moco["buffers"]["queue"].shape == (32, 16)  # the project's [K, dim]; the official is [dim, K]
    with pytest.raises(convert.CheckpointError, match="encoder_q"):
        convert.read_checkpoint(os.path.join(folder, "swav_tiny_pretrain.pth.tar"), "moco")


def _tiny_resnet_state(width=16, seed=0):
    """A torchvision-named BasicBlock ResNet with stages (1, 1, 1, 1) and a 3x3 stem: the body of the
    methods' :smoke presets (resnet_tiny, stem 'small')."""
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = (rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)).astype(np.float32)

    def bn(name, c):
        sd[f"{name}.weight"] = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        sd[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        sd[f"{name}.running_mean"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        sd[f"{name}.running_var"] = (0.5 + rng.random(c)).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1", width, 3, 3)
    bn("bn1", width)
    cin = width
    for i in range(4):
        w, p = width * 2**i, f"layer{i + 1}.0"
        conv(f"{p}.conv1", w, cin, 3)
        bn(f"{p}.bn1", w)
        conv(f"{p}.conv2", w, w, 3)
        bn(f"{p}.bn2", w)
        if i > 0:
            conv(f"{p}.downsample.0", w, cin, 1)
            bn(f"{p}.downsample.1", w)
        cin = w
    return sd, cin


def test_cli_converts_a_moco_checkpoint_and_evaluate_runs_knn_on_it(tmp_path):
    body, features = _tiny_resnet_state()
    rng = np.random.default_rng(1)
    fc = {
        "fc.0.weight": rng.standard_normal((16, features)).astype(np.float32),
        "fc.0.bias": np.zeros(16, np.float32),
        "fc.2.weight": rng.standard_normal((8, 16)).astype(np.float32),
        "fc.2.bias": np.zeros(8, np.float32),
    }
    sd = collections.OrderedDict(
        (f"module.{enc}.{k}", v) for enc in ("encoder_q", "encoder_k") for k, v in {**body, **fc}.items()
    )
    sd["module.queue"] = rng.standard_normal((8, 64)).astype(np.float32)
    sd["module.queue_ptr"] = np.zeros(1, np.int64)
    src = tmp_path / "moco_tiny.pth.tar"
    write_torch_zip(src, {"epoch": 3, "arch": "resnet_tiny", "state_dict": sd, "optimizer": {"state": {}}})
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "common.convert", str(src), "--format", "moco", "--workdir", str(workdir)]
    command += ["--config", os.path.join(ROOT, "moco", "config.py:smoke"), "--config.data.name=synthetic"]
    command += ["--config.data.image_size=28", "--config.model.dtype=bfloat16"]  # as the :imagenet presets
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # The official weights are evaluated in float32, whatever precision the preset trains in.
    assert json.loads((workdir / "config.json").read_text())["model"]["dtype"] == "float32"
    results = json.loads((workdir / "results.json").read_text())
    assert results["method"] == "moco" and results["format"] == "moco"
    assert sorted(results["bodies_written"]) == ["encoder_k/body", "encoder_q/body"]
    assert results["heads_skipped"] == [] and "fc -> encoder_q" in results["heads_written"]

    from common import evaluate

    _, method, restored, step = evaluate.load_body(str(workdir), 1)
    assert method == "moco" and step == 1
    np.testing.assert_array_equal(np.asarray(restored.conv1.kernel[...]), convert.conv_kernel(body["conv1.weight"]))
    np.testing.assert_array_equal(np.asarray(restored.stages[3][0].bn2.var[...]), body["layer4.0.bn2.running_var"])
    scores = evaluate.main(
        ["--workdir", str(workdir), "--protocol", "knn", "--train_examples", "200", "--test_examples", "100"]
    )
    assert 0 <= scores["top1"] <= scores["top5"] <= 100
    assert (workdir / "eval_knn.json").exists()


def test_a_body_that_does_not_fit_the_config_is_refused_by_name(tmp_path):
    body, _ = _tiny_resnet_state(width=8)
    src = tmp_path / "tv.pth"
    write_torch_zip(src, body)
    with pytest.raises(ValueError, match="does not fit the model"):
        convert.convert_to_workdir(
            str(src),
            "torchvision",
            str(tmp_path / "run"),
            _smoke_config("simclr"),
            os.path.join(ROOT, "simclr", "config.py:smoke"),
            log=lambda _: None,
        )


def _smoke_config(method):
    import importlib

    return importlib.import_module(f"{method}.config").get_config("smoke")


def test_simclr_tf1_checkpoint_names_map_by_creation_order(tmp_path):
    """A TF1-named SimCLR checkpoint (base_model/conv2d_<n>, batch_normalization_<n>, optimizer slots
    and heads beside them) written with TensorFlow, read back by load_tf and mapped into the project's
    ResNet(padding='tf'); the counters are sorted numerically (conv2d_10 after conv2d_9)."""
    import tensorflow as tf
    from flax import nnx

    from common import models

    rng = np.random.default_rng(0)
    variables, kernels, n = {}, [], 0

    def layer(shape):
        nonlocal n
        suffix = f"_{n}" if n else ""
        kernel = rng.standard_normal(shape).astype(np.float32)
        variables[f"base_model/conv2d{suffix}/kernel"] = kernel
        variables[f"base_model/conv2d{suffix}/kernel/Momentum"] = np.zeros(shape, np.float32)
        for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
            variables[f"base_model/batch_normalization{suffix}/{leaf}"] = rng.random(shape[-1]).astype(np.float32)
        kernels.append(kernel)
        n += 1

    layer((7, 7, 3, 4))
    cin = 4
    for i in range(4):  # stages (1, 1, 1, 1), widths 4, 8, 16, 32: projection, then the three convs
        w = 4 * 2**i
        layer((1, 1, cin, 4 * w))
        layer((1, 1, cin, w))
        layer((3, 3, w, w))
        layer((1, 1, w, 4 * w))
        cin = 4 * w
    variables["head_contrastive/nl_0/dense/kernel"] = rng.standard_normal((cin, 8)).astype(np.float32)
    variables["global_step"] = np.array(7, np.int64)
    prefix = str(tmp_path / "model.ckpt-7")
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=[variables[k] for k in names]
    )
    converted = convert.simclr_tf2(convert.load_tf(prefix), prefix)
    assert converted["arch"]["stage_sizes"] == (1, 1, 1, 1) and converted["arch"]["width"] == 4
    body = nnx.eval_shape(
        lambda: models.ResNet(
            (1, 1, 1, 1), models.Bottleneck, width=4, padding="tf", bn_unbiased=False, rngs=nnx.Rngs(0)
        )
    )
    convert.assign(body, converted["body"], strict=True)
    np.testing.assert_array_equal(np.asarray(body.stages[2][0].conv2.kernel.get_value()), kernels[11])  # conv2d_11
    np.testing.assert_array_equal(np.asarray(body.stages[3][0].downsample_conv.kernel.get_value()), kernels[13])
    assert converted["heads"]["head"][(0, "fc", "kernel")].shape == (cin, 8)
