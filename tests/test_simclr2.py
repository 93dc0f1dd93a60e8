"""SimCLRv2: the contrastive loss against google-research/simclr outputs (the distillation cases run
through scripts/check_reference.py); the distillation gradient; the official TF ResNet, the LARS masks on
the real models, the fine-tuning stage's zero-initialised classifier and its own batch; the schedules;
the three stages chained (pretrain -> finetune -> distill) with a resume after SIGTERM. The smoke run, 8
devices vs 1, the non-finite guard and bad configs are in tests/test_contract.py."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import checkpoint, data, evaluate, models
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


def test_eager_equals_jit():
    z = load(NT_XENT_CASES[0])
    args = (jnp.asarray(z["z1"]), jnp.asarray(z["z2"]), NT_XENT_CASES[0]["hyper"]["temperature"])
    np.testing.assert_allclose(simclr2.nt_xent_loss(*args), nt_xent_loss(*args), rtol=1e-6)


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
# The method: schedules, optimiser, the three chained stages with a resume
# ------------------------------------------------------------------------------------------------


def stage_config(stage, init_workdir=""):
    return helpers.smoke_config("simclr2", stage=stage, init_workdir=init_workdir)


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def initial_parts(config, init=None, steps_per_epoch=37):
    graphdef, state, _ = simclr2.create_state(config, steps_per_epoch, init=init)
    return nnx.merge(graphdef, state)


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


def batch_norms(model):
    return {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)}


def lars_flags(model):
    """{param path: (decayed, adapted)} from make_optimizer's masks, and by the official rule
    (exclude_from_weight_decay=['batch_normalization', 'bias', 'head_supervised'], which also
    excludes them from the trust ratio; the classifier kernel is decayed through an L2 loss term)."""
    params = nnx.state(model, nnx.Param)
    decay = simclr2.lars_mask(params, ("bn", "bias"))
    trust = simclr2.lars_mask(params, ("bn", "bias", "classifier"))
    keys = lambda path: tuple(str(k.key if hasattr(k, "key") else k.idx) for k in path if not hasattr(k, "name"))
    flat = lambda tree: {keys(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    decay, trust = flat(decay), flat(trust)
    ours = {k: (decay[k], trust[k]) for k in decay}
    norms, official = batch_norms(model), {}
    for path, _ in nnx.to_flat_state(params):
        plain = path[:-1] not in norms and path[-1] != "bias"
        official[tuple(str(p) for p in path)] = (plain, plain and path[0] != "classifier")
    return ours, official


def test_official_tf_resnet_and_lars_masks_on_the_real_models():
    config = simclr2_config.get_config("imagenet")
    model = simclr2.SimCLRv2(config, nnx.Rngs(0))
    blocks = [block for stage in model.body.stages for block in stage]
    assert len(blocks) == 16 and all(np.all(block.bn3.scale[...] == 0) for block in blocks)  # resnet.py
    assert model.body.pool_same
    norms = batch_norms(model)
    assert all(isinstance(bn, models.BatchNorm) and not bn.unbiased and bn.epsilon == 1e-5 for bn in norms.values())
    ours, official = lars_flags(model)
    assert ours == official and sum(d for d, _ in ours.values()) == 53 + 3  # ResNet-50 convs, 3 head kernels
    config.stage = "finetune"
    finetuned = nnx.eval_shape(lambda: simclr2.Classifier(config, "resnet50", config.model.ft_proj_layer, nnx.Rngs(0)))
    ours, official = lars_flags(finetuned)
    assert ours == official
    assert ours[("classifier", "kernel")] == (True, False) and ours[("classifier", "bias")] == (False, False)


def test_finetuning_zero_initialises_the_classifier_and_runs_at_its_own_batch(monkeypatch):
    # The README's command: --zero_init_logits_layer=True, --train_batch_size=1024 (pretraining: 4096).
    imagenet = simclr2_config.get_config("imagenet")
    imagenet.stage = "finetune"
    assert simclr2.stage_batch_size(imagenet) == 1024 and imagenet.data.batch_size == 4096
    config = stage_config("finetune")
    config.finetune.batch_size = 8
    model = initial_parts(config)["model"]
    assert np.all(model.classifier.kernel[...] == 0) and np.all(model.classifier.bias[...] == 0)
    assert len(model.head) == config.model.ft_proj_layer
    seen = {}
    monkeypatch.setattr(simclr2.loop, "train", lambda config, *args, **kwargs: seen.update(config=config))
    simclr2.main(config, "/nonexistent-workdir")
    assert seen["config"].data.batch_size == 8 and config.data.batch_size == 16  # a copy; the stage's batch
    config.finetune.zero_init_classifier = False
    assert np.std(initial_parts(config)["model"].classifier.kernel[...]) > 0.005


def test_three_stages_chained_with_finetuning_resumed_after_sigterm(tmp_path, smoke_runs):
    # Stage 1: pretraining, 4 smoke steps: the smoke preset's run (its default stage).
    pre = str(smoke_runs("simclr2").straight)
    saved = json.loads((pathlib.Path(pre) / "results.json").read_text())
    assert saved["step"] == 4 and (saved["method"], saved["stage"]) == ("simclr2", "pretrain")
    for key in ("knn_top1", "knn_top5", "knn_top1_init", "knn_top5_init"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["knn_top1_init"] > 10.0  # ten classes: even a random body's features beat chance
    pretrained = helpers.restore(pre)["model"]
    assert len(pretrained["head"]) == 3  # the deeper projection head
    assert "bias" not in pretrained["head"]["2"]["bn"] and "bias" in pretrained["head"]["0"]["bn"]

    # Stage 2 starts from the pretrained body and the head's first layer, with a new classifier.
    config = stage_config("finetune", pre)
    init = checkpoint.load_part(pre, "model")
    model = initial_parts(config, init)["model"]
    np.testing.assert_array_equal(flat(nnx.to_pure_dict(nnx.state(model.body))), flat(pretrained["body"]))
    np.testing.assert_array_equal(flat(nnx.to_pure_dict(nnx.state(model.head))), flat(pretrained["head"]["0"]))
    assert len(model.head) == 1 and model.classifier.kernel.shape == (16, 10)
    scratch = initial_parts(config)["model"]  # no init: the supervised baseline's random network
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
    student_init = flat(nnx.to_pure_dict(nnx.state(initial_parts(config)["student"])))
    results = simclr2.main(config, str(tmp_path / "distill"))
    saved = json.loads((tmp_path / "distill" / "results.json").read_text())
    assert saved == results and saved["step"] == 4 and saved["stage"] == "distill"
    assert saved["label_fraction"] == 0.01 and 0.0 <= saved["top1"] <= 100.0
    distilled = helpers.restore(str(tmp_path / "distill"))
    assert set(distilled) == {"student", "teacher", "optimizer"}
    np.testing.assert_array_equal(flat(distilled["teacher"]), flat(helpers.restore(straight)["model"]))  # fixed
    assert "head" not in distilled["student"] or not distilled["student"]["head"]
    assert not np.allclose(flat(distilled["student"]), student_init)  # the student learned

    # The distilled student is evaluated from its own run alone, without the teacher's run directory.
    shutil.rmtree(straight)
    config, method, body, step = evaluate.load_body(str(tmp_path / "distill"), steps_per_epoch=100)
    assert (method, config.stage, step) == ("simclr2", "distill", 4)
    np.testing.assert_array_equal(flat(nnx.to_pure_dict(nnx.state(body))), flat(distilled["student"]["body"]))


def test_every_preset_passes_the_config_check():
    for preset in ("default", "smoke", "cifar10", "imagenet"):
        simclr2.check_config(simclr2_config.get_config(preset))
