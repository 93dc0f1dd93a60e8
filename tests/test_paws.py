"""PAWS: the loss's stop-gradient, the LARS groups and rule of the official optimizer on the real
models, the support sampler, the schedule, the step's objective, the fine-tuning protocol, and what
the shared smoke run records (the labelled fraction, snn above chance). The official outputs (loss,
whole steps, snn evaluation) are compared by scripts/check_reference.py. The smoke run, resume,
8 devices, non-finite guard and bad configs are checked for every method in tests/test_contract.py."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import data
from paws import train as paws
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
# The official loss, snn and sharpen values (tests/reference/paws_loss_*.npz) and the whole official
# steps (tests/reference/steps/paws_*) are checked by scripts/check_reference.py (scripts/reference/paws.py).
CASE = json.loads((REFERENCE / "cases.json").read_text())["cases"]
CASE = [c for c in CASE if c["method"] == "paws" and c["hyper"]["multicrop"] == 6][0]
INPUTS = (
    "anchor_views",
    "anchor_supports",
    "anchor_support_labels",
    "target_views",
    "target_supports",
    "target_support_labels",
)
paws_loss = jax.jit(paws.paws_loss, static_argnames=("me_max", "multicrop"))


def loss_args(case, z):
    hyper = case["hyper"]
    return [jnp.asarray(z[k]) for k in INPUTS] + [hyper["tau"], hyper["T"], hyper["me_max"], hyper["multicrop"]]


def test_eager_equals_jit():
    args = loss_args(CASE, np.load(REFERENCE / CASE["file"]))
    np.testing.assert_allclose(paws.paws_loss(*args), paws_loss(*args), rtol=1e-6)


def test_no_gradient_through_targets():
    args = loss_args(CASE, np.load(REFERENCE / CASE["file"]))

    def total(anchor_views, target_views, target_supports):
        loss, me_max_reg = paws_loss(anchor_views, args[1], args[2], target_views, target_supports, *args[5:])
        return loss + me_max_reg

    g_anchor, g_target, g_target_supports = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(args[0], args[3], args[4])
    assert np.all(np.asarray(g_target) == 0.0) and np.all(np.asarray(g_target_supports) == 0.0)
    assert np.abs(np.asarray(g_anchor)).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# The method around the loss: supports, labels, schedule, step, what a run records
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["resnet50", "resnet18"])
def test_lars_groups_are_the_official_names_on_the_real_models(body):
    # init_opt: weight decay and LARS for every PyTorch name without 'bias' and 'bn'; so the
    # downsample batch norm's gamma (layerX.0.downsample.1.weight) is adapted, its beta is not.
    from scripts.reference.paws import torch_name

    config = helpers.smoke_config("paws", **{"model.name": body, "model.pred_hidden_dim": 4})
    model = nnx.eval_shape(lambda: paws.PAWS(config, nnx.Rngs(0)))
    names = {torch_name(path): paws.lars_adapted(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert {n: "bias" not in n and "bn" not in n for n in names} == names
    assert names["layer2.0.downsample.1.weight"] and not names["layer2.0.downsample.1.bias"]
    assert not names["bn1.weight"] and names["fc.fc1.weight"] and not names["pred.bn1.weight"]


def test_lars_skips_decay_and_scaling_where_the_gradient_is_zero():
    # src/lars.py: no trust ratio and no weight decay when |g| = 0 (optax.lars would decay); the
    # ratio eta |p| / (|g| + wd |p| + 1e-8) multiplies g + wd p; the lr sits inside the momentum buffer.
    config = helpers.smoke_config("paws", **{"optim.weight_decay": 0.5, "optim.momentum": 0.9})
    params = {"a": {"kernel": jnp.full((2, 2), 3.0)}, "b": {"kernel": jnp.ones((2, 2))}, "c": {"bias": jnp.ones(2)}}
    grads = {"a": {"kernel": jnp.zeros((2, 2))}, "b": {"kernel": jnp.full((2, 2), 2.0)}, "c": {"bias": jnp.ones(2)}}
    tx = paws.make_optimizer(config.optim, lambda step: 0.1)
    updates, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["a"]["kernel"], 0.0)
    eta, wd = config.optim.trust_coefficient, 0.5
    ratio = eta * 2.0 / (4.0 + wd * 2.0 + 1e-8)  # |p| = 2, |g| = 4
    np.testing.assert_allclose(updates["b"]["kernel"], -0.1 * (2.0 + wd) * ratio, rtol=1e-6)
    np.testing.assert_allclose(updates["c"]["bias"], -0.1, rtol=1e-6)  # excluded: raw gradient
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["c"]["bias"], -0.1 * 1.9, rtol=1e-6)  # buf = 0.9 buf - lr g


def test_support_batch_is_class_balanced_in_the_official_layout():
    # Pool of 5 classes x 4 images whose pixels encode (class, image): 10 * class + image.
    num_classes, per_class = 5, 4
    codes = 10 * np.arange(num_classes)[:, None] + np.arange(per_class)[None, :]
    pool = jnp.asarray(np.broadcast_to(codes[:, :, None, None, None], (5, 4, 2, 2, 3)), jnp.uint8)
    classes, picks = paws.sample_supports(jax.random.key(3), num_classes, per_class, 3, 2)
    images, classes = np.asarray(pool[classes, picks]), np.asarray(classes)
    assert images.shape == (6, 2, 2, 3) and classes.shape == (6,)
    code = images[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(code // 10, classes)  # each image is of the class reported
    assert len(set(classes[:3])) == 3  # three distinct classes ...
    np.testing.assert_array_equal(classes[3:], classes[:3])  # ... repeated as [a, b, c, a, b, c]
    assert len(set(code)) == 6  # distinct images
    again = paws.sample_supports(jax.random.key(3), num_classes, per_class, 3, 2)
    np.testing.assert_array_equal(np.asarray(pool[again]), images)  # a pure function of the key
    other = paws.sample_supports(jax.random.key(4), num_classes, per_class, 3, 2)
    assert not np.array_equal(np.asarray(pool[other]), images)


def test_support_views_are_cropped_inside_each_labelled_images_extent():
    # Whole-image fit: a labelled image sits in the top-left of its canvas. The drawn rows index the
    # pool's images and extents alike, and the support views never read the padding.
    config = helpers.smoke_config("paws")
    size = 2 * config.views.crop_size
    rng = np.random.default_rng(0)
    extents = rng.integers(size // 3, size + 1, (3, 4, 2)).astype(np.int32)  # [C, n, 2]
    images = rng.integers(0, 256, (3, 4, size, size, 3), dtype=np.uint8)
    inside = np.zeros(images.shape, bool)
    for c, i in np.ndindex(3, 4):
        inside[c, i, : extents[c, i, 0], : extents[c, i, 1]] = True
    set_ = paws.LabelledSet(images, np.arange(12).reshape(3, 4), extents)

    def views(pool):
        rows = paws.sample_supports(jax.random.key(1), 3, 4, 2, 2)
        picked, boxes = pool[rows], set_.extents[...][rows]
        return paws.make_support_views(jax.random.key(2), picked, config.views, boxes), picked, boxes

    zeros, picked, boxes = views(jnp.asarray(np.where(inside, images, 0), jnp.uint8))
    noise, _, _ = views(jnp.asarray(np.where(inside, images, 255 - images), jnp.uint8))
    np.testing.assert_array_equal(np.asarray(zeros), np.asarray(noise))
    rows = np.asarray(picked)  # each drawn extent belongs to the drawn image
    for row, box in zip(rows, np.asarray(boxes)):
        (c, i) = next(
            (c, i) for c, i in np.ndindex(3, 4) if np.array_equal(np.where(inside[c, i], images[c, i], 0), row)
        )
        np.testing.assert_array_equal(box, extents[c, i])


def test_labels_matrix_is_the_official_smoothed_one_hot():
    # Official make_labels_matrix(num_classes=3, s_batch_size=2, world_size=1, smoothing=0.1):
    # off = 0.1 / 3 everywhere, row j hot in column j % 3 with 1 - 0.1 + off.
    off, on = 0.1 / 3, 0.9 + 0.1 / 3
    want = np.array([[on, off, off], [off, on, off], [off, off, on]] * 2)
    np.testing.assert_allclose(paws.labels_matrix(3, 2, 0.1), want, rtol=1e-6)


def test_learning_rate_warms_up_from_start_lr_then_decays_to_final_lr():
    config = helpers.smoke_config("paws")
    o = config.optim  # 4 steps, 1 of warmup
    schedule = paws.learning_rate_schedule(o, steps_per_epoch=60000 // 16)
    np.testing.assert_allclose([schedule(0), schedule(1), schedule(4)], [o.start_lr, o.lr, o.final_lr], rtol=1e-6)


def manual_paws_loss(graphdef, config, state, batch, key):
    """The step's objective written out again from the official call site, for comparison."""
    parts = nnx.merge(graphdef, state)
    model, labelled = parts["model"], parts["labelled"]
    m, v = config.method, config.views
    k_views, k_supports, k_support_views = jax.random.split(key, 3)
    rows = paws.sample_supports(k_supports, *labelled.images.shape[:2], m.classes_per_batch, m.s_per_class)
    supports = paws.make_support_views(k_support_views, labelled.images[...][rows], v, labelled.extents[...][rows])
    x_g, x_l = paws.make_views(k_views, batch["image"], v)
    b, n_s = x_g.shape[1], supports.shape[0]
    h, z = model(jnp.concatenate([supports, x_g[0], x_g[1]]))
    _, z_l = model(jnp.concatenate(list(x_l)))
    target_views = jnp.concatenate([h[n_s + b :], h[n_s : n_s + b]])  # official swap
    labels = jnp.tile(
        paws.labels_matrix(m.classes_per_batch, m.s_per_class, m.label_smoothing), (v.supervised_views, 1)
    )
    loss, reg = paws.paws_loss(
        jnp.concatenate([z[n_s:], z_l]),
        z[:n_s],
        labels,
        target_views,
        h[:n_s],
        labels,
        m.tau,
        m.T,
        m.me_max,
        v.local_crops_number,
    )
    return loss, reg


