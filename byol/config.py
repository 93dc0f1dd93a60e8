"""BYOL config. Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020 (arXiv:2006.07733); official code deepmind/deepmind-research byol/.

    python byol/train.py --config byol/config.py                 # embedded Fashion-MNIST, 2 CPU cores
    python byol/train.py --config byol/config.py:smoke           # seconds; used by the tests
    python byol/train.py --config byol/config.py:cifar10         # CIFAR-10 (accelerator)
    python byol/train.py --config byol/config.py:imagenet        # paper's ImageNet settings (accelerator)

Default preset (measured on this project's 2-core CPU machine, see README's benchmark table): a tiny
ResNet for 2 epochs of Fashion-MNIST; the kNN monitor on the test split is printed and written to
results.json beside the kNN accuracy of the same body at initialisation.

`:imagenet` is the official command: deepmind-research byol (d8df415) `python -m byol.main_loop
--experiment_mode=pretrain --worker_mode=train --pretrain_epochs=1000` (batch 4096 by default), i.e.
configs/byol.get_config(1000, 4096): ResNet-50, LARS base lr 0.2 x B/256, 10 warmup epochs, weight
decay 1.5e-6, eta 1e-3, momentum 0.9, base tau 0.996, projector/predictor 4096-256, BN decay 0.9.
Published for exactly that: 74.3% linear top-1 (paper Table 1; the code's README: 74.0-74.5%). The
official 300-epoch preset (lr 0.3, wd 1e-6, tau 0.99) is the paper's 300-epoch ablation baseline, 72.5% (Sec. 5).
The network is the official Haiku one: 'SAME' padding on every conv and the max-pool
(model.padding='haiku'), the last batch-norm scale of every bottleneck initialised to 0 (Haiku
BlockV1, model.zero_init_residual; the README notes the paper's numbers used gamma 1 there and saw no
difference for ResNet-50 1x), Haiku's initialisers (model.init='haiku': every kernel a normal of std
1/sqrt(fan_in) cut at 2 std), the biased running variance, and a target drawn with its own key
(method.target_init='independent'). Remaining departures in every preset: no online linear
classifier (the kNN monitor replaces it; it never reaches the body); batch-norm running statistics kept as
NNX's EMA from mean 0 / var 1 instead of Haiku's zero-debiased average (the same numbers once
0.9^(2 x steps) is negligible: below 3e-5 after 50 steps; training-mode outputs never use them); and the
crops are sampled on device with torchvision's sampler (official: one tf draw clamped to the image,
bicubic resize on the host).

`:cifar10` has no official counterpart: the official 300-epoch preset (lr 0.3, wd 1e-6, tau 0.99, 10
warmup epochs) with ResNet-18 (CIFAR stem, Haiku padding), batch 512 and 32 px crops.

Deliberate deviations in the default preset only: a tiny body, small heads and 2 epochs so it runs in
minutes on a CPU; crop scale (0.4, 1) because 28x28 images lose the object below that; saturation and
hue jitter off (on gray images they are the identity, and skipping them saves time); base_ema 0.97 (the
official value for 40 epochs) and base lr 2.0 for a 2-epoch run: with base_ema 0.99 and lr 1.0 the full
default run reached kNN top-1 78.83% against 78.25% for the random body (the loss fell only in the
second half, after the rate had decayed); with 0.97 and 2.0 it reached 81.97% (both measured on this
project's 2-core CPU, 4 minutes each); PyTorch-style padding and a target copied from the online
network, torchvision/NNX initialisers (model.padding='torch', method.target_init='copy',
model.init='torch': the settings of that measurement).

Precision: `:imagenet` and `:cifar10` set model.dtype = 'bfloat16', the bodies' and heads' convolutions
and matmuls in bfloat16 with float32 parameters, optimizer state, batch-norm statistics, normalisations,
softmaxes, losses and buffers (the default and `:smoke` presets stay float32). The official code has no
reduced-precision cast (deepmind-research byol: no bfloat16 anywhere; float32 parameters and
activations, whose convolutions XLA's default TPU precision computes with bfloat16 multiplies), so
bfloat16 here is a departure chosen for accelerator speed. bfloat16 rather than fp16 because it has
float32's exponent range: no loss scaling (GradScaler) is needed.
"""

