"""The contract every method folder keeps with common/loop.py (its docstring states it), checked once
for every folder with a train.py and a config.py: a pure create_state over named parts, get_body in
eval mode, a smoke run with results.json, resume after SIGTERM equal to an uninterrupted run, 8
devices equal to 1, the non-finite guard, bad configs refused before any work, and a forked folder
that trains and is evaluated as a method of its own."""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from common import data, loop
from tests import helpers

METHODS = helpers.METHODS


def test_every_method_folder_is_found():
    assert set(METHODS) >= {"byol", "dino", "moco", "paws", "pirl", "simclr", "simclr2", "swav"}


def _batch_norms(module):
    return [m for _, m in nnx.iter_graph(module) if isinstance(m, nnx.BatchNorm)]


@pytest.mark.parametrize("method", METHODS)
def test_create_state_is_pure_and_names_its_parts(method, monkeypatch):
    module = importlib.import_module(f"{method}.train")
    config = helpers.smoke_config(method)
    inputs = loop.state_inputs(module, config, data.load(config.data, config.data.train_split))

    def no_data(*args, **kwargs):
        raise AssertionError("create_state read data: it must build the state from its arguments only")

    monkeypatch.setattr(data, "load", no_data)
    monkeypatch.setattr(data.Dataset, "get", no_data)
    graphdef, state, step_fn = module.create_state(config, 100, **inputs)
    names = list(state.keys())
    assert names and all(isinstance(k, str) and k.isidentifier() for k in names), names
    # Without its inputs the state has the same parts or fewer: what common.evaluate rebuilds.
    assert set(module.create_state(config, 100)[1].keys()) <= set(names)

    body = module.get_body(graphdef, state)
    assert all(bn.use_running_average for bn in _batch_norms(body))  # eval mode ...
    assert not any(bn.use_running_average for bn in _batch_norms(nnx.merge(graphdef, state)))  # a copy


@pytest.mark.parametrize("method", METHODS)
def test_smoke_run_then_resume_after_sigterm_equals_uninterrupted_run(method, smoke_runs):
    runs = smoke_runs(method)
    saved = json.loads((runs.straight / "results.json").read_text())
    assert saved == runs.results and saved["step"] == 4
    assert (saved["method"], saved["module"]) == (method, f"{method}.train")  # from the folder
    scores = [k for k in saved if f"{k}_init" in saved]
    assert scores, "results.json holds no score beside its value at step 0"
    for key in scores:
        assert 0.0 <= saved[key] <= 100.0 and 0.0 <= saved[f"{key}_init"] <= 100.0
    if "knn_top1_init" in saved:
        assert saved["knn_top1_init"] > 10.0  # ten classes: even a random body's features beat chance
        assert saved["knn_top5"] >= saved["knn_top1"]
    config = json.loads((runs.straight / "config.json").read_text())
    assert config["seed"] == helpers.smoke_config(method).seed

    assert runs.preempted_results is None and runs.preempted_step == 2  # SIGTERM saved step 2 and stopped
    step_a, straight = helpers.final_params(str(runs.straight))
    step_b, resumed = helpers.final_params(str(runs.resumed))
    assert step_a == step_b == 4
    np.testing.assert_array_equal(straight, resumed)  # every part: models, optimizer, buffers


# Per method and state part: (rtol, atol) of the 8-vs-1 device comparison after two steps (steps).
# The default (1e-4, 1e-5) is float rounding of reductions in another order; wider where stated.
DEVICE_TOLERANCE = {
    # LARS divides by each gradient's norm, so reduction-order noise over 8 devices grows in small
    # tensors (31 of 622k values differed by up to 6.4e-5 with colour strength 0.5).
    # LARC divides by small gradient norms: a head bias whose true gradient is 0 carries amplified
    # float32 rounding noise (one of 311k values 1.4e-4 apart after 4 steps).
    "swav": {"*": (1e-4, 1e-4), "model": (1e-4, 3e-4)},
    # One of 3.6M values, a weight near 0, differed by 1.1e-5 with teacher momentum 0.97.
    "dino": {"*": (1e-4, 5e-5)},
    # The optimizer's momentum buffer is a raw gradient, a sum of ~1e4 terms of both signs: summed in
    # another order on 8 devices, it moves in the 5th digit. Every other part (encoders, queue): default.
    "moco": {"optimizer": (1e-3, 1e-4)},
}
DEVICE_STEPS = {"swav": 4}  # Sinkhorn over the global batch, then over the global queue (steps 3-4)


@pytest.mark.parametrize("method", METHODS)
def test_eight_devices_equal_one(method):
    steps = DEVICE_STEPS.get(method, 2)
    one = helpers.run_devices(method, 1, steps)
    eight = helpers.run_devices(method, 8, steps)
    assert (one["devices"], eight["devices"]) == (1, 8)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    assert eight["params"].keys() == one["params"].keys()
    tolerance = DEVICE_TOLERANCE.get(method, {})
    for part in one["params"]:
        rtol, atol = tolerance.get(part, tolerance.get("*", (1e-4, 1e-5)))
        np.testing.assert_allclose(
            eight["params"][part], one["params"][part], rtol=rtol, atol=atol, err_msg=f"state part {part!r}"
        )


