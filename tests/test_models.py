"""Tests for common/models.py: parameter counts against the official models, and forward-pass
properties on tiny inputs (batch-norm statistics, mode switching, position interpolation, attention)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import models

REFERENCE = json.loads((pathlib.Path(__file__).parent / "reference" / "models.json").read_text())


# --- parameter counts (abstract models: no memory, no compute) ---------------------------------------


@pytest.mark.parametrize(
    "build, key, features",
    [
        (lambda: models.resnet18(stem="imagenet", rngs=nnx.Rngs(0)), "resnet18_no_fc", 512),
        (lambda: models.resnet50(stem="imagenet", rngs=nnx.Rngs(0)), "resnet50_no_fc", 2048),
        (lambda: models.resnet18(stem="cifar", rngs=nnx.Rngs(0)), "cifar_resnet18_solo_learn_no_fc", 512),
        (lambda: models.vit_small(16, rngs=nnx.Rngs(0)), "dino_vit_small_patch16_backbone", 384),
        (lambda: models.vit_base(16, rngs=nnx.Rngs(0)), "dino_vit_base_patch16_backbone", 768),
    ],
    ids=["resnet18", "resnet50", "resnet18_cifar", "vit_small16", "vit_base16"],
)
def test_param_count_matches_official(build, key, features):
    model = nnx.eval_shape(build)
    assert models.count_params(model) == REFERENCE[key]
    assert model.num_features == features


def test_count_params_excludes_batch_norm_statistics():
    model = nnx.eval_shape(lambda: models.resnet18(stem="imagenet", rngs=nnx.Rngs(0)))
    stats = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    assert stats == REFERENCE["resnet18_buffers_bn_running_stats"]
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    assert models.count_params(model) == total - stats


def test_vit_pos_embed_shape():
    model = nnx.eval_shape(lambda: models.vit_small(16, rngs=nnx.Rngs(0)))
    assert list(model.pos_embed.shape) == REFERENCE["dino_vit_small_patch16_pos_embed_shape"]


def _basic_stage_params(c_in, c):
    """One BasicBlock: two 3x3 convs, a 1x1 downsample conv when the width changes, BN gamma+beta."""
    downsample = c_in * c + 2 * c if c_in != c else 0
    return 9 * c_in * c + 9 * c * c + 2 * (2 * c) + downsample


def test_create_body():
    resnet_tiny_cifar = (
        9 * 3 * 16
        + 2 * 16
        + _basic_stage_params(16, 16)
        + _basic_stage_params(16, 32)
        + _basic_stage_params(32, 64)
        + _basic_stage_params(64, 128)
    )
    for name, cls, kw, features, params in [
        ("resnet_tiny", models.ResNet, dict(stem="cifar"), 128, resnet_tiny_cifar),
        # torchvision resnet34 (21,797,672) without its fc (512 * 1000 + 1000).
        ("resnet34", models.ResNet, {}, 512, 21_797_672 - 513_000),
        # DeiT-Tiny (5,717,416, the same architecture as DINO's vit_tiny) without its head.
        ("vit_tiny", models.VisionTransformer, {}, 192, 5_717_416 - 193_000),
    ]:
        body = nnx.eval_shape(lambda: models.create_body(name, rngs=nnx.Rngs(0), **kw))
        assert isinstance(body, cls) and body.num_features == features
        assert models.count_params(body) == params
    with pytest.raises(ValueError, match="resnet50"):
        models.create_body("resnet101", rngs=nnx.Rngs(0))


# --- ResNet -------------------------------------------------------------------------------------------


def _images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


@nnx.jit
def _forward(model, x):
    # Jitted: one compile per (mode, shape) instead of one per op; BatchNorm statistics updated
    # inside flow back to `model`.
    return model(x)


# Random initialisation compiles one small XLA program per kernel shape, which dominates the cost of
# these tests on CPU: build each model once and hand every test a fresh clone.
@pytest.fixture(scope="module")
def _resnet_tiny():
    return models.resnet_tiny(stem="cifar", bn_momentum=0.9, rngs=nnx.Rngs(0))


@pytest.fixture
def resnet(_resnet_tiny):
    return nnx.clone(_resnet_tiny)


def test_stems_downsample_as_torchvision(resnet):
    # The CIFAR stem keeps 32x32 (and 16x16); three stride-2 stages then give 16 -> 2.
    assert resnet.conv1(_images((1, 32, 32, 3))).shape == (1, 32, 32, 16)
    x = _images((2, 16, 16, 3))
    feature_map = nnx.jit(lambda m, x: m.forward_features(x))(resnet, x)
    assert feature_map.shape == (2, 2, 2, 128)
    np.testing.assert_allclose(_forward(resnet, x), feature_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # The ImageNet stem (7x7/2 conv, 3x3/2 max-pool) and three stride-2 stages: 64 -> 2.
    imagenet = nnx.eval_shape(lambda: models.resnet_tiny(stem="imagenet", rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m.forward_features(x), imagenet, _images((2, 64, 64, 3)))
    assert out.shape == (2, 2, 2, 128)
    # The CPU-sized 'small' stem (3x3/2 conv, no pool): 28 -> 14, then 14 -> 7 -> 4 -> 2.
    small = nnx.eval_shape(lambda: models.resnet_tiny(stem="small", rngs=nnx.Rngs(0)))
    assert nnx.eval_shape(lambda m, x: m.conv1(x), small, _images((2, 28, 28, 3))).shape == (2, 14, 14, 16)
    out = nnx.eval_shape(lambda m, x: m.forward_features(x), small, _images((2, 28, 28, 3)))
    assert out.shape == (2, 2, 2, 128)


def test_train_mode_updates_running_mean_by_momentum(resnet):
    x = _images((2, 16, 16, 3))
    _forward(resnet, x)
    # The stem BN's input, computed independently of the module: a 3x3 conv with padding 1.
    y = jax.lax.conv_general_dilated(
        x,
        resnet.conv1.kernel[...],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    # Running stats start at mean 0, var 1; NNX momentum 0.9 == PyTorch momentum 0.1.
    np.testing.assert_allclose(resnet.bn1.mean[...], 0.1 * y.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(resnet.bn1.var[...], 0.9 + 0.1 * y.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_eval_mode_uses_running_statistics(resnet):
    x = _images((2, 16, 16, 3))
    other = x.at[1].set(_images((16, 16, 3), seed=1))  # the same first image, another second one
    # Train mode normalises with batch statistics: a sample's feature depends on the rest of the batch.
    assert not np.allclose(_forward(resnet, x)[0], _forward(resnet, other)[0], atol=1e-4)
    resnet.eval()
    mean_before = np.asarray(resnet.bn1.mean[...])
    out = _forward(resnet, x)
    np.testing.assert_allclose(out[0], _forward(resnet, other)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_forward(resnet, x), out)
    np.testing.assert_array_equal(resnet.bn1.mean[...], mean_before)  # no update in eval mode
    resnet.train()
    _forward(resnet, x)
    assert not np.allclose(resnet.bn1.mean[...], mean_before)


def test_resnet_initialisation_as_torchvision(resnet):
    kernel = np.asarray(resnet.stages[3][0].conv2.kernel[...])  # [3, 3, 128, 128]
    # kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / (3 * 3 * 128)).
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 128)), rtol=0.02)
    np.testing.assert_allclose(kernel.mean(), 0.0, atol=1e-3)
    np.testing.assert_array_equal(resnet.stages[0][0].bn2.scale[...], np.ones(16))
    np.testing.assert_array_equal(resnet.stages[0][0].bn2.bias[...], np.zeros(16))
    zero = models.resnet_tiny(stem="cifar", zero_init_residual=True, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(zero.stages[2][0].bn2.scale[...], np.zeros(64))
    np.testing.assert_array_equal(zero.stages[2][0].bn1.scale[...], np.ones(64))


def test_bottleneck_zero_init_residual_is_identity_branch():
    block = models.Bottleneck(16, 16, 2, bn_momentum=0.9, zero_init_residual=True, rngs=nnx.Rngs(0))
    x = _images((2, 8, 8, 16))
    out = _forward(block, x)
    assert out.shape == (2, 4, 4, 64)  # stride on the 3x3 conv, expansion 4
    # With bn3's gamma at 0 the residual branch is silent: the block is relu(BN(downsample(x)))
    # (train mode both times, so the shortcut BN normalises with the same batch statistics).
    shortcut = block.downsample_bn(block.downsample_conv(x))
    np.testing.assert_allclose(out, jax.nn.relu(shortcut), atol=1e-5)


# --- Vision Transformer ---------------------------------------------------------------------------------


def _tiny_vit(**kw):
    return models.vit_tiny(8, img_size=32, depth=2, rngs=nnx.Rngs(0), **kw)


@pytest.fixture(scope="module")
def _vit():
    return _tiny_vit()


@pytest.fixture
def vit(_vit):
    return nnx.clone(_vit)


def test_vit_forward_native_and_interpolated(vit):
    x = _images((2, 32, 32, 3))
    out = _forward(vit, x)
    assert out.shape == (2, 192)
    # LayerNorm acts per token: a sample's feature does not depend on the rest of the batch.
    other = x.at[1].set(_images((32, 32, 3), seed=1))
    np.testing.assert_allclose(out[0], _forward(vit, other)[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[1], _forward(vit, other)[1], atol=1e-3)
    # The final LayerNorm (gamma 1, beta 0 at init) leaves each feature with mean 0 and variance 1.
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(-1), 1.0, rtol=1e-3)
    small = _forward(vit, _images((2, 16, 16, 3)))  # 2x2 patches: interpolated position embeddings
    assert small.shape == (2, 192) and np.isfinite(small).all()


def test_pos_interpolation_identity_and_constant(vit):
    pos = vit.pos_embed[...]
    np.testing.assert_array_equal(vit.interpolate_pos_encoding(4, 4), pos)
    # Bicubic weights sum to 1 with clamped borders: a constant grid stays constant at any size.
    vit.pos_embed[...] = jnp.full_like(pos, 0.5).at[:, 0].set(3.0)
    for h, w in [(2, 2), (7, 7), (3, 5)]:
        got = vit.interpolate_pos_encoding(h, w)
        assert got.shape == (1, 1 + h * w, 192)
        np.testing.assert_allclose(got[0, 0], 3.0)  # the class token's embedding is not resized
        np.testing.assert_allclose(got[0, 1:], 0.5, rtol=1e-6)


def test_bicubic_matrix_matches_pytorch_kernel():
    # Scale 2, align_corners=False: output 4 samples input (4 + 0.5) / 2 - 0.5 = 1.75, so inputs
    # 0..3 lie at distances 1.75, 0.75, 0.25, 1.25. Keys' kernel with a = -0.75 (PyTorch's bicubic)
    # at those distances:
    m = models._bicubic_matrix(8, 16, 2.0)
    np.testing.assert_allclose(m[4], [-0.03515625, 0.26171875, 0.87890625, -0.10546875, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    # Output 0 samples input -0.25: indices -2..1 clamp to 0, so input 0 takes three weights.
    np.testing.assert_allclose(m[0, :3], [-0.03515625 + 0.26171875 + 0.87890625, -0.10546875, 0.0], atol=1e-7)
    np.testing.assert_allclose(models._bicubic_matrix(5, 5, 1.0), np.eye(5), atol=1e-7)


def test_last_selfattention(vit):
    attention = nnx.jit(lambda m, x: m.get_last_selfattention(x))
    attn = attention(vit, _images((2, 32, 32, 3)))
    assert attn.shape == (2, 3, 17, 17)  # 3 heads, class token + 4x4 patches
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
    assert (attn >= 0).all()
    assert attention(vit, _images((1, 16, 16, 3))).shape == (1, 3, 5, 5)


def test_drop_path_needs_key_and_is_off_in_eval(vit):
    # The same weights as the fixture, with stochastic depth rising over the 2 blocks: 0, then 0.5.
    model = nnx.eval_shape(lambda: _tiny_vit(drop_path_rate=0.5))
    nnx.update(model, nnx.state(vit))
    assert [b.drop_path.rate for b in model.blocks] == [0.0, 0.5]
    forward = nnx.jit(lambda m, x, key: m(x, key=key))
    x = _images((2, 32, 32, 3))
    with pytest.raises(ValueError, match="key"):
        _forward(model, x)
    a = forward(model, x, jax.random.key(1))
    b = forward(model, x, jax.random.key(2))
    assert not np.allclose(a, b, atol=1e-3)  # different branches dropped
    # In eval mode the key is ignored: the output is the deterministic one of the fixture, whose
    # drop-path rate is 0 (a ViT has no other train/eval difference).
    model.eval()
    np.testing.assert_allclose(forward(model, x, jax.random.key(1)), _forward(vit, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.3])
def test_vit_blocks_scan_equals_a_loop_over_the_blocks(drop_path_rate):
    """The blocks run as one scan over their stacked parameters: the same bits as calling them one by
    one (with block i's drop-path key fold_in(key, i)), and the parameter tree keeps one entry per block."""
    model = models.vit_tiny(8, img_size=32, depth=3, drop_path_rate=drop_path_rate, rngs=nnx.Rngs(0))
    assert {k for k in nnx.state(model, nnx.Param)["blocks"]} == {0, 1, 2}
    x, key = _images((4, 32, 32, 3)), jax.random.key(3)

    @nnx.jit
    def looped(model, x, key):
        tokens = model._tokens(x)
        for i, block in enumerate(model.blocks):
            tokens, _ = block(tokens, jax.random.fold_in(key, i))
        return model.norm(tokens)[:, 0]

    got = nnx.jit(lambda m, x, k: m(x, k))(model, x, key)
    np.testing.assert_array_equal(got, looped(model, x, key))
    if drop_path_rate:  # the drop-path masks are drawn: another key, other outputs
        assert not np.allclose(got, nnx.jit(lambda m, x, k: m(x, k))(model, x, jax.random.key(4)))


def test_batch_norm_running_variance_conventions_and_exact_statistics():
    # Values with a large common offset: E[x^2] - E[x]^2 (nnx's fast variance) loses float32 precision.
    x = 1000.0 + jax.random.normal(jax.random.key(0), (6, 3, 3, 4))
    n = 6 * 3 * 3
    var = np.var(np.asarray(x, np.float64), axis=(0, 1, 2))
    for unbiased, factor in ((True, n / (n - 1)), (False, 1.0)):
        bn = models.BatchNorm(4, unbiased=unbiased, momentum=0.0, rngs=nnx.Rngs(0))
        y = bn(x)
        np.testing.assert_allclose(np.asarray(bn.var[...]), var * factor, rtol=2e-3)
        np.testing.assert_allclose(np.asarray(jnp.var(y, axis=(0, 1, 2))), var / (var + 1e-5), rtol=2e-3)


@pytest.mark.parametrize("padding", ["tf", "haiku"])
def test_same_padding_styles_shift_the_grid_as_tensorflow(padding):
    # An even input: TF's 'SAME' pads one pixel less at the top/left than PyTorch's symmetric padding.
    net = models.ResNet((1,), models.BasicBlock, width=4, stem="imagenet", padding=padding, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
    stem = nnx.relu(net.bn1(net.conv1(x)))
    pooled = nnx.max_pool(stem, (3, 3), strides=(2, 2), padding="SAME")
    ref = jax.lax.reduce_window(
        stem, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0))
    )
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(ref))
    torch_net = models.ResNet((1,), models.BasicBlock, width=4, stem="imagenet", rngs=nnx.Rngs(0))
    assert not np.allclose(np.asarray(net.forward_features(x)), np.asarray(torch_net.forward_features(x)))