import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "smoke", "cifar10", "imagenet"):
        raise ValueError(f"Unknown preset {preset!r}: use one of default, smoke, cifar10, imagenet.")
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data: any TFDS name, or an image folder (data.folder). Images are resized on the host to
    # image_size (0 = native size); the random crops are taken on device.
    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist_local"  # embedded default: Fashion-MNIST from the Debian package
    c.data.folder = ""  # an image folder: root/<split>/<class>/* or a flat folder of images
    c.data.data_dir = ""  # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)
    c.data.image_size = 0  # host-side size; 0 keeps 28x28
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.batch_size = 256  # global batch, over all devices (paper: 4096)
    c.data.fit = "whole"  # host fit: the whole image, aspect kept, in a canvas with its extent; or 'centre'
    c.data.workers = 8  # host decode threads per data set (data.py; e.g. 16 on an accelerator host)

    # Views (Sec. 3.3, Table 6): the same crop/flip/colour recipe for both views, but asymmetric blur
    # and solarisation; official (TensorFlow-semantics) colour ops.
    c.views = ml_collections.ConfigDict()
    c.views.crop_size = 28  # paper: 224
    c.views.crop_scale = (0.4, 1.0)  # paper: (0.08, 1.0)
    c.views.crop_ratio = (3 / 4, 4 / 3)
    c.views.flip_p = 0.5
    c.views.color_jitter = (0.4, 0.4, 0.0, 0.0)  # brightness, contrast, saturation, hue; paper: (0.4, 0.4, 0.2, 0.1)
    c.views.color_p = 0.8
    c.views.gray_p = 0.2
    c.views.blur_p = (1.0, 0.1)  # (view 1, view 2); paper: (1.0, 0.1)
    c.views.solarize_p = (0.0, 0.2)  # (view 1, view 2); paper: (0.0, 0.2)
    c.views.mean = (0.2860, 0.2860, 0.2860)  # per-channel normalisation of the data set
    c.views.std = (0.3530, 0.3530, 0.3530)

    # Model: body f, projector g and predictor q, both MLPs Linear-BN-ReLU-Linear (App. A).
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet_tiny"  # paper: resnet50
    c.model.stem = "small"  # 'imagenet' (7x7/2 + max-pool), 'cifar' (3x3/1), 'small' (3x3/2)
    c.model.bn_momentum = 0.9  # NNX convention: running = m * running + (1 - m) * batch; official decay 0.9
    c.model.padding = "torch"  # official (Haiku ResNet): 'haiku', TF 'SAME' on every conv and the max-pool
    c.model.zero_init_residual = False  # official code: True for bottlenecks (Haiku BlockV1's batchnorm_2)
    c.model.init = (
        "torch"  # kernels: torchvision/NNX initialisers, or 'haiku' (official: N(0, 1/fan_in) cut at 2 sigma)
    )
    c.model.proj_hidden_dim = 256  # paper: 4096
    c.model.proj_dim = 64  # paper: 256
    c.model.pred_hidden_dim = 256  # paper: 4096
    # Compute dtype of the body and heads: 'bfloat16' is mixed precision (float32 parameters, optimizer
    # state, batch-norm statistics and losses). float32 on this 2-core CPU: bfloat16 ran 0.97x (no gain).
    c.model.dtype = "float32"

    # Method: target EMA, tau = 1 - (1 - base_ema) (cos(pi k / K) + 1) / 2 (Sec. 3.2).
    c.method = ml_collections.ConfigDict()
    c.method.base_ema = 0.97  # paper: 0.996 (1000 epochs); official: 0.99 (100-300), 0.97 (40)
    c.method.target_init = "copy"  # xi at step 0: 'copy' of theta, or 'independent' (official: its own rng)

    # Optimiser: LARS, lr = base lr x B / 256, linear warmup then cosine decay; biases and norms skip
    # decay and adaptation (App. C.1).
    c.optim = ml_collections.ConfigDict()
    c.optim.epochs = 2.0  # paper: 1000 (official presets 40, 100, 300, 1000)
    c.optim.warmup_epochs = 0.2  # paper: 10
    c.optim.lr = 2.0  # base rate (x B / 256); paper: 0.2 (1000 epochs); official: 0.3 (300), 0.45 (40-100)
    c.optim.weight_decay = 1.5e-6  # paper: 1.5e-6 (1000 epochs); official 1e-6 for shorter runs
    c.optim.momentum = 0.9
    c.optim.trust_coefficient = 0.001  # LARS eta

    # Evaluation: weighted kNN on frozen features (k=20, T=0.07 as DINO).
    c.eval = ml_collections.ConfigDict()
    c.eval.knn_every_steps = 0  # 0 = only at the start and the end
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.knn_train_examples = 0  # 0 = all; a positive number uses the first N (faster monitor)
    c.eval.knn_test_examples = 0
    c.eval.batch_size = 1000
    # The evaluation view (kNN monitor, common.evaluate): Resize(image_size / crop_fraction) and
    # CenterCrop(image_size) ('torch'), or SimCLR's centre crop + bicubic resize ('tf'); image_size 0 =
    # the whole canvas the host delivers (the default data's 28 px images).
    c.eval.image_size = 0
    c.eval.crop_fraction = 1.0
    c.eval.crop_style = "tf"

    # Checkpoints and logging.
    c.checkpoint_every_steps = 200
    c.log_every_steps = 50

    if preset == "smoke":
        c.data.batch_size = 16
        c.views.crop_size = 16
        c.model.proj_hidden_dim = 16
        c.model.proj_dim = 8
        c.model.pred_hidden_dim = 16
        c.optim.epochs = 4 * 16 / 60000  # 4 steps
        c.optim.warmup_epochs = 16 / 60000
        c.eval.knn_train_examples = 200
        c.eval.knn_test_examples = 100
        c.eval.batch_size = 100
        c.checkpoint_every_steps = 2
        c.log_every_steps = 1
    elif preset == "cifar10":  # the paper's recipe on CIFAR-10: ResNet-18 with the CIFAR stem
        c.data.name = "cifar10"
        c.data.batch_size = 512
        c.views.crop_size = 32
        c.views.crop_scale = (0.08, 1.0)
        c.views.color_jitter = (0.4, 0.4, 0.2, 0.1)
        c.views.mean = (0.4914, 0.4822, 0.4465)
        c.views.std = (0.2470, 0.2435, 0.2616)
        c.model.name = "resnet18"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "cifar"
        c.model.padding = "haiku"
        c.model.init = "haiku"
        c.model.proj_hidden_dim = 4096
        c.model.proj_dim = 256
        c.model.pred_hidden_dim = 4096
        c.method.base_ema = 0.99
        c.method.target_init = "independent"
        c.optim.epochs = 300.0
        c.optim.warmup_epochs = 10.0
        c.optim.lr = 0.3
        c.optim.weight_decay = 1e-6
        c.eval.knn_every_steps = 5000
        c.checkpoint_every_steps = 2000
    elif preset == "imagenet":  # the official get_config(1000, 4096): ResNet-50, batch 4096, 1000 epochs
        c.data.name = "imagenet2012"
        c.data.image_size = 512  # whole image, longer side <= 512: most ImageNet photos (500x375) stay native
        c.eval.image_size = (
            224  # BYOL's eval preprocessing: a centre crop of 224 / (224 + 32) of the shorter side, bicubic (TF style)
        )
        c.eval.crop_fraction = 0.875
        c.data.eval_split = "validation"
        c.data.batch_size = 4096
        c.views.crop_size = 224
        c.views.crop_scale = (0.08, 1.0)
        c.views.color_jitter = (0.4, 0.4, 0.2, 0.1)
        c.views.mean = (0.485, 0.456, 0.406)
        c.views.std = (0.229, 0.224, 0.225)
        c.model.name = "resnet50"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "imagenet"
        c.model.padding = "haiku"
        c.model.init = "haiku"
        c.model.zero_init_residual = True
        c.model.proj_hidden_dim = 4096
        c.model.proj_dim = 256
        c.model.pred_hidden_dim = 4096
        c.method.base_ema = 0.996
        c.method.target_init = "independent"
        c.optim.epochs = 1000.0
        c.optim.warmup_epochs = 10.0
        c.optim.lr = 0.2
        c.optim.weight_decay = 1.5e-6
        c.eval.knn_every_steps = 10000
        c.eval.knn_train_examples = 100000
        c.checkpoint_every_steps = 2500
        c.log_every_steps = 100
    return c
