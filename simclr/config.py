"""SimCLR config. Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020 (arXiv:2002.05709).

    python simclr/train.py --config simclr/config.py                 # embedded Fashion-MNIST, 2 CPU cores
    python simclr/train.py --config simclr/config.py:smoke           # seconds; used by the tests
    python simclr/train.py --config simclr/config.py:cifar10         # paper's CIFAR-10 settings (accelerator)
    python simclr/train.py --config simclr/config.py:imagenet        # paper's ImageNet settings (accelerator)

Default preset (measured on this project's 2-core CPU machine, see README's benchmark table): a tiny
ResNet for 2 epochs of Fashion-MNIST; the kNN monitor on the test split is printed and written to
results.json beside the kNN accuracy of the same body at initialisation.

Paper presets (the official commands of google-research/simclr, README.md at commit 383d414, run by
tf2/run.py with its defaults for every flag they do not set):

  :imagenet  the README's ImageNet pretraining command, "which reflects the default hyperparameters in
             our paper": run.py --train_mode=pretrain --train_batch_size=4096 --train_epochs=100
             --temperature=0.1 --learning_rate=0.075 --learning_rate_scaling=sqrt --weight_decay=1e-4
             --dataset=imagenet2012 --image_size=224 (defaults: warmup_epochs 10, LARS momentum 0.9,
             eeta 0.001, batch_norm_decay 0.9, global BN, colour strength 1.0, blur, proj_out_dim 128).
             Published for it: "around 64.5%" linear top-1 (the README's linear-eval command on this
             pretraining; ResNet-50). The paper's 69.3 is a different recipe (1000 epochs).
  :cifar10   the README's CIFAR-10 command: --train_batch_size=512 --train_epochs=1000
             --learning_rate=1.0 --weight_decay=1e-4 --temperature=0.5 --resnet_depth=18
             --use_blur=False --color_jitter_strength=0.5 (CIFAR stem at image_size 32). Published for
             it: "around 91%" (the README's linear-eval command on it).

Both keep SimCLR's (v1) two-layer projection head; tf2/run.py's default --num_proj_layers=3 is
SimCLRv2's head (simclr2/ has it). Evaluation here is the kNN monitor; the linear-eval commands are
`python -m common.evaluate --protocol linear`.

Deliberate deviations from the paper in the default preset only: a tiny body and 2 epochs so it runs in
minutes on a CPU; crop scale (0.4, 1) because 28x28 images lose the object below that; colour strength
0.5 (the paper's CIFAR value) and no blur (as the paper's CIFAR setting); square-root learning-rate
scaling, which the paper recommends for small batches (Appendix B.1).

Precision: `:imagenet` and `:cifar10` set model.dtype = 'bfloat16', the bodies' and heads' convolutions
and matmuls in bfloat16 with float32 parameters, optimizer state, batch-norm statistics, normalisations,
softmaxes, losses and buffers (the default and `:smoke` presets stay float32). The official TensorFlow
code has no reduced-precision cast (google-research/simclr: no bfloat16 anywhere; float32 variables and
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

    # Views (Sec. 3 and Appendix A): crop, flip, colour distortion, blur; SimCLR/TensorFlow semantics.
    c.views = ml_collections.ConfigDict()
    c.views.crop_size = 28  # paper: 224 (ImageNet), 32 (CIFAR)
    c.views.crop_scale = (0.4, 1.0)  # paper: (0.08, 1.0)
    c.views.crop_ratio = (3 / 4, 4 / 3)
    c.views.flip_p = 0.5
    c.views.color_strength = 0.5  # s in Appendix A; paper: 1.0 (ImageNet), 0.5 (CIFAR)
    c.views.color_p = 0.8
    c.views.gray_p = 0.2
    c.views.blur_p = 0.0  # paper: 0.5 on ImageNet, none on CIFAR
    c.views.mean = (0.2860, 0.2860, 0.2860)  # per-channel normalisation of the data set
    c.views.std = (0.3530, 0.3530, 0.3530)

    # Model: body and projection head g(.) (Sec. 2.1): Linear-BN-ReLU-Linear-BN.
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet_tiny"  # paper: resnet50
    c.model.stem = "small"  # 'imagenet' (7x7/2 + max-pool), 'cifar' (3x3/1), 'small' (3x3/2)
    c.model.bn_momentum = 0.9  # NNX convention: running = m * running + (1 - m) * batch; official decay 0.9
    # Last BN gamma of each residual block at 0 (official resnet.py: True, the paper presets). Off in the
    # default preset: measured there it cost kNN (0.5 epoch: 77.5% vs 78.9% without).
    c.model.zero_init_residual = False
    c.model.proj_hidden_dim = 128  # paper: 2048 (= body width)
    c.model.proj_dim = 64  # paper: 128
    # Compute dtype of the body and heads: 'bfloat16' is mixed precision (float32 parameters, optimizer
    # state, batch-norm statistics and losses). float32 on this 2-core CPU: bfloat16 ran 0.97x (no gain).
    c.model.dtype = "float32"

    # Method: NT-Xent temperature (Table 5: 0.1 for large batches, 0.5 on CIFAR).
    c.method = ml_collections.ConfigDict()
    c.method.temperature = 0.2  # official: 0.1 (ImageNet), 0.5 (CIFAR-10)

    # Optimiser: LARS, linear warmup then cosine decay; biases and norms skip decay and adaptation.
    c.optim = ml_collections.ConfigDict()
    c.optim.epochs = 2.0  # paper: 100-1000
    c.optim.warmup_epochs = 0.2  # paper: 10
    c.optim.lr = 0.075  # base rate; paper: 0.3 (linear) or 0.075 (sqrt scaling)
    c.optim.lr_scaling = "sqrt"  # 'linear': lr * B / 256; 'sqrt': lr * sqrt(B)
    c.optim.weight_decay = 1e-6  # v1 paper: 1e-6; the README's commands: 1e-4
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
        c.optim.epochs = 4 * 16 / 60000  # 4 steps
        c.optim.warmup_epochs = 16 / 60000
        c.eval.knn_train_examples = 200
        c.eval.knn_test_examples = 100
        c.eval.batch_size = 100
        c.checkpoint_every_steps = 2
        c.log_every_steps = 1
    elif preset == "cifar10":  # the README's CIFAR-10 command (see the docstring)
        c.data.name = "cifar10"
        c.data.batch_size = 512
        c.views.crop_size = 32
        c.views.crop_scale = (0.08, 1.0)
        c.views.mean = (0.0, 0.0, 0.0)  # official: no normalisation, the network sees [0, 1]
        c.views.std = (1.0, 1.0, 1.0)
        c.model.name = "resnet18"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "cifar"
        c.model.zero_init_residual = True
        c.model.proj_hidden_dim = 512
        c.model.proj_dim = 128
        c.method.temperature = 0.5
        c.optim.epochs = 1000.0
        c.optim.warmup_epochs = 10.0
        c.optim.lr = 1.0
        c.optim.lr_scaling = "linear"
        c.optim.weight_decay = 1e-4
        c.eval.knn_every_steps = 5000
        c.checkpoint_every_steps = 2000
    elif preset == "imagenet":  # the README's ImageNet command (see the docstring)
        c.data.name = "imagenet2012"
        c.data.image_size = 512  # whole image, longer side <= 512: most ImageNet photos (500x375) stay native
        c.eval.image_size = 224  # SimCLR's data_util.center_crop: 87.5% of the shorter side, bicubic resize to 224
        c.eval.crop_fraction = 0.875
        c.data.eval_split = "validation"
        c.data.batch_size = 4096
        c.views.crop_size = 224
        c.views.crop_scale = (0.08, 1.0)
        c.views.color_strength = 1.0
        c.views.blur_p = 0.5
        c.views.mean = (0.0, 0.0, 0.0)  # official: no normalisation, the network sees [0, 1]
        c.views.std = (1.0, 1.0, 1.0)
        c.model.name = "resnet50"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "imagenet"
        c.model.zero_init_residual = True
        c.model.proj_hidden_dim = 2048
        c.model.proj_dim = 128
        c.method.temperature = 0.1
        c.optim.epochs = 100.0  # 1000 for the paper's best result (69.3)
        c.optim.warmup_epochs = 10.0
        c.optim.lr = 0.075  # x sqrt(4096) = 4.8, the same as 0.3 x 4096 / 256
        c.optim.lr_scaling = "sqrt"
        c.optim.weight_decay = 1e-4
        c.eval.knn_every_steps = 10000
        c.eval.knn_train_examples = 100000
        c.checkpoint_every_steps = 2500
        c.log_every_steps = 100
    return c
