"""MoCo v2 config. He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722); Chen, Fan, Girshick, He, "Improved Baselines with Momentum
Contrastive Learning", 2020 (arXiv:2003.04297).

    python moco/train.py --config moco/config.py                 # embedded Fashion-MNIST, 2 CPU cores
    python moco/train.py --config moco/config.py:smoke           # seconds; used by the tests
    python moco/train.py --config moco/config.py:cifar10         # the official CIFAR-10 demo (accelerator)
    python moco/train.py --config moco/config.py:imagenet        # MoCo v2, 200 epochs: 67.5 published (accelerator)
    python moco/train.py --config moco/config.py:imagenet_v1     # MoCo v1, 200 epochs: 60.6 published (accelerator)

v1 and v2 differ in four fields, named after the official flags: model.mlp (v2's MLP head),
views.aug_plus (v2's augmentations), optim.cos (v2's cosine schedule) and method.temperature (0.2 / 0.07).

Default preset (measured on this project's 2-core CPU machine, see README's benchmark table): a tiny
ResNet for 2 epochs of Fashion-MNIST; the kNN monitor on the test split is printed and written to
results.json beside the kNN accuracy of the same body at initialisation.

The paper presets (:imagenet, :imagenet_v1, :cifar10) are the official commands, field by field
(tests/test_presets.py checks them against the official values): the learning rate as given (no B / 256
scaling) and a cosine of the integer epoch (optim.lr_schedule='per_epoch', official adjust_learning_rate).
Deliberate deviations, everywhere: shuffling BN is ghost batch norm over method.bn_groups groups (see
moco/train.py; the official 8 GPUs' per-GPU batch norm, or the demo's SplitBatchNorm), and the blur
kernel is ~10% of the side (PIL's blur has a radius sigma). The CIFAR-10 demo counts its epochs from 1
(its first epoch already decays, its last has rate 0); here from 0, as main_moco.py. In the default
preset only: a tiny body and 2 epochs so it runs in minutes on a CPU; crop scale (0.4, 1) because 28x28
images lose the object below that; a queue of 4096 keys and momentum 0.99 (the official CIFAR-10 demo's
values: with 0.999 the key encoder would barely move in a few hundred steps); learning rate 0.06 at batch
256, decayed every step (optim.lr_schedule='per_step': in 2 epochs a per-epoch cosine would be two flat
steps).

Precision: `:imagenet` and `:cifar10` set model.dtype = 'bfloat16', the bodies' and heads' convolutions
and matmuls in bfloat16 with float32 parameters, optimizer state, batch-norm statistics, normalisations,
softmaxes, losses and buffers (the default and `:smoke` presets stay float32). The official code trains
in float32 (main_moco.py has no mixed precision), so bfloat16 here is a departure chosen for accelerator
speed. bfloat16 rather than fp16 because it has float32's exponent range: no loss scaling (GradScaler)
is needed.
"""

