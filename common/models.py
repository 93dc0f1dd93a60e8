"""Backbone bodies in Flax NNX: ResNet-18/34/50 and DINO's Vision Transformers.

Every body takes NHWC images and returns pooled features [B, num_features]; there is no classifier
head, because each method puts its own projector/predictor/prototypes on top.

* ResNet follows torchvision's v1.5 ResNet (stride on the 3x3 conv of a bottleneck), with an
  ImageNet stem (7x7/2 conv, 3x3/2 max-pool) or a CIFAR stem (3x3/1 conv, no max-pool) and
  torchvision's initialisation (`padding` selects TensorFlow's or Haiku's 'SAME' padding instead, for
  the TF and Haiku official code). Batch norm (`BatchNorm`) normalises over the batch axis: under
  `jax.jit` on a batch sharded over the device mesh, XLA reduces the statistics across devices, so
  this is global (synchronised) batch norm without extra code.
* VisionTransformer follows DINO's `vision_transformer.py` (facebookresearch/dino): patch-embedding
  conv, class token, learned position embeddings interpolated bicubically to the input size, pre-norm
  blocks, final LayerNorm; the feature is the class token. `get_last_selfattention` returns DINO's
  attention maps.

Mode switching is NNX's: `model.train()` / `model.eval()` set BatchNorm's `use_running_average` and
the drop-path `deterministic` flag. Do it outside jitted functions (each mode traces once).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# ---------------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------------

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu'), i.e. N(0, 2 / (k*k*C_out)).
# 'normal' (not 'truncated_normal') because torchvision draws from an untruncated normal.
_conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def to_f32(x):
    """x in float32 (from bfloat16 under mixed precision), or float64 when it is (the x64 checks): what
    heads hand to normalisations, logits, losses and buffers."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def compute_dtype(model_config):
    """The compute dtype of a config's `model` (its `dtype` field): None for float32 (or no field), else
    e.g. jnp.bfloat16 (mixed precision: float32 parameters, matmuls and convolutions in bfloat16)."""
    name = model_config.get("dtype") if hasattr(model_config, "get") else model_config
    return None if name in (None, "float32") else jnp.dtype(name)


def _conv(in_features, out_features, kernel_size, strides, padding, rngs, same=False, dtype=None):
    """A bias-free conv. By default PyTorch's explicit symmetric padding; `same=True` is TensorFlow's
    and Haiku's 'SAME' (for a strided conv on an even size it pads one pixel less at the top/left,
    which shifts the sampling grid by a pixel relative to torchvision)."""
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        (strides, strides),
        padding="SAME" if same else ((padding, padding), (padding, padding)),
        use_bias=False,
        kernel_init=_conv_init,
        dtype=dtype,  # the compute dtype; parameters stay float32
        rngs=rngs,
    )


def _assign(variable, value):
    """variable[...] = value, without NNX's sharding comparison.

    NNX's `variable[...] = value` compares the two shardings; on a tracer, asking for the sharding
    raises an error whose message is built by walking the whole jaxpr traced so far, so tracing
    became quadratic in the program's size: 80% of tracing BYOL's ResNet-50 step (437 batch-norm
    updates) went there. The same value is stored: `value` itself when its shape and dtype match,
    else cast into the old array's (as NNX's own fallback, `.at[...].set`).
    """
    old = variable.get_value()
    if value.shape != old.shape or value.dtype != old.dtype:
        value = old.at[...].set(value)
    variable.set_value(value)