@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
def test_bfloat16_bodies_keep_float32_parameters_and_stay_close(name):
    x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
    f32 = models.create_body(name, rngs=nnx.Rngs(0), stem="cifar", patch_size=8, depth=2)
    bf16 = models.create_body(name, rngs=nnx.Rngs(0), stem="cifar", patch_size=8, depth=2, dtype="bfloat16")
    assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16))} == {jnp.dtype(jnp.float32)}
    y32, y16 = f32(x), bf16(x)
    assert y16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(y32 - y16) / jnp.linalg.norm(y32))
    assert 0 < rel < 0.03, rel  # bfloat16 has 8 bits of mantissa: ~0.4% per op, a few % through a body


def test_step_flops_counts_every_vit_block():
    """The FLOPs that scripts/benchmark.py reports grow by the same amount per block (XLA's cost
    analysis alone counts the blocks' scan body once: the same count whatever the depth)."""

    def counted(depth):
        body = models.create_body("vit_tiny", patch_size=4, img_size=16, depth=depth, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(body)
        fn = lambda state, x: nnx.merge(graphdef, state)(x)
        x = jnp.zeros((2, 16, 16, 3))
        return models.step_flops(fn, jax.jit(fn).lower(state, x), state, x)

    two, three, four = counted(2), counted(3), counted(4)
    assert three - two > 0.2 * two
    np.testing.assert_allclose(four - three, three - two, rtol=1e-6)
    assert models.SCAN_BLOCKS  # restored for the timed programs
