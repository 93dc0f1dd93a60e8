"""DINO: loss, centre, schedules and teacher update against the official facebookresearch/dino; the
head, clipping and step schedules; one train step's EMA, centre and frozen last layer (ResNet body);
the shared smoke run's teacher EMA and attention maps (ViT body). The loop, resume, devices and bad
configs: test_contract."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dino import train as dino
from dino import visualize_attention
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
LOSS_CASES = [c for c in CASES if c["case"].startswith("dino_loss")]


def _case(name):
    (case,) = [c for c in CASES if c["case"] == name]
    return case, np.load(REFERENCE / case["file"])


def _assert_close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol["rtol"], atol=tol["atol"])


def _loss_args(case):
    z = np.load(REFERENCE / case["file"])
    h = case["hyper"]
    arrays = [jnp.asarray(z[name]) for name in ("student_out", "teacher_out", "center")]
    return z, (*arrays, h["student_temp"], h["teacher_temp"], h["center_momentum"])


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c["case"])
def test_dino_loss_matches_official(case):
    z, args = _loss_args(case)
    assert args[0].shape[0] == case["hyper"]["n_crops"]
    loss, new_center = dino.dino_loss(*args)
    _assert_close(loss, z["loss_f64"], case["tolerance"]["loss"])
    _assert_close(new_center, z["new_center_f64"], case["tolerance"]["new_center"])
    assert new_center.shape == z["center"].shape


def test_dino_loss_jit_and_stop_gradient():
    # The multi-crop case: 2 global + 4 local crops.
    (case,) = [c for c in LOSS_CASES if c["hyper"]["n_local"] > 0]
    _, args = _loss_args(case)
    # Temperatures and momentum traced too, as when tau_t comes from the per-epoch schedule.
    loss_jit, center_jit = jax.jit(dino.dino_loss)(*args)
    loss, new_center = dino.dino_loss(*args)
    np.testing.assert_allclose(loss_jit, loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(center_jit, new_center, rtol=1e-6, atol=1e-7)

    def loss_fn(student_out, teacher_out, center):
        return dino.dino_loss(student_out, teacher_out, center, *args[3:])[0]

    grad_student, grad_teacher, grad_center = jax.grad(loss_fn, argnums=(0, 1, 2))(*args[:3])
    # Every student crop is trained (local crops and both global crops); the teacher and the centre
    # get exactly no gradient.
    assert np.all(np.abs(np.asarray(grad_student)).sum(axis=(1, 2)) > 0)
    np.testing.assert_array_equal(grad_teacher, 0.0)
    np.testing.assert_array_equal(grad_center, 0.0)


def test_teacher_temp_schedule_matches_official():
    case, z = _case("dino_teacher_temp_schedule")
    got = dino.teacher_temp_schedule(**case["hyper"])
    want = z["teacher_temp_schedule"]
    assert got.shape == want.shape
    _assert_close(got, want, case["tolerance"]["teacher_temp_schedule"])


def test_cosine_scheduler_matches_official():
    case, z = _case("dino_cosine_scheduler")
    for i, cfg in enumerate(case["hyper"]["cosine_cfgs"]):
        got = dino.cosine_scheduler(**cfg)
        want = z[f"schedule_{i}"]
        assert got.shape == want.shape == (cfg["epochs"] * cfg["niter_per_ep"],)
        _assert_close(got, want, case["tolerance"]["schedule"])


def test_ema_update_matches_official():
    case, z = _case("dino_teacher_update")
    # m is the teacher momentum at iteration 3 of the first cosine schedule of the fixtures.
    cosine_case, _ = _case("dino_cosine_scheduler")
    m = dino.cosine_scheduler(**cosine_case["hyper"]["cosine_cfgs"][0])[3]
    np.testing.assert_allclose(m, float(z["m"]), rtol=0, atol=1e-12)
    teacher = {"w": jnp.asarray(z["teacher_param"])}
    student = {"w": jnp.asarray(z["student_param"])}
    new_teacher = jax.jit(dino.ema_update)(teacher, student, m)
    _assert_close(new_teacher["w"], z["new_teacher_param"], case["tolerance"]["new_teacher_param"])


# ------------------------------------------------------------------------------------------------
# Pieces of the method
# ------------------------------------------------------------------------------------------------


def test_step_schedules_equal_the_official_per_epoch_schedules():
    # 3 whole epochs of 5 steps: the per-step arrays must be the official arrays (built per epoch).
    config = helpers.smoke_config("dino")
    config.unlock()
    config.data.batch_size = 512
    config.optim.update(
        epochs=3.0,
        warmup_epochs=1.0,
        lr=5e-4,
        final_lr=1e-6,
        weight_decay=0.04,
        weight_decay_end=0.4,
        freeze_last_layer=1.0,
    )
    config.method.update(
        warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2, momentum_teacher=0.996
    )
    s = dino.step_schedules(config, steps_per_epoch=5)
    np.testing.assert_allclose(s["lr"], dino.cosine_scheduler(1e-3, 1e-6, 3, 5, warmup_epochs=1), rtol=1e-6)
    np.testing.assert_allclose(s["weight_decay"], dino.cosine_scheduler(0.04, 0.4, 3, 5), rtol=1e-6)
    np.testing.assert_allclose(s["momentum"], dino.cosine_scheduler(0.996, 1.0, 3, 5), rtol=1e-7)
    np.testing.assert_allclose(s["teacher_temp"], np.repeat([0.04, 0.07, 0.07], 5), rtol=1e-6)
    np.testing.assert_array_equal(s["last_layer_frozen"], np.arange(15) < 5)


def test_clip_gradients_per_parameter():
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}  # norms 5 and 0.5
    clipped = dino.clip_gradients(grads, 1.0)
    np.testing.assert_allclose(clipped["a"], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(clipped["b"], grads["b"])  # under the limit: untouched


def test_head_is_l2_bottleneck_then_weight_normalised_layer():
    head = dino.DINOHead(6, 16, 4, 10, norm_last_layer=True, rngs=nnx.Rngs(0))
    h = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    x = np.asarray(head.fc3(jax.nn.gelu(head.fc2(jax.nn.gelu(head.fc1(h), approximate=False)), approximate=False)))
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    v = np.asarray(head.last_layer.v[...])
    want = x @ (v / np.linalg.norm(v, axis=0))  # unit-norm columns: outputs are cosines
    np.testing.assert_allclose(head(h), want, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(want) <= 1 + 1e-6)
    assert head.last_layer.g is None  # norm fixed: nothing to train
    assert dino.DINOHead(6, 16, 4, 10, norm_last_layer=False, rngs=nnx.Rngs(0)).last_layer.g is not None


def test_head_batch_norm_standardises_each_hidden_unit_over_all_crops():
    head = dino.DINOHead(6, 16, 4, 10, norm_last_layer=True, rngs=nnx.Rngs(0), use_bn=True)
    h = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    standardise = lambda a: (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)  # batch statistics, scale 1, bias 0
    gelu = lambda a: np.asarray(jax.nn.gelu(a, approximate=False))
    x = np.asarray(head.fc3(gelu(standardise(np.asarray(head.fc2(gelu(standardise(np.asarray(head.fc1(h))))))))))
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    v = np.asarray(head.last_layer.v[...])
    np.testing.assert_allclose(head(h), x @ (v / np.linalg.norm(v, axis=0)), rtol=1e-4, atol=1e-5)
    assert dino.DINOHead(6, 16, 4, 10, norm_last_layer=True, rngs=nnx.Rngs(0)).bn1 is None


def test_sgd_is_pytorch_sgd_with_coupled_decay_of_kernels_only():
    # torch.optim.SGD(momentum=0.9): buf = 0.9 buf + (g + wd p); p -= lr buf; biases not decayed.
    schedules = {"lr": jnp.array([0.1, 0.05]), "weight_decay": jnp.array([0.01, 0.02])}
    tx = dino.make_optimizer("sgd", schedules)
    params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5, 0.5])}
    grads = [
        {"w": jnp.array([[0.3, 0.1]]), "b": jnp.array([0.2, -0.4])},
        {"w": jnp.array([[-0.1, 0.2]]), "b": jnp.array([0.1, 0.1])},
    ]
    opt_state, p = tx.init(params), dict(params)
    want, buf = {k: np.asarray(v) for k, v in params.items()}, {k: 0.0 for k in params}
    for t, g in enumerate(grads):
        updates, opt_state = tx.update(g, opt_state, p)
        p = {k: p[k] + updates[k] for k in p}
        for k in want:
            d = np.asarray(g[k]) + (float(schedules["weight_decay"][t]) * want[k] if k == "w" else 0.0)
            buf[k] = 0.9 * buf[k] + d
            want[k] = want[k] - float(schedules["lr"][t]) * buf[k]
    for k in want:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-6)


def test_train_step_centre_frozen_last_layer_and_teacher_ema():
    # The default preset's path (ResNet body, batch norm in the head, SGD), two steps: the last layer
    # is frozen in step 0 only. The shared smoke runs cover the ViT path (AdamW, no batch norm).
    config = helpers.smoke_config("dino")
    config.unlock()
    config.data.batch_size = 8
    config.model.update(name="resnet_tiny", stem="small", use_bn_in_head=True)
    config.optim.update(optimizer="sgd", lr=0.06, weight_decay=1e-4, weight_decay_end=1e-4)
    config.optim.freeze_last_layer = 1 * 8 / 60000
    config.optim.warmup_epochs = 0.0  # a learning rate > 0 from step 0, so a frozen layer could move
    config.method.momentum_teacher = 0.9  # a visible EMA step
    graphdef, state0, step_fn = dino.create_state(config, steps_per_epoch=60000 // 8)
    images = np.random.default_rng(0).integers(0, 256, size=(8, 28, 28, 3), dtype=np.uint8)
    batch = {"image": jnp.asarray(images)}
    key = jax.random.key(1)
    step_fn = jax.jit(step_fn)
    state1, metrics = step_fn(state0, batch, key)
    state2, _ = step_fn(state1, batch, jax.random.key(2))
    p0, p1, p2 = (nnx.merge(graphdef, s) for s in (state0, state1, state2))  # dicts of the named parts
    params = lambda module: [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]

    # Teacher: theta_t <- lambda theta_t + (1 - lambda) theta_s, with the UPDATED student, lambda at step 0.
    lam = 0.9
    assert float(metrics["momentum"]) == pytest.approx(lam)
    for t1, t0, s1 in zip(params(p1["teacher"]), params(p0["teacher"]), params(p1["student"]), strict=True):
        np.testing.assert_allclose(t1, lam * t0 + (1 - lam) * s1, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(s1, s0) for s1, s0 in zip(params(p1["student"]), params(p0["student"])))

    # Centre: c <- m c + (1 - m) mean of the raw teacher outputs on the global crops, c = 0 at the start.
    crops = dino.make_views(jax.random.split(key)[0], batch["image"], config.views)
    teacher_out = np.asarray(p0["teacher"](crops[:1]))  # [2, B, K]; batch norm in train mode, as in the step
    want = 0.1 * teacher_out.mean(axis=(0, 1))[None]
    np.testing.assert_allclose(p1["centre"][...], want, rtol=1e-4, atol=1e-6)
    assert np.abs(want).max() > 1e-3

    # Last layer: untouched in the frozen step 0 (zero gradient, value restored), trained in step 1.
    last_v = lambda parts: parts["student"].head.last_layer.v[...]
    np.testing.assert_array_equal(last_v(p1), last_v(p0))
    assert not np.allclose(last_v(p2), last_v(p1))
    assert int(p1["optimizer"].step[...]) == 1 and np.isfinite(float(metrics["loss"])) and bool(metrics["finite"])


# ------------------------------------------------------------------------------------------------
# The shared smoke runs (tests/conftest.py): ViT body, AdamW, no batch norm in the head
# ------------------------------------------------------------------------------------------------


def test_smoke_run_teacher_is_the_ema_of_the_student(smoke_runs):
    # Step 4's teacher from step 3's teacher and step 4's (updated) student, with lambda at step 3.
    runs = smoke_runs("dino")
    step3, step4 = helpers.restore(str(runs.straight), 3), helpers.restore(str(runs.straight), 4)
    assert set(step4) == {"student", "teacher", "centre", "optimizer"}
    config = helpers.smoke_config("dino")
    lam = dino.step_schedules(config, steps_per_epoch=60000 // config.data.batch_size)["momentum"][3]
    assert 0.97 <= float(lam) < 1.0
    want = dino.ema_update(step3["teacher"], step4["student"], lam)
    close = lambda got, w: np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, step4["teacher"], want)
    fc3 = lambda step: step["teacher"]["head"]["fc3"]["kernel"]
    assert not np.allclose(fc3(step4), fc3(step3))
    # c [1, K]: the running mean of the teacher's outputs moved between the two steps.
    assert step4["centre"].shape == (1, config.model.out_dim)
    assert not np.allclose(step4["centre"], step3["centre"])


def test_attention_maps_of_the_smoke_run(smoke_runs, tmp_path):
    # The smoke ViT: patch 4 on 28x28 images, a 7x7 grid, 3 heads; the latest checkpoint (step 4).
    runs = smoke_runs("dino")
    png = tmp_path / "attention.png"
    maps = visualize_attention.main(str(runs.straight), str(png), num_images=2)
    assert maps.shape == (2, 3, 7, 7) and png.stat().st_size > 1000
    total = maps.sum(axis=(2, 3))  # class token to the patches; the rest goes to itself
    assert np.all(maps >= 0) and np.all(total > 0.5) and np.all(total < 1.0)
