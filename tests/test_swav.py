"""SwAV: Sinkhorn codes and the swapped-prediction loss against facebookresearch/swav outputs; the queue,
the prototypes and the train step by value (the loop, resume, devices and bad configs: test_contract)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from swav import train as swav
from tests import helpers

LOSS_CASE = helpers.reference_cases("swav", "swav_loss")[0]  # the official values: scripts/check_reference.py
swav_loss = jax.jit(swav.swav_loss, static_argnames=("n_iters", "crops_for_assign"))
sinkhorn = jax.jit(swav.sinkhorn, static_argnames="n_iters")


def load(case):
    return np.load(helpers.REFERENCE / case["file"])


def official_sinkhorn_f64(scores, epsilon, n_iters):
    """main_swav.distributed_sinkhorn written out in float64 numpy ([B, K] in and out)."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # [K, B]
    n_prototypes, batch_size = q.shape
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(axis=1, keepdims=True) * n_prototypes
        q /= q.sum(axis=0, keepdims=True) * batch_size
    return (q * batch_size).T


def test_eager_equals_jit():
    z, hyper = load(LOSS_CASE), LOSS_CASE["hyper"]
    args = (hyper["temperature"], hyper["epsilon"], hyper["n_iters"], tuple(hyper["crops_for_assign"]))
    scores = jnp.asarray(z["scores"])
    np.testing.assert_allclose(swav.swav_loss(scores, *args), swav_loss(scores, *args), rtol=1e-6)


def test_sinkhorn_stable_for_small_epsilon():
    # eps = 0.005: exp(1 / eps) = exp(200) overflows float32, so the official float32 code gives
    # NaN here; the log-domain version must still match the float64 official result.
    scores = np.asarray(jax.random.uniform(jax.random.key(0), (16, 8), minval=-1.0, maxval=1.0))
    with np.errstate(over="ignore", invalid="ignore"):
        q_official_f32 = np.exp(scores / np.float32(0.005))
        q_official_f32 /= q_official_f32.sum()
    assert not np.all(np.isfinite(q_official_f32))
    q = sinkhorn(jnp.asarray(scores), 0.005, 3)
    np.testing.assert_allclose(q, official_sinkhorn_f64(scores, 0.005, 3), rtol=1e-3, atol=1e-6)


def test_codes_carry_no_gradient():
    # With the codes held constant, d loss / d scores[v] = sum_{a != v} (softmax(scores[v] / T) - q_a)
    # / (T B (V - 1) |A|); a gradient flowing through Sinkhorn would add to this.
    z, hyper = load(LOSS_CASE), LOSS_CASE["hyper"]
    scores = np.asarray(z["scores"], np.float64)
    temperature, crops = hyper["temperature"], hyper["crops_for_assign"]
    n_crops, batch_size, _ = scores.shape
    codes = {a: official_sinkhorn_f64(scores[a], hyper["epsilon"], hyper["n_iters"]) for a in crops}
    logits = scores / temperature
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.zeros_like(scores)
    for v in range(n_crops):
        for a in crops:
            if a != v:
                want[v] += (p[v] - codes[a]) / (temperature * batch_size * (n_crops - 1) * len(crops))
    grad = jax.jit(jax.grad(swav.swav_loss), static_argnums=(3, 4))(
        jnp.asarray(z["scores"]), temperature, hyper["epsilon"], hyper["n_iters"], tuple(crops)
    )
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The queue, the prototypes and the train step
# ------------------------------------------------------------------------------------------------


def test_swav_loss_with_queue_matches_official_loop():
    # The official train() with a full queue: Sinkhorn over [queue scores; batch scores], keep the
    # last B rows as codes, then the same swapped prediction. Written out in float64 numpy.
    rng = np.random.default_rng(0)
    n_crops, batch_size, length, n_prototypes, temperature, crops = 4, 8, 16, 10, 0.1, (0, 1)
    scores = rng.uniform(-1, 1, (n_crops, batch_size, n_prototypes)).astype(np.float32)
    queue_scores = rng.uniform(-1, 1, (len(crops), length, n_prototypes)).astype(np.float32)
    want = 0.0
    for i, a in enumerate(crops):
        q = official_sinkhorn_f64(np.concatenate([queue_scores[i], scores[a]]), 0.05, 3)[-batch_size:]
        subloss = 0.0
        for v in range(n_crops):
            if v != a:
                logits = scores[v].astype(np.float64) / temperature
                log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
                subloss -= np.mean(np.sum(q * log_p, axis=1))
        want += subloss / (n_crops - 1)
    want /= len(crops)
    got = swav.swav_loss(jnp.asarray(scores), temperature, 0.05, 3, crops, queue_scores=jnp.asarray(queue_scores))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(float(swav.swav_loss(jnp.asarray(scores), temperature, 0.05, 3, crops)) - want) > 1e-3