# ViT blocks run as one lax.scan (VisionTransformer._run_blocks). step_flops turns it off to count a
# step's FLOPs: XLA's cost analysis counts a loop's body once, not once per block.
SCAN_BLOCKS = True


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm with exact float32 statistics and a choice of running-variance convention.

    * The batch variance is computed in two passes, mean((x - mean)^2), in float32 whatever the
      input dtype. nnx's default (`use_fast_variance=True`, E[x^2] - E[x]^2) loses float32
      precision: in a MoCo reference step it put the early layers' step-1 gradients ~10% off.
    * `unbiased=True` (PyTorch) updates the running variance with the unbiased batch variance,
      var * n / (n - 1) over the n reduced values; `unbiased=False` (TensorFlow/Keras, Haiku) with the
      biased one. Training-mode normalisation uses the biased variance in both.
    * NNX's momentum is the weight of the OLD running value: running = m * running + (1 - m) * batch,
      so m = 0.9 is PyTorch's momentum=0.1 and TensorFlow's decay 0.9.
    """

    def __init__(self, num_features, *, unbiased=True, **kwargs):
        super().__init__(num_features, use_fast_variance=False, **kwargs)
        self.unbiased = unbiased

    def __call__(self, x, use_running_average=None, *, mask=None):
        assert mask is None, "masked batch norm is not used in this project"
        use_running_average = self.use_running_average if use_running_average is None else use_running_average
        axes = tuple(range(x.ndim - 1))  # every axis but the feature axis
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            x32 = to_f32(x)
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            n = math.prod(x.shape[a] for a in axes)
            running_var = var * (n / max(n - 1, 1)) if self.unbiased else var
            m = self.momentum
            _assign(self.mean, jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean))
            _assign(self.var, jax.lax.stop_gradient(m * self.var[...] + (1 - m) * running_var))
        mul = jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            mul = mul * self.scale[...]
        y = (to_f32(x) - mean) * mul
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x.dtype if self.dtype is None else self.dtype)


def _batch_norm(num_features, momentum, rngs, zero_scale=False, unbiased=True):
    """The body's BatchNorm: gamma 1 (or 0 for a zero-initialised residual branch), beta 0, eps 1e-5."""
    return BatchNorm(
        num_features,
        unbiased=unbiased,
        momentum=momentum,
        epsilon=1e-5,
        scale_init=jax.nn.initializers.zeros if zero_scale else jax.nn.initializers.ones,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). Output channels = `features`."""

    expansion = 1

    def __init__(
        self,
        in_features,
        features,
        strides,
        *,
        bn_momentum,
        zero_init_residual,
        rngs,
        same=False,
        unbiased=True,
        dtype=None,
    ):
        bn = lambda n, zero=False: _batch_norm(n, bn_momentum, rngs, zero, unbiased)
        self.conv1 = _conv(in_features, features, 3, strides, 1, rngs, same, dtype)
        self.bn1 = bn(features)
        self.conv2 = _conv(features, features, 3, 1, 1, rngs, same, dtype)
        self.bn2 = bn(features, zero_init_residual)
        if strides != 1 or in_features != features:
            self.downsample_conv = _conv(in_features, features, 1, strides, 0, rngs, same, dtype)
            self.downsample_bn = bn(features)
        else:
            self.downsample_conv = None
            self.downsample_bn = None

    def __call__(self, x):  # [B, H, W, C_in] -> [B, H / s, W / s, features]
        shortcut = x
        if self.downsample_conv is not None:
            shortcut = self.downsample_bn(self.downsample_conv(x))
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50).

    The stride sits on the 3x3 conv (torchvision's "v1.5"), not on the first 1x1 conv as in the
    original paper: slightly more accurate, and what every SSL paper's ResNet-50 uses.
    """

    expansion = 4

    def __init__(
        self,
        in_features,
        features,
        strides,
        *,
        bn_momentum,
        zero_init_residual,
        rngs,
        same=False,
        unbiased=True,
        dtype=None,
    ):
        out_features = features * self.expansion
        bn = lambda n, zero=False: _batch_norm(n, bn_momentum, rngs, zero, unbiased)
        self.conv1 = _conv(in_features, features, 1, 1, 0, rngs, same, dtype)
        self.bn1 = bn(features)
        self.conv2 = _conv(features, features, 3, strides, 1, rngs, same, dtype)
        self.bn2 = bn(features)
        self.conv3 = _conv(features, out_features, 1, 1, 0, rngs, same, dtype)
        self.bn3 = bn(out_features, zero_init_residual)
        if strides != 1 or in_features != out_features:
            self.downsample_conv = _conv(in_features, out_features, 1, strides, 0, rngs, same, dtype)
            self.downsample_bn = bn(out_features)
        else:
            self.downsample_conv = None
            self.downsample_bn = None

    def __call__(self, x):  # [B, H, W, C_in] -> [B, H / s, W / s, 4 * features]
        shortcut = x
        if self.downsample_conv is not None:
            shortcut = self.downsample_bn(self.downsample_conv(x))
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
    """ResNet body: stem, four stages of widths width * (1, 2, 4, 8), global average pool.

    Args:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: `BasicBlock` or `Bottleneck`.
      width: channels of the stem and the first stage (64 in torchvision).
      stem: 'imagenet' (7x7/2 conv, BN, ReLU, 3x3/2 max-pool: 224 -> 56), 'cifar' (3x3/1 conv,
        BN, ReLU, no pool: 32 -> 32) or 'small' (3x3/2 conv, BN, ReLU, no pool: 28 -> 14), the
        CPU-sized stem of the default presets: a quarter of the CIFAR stem's cost on tiny images.
      bn_momentum: NNX convention, 0.9 == PyTorch's 0.1.
      in_channels: input channels.
      zero_init_residual: start each block's last BN gamma at 0, so every block starts as the
        identity (Goyal et al. 2017). torchvision's default is False; SimCLR's TF ResNet does it.
      padding: 'torch' (symmetric explicit padding everywhere: torchvision, and the convs of
        TensorFlow's `conv2d_fixed_padding` in SimCLR), 'tf' (SimCLR: those convs, but the stem
        max-pool 'SAME') or 'haiku' (BYOL: every conv and the max-pool 'SAME'). 'SAME' pads
        asymmetrically on even sizes (one pixel less at the top/left), so outputs differ.
      bn_unbiased: running variance with PyTorch's unbiased batch variance (True) or TensorFlow's
        and Haiku's biased one (False); see `BatchNorm`.
      dtype: the compute dtype of the convolutions (None = float32; jnp.bfloat16 for mixed precision).
        Parameters and batch-norm statistics stay float32; the pooled features are float32.
    Output: [B, num_features], num_features = 8 * width * block.expansion.
    """

    def __init__(
        self,
        stage_sizes,
        block,
        *,
        width=64,
        stem="imagenet",
        bn_momentum=0.9,
        in_channels=3,
        zero_init_residual=False,
        padding="torch",
        bn_unbiased=True,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if stem not in ("imagenet", "cifar", "small"):
            raise ValueError(f"stem must be 'imagenet', 'cifar' or 'small', got {stem!r}")
        if padding not in ("torch", "tf", "haiku"):
            raise ValueError(f"padding must be 'torch', 'tf' or 'haiku', got {padding!r}")
        same = padding == "haiku"
        self.max_pool = stem == "imagenet"
        self.pool_same = padding in ("tf", "haiku")
        if stem == "imagenet":
            self.conv1 = _conv(in_channels, width, 7, 2, 3, rngs, same, dtype)
        elif stem == "cifar":
            # Padding 1 keeps 32x32 (solo-learn pads by 2, giving 34x34; the parameters are the same).
            self.conv1 = _conv(in_channels, width, 3, 1, 1, rngs, same, dtype)
        else:
            self.conv1 = _conv(in_channels, width, 3, 2, 1, rngs, same, dtype)
        self.bn1 = _batch_norm(width, bn_momentum, rngs, unbiased=bn_unbiased)

        stages = []
        in_features = width
        for i, num_blocks in enumerate(stage_sizes):
            features = width * 2**i
            blocks = []
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    block(
                        in_features,
                        features,
                        strides,
                        bn_momentum=bn_momentum,
                        zero_init_residual=zero_init_residual,
                        rngs=rngs,
                        same=same,
                        unbiased=bn_unbiased,
                        dtype=dtype,
                    )
                )
                in_features = features * block.expansion
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.num_features = in_features

    def forward_features(self, x):
        """[B, H, W, C] images -> [B, H / 32, W / 32, num_features] (ImageNet stem; H / 8 for CIFAR)."""
        x = nnx.relu(self.bn1(self.conv1(x)))
        if self.max_pool:
            # reduce_window pads with -inf, like PyTorch's MaxPool2d(3, 2, padding=1).
            pad = "SAME" if self.pool_same else ((1, 1), (1, 1))
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=pad)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x

    def __call__(self, x):  # [B, H, W, C] -> [B, num_features]
        return jnp.mean(to_f32(self.forward_features(x)), axis=(1, 2))


