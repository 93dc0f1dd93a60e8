"""SimCLRv2: the losses against google-research/simclr outputs; the three stages chained (pretrain ->
finetune -> distill) with a resume after SIGTERM; 8 devices vs 1; the non-finite guard; bad configs."""

import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import data
from simclr2 import config as simclr2_config
from simclr2 import train as simclr2
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
NT_XENT_CASES = [c for c in CASES if c["function"].startswith("nt_xent_loss(")]
DISTILL_CASES = [c for c in CASES if c["function"].startswith("distillation_loss(")]
# Reference checks run jitted (one compilation, faster than op-by-op); test_eager_equals_jit
# checks that the eager call gives the same value.
nt_xent_loss = jax.jit(simclr2.nt_xent_loss)
distillation_loss = jax.jit(simclr2.distillation_loss)


def load(case):
    return np.load(REFERENCE / case["file"])


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def test_cases_found():
    assert len(NT_XENT_CASES) == 2 and len(DISTILL_CASES) == 2


@pytest.mark.parametrize("case", NT_XENT_CASES, ids=lambda c: c["case"])
def test_nt_xent_matches_official(case):
    # The official function cannot run in float64 (its one_hot is float32): compare with `loss`.
    z, temperature = load(case), case["hyper"]["temperature"]
    z1, z2 = jnp.asarray(z["z1"]), jnp.asarray(z["z2"])
    assert_close(nt_xent_loss(z1, z2, temperature), z["loss"], case["tolerance"]["loss"])


@pytest.mark.parametrize("case", DISTILL_CASES, ids=lambda c: c["case"])
def test_distillation_matches_official(case):
    z, temperature = load(case), case["hyper"]["temperature"]
    student, teacher = jnp.asarray(z["student_logits"]), jnp.asarray(z["teacher_logits"])
    loss = distillation_loss(student, teacher, temperature)
    assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])


def test_eager_equals_jit():
    z = load(NT_XENT_CASES[0])
    args = (jnp.asarray(z["z1"]), jnp.asarray(z["z2"]), NT_XENT_CASES[0]["hyper"]["temperature"])
    np.testing.assert_allclose(simclr2.nt_xent_loss(*args), nt_xent_loss(*args), rtol=1e-6)
    z = load(DISTILL_CASES[0])
    args = (jnp.asarray(z["student_logits"]), jnp.asarray(z["teacher_logits"]), 2.0)
    np.testing.assert_allclose(simclr2.distillation_loss(*args), distillation_loss(*args), rtol=1e-6)


