"""SimCLR: the official TF ResNet options on the built model, the LARS masks on the real model, and the
LARS update against the official rule (the loss cases run through scripts/check_reference.py; the loop,
resume, devices and bad configs: test_contract)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import models
from simclr import config as simclr_config
from simclr import train as simclr


def test_nt_xent_is_symmetric_and_minimal_for_aligned_views():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 8, 16)).astype(np.float32)
    assert np.isclose(simclr.nt_xent_loss(z1, z2, 0.5), simclr.nt_xent_loss(z2, z1, 0.5), rtol=1e-6)
    assert simclr.nt_xent_loss(z1, z1, 0.5) < simclr.nt_xent_loss(z1, z2, 0.5)


def batch_norms(model):
    return {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)}


def test_body_and_head_are_the_official_tf_resnet():
    # resnet.py: the last BN of every residual block starts with gamma 0; Keras BN keeps the biased
    # batch variance; the stem max-pool is 'SAME'. Checked on the ResNet-50 of the ImageNet preset.
    config = simclr_config.get_config("imagenet")
    model = simclr.SimCLR(config, nnx.Rngs(0))
    blocks = [block for stage in model.body.stages for block in stage]
    assert len(blocks) == 16 and all(np.all(block.bn3.scale[...] == 0) for block in blocks)
    assert all(np.all(block.bn1.scale[...] == 1) and np.all(block.bn2.scale[...] == 1) for block in blocks)
    assert model.body.pool_same and model.body.max_pool
    norms = batch_norms(model)
    assert len(norms) == 1 + 3 * 16 + 4 + 2  # stem, blocks, downsample shortcuts, head
    assert all(isinstance(bn, models.BatchNorm) and not bn.unbiased for bn in norms.values())
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in norms.values())
    assert model.head.bn2.bias is None  # the output BN has no shift, as the official head
    for fc in (model.head.fc1, model.head.fc2):  # model.py LinearLayer: RandomNormal(stddev=0.01), no bias
        assert fc.bias is None and abs(float(np.std(fc.kernel[...])) - 0.01) < 5e-4


def official_lars_flags(model):
    """{param path: (decayed, adapted)} by the official rule: LARS excludes every variable whose name
    holds 'batch_normalization' or 'bias' from both weight decay and the trust ratio."""
    norms = batch_norms(model)
    flags = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        keep = path[:-1] not in norms and path[-1] != "bias"
        flags[tuple(str(p) for p in path)] = (keep, keep)
    return flags


def project_lars_flags(model, decay_mask, trust_mask):
    params = nnx.state(model, nnx.Param)
    decay, trust = decay_mask(params), trust_mask(params)
    keys = lambda path: tuple(str(k.key if hasattr(k, "key") else k.idx) for k in path if not hasattr(k, "name"))
    flat = lambda tree: {keys(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    decay, trust = flat(decay), flat(trust)
    return {k: (decay[k], trust[k]) for k in decay}


def test_lars_masks_on_the_real_model():
    config = simclr_config.get_config("imagenet")
    model = nnx.eval_shape(lambda: simclr.SimCLR(config, nnx.Rngs(0)))
    mask = lambda params: simclr.lars_mask(params, ("bn", "bias"))
    ours, official = project_lars_flags(model, mask, mask), official_lars_flags(model)
    assert ours == official
    assert sum(d for d, _ in ours.values()) == 53 + 2  # 53 convs of ResNet-50, 2 head kernels


def test_lars_update_equals_the_official_rule_over_three_steps():
    # lars_optimizer.py, classic momentum: g' = g + wd w (decayed variables); trust = eta |w| / |g'|
    # (adapted variables, 1 where a norm is 0); v = m v + lr trust g'; w = w - v.
    cfg = simclr_config.get_config("imagenet").optim
    lrs = [0.5, 1.0, 0.25]
    tx = simclr.make_optimizer(cfg, lambda count: jnp.asarray(lrs)[count])
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))}, "bn1": {"scale": rng.normal(size=4)}}
    params["fc"] = {"bias": rng.normal(size=4)}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in lrs]
    state, ours = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)
    want = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    velocity = jax.tree.map(np.zeros_like, want)
    for lr, g in zip(lrs, grads):
        for name in want:
            for leaf in want[name]:
                w, grad = want[name][leaf], np.asarray(g[name][leaf], np.float64)
                trust = 1.0
                if name == "conv":  # neither a batch norm nor a bias
                    grad = grad + cfg.weight_decay * w
                    trust = cfg.trust_coefficient * np.linalg.norm(w) / np.linalg.norm(grad)
                velocity[name][leaf] = cfg.momentum * velocity[name][leaf] + lr * trust * grad
                want[name][leaf] = w - velocity[name][leaf]
    for name in want:
        for leaf in want[name]:
            np.testing.assert_allclose(ours[name][leaf], want[name][leaf], rtol=1e-5, atol=1e-7)


def test_views_use_the_tf_crop_sampler():
    # make_view crops with augment.tf_random_crop: the crop seen through make_view (every other op
    # off) equals tf_random_crop with the same key.
    cfg = simclr_config.get_config("smoke").views
    cfg.flip_p, cfg.color_p, cfg.gray_p, cfg.blur_p = 0.0, 0.0, 0.0, 0.0
    cfg.mean, cfg.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    image = jax.random.uniform(jax.random.key(1), (28, 28, 3))
    key = jax.random.key(3)
    view = simclr.make_view(key, image, cfg)
    k_crop = jax.random.split(key, 6)[0]
    crop = simclr.augment.tf_random_crop(k_crop, image, cfg.crop_size, area=cfg.crop_scale, ratio=cfg.crop_ratio)
    np.testing.assert_allclose(view, np.clip(crop, 0, 1), atol=1e-6)
