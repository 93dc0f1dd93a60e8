"""DINO: the loss under jit and its stop-gradients; the head, clipping, step schedules, the optimizers'
PyTorch rules (frozen last layer, weight_g decay, LARS); one train step's EMA, centre and frozen last
layer (ResNet body); the shared smoke run's teacher EMA and attention maps (ViT body). The official
cases (loss, schedules, EMA, whole training steps) run through scripts/check_reference.py
(scripts/reference/dino.py); the loop, resume, devices and bad configs: test_contract."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import models
from dino import train as dino
from dino import visualize_attention
from tests import helpers

REFERENCE = pathlib.Path(__file__).parent / "reference"
CASES = json.loads((REFERENCE / "cases.json").read_text())["cases"]
LOSS_CASES = [c for c in CASES if c["case"].startswith("dino_loss")]


def _loss_args(case):
    z = np.load(REFERENCE / case["file"])
    h = case["hyper"]
    arrays = [jnp.asarray(z[name]) for name in ("student_out", "teacher_out", "center")]
    return z, (*arrays, h["student_temp"], h["teacher_temp"], h["center_momentum"])


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
    clipped, norms = dino.clip_gradients(grads, 1.0)
    np.testing.assert_allclose(clipped["a"], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(clipped["b"], grads["b"])  # under the limit: untouched
    np.testing.assert_allclose([norms["a"], norms["b"]], [5.0, 0.5], rtol=1e-6)  # before clipping


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
    # Official inits: trunc_normal(std .02) and zero biases in the MLP, nn.Linear's default
    # U(-1/sqrt(in), 1/sqrt(in)) for the last layer (created after the MLP's init), g = 1.
    big = dino.DINOHead(64, 512, 256, 1024, norm_last_layer=False, rngs=nnx.Rngs(0), use_bn=True)
    assert abs(float(jnp.std(big.fc2.kernel[...])) - 0.02) < 5e-4 and not np.any(big.fc2.bias[...])
    v = np.asarray(big.last_layer.v[...])
    assert np.abs(v).max() <= 1 / 16 and abs(v.std() - 1 / 16 / np.sqrt(3)) < 5e-4
    np.testing.assert_array_equal(big.last_layer.g[...], 1.0)
    assert isinstance(big.bn1, models.BatchNorm) and big.bn1.unbiased  # PyTorch's running variance
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
    tx = dino.make_optimizer("sgd", schedules, frozen_steps=0)
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


def _run(tx, params, grads):
    opt_state, trajectory = tx.init(params), [params]
    for g in grads:
        updates, opt_state = tx.update(g, opt_state, trajectory[-1])
        trajectory.append(jax.tree.map(lambda p, u: p + u, trajectory[-1], updates))
    return trajectory


def test_adamw_last_layer_state_starts_at_the_unfreeze_as_pytorch():
    # torch.optim.AdamW skips a parameter whose grad is None (the frozen last layer): no moments, no
    # step count, no decay. So its first update, at the unfreeze, is Adam's step 1 on the GLOBAL step's
    # schedule values: p <- p (1 - lr wd) - lr g / (|g| + eps) (m_hat = g, v_hat = g^2).
    lr, wd = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.01, 0.02, 0.03, 0.04])
    tx = dino.make_optimizer("adamw", {"lr": jnp.asarray(lr), "weight_decay": jnp.asarray(wd)}, frozen_steps=2)
    last = {"v": jnp.array([[0.5, -0.5]]), "g": jnp.ones(2)}
    params = {"w": jnp.array([[1.0, -2.0]]), "head": {"last_layer": last}}
    grad = {
        "w": jnp.array([[0.3, 0.1]]),
        "head": {"last_layer": {"v": jnp.array([[0.2, -0.4]]), "g": jnp.array([0.1, 0.3])}},
    }
    p = _run(tx, params, [grad] * 3)
    for t in (1, 2):  # frozen: nothing moves, not even by weight decay
        jax.tree.map(np.testing.assert_array_equal, p[t]["head"], params["head"])
    for name in ("v", "g"):  # g is decayed too: the official weight_g is [K, 1], a 2-D parameter
        before, g = np.asarray(last[name]), np.asarray(grad["head"]["last_layer"][name])
        want = before * (1 - lr[2] * wd[2]) - lr[2] * g / (np.abs(g) + 1e-8)
        # rtol: optax forms 1 - b2^t in float32 (6e-6 off at t = 1), torch in double
        np.testing.assert_allclose(p[3]["head"]["last_layer"][name], want, rtol=2e-5)
    # the rest is trained from step 0 with its own count: at step 2 the bias corrections of Adam's step 3
    b1, b2, m, v, w = 0.9, 0.999, 0.0, 0.0, np.asarray(params["w"])
    for t in range(3):
        m, v = b1 * m + (1 - b1) * np.asarray(grad["w"]), b2 * v + (1 - b2) * np.asarray(grad["w"]) ** 2
        w = w * (1 - lr[t] * wd[t]) - lr[t] * (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + 1e-8)
    np.testing.assert_allclose(p[3]["w"], w, rtol=2e-5)


def test_sgd_frozen_last_layer_gets_no_momentum_buffer_or_decay():
    # torch.optim.SGD: no buffer for a parameter without grad; at its first update buf = g + wd p.
    schedules = {"lr": jnp.array([0.1, 0.1, 0.1]), "weight_decay": jnp.array([0.5, 0.5, 0.5])}
    tx = dino.make_optimizer("sgd", schedules, frozen_steps=2)
    params = {"head": {"last_layer": {"v": jnp.array([[1.0, -1.0]])}}}
    grad = {"head": {"last_layer": {"v": jnp.array([[0.2, 0.2]])}}}
    p = _run(tx, params, [grad] * 3)
    np.testing.assert_array_equal(p[2]["head"]["last_layer"]["v"], params["head"]["last_layer"]["v"])
    want = np.array([[1.0, -1.0]]) - 0.1 * (np.array([[0.2, 0.2]]) + 0.5 * np.array([[1.0, -1.0]]))
    np.testing.assert_allclose(p[3]["head"]["last_layer"]["v"], want, rtol=1e-6)


def test_lars_is_dinos_lars_with_the_learning_rate_after_momentum():
    # utils.LARS: d = g + wd p and d *= eta |p| / |d| for tensors that are not 1-D; mu = 0.9 mu + d;
    # p -= lr mu. 1-D tensors (biases, norms): d = g, no decay, no adaptation.
    lr, wd = np.array([0.5, 0.1]), np.array([0.1, 0.2])
    tx = dino.make_optimizer("lars", {"lr": jnp.asarray(lr), "weight_decay": jnp.asarray(wd)}, frozen_steps=0)
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.array([0.5, -0.5])}
    grads = [{"w": jnp.array([[0.3, 0.1], [0.0, 0.2]]), "b": jnp.array([0.2, 0.1])}] * 2
    p = _run(tx, params, grads)
    want, mu = {k: np.asarray(v) for k, v in params.items()}, {"w": 0.0, "b": 0.0}
    for t, g in enumerate(grads):
        for k in want:
            d = np.asarray(g[k])
            if want[k].ndim > 1:
                d = d + wd[t] * want[k]
                d = d * 0.001 * np.linalg.norm(want[k]) / np.linalg.norm(d)
            mu[k] = 0.9 * mu[k] + d
            want[k] = want[k] - lr[t] * mu[k]
    for k in want:
        np.testing.assert_allclose(p[2][k], want[k], rtol=1e-5)


def test_vit_position_grid_is_built_for_224_whatever_the_crop_size():
    # The official ViT never receives img_size: its pos_embed is for 224 / patch, interpolated to the crops.
    config = helpers.smoke_config("dino")  # 16 px crops, patch 4
    network = nnx.eval_shape(lambda: dino.Network(config, nnx.Rngs(0)))
    assert network.body.pos_embed.shape == (1, 1 + (224 // 4) ** 2, network.body.num_features)


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
    lam = np.float32(dino.step_schedules(config, steps_per_epoch=60000 // config.data.batch_size)["momentum"][3])
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