def resnet18(*, stem, rngs: nnx.Rngs, **kw):
    return ResNet((2, 2, 2, 2), BasicBlock, stem=stem, rngs=rngs, **kw)


def resnet34(*, stem, rngs: nnx.Rngs, **kw):
    return ResNet((3, 4, 6, 3), BasicBlock, stem=stem, rngs=rngs, **kw)


def resnet50(*, stem, rngs: nnx.Rngs, **kw):
    return ResNet((3, 4, 6, 3), Bottleneck, stem=stem, rngs=rngs, **kw)


def resnet_tiny(*, stem, rngs: nnx.Rngs, width=16, stage_sizes=(1, 1, 1, 1), **kw):
    """A CPU-sized ResNet: one BasicBlock per stage, widths 16-32-64-128, 128 features."""
    return ResNet(stage_sizes, BasicBlock, width=width, stem=stem, rngs=rngs, **kw)


# ---------------------------------------------------------------------------------------------------
# Vision Transformer (DINO)
# ---------------------------------------------------------------------------------------------------

# DINO's trunc_normal_(std=.02) truncates at the absolute values +-2, i.e. at +-100 standard
# deviations: in effect an untruncated N(0, 0.02^2). The bounds below say the same in units of std.
_trunc_normal = jax.nn.initializers.truncated_normal(0.02, lower=-2 / 0.02, upper=2 / 0.02)