import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "smoke", "cifar10", "imagenet", "imagenet_v1"):
        raise ValueError(f"Unknown preset {preset!r}: use one of default, smoke, cifar10, imagenet, imagenet_v1.")
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
    c.data.batch_size = 256  # global batch, over all devices (paper: 256 on 8 GPUs)
    c.data.fit = "whole"  # host fit: the whole image, aspect kept, in a canvas with its extent; or 'centre'
    c.data.workers = 8  # host decode threads per data set (data.py; e.g. 16 on an accelerator host)

    # Views (main_moco.py, torchvision semantics). v2 (aug_plus): crop, colour jitter with probability
    # color_p, grayscale, blur, flip. v1: crop, grayscale, colour jitter on every image, flip.
    c.views = ml_collections.ConfigDict()
    c.views.aug_plus = True  # paper: True for v2 (--aug-plus), False for v1
    c.views.crop_size = 28  # paper: 224
    c.views.crop_scale = (0.4, 1.0)  # paper: (0.2, 1.0)
    c.views.crop_ratio = (3 / 4, 4 / 3)
    c.views.color_jitter = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue; v1: hue 0.4
    c.views.color_p = 0.8  # v2 only (v1 jitters every image)
    c.views.gray_p = 0.2
    c.views.blur_p = 0.5  # v2 only
    c.views.blur_sigma = (0.1, 2.0)  # paper: (0.1, 2.0), v2 only
    c.views.flip_p = 0.5
    c.views.mean = (0.2860, 0.2860, 0.2860)  # per-channel normalisation of the data set
    c.views.std = (0.3530, 0.3530, 0.3530)

    # Model: the encoder is the body and the official fc head, an MLP in v2.
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet_tiny"  # paper: resnet50
    c.model.stem = "small"  # 'imagenet' (7x7/2 + max-pool), 'cifar' (3x3/1), 'small' (3x3/2)
    c.model.bn_momentum = 0.9  # NNX convention: running = m * running + (1 - m) * batch
    c.model.mlp = True  # paper: True for v2 (--mlp): Linear-ReLU-Linear; False for v1: one Linear
    c.model.proj_hidden_dim = 128  # paper: 2048 (= body width)
    c.model.proj_dim = 128  # paper: 128 (--moco-dim)
    # Compute dtype of the body and heads: 'bfloat16' is mixed precision (float32 parameters, optimizer
    # state, batch-norm statistics and losses). float32 on this 2-core CPU: bfloat16 ran 0.97x (no gain).
    c.model.dtype = "float32"

    # Method: the queue, the momentum encoder and the contrastive temperature.
    c.method = ml_collections.ConfigDict()
    c.method.temperature = 0.2  # paper: 0.2 for v2, 0.07 for v1 (--moco-t)
    c.method.queue_size = 4096  # K, a multiple of the batch size; paper: 65536 (--moco-k)
    c.method.momentum = 0.99  # m of the key encoder; paper: 0.999 (--moco-m)
    c.method.bn_groups = 8  # shuffling-BN groups, the official GPU count; paper: 8 GPUs of 32 images

    # Optimiser: SGD with momentum, weight decay on every parameter, cosine decay (v2) or steps (v1).
    c.optim = ml_collections.ConfigDict()
    c.optim.epochs = 2.0  # paper: 200 (800 for the best v2 result)
    c.optim.lr = 0.06  # paper: 0.03 for batch 256 (--lr)
    c.optim.weight_decay = 1e-4  # paper: 1e-4
    c.optim.momentum = 0.9  # paper: 0.9
    c.optim.cos = True  # paper: True for v2 (--cos); False for v1, which uses optim.schedule
    c.optim.schedule = (120.0, 160.0)  # epochs where v1 multiplies the rate by 0.1 (--schedule)
    # 'per_epoch': the cosine of the integer epoch, constant within an epoch (official
    # adjust_learning_rate); 'per_step': of the fractional epoch. Paper presets: 'per_epoch'.
    c.optim.lr_schedule = "per_step"
    c.optim.scale_lr = False  # lr x B / 256 when True; paper: False (--lr is used as given)

    # Evaluation: weighted kNN on frozen features (k=20, T=0.07 as DINO).
    c.eval = ml_collections.ConfigDict()
    c.eval.knn_every_steps = 0  # 0 = only at the start and the end
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.knn_train_examples = 0  # 0 = all; a positive number uses the first N (faster monitor)
    c.eval.knn_test_examples = 0
    c.eval.batch_size = 1000
    # The evaluation view: Resize(image_size / crop_fraction) + CenterCrop(image_size) ('torch' style);
    # image_size 0 = the whole canvas the host delivers. Paper: 224 / 0.875 (main_lincls.py).
    c.eval.image_size = 0
    c.eval.crop_fraction = 1.0
    c.eval.crop_style = "torch"

    # Checkpoints and logging.
    c.checkpoint_every_steps = 200
    c.log_every_steps = 50

    if preset == "smoke":
        c.data.batch_size = 16
        c.views.crop_size = 16
        c.model.proj_hidden_dim = 16
        c.model.proj_dim = 8
        c.method.queue_size = 64
        c.method.bn_groups = 2
        c.optim.epochs = 4 * 16 / 60000  # 4 steps
        c.optim.lr = 0.06 * 16 / 256  # the default's rate per image
        c.eval.knn_train_examples = 200
        c.eval.knn_test_examples = 100
        c.eval.batch_size = 100
        c.checkpoint_every_steps = 2
        c.log_every_steps = 1
    elif preset == "cifar10":
        # The official CIFAR-10 demo (facebookresearch/moco, branch colab-notebook,
        # colab/moco_cifar10_demo.ipynb, its defaults with --cos, asymmetric loss): ResNet-18 with a
        # 3x3/1 stem and no max-pool, one Linear head (no MLP), no blur, SplitBatchNorm over 8 splits.
        c.data.name = "cifar10"
        c.data.batch_size = 512  # --batch-size 512
        c.views.crop_size = 32
        c.views.crop_scale = (0.08, 1.0)  # RandomResizedCrop(32), torchvision's default scale
        c.views.blur_p = 0.0  # the demo has no blur
        c.views.mean = (0.4914, 0.4822, 0.4465)
        c.views.std = (0.2023, 0.1994, 0.2010)  # the demo's normalisation
        c.model.name = "resnet18"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "cifar"
        c.model.mlp = False  # the demo's head is torchvision's fc: one Linear to --moco-dim 128
        c.method.temperature = 0.1  # --moco-t 0.1
        c.method.queue_size = 4096  # --moco-k 4096
        c.method.momentum = 0.99  # --moco-m 0.99
        c.method.bn_groups = 8  # --bn-splits 8
        c.optim.epochs = 200.0  # --epochs 200: kNN 82.6% in the demo's table (800 epochs: 88.7%)
        c.optim.lr = 0.06  # --lr 0.06 for batch 512
        c.optim.weight_decay = 5e-4  # --wd 5e-4
        c.optim.lr_schedule = "per_epoch"
        c.eval.knn_k = 200  # the demo's kNN monitor: --knn-k 200, --knn-t 0.1
        c.eval.knn_temperature = 0.1
        c.eval.knn_every_steps = 5000
        c.checkpoint_every_steps = 2000
    elif preset in ("imagenet", "imagenet_v1"):
        # facebookresearch/moco README: python main_moco.py -a resnet50 --lr 0.03 --batch-size 256
        # --mlp --moco-t 0.2 --aug-plus --cos (8 GPUs of 32 images: per-GPU batch norm = 8 groups);
        # 67.5 +- 0.1 linear top-1 after 200 epochs (README table; v1 without the four v2 flags: 60.6).
        c.data.name = "imagenet2012"
        c.data.image_size = 512  # whole image, longer side <= 512: most ImageNet photos (500x375) stay native
        c.data.eval_split = "validation"
        c.eval.image_size = 224  # Resize(256) + CenterCrop(224)
        c.eval.crop_fraction = 0.875
        c.views.crop_size = 224
        c.views.crop_scale = (0.2, 1.0)
        c.views.mean = (0.485, 0.456, 0.406)
        c.views.std = (0.229, 0.224, 0.225)
        c.model.name = "resnet50"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "imagenet"
        c.model.proj_hidden_dim = 2048
        c.method.queue_size = 65536
        c.method.momentum = 0.999
        c.method.bn_groups = 8  # 8 GPUs x 32 images, per-GPU batch norm and the shuffle across them
        c.optim.epochs = 200.0  # --epochs 200 (default)
        c.optim.lr = 0.03  # --lr 0.03
        c.optim.lr_schedule = "per_epoch"  # adjust_learning_rate
        c.eval.knn_every_steps = 10000
        c.eval.knn_train_examples = 100000
        c.checkpoint_every_steps = 2500
        c.log_every_steps = 100
        if preset == "imagenet_v1":  # main_moco.py's defaults: 60.6 linear top-1 (README: 60.8 +- 0.2)
            c.views.aug_plus = False
            c.views.color_jitter = (0.4, 0.4, 0.4, 0.4)
            c.model.mlp = False
            c.method.temperature = 0.07
            c.optim.cos = False
    return c