# Overrides under which an early step is finite (and saved) and a later one is not: eight steps with
# a warmup from lr 0 over two, towards lr 1e30 (or 1e30 at once where the first step stays finite).
_EIGHT_STEPS = {"optim.epochs": 8 * 16 / 60000, "optim.lr": 1e30}
DIVERGE = {
    # SimCLR: a huge rate leaves exploded but finite weights (the |w| guard's message); lr 0 at step 0
    # and a tame step 1 (lr 200, saved), whose momentum buffer, times 1e38, overflows at step 2.
    "simclr": {**_EIGHT_STEPS, "optim.warmup_epochs": 2 * 16 / 60000, "optim.lr": 100.0, "optim.momentum": 1e38},
    # BYOL: LARS bounds each update by eta ||w||, so a huge rate alone leaves exploded but finite weights
    # (which the guard refuses with another message); lr 0 at step 0, then momentum 1e38 overflows.
    "byol": {**_EIGHT_STEPS, "optim.warmup_epochs": 2 * 16 / 60000, "optim.momentum": 1e38},
    # DINO: AdamW moves each weight by about lr, so lr 1e30 leaves finite weights of 6e28 (the |w| guard's
    # message); lr 0 at step 0, then a peak beyond float32's range (inf) makes step 2 non-finite.
    "dino": {**_EIGHT_STEPS, "optim.warmup_epochs": 2 * 16 / 60000, "optim.lr": 1e40},
    # SwAV: LARC bounds each update, so lr 1e30 leaves exploded but finite weights; as simclr, a tame
    # step 1 (lr 100) whose momentum buffer, times 1e38, overflows at step 2.
    "swav": {**_EIGHT_STEPS, "optim.warmup_epochs": 2 * 16 / 60000, "optim.lr": 100.0, "optim.momentum": 1e38},
    # No warmup in MoCo or PIRL: a tame first step (lr 100, |w| < 1e6, saved), then SGD's momentum
    # 1e38 carries it past float32's range at the second.
    "moco": {**_EIGHT_STEPS, "optim.lr": 100.0, "optim.momentum": 1e38},
    "pirl": {**_EIGHT_STEPS, "optim.lr": 100.0, "optim.momentum": 1e38},
    # PAWS: LARS bounds the kernels' steps by eta ||w||, and a huge lr leaves finite huge weights (the
    # |w| guard's message); lr 1e3 leaves a good step 1 whose momentum buffer, times 1e38, overflows.
    "paws": {**_EIGHT_STEPS, "optim.start_lr": 1e3, "optim.lr": 1e3, "optim.momentum": 1e38},
    # Fine-tuning from scratch, the cheapest stage to compile: 600 labelled images, 37 batches of 16.
    "simclr2": {
        "stage": "finetune",
        "finetune.epochs": 8 / 37,
        "finetune.warmup_epochs": 2 / 37,
        "finetune.lr": 100.0,
        "optim.momentum": 1e38,  # LARS momentum of every stage: a tame step 1, then overflow, as simclr
    },
}


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(method, tmp_path):
    module = importlib.import_module(f"{method}.train")
    config = helpers.smoke_config(method, checkpoint_every_steps=1, **DIVERGE[method])
    with pytest.raises(FloatingPointError, match=r"Non-finite loss or parameters at step (\d+)") as err:
        module.main(config, str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    good_step, params = helpers.final_params(str(tmp_path))
    assert 1 <= good_step < bad_step
    assert f"last good checkpoint is step {good_step}" in str(err.value)
    assert np.all(np.isfinite(params))


# (method, field, value, a word the message must contain)
BAD_CONFIGS = [
    ("simclr", "method.temperature", 0.0, "temperature"),
    ("simclr", "optim.lr_scaling", "cubic", "lr_scaling"),
    ("simclr", "data.batch_size", 1, "batch_size"),
    ("simclr2", "stage", "selftrain", "stage"),
    ("simclr2", "stage", "distill", "init_workdir"),  # distillation needs a teacher
    ("simclr2", "init_workdir", "/nonexistent/pretrain", "init_workdir"),
    ("simclr2", "data.label_fraction", 0.0, "label_fraction"),
    ("simclr2", "model.ft_proj_layer", 3, "ft_proj_layer"),
    ("simclr2", "method.distill_temperature", 0.0, "temperature"),
    ("simclr2", "finetune.lr_scaling", "cubic", "lr_scaling"),
    ("simclr2", "data.batch_size", 1, "batch_size"),
    ("moco", "method.queue_size", 24, "queue_size"),
    ("moco", "method.bn_groups", 3, "bn_groups"),
    ("moco", "method.bn_groups", 16, "bn_groups"),
    ("moco", "method.temperature", 0.0, "temperature"),
    ("moco", "method.momentum", 1.5, "momentum"),
    ("moco", "optim.lr_schedule", "hourly", "lr_schedule"),
    ("byol", "method.base_ema", 1.5, "base_ema"),
    ("byol", "views.solarize_p", (0.2,), "solarize_p"),
    ("byol", "data.batch_size", 1, "batch_size"),
    ("byol", "method.target_init", "clone", "target_init"),
    ("byol", "model.padding", "same", "padding"),
    ("dino", "method.teacher_temp", 0.0, "teacher_temp"),
    ("dino", "method.warmup_teacher_temp_epochs", 5, "warmup_teacher_temp_epochs"),
    ("dino", "model.patch_size", 5, "patch_size"),
    ("dino", "views.local_crops_number", -1, "local_crops_number"),
    ("dino", "optim.optimizer", "adam", "optim.optimizer"),
    ("swav", "method.epsilon", 0.0, "epsilon"),
    ("swav", "method.queue_length", 24, "queue_length"),
    ("swav", "method.crops_for_assign", (0, 4), "crops_for_assign"),
    ("swav", "views.local_crops_number", -1, "local_crops_number"),
    ("pirl", "method.temperature", 0.0, "temperature"),
    ("pirl", "method.loss_type", "hinge", "loss_type"),
    ("pirl", "method.memory_momentum", 1.0, "memory_momentum"),
    ("pirl", "views.patch_jitter", 8, "patch_jitter"),
    ("pirl", "method.memory_size", 1000, "memory_size"),  # must equal the 60000 training images
    ("pirl", "data.batch_size", 1, "batch_size"),
    ("pirl", "method.memory_init", "zeros", "memory_init"),
    ("pirl", "method.bn_groups", 3, "bn_groups"),
    ("pirl", "optim.lr_schedule", "hourly", "lr_schedule"),
    ("paws", "method.tau", 0.0, "tau"),
    ("paws", "data.label_fraction", 0.0, "label_fraction"),
    ("paws", "method.s_per_class", 0, "s_per_class"),
    ("paws", "views.local_crops_number", -1, "local_crops_number"),
]


@pytest.mark.parametrize("method,field,value,message", BAD_CONFIGS, ids=[f"{m}-{f}={v}" for m, f, v, _ in BAD_CONFIGS])
def test_bad_config_fails_before_any_work(method, field, value, message, tmp_path):
    module = importlib.import_module(f"{method}.train")
    config = helpers.smoke_config(method, **{field: value})
    with pytest.raises(ValueError, match=message):
        module.main(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_bad_config_table_covers_every_method():
    assert {m for m, *_ in BAD_CONFIGS} == set(METHODS) == set(DIVERGE)


def test_a_copied_folder_is_a_method_of_its_own(tmp_path):
    # cp -r simclr mysimclr in a monorepo root, with no edit: it trains, records its own name and
    # module, and common.evaluate imports the fork's code, not the original's.
    shutil.copytree(helpers.ROOT / "common", tmp_path / "common")
    shutil.copytree(helpers.ROOT / "simclr", tmp_path / "mysimclr", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "WORKSPACE").write_text((helpers.ROOT / "WORKSPACE").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    workdir = tmp_path / "runs" / "mysimclr"
    train = subprocess.run(
        [sys.executable, "mysimclr/train.py", "--config", "mysimclr/config.py:smoke", f"--workdir={workdir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    saved = json.loads((workdir / "results.json").read_text())
    assert (saved["method"], saved["module"], saved["step"]) == ("mysimclr", "mysimclr.train", 4)
    assert train.stdout.startswith("mysimclr: ")  # the console's first line names the method

    probe = (
        "import sys; from common import evaluate; evaluate.evaluate_run(sys.argv[1], 'knn', "
        "train_examples=200, test_examples=100); "
        "print(sorted(m for m in sys.modules if m.endswith('.train')))"
    )
    evaluated = subprocess.run(
        [sys.executable, "-c", probe, str(workdir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert evaluated.stdout.strip().splitlines()[-1] == "['mysimclr.train']"
    knn = json.loads((workdir / "eval_knn.json").read_text())
    assert knn["method"] == "mysimclr"
    # The smoke preset's monitor uses the same first 200 / 100 images: the same numbers.
    assert knn["top1"] == pytest.approx(saved["knn_top1"], abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_views_never_read_outside_each_images_extent(method):
    # Whole-image fit: each image sits in the top-left of its canvas, `extent` says where. Whatever
    # fills the rest of the canvas, every view (crops, multi-crops, patches) must be the same.
    import jax

    module = importlib.import_module(f"{method}.train")
    config = helpers.smoke_config(method)
    size = 2 * max(config.views.get("crop_size", 28), 28)
    rng = np.random.default_rng(0)
    extents = np.array([[size, size // 2], [size * 3 // 4, size], [size // 2, size // 3], [size, size]], np.int32)
    images = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    inside = np.zeros(images.shape, bool)
    for i, (h, w) in enumerate(extents):
        inside[i, :h, :w] = True
    views = jax.jit(lambda key, x: module.make_views(key, x, config.views, extents))
    zeros = views(jax.random.key(0), np.where(inside, images, 0).astype(np.uint8))
    noise = views(jax.random.key(0), np.where(inside, images, 255 - images).astype(np.uint8))
    for a, b in zip(jax.tree.leaves(zeros), jax.tree.leaves(noise)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