def _linear(in_features, out_features, rngs, dtype=None):
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=_trunc_normal,
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        rngs=rngs,
    )


class DropPath(nnx.Module):
    """Stochastic depth: drop a whole residual branch per sample with probability `rate`.

    Kept samples are scaled by 1 / (1 - rate), so the expectation is unchanged. The key is explicit;
    `deterministic` is switched by `model.train()` / `model.eval()`.
    """

    def __init__(self, rate):
        self.rate = rate
        self.deterministic = False

    def __call__(self, x, key, keep=None):
        """x: [B, ...]. `keep`: 1 - rate as a traced float32 scalar, replacing this module's rate (the
        blocks' scan passes each block's own); a keep of 1 draws the mask and returns x unchanged."""
        if self.deterministic or (keep is None and self.rate == 0.0):
            return x
        if key is None:
            raise ValueError("drop_path_rate > 0 in train mode needs a `key`")
        mask = jax.random.bernoulli(key, 1.0 - self.rate if keep is None else keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        if keep is None:
            return x * mask.astype(x.dtype) / (1.0 - self.rate)
        # XLA turns the division by a constant above into a product with its float32 reciprocal; a
        # traced keep gets the same product, so that both give the same bits.
        return x * mask.astype(x.dtype) * (1.0 / keep)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (with bias), as DINO."""

    def __init__(self, dim, num_heads, *, rngs: nnx.Rngs, dtype=None):
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = _linear(dim, 3 * dim, rngs, dtype)
        self.proj = _linear(dim, dim, rngs, dtype)

    def __call__(self, x):
        """x: [B, N, D] -> (output [B, N, D], attention [B, heads, N, N])."""
        b, n, d = x.shape
        # The fused output is laid out (3, heads, head_dim), as PyTorch's reshape(B, N, 3, h, d/h),
        # so DINO's qkv weights map over with a transpose only ([out, in] -> [in, out]).
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
        logits = to_f32(jnp.einsum("bqhc,bkhc->bhqk", q, k)) * self.scale
        attn = jax.nn.softmax(logits, axis=-1)  # float32 whatever the compute dtype
        out = jnp.einsum("bhqk,bkhc->bqhc", attn.astype(v.dtype), v).reshape(b, n, d)
        return self.proj(out), attn


class Block(nnx.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio, drop_path_rate, *, rngs: nnx.Rngs, dtype=None):
        # LayerNorms in float32 (their output dtype follows the float32 residual stream).
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        hidden = int(dim * mlp_ratio)
        self.fc1 = _linear(dim, hidden, rngs, dtype)
        self.fc2 = _linear(hidden, dim, rngs, dtype)
        self.drop_path = DropPath(drop_path_rate)

    def __call__(self, x, key=None, keep=None):
        """x: [B, N, D] -> (x [B, N, D], attention [B, heads, N, N]). `keep`: see DropPath."""
        key_attn, key_mlp = jax.random.split(key) if key is not None else (None, None)
        y, attn = self.attn(self.norm1(x))
        x = x + self.drop_path(y.astype(x.dtype), key_attn, keep)  # the residual stream stays float32
        # nn.GELU in PyTorch is the exact (erf) form, not the tanh approximation.
        y = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
        return x + self.drop_path(y.astype(x.dtype), key_mlp, keep), attn


def _bicubic_matrix(in_size, out_size, scale):
    """[out_size, in_size] matrix of PyTorch's bicubic resampling along one axis.

    Matches `F.interpolate(mode='bicubic', align_corners=False, scale_factor=scale)`: output pixel i
    samples the input at (i + 0.5) / scale - 0.5 with Keys' cubic kernel, a = -0.75 (jax.image.resize
    uses a = -0.5 and antialiases when shrinking, so it would not reproduce DINO), and indices clamped
    at the borders. Built in numpy at trace time: the sizes are static.
    """
    a = -0.75
    src = (np.arange(out_size) + 0.5) / scale - 0.5
    left = np.floor(src).astype(np.int64)
    t = src - left

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)  # [out, 4]
    index = np.clip(left[:, None] + np.arange(-1, 3), 0, in_size - 1)  # [out, 4]
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), index.ravel()), weights.ravel())
    return matrix.astype(np.float32)


class VisionTransformer(nnx.Module):
    """DINO's ViT body. [B, H, W, C] images -> class-token feature [B, embed_dim].

    Args:
      patch_size: side of the square patches (16 or 8).
      embed_dim, depth, num_heads, mlp_ratio: the transformer's size.
      img_size: the size the position embeddings are learned for ((img_size / patch)^2 + 1 of them);
        other input sizes interpolate them (`interpolate_pos_encoding`).
      drop_path_rate: stochastic depth, rising linearly over the blocks from 0 to this value (DINO
        uses 0.1 for ViT-S). When > 0, a train-mode call needs `key`.
      in_channels: input channels.
      dtype: compute dtype of the patch embedding and the blocks' matmuls (None = float32;
        jnp.bfloat16 for mixed precision); parameters, LayerNorms, softmaxes and the residual stream
        stay float32.
    """

    def __init__(
        self,
        *,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio=4,
        img_size=224,
        drop_path_rate=0.0,
        in_channels=3,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.patch_size = patch_size
        self.num_features = embed_dim
        # PyTorch's default Conv2d init (DINO leaves the patch conv alone): weight and bias both
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling(1/3, fan_in, uniform) is that bound.
        bound = 1.0 / math.sqrt(in_channels * patch_size * patch_size)
        self.patch_embed = nnx.Conv(
            in_channels,
            embed_dim,
            (patch_size, patch_size),
            (patch_size, patch_size),
            padding="VALID",
            kernel_init=jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            bias_init=lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
            dtype=dtype,
            rngs=rngs,
        )
        self.grid_size = img_size // patch_size
        self.cls_token = nnx.Param(_trunc_normal(rngs.params(), (1, 1, embed_dim)))
        self.pos_embed = nnx.Param(_trunc_normal(rngs.params(), (1, 1 + self.grid_size**2, embed_dim)))
        rates = np.linspace(0.0, drop_path_rate, depth)
        self.blocks = nnx.List(
            [Block(embed_dim, num_heads, mlp_ratio, float(rate), rngs=rngs, dtype=dtype) for rate in rates]
        )
        self.norm = nnx.LayerNorm(embed_dim, epsilon=1e-6, rngs=rngs)

    def interpolate_pos_encoding(self, grid_h, grid_w):
        """Position embeddings for a grid_h x grid_w patch grid: [1, 1 + grid_h * grid_w, D].

        Identity at the native grid; otherwise the patch embeddings, seen as a
        [grid, grid, D] image, are resized bicubically as in DINO. DINO adds 0.1 to the target size
        before forming the scale factor (to avoid a floating-point floor to one patch less); the
        factor then enters the sampling positions, so it is kept here to reproduce DINO exactly.
        """
        pos = self.pos_embed[...]
        n = self.grid_size
        if (grid_h, grid_w) == (n, n):
            return pos
        grid = pos[0, 1:].reshape(n, n, -1)
        rows = _bicubic_matrix(n, grid_h, (grid_h + 0.1) / n)  # [grid_h, n]
        cols = _bicubic_matrix(n, grid_w, (grid_w + 0.1) / n)  # [grid_w, n]
        grid = jnp.einsum("hi,wj,ijd->hwd", rows, cols, grid, precision=jax.lax.Precision.HIGHEST)
        return jnp.concatenate([pos[:, :1], grid.reshape(1, grid_h * grid_w, -1)], axis=1)

    def _tokens(self, x):
        """[B, H, W, C] -> class token + patch tokens with position embeddings [B, 1 + N, D]."""
        x = to_f32(self.patch_embed(x))  # [B, H / p, W / p, D]
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)  # row-major, as PyTorch's flatten(2).transpose(1, 2)
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d))
        return jnp.concatenate([cls, x], axis=1) + self.interpolate_pos_encoding(gh, gw)

    def _run_blocks(self, x, key):
        """The blocks in order on tokens x [B, N, D]; block i's drop-path key is fold_in(key, i).

        One `jax.lax.scan` over the blocks, whose parameters are stacked for the call: XLA then
        compiles one block instead of `depth` copies of it (and of its gradient), which is what made
        DINO's ViT-S/16 step slow to compile. The parameter tree stays one module per block (the
        checkpoints' and common/convert.py's layout); the outputs are the same bits as a Python loop
        over the blocks. Each block's drop-path rate enters the scan as a traced keep probability.
        """
        blocks = list(self.blocks)
        graphdef, _ = nnx.split(blocks[0])
        states = [nnx.state(block) for block in blocks]
        rates = [block.drop_path.rate for block in blocks]
        deterministic = {block.drop_path.deterministic for block in blocks}
        same = len(deterministic) == 1 and all(jax.tree.structure(s) == jax.tree.structure(states[0]) for s in states)
        if len(blocks) < 2 or not same or not SCAN_BLOCKS:  # not a stack of identical blocks: a plain loop
            for i, block in enumerate(blocks):
                x, _ = block(x, None if key is None else jax.random.fold_in(key, i))
            return x
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
        # Rates only matter in train mode with some rate > 0 (otherwise drop-path is the identity).
        drops = not deterministic.pop() and any(rate != 0.0 for rate in rates)
        keeps = jnp.asarray(np.float32([1.0 - rate for rate in rates])) if drops else None

        def body(x, inputs):
            state, i, keep = inputs
            block_key = None if key is None else jax.random.fold_in(key, i)
            x, _ = nnx.merge(graphdef, state)(x, block_key, keep)
            return x, None

        return jax.lax.scan(body, x, (stacked, jnp.arange(len(blocks)), keeps))[0]

    def __call__(self, x, key=None):
        """x: [B, H, W, C] -> [B, embed_dim]. `key` drives drop-path (train mode, rate > 0 only)."""
        return self.norm(self._run_blocks(self._tokens(x), key))[:, 0]

    def get_last_selfattention(self, x):
        """x: [B, H, W, C] -> softmax attention of the last block [B, heads, 1 + N, 1 + N]."""
        x = self._tokens(x)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        _, attn = self.blocks[-1].attn(self.blocks[-1].norm1(x))
        return attn


def vit_tiny(patch_size=16, *, depth=12, rngs: nnx.Rngs, **kw):
    return VisionTransformer(patch_size=patch_size, embed_dim=192, depth=depth, num_heads=3, rngs=rngs, **kw)


def vit_small(patch_size=16, *, depth=12, rngs: nnx.Rngs, **kw):
    return VisionTransformer(patch_size=patch_size, embed_dim=384, depth=depth, num_heads=6, rngs=rngs, **kw)


def vit_base(patch_size=16, *, depth=12, rngs: nnx.Rngs, **kw):
    return VisionTransformer(patch_size=patch_size, embed_dim=768, depth=depth, num_heads=12, rngs=rngs, **kw)


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------

BODIES = ("resnet_tiny", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base")


def create_body(
    name,
    *,
    rngs: nnx.Rngs,
    stem="imagenet",
    patch_size=16,
    img_size=224,
    bn_momentum=0.9,
    depth=12,
    drop_path_rate=0.0,
    dtype=None,
    **resnet_options,
):
    """The body named in a config. ResNets use `stem`, `bn_momentum` and any `ResNet` option in
    `resnet_options` (zero_init_residual, padding, bn_unbiased; width and stage_sizes for
    resnet_tiny); ViTs `patch_size`, `img_size` (the size their position embeddings are learned for:
    DINO always builds them for 224, whatever the crop size), `depth` (number of blocks) and
    `drop_path_rate` (stochastic depth, e.g. DINO's student). `dtype`: the compute dtype (None or
    'float32'; 'bfloat16' = mixed precision with float32 parameters and statistics)."""
    dtype = compute_dtype(dtype)
    resnets = {"resnet_tiny": resnet_tiny, "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
    vits = {"vit_tiny": vit_tiny, "vit_small": vit_small, "vit_base": vit_base}
    if name in resnets:
        return resnets[name](stem=stem, bn_momentum=bn_momentum, dtype=dtype, rngs=rngs, **resnet_options)
    if name in vits:
        kw = dict(depth=depth, img_size=img_size, drop_path_rate=drop_path_rate, dtype=dtype)
        return vits[name](patch_size, rngs=rngs, **kw)
    raise ValueError(f"unknown body {name!r}; choose one of {', '.join(BODIES)}")


def grouped_forward(module, x, groups, *args):
    """module(x, *args) with batch-norm statistics per group of B / groups contiguous rows (ghost BN).

    Each group is normalised as if it were alone on its own GPU: the official per-GPU (or per-group
    SyncBN) batch norm, whatever the device count here. The running statistics become the mean of the
    groups' updates (PyTorch's DDP would keep rank 0's; the mean is the lower-variance estimate and
    only matters for evaluation). groups == 1 is one plain call. x: [B, ...] -> module's output
    with the groups concatenated back in order. Under jit only (the groups are vmapped).
    """
    if groups == 1:
        return module(x, *args)
    graphdef, state = nnx.split(module)

    def forward(state, x):  # one group: [B / groups, ...]
        module = nnx.merge(graphdef, state)
        return module(x, *args), nnx.state(module, nnx.BatchStat)

    out, stats = jax.vmap(forward, in_axes=(None, 0))(state, x.reshape(groups, -1, *x.shape[1:]))
    nnx.update(module, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats))
    return jax.tree.map(lambda o: o.reshape(x.shape[0], *o.shape[2:]), out)


def count_params(module):
    """Number of trainable parameters (nnx.Param elements; BatchNorm running statistics excluded).

    Works on abstract modules from `nnx.eval_shape` too (it reads shapes only).
    """
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


# --------------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------------


def flops_of(stage):
    """XLA's cost analysis 'flops' of a lowered or compiled computation (0.0 where it has none)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def step_flops(fn, lowered, *args):
    """FLOPs of `fn(*args)` from its lowering `lowered` (XLA's cost analysis), with every ViT block
    counted: the analysis counts a loop's body once, so where the program has a loop, `fn` is traced
    again with the blocks unrolled (SCAN_BLOCKS False) for the count."""
    global SCAN_BLOCKS
    if "stablehlo.while" not in lowered.as_text():
        return flops_of(lowered)
    SCAN_BLOCKS = False
    try:
        return flops_of(jax.jit(lambda *a: fn(*a)).lower(*args))  # a new function: traced anew
    finally:
        SCAN_BLOCKS = True