def test_update_queue_puts_newest_first_and_drops_oldest():
    queue = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)  # [A, L, D]
    z = -np.ones((2, 2, 3), np.float32)  # [A, B, D]
    new = np.asarray(swav.update_queue(jnp.asarray(queue), jnp.asarray(z)))
    np.testing.assert_array_equal(new[:, :2], z)
    np.testing.assert_array_equal(new[:, 2:], queue[:, :4])
    assert not swav.queue_is_full(jnp.zeros((2, 6, 3)))
    assert swav.queue_is_full(jnp.asarray(new))


def test_train_step_normalises_prototypes_freezes_them_and_fills_then_uses_the_queue():
    # Smoke preset: batch 16, queue 32 from step 0, prototypes frozen for 2 steps, lr 0 at step 0.
    config = helpers.smoke_config("swav")
    m = config.method
    graphdef, state0, step_fn = swav.create_state(config, steps_per_epoch=60000 // 16)
    step_fn = jax.jit(step_fn)
    batch = {"image": jax.random.randint(jax.random.key(1), (16, 28, 28, 3), 0, 256).astype(jnp.uint8)}
    keys = [jax.random.key(10 + i) for i in range(3)]
    forward = nnx.jit(lambda model, key: model(swav.make_views(key, batch["image"], config.views)))

    def parts_of(state):
        return nnx.merge(graphdef, state)

    def unit(w):  # [D, K] -> prototypes (columns) on the unit sphere, in numpy
        w = np.asarray(w, np.float64)
        return w / np.linalg.norm(w, axis=0, keepdims=True)

    def expected(state, key, with_queue):
        """The loss and embeddings of a step, recomputed from the state before it."""
        parts = parts_of(state)
        model = parts["model"]
        model.prototypes.kernel[...] = jnp.asarray(unit(model.prototypes.kernel[...]), jnp.float32)
        z, scores = forward(model, key)
        queue_scores = parts["queue"][...] @ model.prototypes.kernel[...] if with_queue else None
        loss = swav_loss(
            scores,
            m.temperature,
            m.epsilon,
            m.sinkhorn_iterations,
            tuple(m.crops_for_assign),
            queue_scores=queue_scores,
        )
        return float(loss), np.asarray(z)

    state1, metrics1 = step_fn(state0, batch, keys[0])
    state2, metrics2 = step_fn(state1, batch, keys[1])
    state3, metrics3 = step_fn(state2, batch, keys[2])
    queue1, queue2 = np.asarray(parts_of(state1)["queue"][...]), np.asarray(parts_of(state2)["queue"][...])
    kernels = [np.asarray(parts_of(s)["model"].prototypes.kernel[...]) for s in (state0, state1, state2, state3)]

    # Step 1: the loss is on normalised prototypes; the batch's assigned embeddings enter the queue.
    loss1, z1 = expected(state0, keys[0], with_queue=False)
    np.testing.assert_allclose(float(metrics1["loss"]), loss1, rtol=1e-5)
    np.testing.assert_allclose(queue1[:, :16], z1[list(m.crops_for_assign)], atol=1e-5)
    np.testing.assert_array_equal(queue1[:, 16:], 0.0)
    # Step 2 (lr 0.6, prototypes still frozen): the queue shifts by B and is then full; the
    # prototypes keep their direction while the body moves.
    np.testing.assert_array_equal(queue2[:, 16:], queue1[:, :16])
    assert float(metrics1["queue_in_use"]) == float(metrics2["queue_in_use"]) == 0.0
    np.testing.assert_allclose(unit(kernels[2]), unit(kernels[1]), atol=1e-6)
    conv1 = [np.asarray(parts_of(s)["model"].body.conv1.kernel[...]) for s in (state1, state2)]
    assert np.abs(conv1[1] - conv1[0]).max() > 1e-6
    # Step 3: the queue is used (Sinkhorn over 32 queued + 16 batch rows) and the prototypes move.
    assert float(metrics3["queue_in_use"]) == 1.0
    loss3, _ = expected(state2, keys[2], with_queue=True)
    loss3_without_queue, _ = expected(state2, keys[2], with_queue=False)
    np.testing.assert_allclose(float(metrics3["loss"]), loss3, rtol=1e-5)
    assert abs(loss3 - loss3_without_queue) > 1e-4
    assert np.abs(unit(kernels[3]) - unit(kernels[2])).max() > 1e-4


def test_smoke_run_checkpoints_the_queue_as_its_own_part(smoke_runs):
    # Smoke preset: the queue (32 rows per assigned crop, batch 16, from step 0) is filled at steps
    # 1-2 and used at steps 3-4; the checkpoints hold it beside the model and the optimizer.
    runs = smoke_runs("swav")
    step3, step4 = helpers.restore(str(runs.straight), 3), helpers.restore(str(runs.straight), 4)
    assert set(step4) == {"model", "optimizer", "queue"}
    queue3, queue4 = np.asarray(step3["queue"]), np.asarray(step4["queue"])
    assert queue4.shape == (2, 32, helpers.smoke_config("swav").model.proj_dim)
    np.testing.assert_allclose(np.linalg.norm(queue4, axis=-1), 1.0, rtol=1e-5)  # full: unit rows only
    np.testing.assert_array_equal(queue4[:, 16:], queue3[:, :16])  # step 4 pushed the oldest 16 rows out


# ------------------------------------------------------------------------------------------------
# Optimizer, schedule and batch-norm groups (the whole official step: scripts/check_reference.py)
# ------------------------------------------------------------------------------------------------


def test_optimizer_is_larc_then_sgd_momentum():
    # apex LARC + torch SGD written out: g' = (g + wd p) eta |p| / (|g| + wd |p| + 1e-8), unscaled when
    # |p| = 0 or |g| = 0; buf = 0.9 buf + g'; p -= lr_t buf. A zero gradient (frozen) moves nothing.
    wd, eta, rates = 1e-4, 1e-3, [0.1, 0.5, 0.3]
    cfg = helpers.smoke_config("swav").optim
    cfg.weight_decay, cfg.trust_coefficient, cfg.momentum = wd, eta, 0.9
    tx = swav.make_optimizer(cfg, lambda step: jnp.asarray(rates)[step])
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "zero": np.zeros(4), "frozen": rng.normal(size=5)}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    state, want, buf = tx.init(params), jax.tree.map(np.asarray, params), {k: 0.0 for k in params}
    for lr in rates:
        grads = {"w": rng.normal(size=(3, 4)), "zero": rng.normal(size=4), "frozen": np.zeros(5)}
        for k, g in grads.items():
            p = want[k].astype(np.float64)
            p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
            if p_norm > 0 and g_norm > 0:
                g = (g + wd * p) * eta * p_norm / (g_norm + wd * p_norm + 1e-8)
            buf[k] = 0.9 * buf[k] + g
            want[k] = p - lr * buf[k]
        updates, state = tx.update(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads), state, params)
        params = optax.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(params[k], want[k], rtol=1e-5, atol=1e-7)
    assert np.abs(params["zero"]).max() > 0  # |p| = 0: a plain SGD step, no trust ratio


