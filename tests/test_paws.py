"""PAWS: snn, sharpen and the loss against the official facebookresearch/suncet outputs; the support
sampler, the schedule, the step's objective, and what the shared smoke run records (the labelled
fraction, snn above chance). The smoke run, resume, 8 devices, non-finite guard and bad configs are
checked for every method in tests/test_contract.py."""

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
CASES = [c for c in json.loads((REFERENCE / "cases.json").read_text())["cases"] if c["method"] == "paws"]
INPUTS = (
    "anchor_views",
    "anchor_supports",
    "anchor_support_labels",
    "target_views",
    "target_supports",
    "target_support_labels",
)
# Reference checks run jitted (one compilation, faster than op-by-op); test_eager_equals_jit
# checks that the eager call gives the same value.
snn = jax.jit(paws.snn)
sharpen = jax.jit(paws.sharpen)
paws_loss = jax.jit(paws.paws_loss, static_argnames=("me_max", "multicrop"))


def load(case):
    return np.load(REFERENCE / case["file"])


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def loss_args(case, z):
    hyper = case["hyper"]
    return [jnp.asarray(z[k]) for k in INPUTS] + [hyper["tau"], hyper["T"], hyper["me_max"], hyper["multicrop"]]


def test_cases_found():
    assert len(CASES) == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["case"])
def test_snn_and_sharpen_match_official(case):
    z, hyper, tol = load(case), case["hyper"], case["tolerance"]["probs"]
    anchor_probs = snn(
        jnp.asarray(z["anchor_views"]),
        jnp.asarray(z["anchor_supports"]),
        jnp.asarray(z["anchor_support_labels"]),
        hyper["tau"],
    )
    assert_close(anchor_probs, z["anchor_probs"], tol)
    target_probs = snn(
        jnp.asarray(z["target_views"]),
        jnp.asarray(z["target_supports"]),
        jnp.asarray(z["target_support_labels"]),
        hyper["tau"],
    )
    assert_close(target_probs, z["target_probs"], tol)
    sharpened = sharpen(jnp.asarray(z["target_probs"], jnp.float32), hyper["T"])
    assert_close(sharpened, z["target_probs_sharpened"], tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["case"])
def test_paws_loss_matches_official(case):
    z = load(case)
    args = loss_args(case, z)
    loss, me_max_reg = paws_loss(*args)
    assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])
    assert_close(me_max_reg, z["me_max_reg_f64"], case["tolerance"]["me_max_reg"])


def test_eager_equals_jit():
    case = CASES[0]
    args = loss_args(case, load(case))
    np.testing.assert_allclose(paws.paws_loss(*args), paws_loss(*args), rtol=1e-6)


def test_target_views_are_not_swapped_by_the_loss():
    # The API takes the swapped targets; feeding the natural view order must give another value.
    case = CASES[0]
    z = load(case)
    args = loss_args(case, z)
    args[3] = jnp.asarray(z["target_views_unswapped"])
    loss, _ = paws_loss(*args)
    assert abs(float(loss) - float(z["loss_f64"])) > 1e-3


def test_no_gradient_through_targets():
    case = CASES[1]
    z = load(case)
    args = loss_args(case, z)

    def total(anchor_views, target_views, target_supports):
        loss, me_max_reg = paws_loss(anchor_views, args[1], args[2], target_views, target_supports, *args[5:])
        return loss + me_max_reg

    g_anchor, g_target, g_target_supports = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(args[0], args[3], args[4])
    assert np.all(np.asarray(g_target) == 0.0) and np.all(np.asarray(g_target_supports) == 0.0)
    assert np.abs(np.asarray(g_anchor)).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# The method around the loss: supports, labels, schedule, step, what a run records
# ------------------------------------------------------------------------------------------------


def test_support_batch_is_class_balanced_in_the_official_layout():
    # Pool of 5 classes x 4 images whose pixels encode (class, image): 10 * class + image.
    num_classes, per_class = 5, 4
    codes = 10 * np.arange(num_classes)[:, None] + np.arange(per_class)[None, :]
    pool = jnp.asarray(np.broadcast_to(codes[:, :, None, None, None], (5, 4, 2, 2, 3)), jnp.uint8)
    images, classes = paws.sample_supports(jax.random.key(3), pool, 3, 2)
    images, classes = np.asarray(images), np.asarray(classes)
    assert images.shape == (6, 2, 2, 3) and classes.shape == (6,)
    code = images[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(code // 10, classes)  # each image is of the class reported
    assert len(set(classes[:3])) == 3  # three distinct classes ...
    np.testing.assert_array_equal(classes[3:], classes[:3])  # ... repeated as [a, b, c, a, b, c]
    assert len(set(code)) == 6  # distinct images
    again, _ = paws.sample_supports(jax.random.key(3), pool, 3, 2)
    np.testing.assert_array_equal(np.asarray(again), images)  # a pure function of the key
    other, _ = paws.sample_supports(jax.random.key(4), pool, 3, 2)
    assert not np.array_equal(np.asarray(other), images)


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
    images, _ = paws.sample_supports(k_supports, labelled.images[...], m.classes_per_batch, m.s_per_class)
    supports = paws.make_support_views(k_support_views, images, v)
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