def test_distillation_gradient_reaches_only_the_student():
    case = next(c for c in DISTILL_CASES if c["hyper"]["temperature"] != 1.0)
    z, temperature = load(case), case["hyper"]["temperature"]
    student = np.asarray(z["student_logits"], np.float64)
    teacher = np.asarray(z["teacher_logits"], np.float64)
    g_student, g_teacher = jax.jit(jax.grad(simclr2.distillation_loss, argnums=(0, 1)))(
        jnp.asarray(z["student_logits"]), jnp.asarray(z["teacher_logits"]), temperature
    )
    assert np.all(np.asarray(g_teacher) == 0.0)

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # d/ds of T^2 CE(softmax(t/T), s/T), averaged over N: T (softmax(s/T) - softmax(t/T)) / N.
    p_student, p_teacher = softmax(student / temperature), softmax(teacher / temperature)
    want = temperature * (p_student - p_teacher) / len(student)
    np.testing.assert_allclose(g_student, want, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# The method: schedules, optimiser, the three chained stages, resume, devices, guards
# ------------------------------------------------------------------------------------------------

def stage_config(stage, init_workdir=""):
    return helpers.smoke_config("simclr2", stage=stage, init_workdir=init_workdir)


def restore(workdir):
    """The latest checkpoint of workdir as a raw tree: {'0': model, '1': optimizer[, '2': teacher]}."""
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    tree = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    manager.close()
    return tree


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def initial_model(config, steps_per_epoch=37):
    graphdef, state, _ = simclr2.create_state(config, steps_per_epoch)
    return nnx.merge(graphdef, state)[0]


def test_finetuning_has_no_warmup_and_pretraining_warms_up_from_zero():
    config = simclr2_config.get_config()
    finetune = simclr2.learning_rate_schedule(config.finetune, 256, 10)
    pretrain = simclr2.learning_rate_schedule(config.optim, 256, 10)
    total = int(config.finetune.epochs * 10)
    np.testing.assert_allclose(finetune(0), config.finetune.lr * 16, rtol=1e-6)  # sqrt(256) = 16
    np.testing.assert_allclose(finetune(total // 2), config.finetune.lr * 16 / 2, rtol=1e-5)  # cosine
    assert float(pretrain(0)) == 0.0


def test_lars_adapts_the_body_but_not_the_classifier():
    # As the official LARS exclusion lists: kernels (the classifier's too) get weight decay; kernels
    # but the classifier's get the trust ratio eta * |w| / |g + wd w|; biases get neither.
    config = helpers.smoke_config("simclr2")
    lr, wd, eta = 0.5, 0.1, config.optim.trust_coefficient
    w, g = np.full((2, 2), 3.0), np.full((2, 2), 0.5)
    params = {"body": {"kernel": jnp.asarray(w), "bias": jnp.ones(2)}, "classifier": {"kernel": jnp.asarray(w)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx = simclr2.make_optimizer(config.optim, wd, lr)
    updates, _ = tx.update(grads, tx.init(params), params)
    trust = eta * np.linalg.norm(w) / np.linalg.norm(g + wd * w)
    np.testing.assert_allclose(updates["body"]["kernel"], -lr * trust * (g + wd * w), rtol=1e-6)
    np.testing.assert_allclose(updates["body"]["bias"], -lr * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["classifier"]["kernel"], -lr * (g + wd * w), rtol=1e-6)


def test_three_stages_chained_with_finetuning_resumed_after_sigterm(tmp_path):
    # Stage 1: pretraining, 4 smoke steps.
    pre = str(tmp_path / "pretrain")
    results = simclr2.main(stage_config("pretrain"), pre)
    saved = json.loads((tmp_path / "pretrain" / "results.json").read_text())
    assert saved == results and saved["step"] == 4
    assert (saved["method"], saved["stage"]) == ("simclr2", "pretrain")
    for key in ("knn_top1", "knn_top5", "knn_top1_init", "knn_top5_init"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["knn_top1_init"] > 10.0  # ten classes: even a random body's features beat chance
    pretrained = restore(pre)["0"]
    assert len(pretrained["head"]) == 3  # the deeper projection head
    assert "bias" not in pretrained["head"]["2"]["bn"] and "bias" in pretrained["head"]["0"]["bn"]

    # Stage 2 starts from the pretrained body and the head's first layer, with a new classifier.
    config = stage_config("finetune", pre)
    model = initial_model(config)
    np.testing.assert_array_equal(flat(nnx.to_pure_dict(nnx.state(model.body))), flat(pretrained["body"]))
    np.testing.assert_array_equal(flat(nnx.to_pure_dict(nnx.state(model.head))), flat(pretrained["head"]["0"]))
    assert len(model.head) == 1 and model.classifier.kernel.shape == (16, 10)
    scratch = initial_model(stage_config("finetune"))
    assert not np.allclose(flat(nnx.to_pure_dict(nnx.state(scratch.body))), flat(pretrained["body"]))

    # Stage 2, straight and pre-empted by a real SIGTERM then resumed: the same parameters.
    straight, resumed = str(tmp_path / "finetune"), str(tmp_path / "finetune_resumed")
    results = simclr2.main(config, straight)
    saved = json.loads((tmp_path / "finetune" / "results.json").read_text())
    assert saved == results and saved["step"] == 4 and saved["stage"] == "finetune"
    assert saved["label_fraction"] == 0.01 and 0.0 <= saved["top1"] <= 100.0 and "top1_init" in saved
    # The labelled fraction is recorded: 1% of 60000, class-balanced (reading only those 600 labels:
    # all 60000 cost seconds), and the same in every run of the seed (checked after the resume below).
    labelled = np.load(tmp_path / "finetune" / "labelled_indices.npy")
    assert len(np.unique(labelled)) == 600
    labels = data.load(config.data, "train").get(labelled)["label"]
    assert np.all(np.bincount(labels, minlength=10) == 60)

    assert helpers.run_with_sigterm_at(simclr2, config, resumed, step=2) is None
    assert helpers.final_params(resumed)[0] == 2
    simclr2.main(config, resumed)
    step_a, params_a = helpers.final_params(straight)
    step_b, params_b = helpers.final_params(resumed)
    assert step_a == step_b == 4
    np.testing.assert_array_equal(params_a, params_b)
    np.testing.assert_array_equal(np.load(tmp_path / "finetune_resumed" / "labelled_indices.npy"), labelled)

    # Stage 3: the student learns from the fixed fine-tuned teacher on all training images.
    config = stage_config("distill", straight)
    student_init = flat(nnx.to_pure_dict(nnx.state(initial_model(config))))
    results = simclr2.main(config, str(tmp_path / "distill"))
    saved = json.loads((tmp_path / "distill" / "results.json").read_text())
    assert saved == results and saved["step"] == 4 and saved["stage"] == "distill"
    assert saved["label_fraction"] == 0.01 and 0.0 <= saved["top1"] <= 100.0
    distilled = restore(str(tmp_path / "distill"))
    np.testing.assert_array_equal(flat(distilled["2"]), flat(restore(straight)["0"]))  # teacher unchanged
    assert "head" not in distilled["0"] or not distilled["0"]["head"]
    assert not np.allclose(flat(distilled["0"]), student_init)  # the student learned


def test_eight_devices_equal_one():
    one = helpers.run_devices("simclr2", 1)
    eight = helpers.run_devices("simclr2", 8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eight["params"], one["params"], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Fine-tuning from scratch (the cheapest stage to compile), with a warmup that starts at lr 0, so the
    # first step is finite and saved; then lr 1e30 blows the weights up.
    config = helpers.smoke_config("simclr2", stage="finetune", checkpoint_every_steps=1)
    config.unlock()
    config.finetune.epochs = 8 / 37  # 600 labelled images make 37 batches of 16
    config.finetune.warmup_epochs = 2 / 37
    config.finetune.lr = 1e30
    with pytest.raises(FloatingPointError, match=r"Non-finite loss or parameters at step (\d+)") as err:
        simclr2.main(config, str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    good_step, params = helpers.final_params(str(tmp_path))
    assert 1 <= good_step < bad_step
    assert f"last good checkpoint is step {good_step}" in str(err.value)
    assert np.all(np.isfinite(params))


@pytest.mark.parametrize("field,value,message", [
    ("stage", "selftrain", "stage"),
    ("stage", "distill", "init_workdir"),  # distillation needs a teacher
    ("init_workdir", "/nonexistent/pretrain", "init_workdir"),
    ("data.label_fraction", 0.0, "label_fraction"),
    ("model.ft_proj_layer", 3, "ft_proj_layer"),
    ("method.distill_temperature", 0.0, "temperature"),
    ("finetune.lr_scaling", "cubic", "lr_scaling"),
    ("data.batch_size", 1, "batch_size"),
])
def test_bad_config_fails_before_any_work(tmp_path, field, value, message):
    config = helpers.smoke_config("simclr2", **{field: value})
    with pytest.raises(ValueError, match=message):
        simclr2.main(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_every_preset_passes_the_config_check():
    for preset in ("default", "smoke", "cifar10", "imagenet"):
        simclr2.check_config(simclr2_config.get_config(preset))