def test_train_step_objective_and_update():
    config = helpers.smoke_config("paws")
    mesh = data.make_mesh()
    train = data.load(config.data, "train")
    loader = data.Loader(train, config.data.batch_size, config.seed, mesh)
    graphdef, state, step_fn = paws.create_state(config, loader.steps_per_epoch, **paws.state_inputs(config, train))
    batch, key = loader.get(0), jax.random.key(7)
    want_loss, want_reg = map(float, jax.jit(functools.partial(manual_paws_loss, graphdef, config))(state, batch, key))
    before = jax.tree.map(np.asarray, nnx.state(nnx.merge(graphdef, state)["model"], nnx.Param))
    new_state, metrics = jax.jit(step_fn)(state, batch, key)
    np.testing.assert_allclose(float(metrics["xent"]), want_loss, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["me_max_reg"]), want_reg, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), want_loss + want_reg, rtol=1e-4)
    assert want_reg <= 0.0  # -H(pbar) with me_max
    np.testing.assert_allclose(float(metrics["lr"]), config.optim.start_lr, rtol=1e-6)
    parts = nnx.merge(graphdef, new_state)
    model, optimizer, labelled = parts["model"], parts["optimizer"], parts["labelled"]
    assert int(optimizer.step[...]) == 1
    after = nnx.state(model, nnx.Param)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), after, before)
    assert all(jax.tree.leaves(changed))  # every parameter, the prediction/projection head included
    # The labelled pool is the class-sorted balanced subset of the seed, unchanged by the step.
    train_labels = train.labels()
    want = data.balanced_subset(train_labels, config.data.label_fraction, 10, config.seed)
    np.testing.assert_array_equal(np.sort(np.asarray(labelled.indices[...]).ravel()), want)
    np.testing.assert_array_equal(
        train_labels[np.asarray(labelled.indices[...])], np.repeat(np.arange(10)[:, None], len(want) // 10, axis=1)
    )


def test_smoke_run_records_its_labelled_fraction_and_snn_beats_chance(smoke_runs):
    runs = smoke_runs("paws")
    config = helpers.smoke_config("paws")
    saved = json.loads((runs.straight / "results.json").read_text())
    assert saved["label_fraction"] == 0.01
    assert 0.0 <= saved["snn_top1_init"] <= 100.0
    assert saved["snn_top1"] > 10.0  # four steps of PAWS already beat chance on the test images
    want = data.balanced_subset(data.load(config.data, "train").labels(), 0.01, 10, config.seed)
    for run in (runs.straight, runs.resumed):
        recorded = json.loads((run / "labelled.json").read_text())
        assert (recorded["label_fraction"], recorded["seed"]) == (0.01, config.seed)
        np.testing.assert_array_equal(np.sort(recorded["indices"]), want)
        # The checkpoint's labelled pool is the same subset, row c of class c, unchanged by training.
        for step in (3, 4):
            pool = helpers.restore(str(run), step)["labelled"]["indices"]
            np.testing.assert_array_equal(pool.ravel(), recorded["indices"])


def test_a_support_batch_the_labelled_fraction_cannot_fill_fails_before_any_work(tmp_path):
    config = helpers.smoke_config("paws", **{"method.s_per_class": 61})  # 1% of 60000: 60 per class
    with pytest.raises(ValueError, match="s_per_class"):
        paws.main(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# The official fine-tuning protocol (paws/finetune.py = suncet src/fine_tune.py)
# ------------------------------------------------------------------------------------------------


def test_finetune_model_keeps_fc1_bn1_and_starts_from_a_zero_classifier():
    from paws import finetune

    config = helpers.smoke_config("paws")
    pretrained = paws.PAWS(config, nnx.Rngs(0))
    model = finetune.FineTuneModel(nnx.clone(pretrained), 10, nnx.Rngs(1))
    np.testing.assert_array_equal(model.fc1.kernel[...], pretrained.head.fc1.kernel[...])
    np.testing.assert_array_equal(model.bn1.scale[...], pretrained.head.bn1.scale[...])
    assert not np.any(np.asarray(model.fc2.kernel[...])) and not np.any(np.asarray(model.fc2.bias[...]))
    assert not hasattr(model, "pred") and model.fc2.kernel.shape == (config.model.proj_hidden_dim, 10)


def test_finetune_optimizer_is_the_official_nesterov_sgd():
    # src/sgd.py, nesterov: d = -lr_k g; buf = m buf + d (buf = d first); p += d + m buf.
    from paws import finetune

    tx = finetune.make_optimizer(0.02, total_steps=4)
    params, g = {"w": {"kernel": jnp.ones(3)}}, [jnp.full(3, 1.0), jnp.full(3, 2.0)]
    state, buf = tx.init(params), 0.0
    for k in range(2):
        updates, state = tx.update({"w": {"kernel": g[k]}}, state, params)
        lr = 0.02 * 0.5 * (1 + np.cos(np.pi * k / 4))
        d = -lr * np.asarray(g[k])
        buf = d if k == 0 else 0.9 * buf + d
        np.testing.assert_allclose(updates["w"]["kernel"], d + 0.9 * buf, rtol=1e-6)


def test_official_finetuning_runs_on_the_smoke_run(smoke_runs, tmp_path):
    from paws import finetune

    runs = smoke_runs("paws")
    out = tmp_path / "finetune.json"
    result = finetune.finetune_run(str(runs.straight), epochs=1, batch_size=64, test_examples=100, output=str(out))
    saved = json.loads(out.read_text())
    assert saved["top1"] == result["top1"] and 0.0 <= result["top1"] <= 100.0
    recorded = json.loads((runs.straight / "labelled.json").read_text())
    assert result["labelled_examples"] == len(recorded["indices"]) and result["label_fraction"] == 0.01
    assert result["step"] == 4