def test_warmup_includes_its_endpoint_as_the_official_linspace():
    cfg = helpers.smoke_config("swav").optim
    cfg.epochs, cfg.warmup_epochs, cfg.lr, cfg.start_lr, cfg.final_lr = 3.0, 1.0, 0.6, 0.06, 0.0006
    schedule = swav.learning_rate_schedule(cfg, steps_per_epoch=4)
    cosine = [0.0006 + 0.5 * (0.6 - 0.0006) * (1 + np.cos(np.pi * t / 8)) for t in range(8)]
    want = np.concatenate([np.linspace(0.06, 0.6, 4), cosine])  # main_swav.py lr_schedule
    np.testing.assert_allclose([schedule(jnp.asarray(s)) for s in range(12)], want, rtol=1e-5)


def test_bn_groups_normalise_each_group_of_images_alone():
    # bn_groups = 2: the model's output for each half of the images equals a bn_groups = 1 model run on
    # that half alone (every crop size and the head normalised per group of B/2 images).
    config = helpers.smoke_config("swav", **{"method.bn_groups": 2})
    crops = (
        jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 3)),
        jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 3)),
    )
    grouped = swav.SwAV(config, nnx.Rngs(0))
    single = swav.SwAV(helpers.smoke_config("swav"), nnx.Rngs(0))
    z, scores = nnx.jit(lambda m, c: m(c))(grouped, crops)
    for half in (slice(0, 4), slice(4, 8)):
        z_half, scores_half = nnx.jit(lambda m, c: m(c))(nnx.clone(single), tuple(c[:, half] for c in crops))
        np.testing.assert_allclose(z[:, half], z_half, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores[:, half], scores_half, rtol=1e-4, atol=1e-5)
