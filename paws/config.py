"""PAWS config. Assran, Caron, Misra, Bojanowski, Joulin, Ballas, Rabbat, "Semi-Supervised Learning of
Visual Features by Non-Parametrically Predicting View Assignments with Support Samples", ICCV 2021
(arXiv:2104.13963); official code facebookresearch/suncet (configs/paws/*.yaml).

    python paws/train.py --config paws/config.py                 # embedded Fashion-MNIST, 2 CPU cores
    python paws/train.py --config paws/config.py:smoke           # seconds; used by the tests
    python paws/train.py --config paws/config.py:cifar10         # paper's CIFAR-10 settings (accelerator)
    python paws/train.py --config paws/config.py:imagenet        # paper's ImageNet settings (accelerator)
    python -m paws.finetune --workdir W                         # the official fine-tuning of a run

Paper presets and the official commands they reproduce (facebookresearch/suncet 731547d):
* `:imagenet` = `python main_distributed.py --sel paws_train --fname configs/paws/imgnt_train.yaml
  --nodes 8 --tasks-per-node 8` (64 GPUs x 64 unlabelled images, 15 classes x 7 supports each, SyncBN
  over all GPUs = global batch norm here), ResNet-50, 100 epochs, with data.unlabeled_frac=0.99 (the
  1% subset): published (suncet README, 100 epochs) 61.5% snn, 63.8% after fine_tune.py. The yaml as
  written is the 10% setting (unlabeled_frac 0.9): --config.data.label_fraction=0.1, published 71.0%
  snn / 73.9% fine-tuned, needs ~25 GB of device memory for the labelled pool (hence 1% by default).
* `:cifar10` = `python main.py --sel paws_train --fname configs/paws/cifar10_train.yaml` (one GPU,
  4000 labels = 8%), 600 epochs; the suncet README gives no number for it (the paper evaluates
  CIFAR-10 after snn_fine_tune.py, configs/paws/cifar10_snn.yaml, not reproduced here).

Pick the labelled fraction with --config.data.label_fraction=0.01 (or 0.1). results.json holds snn_top1
(soft nearest-neighbour classification of the test split against the labelled fraction, the paper's
evaluation without fine-tuning), the kNN monitor, and the same numbers at initialisation. The
baseline, the same body trained from scratch on the same labelled fraction, is
`python -m common.evaluate --workdir runs/paws --protocol supervised --label_fraction 0.1`.

Deliberate deviations from the official code. Everywhere: the support batch is drawn afresh each step
(distinct classes, distinct images per class) rather than by the official epoch-based sampler; no
Equalize in the CIFAR-10 colour distortion (not in common/augment.py); the labelled fraction is a
class-balanced random subset (data.balanced_subset), not the official subset files; the sizes of the
support batch (classes_per_batch x s_per_class) are global, over all devices; the CIFAR-10 body is
a ResNet-18 with the CIFAR stem (the paper: WRN-28-2), so its projection is 512 wide (init_model's
rule: the body width; WRN-28-2's 128); blur is torchvision's GaussianBlur (the official code uses
PIL's, radius U(0.1, 2)); :imagenet at 1% labels (above). Default preset only: a tiny body, 2 local
crops of 16 pixels, 1 epoch, a smaller support batch, so it runs in minutes on a CPU.

Precision: `:imagenet` and `:cifar10` set model.dtype = 'bfloat16', the bodies' and heads' convolutions
and matmuls in bfloat16 with float32 parameters, optimizer state, batch-norm statistics, normalisations,
softmaxes, losses and buffers (the default and `:smoke` presets stay float32). The official runs train
in fp16 mixed precision (configs/paws/imgnt_train.yaml and cifar10_train.yaml: use_fp16 true;
torch.cuda.amp with a GradScaler, the loss in float32, as here). bfloat16 rather than fp16 because it
has float32's exponent range: no loss scaling (GradScaler) is needed.
"""

import ml_collections


def get_config(arg=None):
    preset = arg or "default"
    if preset not in ("default", "smoke", "cifar10", "imagenet"):
        raise ValueError(f"Unknown preset {preset!r}: use one of default, smoke, cifar10, imagenet.")
    c = ml_collections.ConfigDict()
    c.seed = 0  # also picks the labelled fraction

    # Data: any TFDS name with labels, or a labelled image folder (data.folder).
    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist_local"  # embedded default: Fashion-MNIST from the Debian package
    c.data.folder = ""  # a labelled image folder: root/<split>/<class>/*
    c.data.data_dir = ""  # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)
    c.data.image_size = 0  # host-side size; 0 keeps 28x28
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.batch_size = 128  # global unlabelled batch (paper: 4096 ImageNet, 256 CIFAR-10)
    c.data.fit = "whole"  # host fit: the whole image, aspect kept, in a canvas with its extent; or 'centre'
    c.data.workers = 8  # host decode threads per data set (data.py; e.g. 16 on an accelerator host)
    c.data.label_fraction = 0.1  # labelled, class-balanced fraction of train_split (paper: 0.01, 0.1)

    # Views: torchvision semantics, as the official code. Large crops for unlabelled and supports.
    c.views = ml_collections.ConfigDict()
    c.views.crop_size = 28  # paper: 224 (ImageNet), 32 (CIFAR-10)
    c.views.crop_scale = (0.5, 1.0)  # paper with multi-crop: (0.14, 1) ImageNet, (0.75, 1) CIFAR-10
    c.views.crop_ratio = (3 / 4, 4 / 3)
    c.views.local_crops_number = 2  # small (multi-crop) views per unlabelled image (paper: 6)
    c.views.local_crop_size = 16  # paper: 96 (ImageNet), 18 (CIFAR-10)
    c.views.local_crop_scale = (0.2, 0.5)  # paper: (0.05, 0.14) ImageNet, (0.3, 0.75) CIFAR-10
    c.views.supervised_views = 1  # views of each support image (paper: 1 ImageNet, 2 CIFAR-10)
    c.views.flip_p = 0.5
    c.views.color_strength = 0.5  # s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s); paper: 1.0 ImageNet, 0.5 CIFAR
    c.views.color_p = 0.8
    c.views.gray_p = 0.0  # paper: 0.2 (ImageNet), none (CIFAR-10)
    c.views.solarize_p = 0.0  # paper: 0.2 (CIFAR-10), none (ImageNet)
    c.views.blur_p = 0.0  # paper: 0.5 (ImageNet), none (CIFAR-10)
    c.views.mean = (0.2860, 0.2860, 0.2860)  # per-channel normalisation of the data set
    c.views.std = (0.3530, 0.3530, 0.3530)

    # Model: body, projection head (Linear-BN-ReLU x2, Linear), optional prediction head.
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet_tiny"  # paper: resnet50 (ImageNet), wide_resnet28w2 (CIFAR-10)
    c.model.stem = "small"  # 'imagenet' (7x7/2 + max-pool), 'cifar' (3x3/1), 'small' (3x3/2)
    c.model.bn_momentum = 0.9  # NNX convention: running = m * running + (1 - m) * batch
    c.model.proj_hidden_dim = 128  # paper: the body width (2048 ResNet-50, 128 WRN-28-2)
    c.model.proj_dim = 128  # output_dim; paper: 2048 (ImageNet), 128 (CIFAR-10)
    c.model.pred_hidden_dim = 0  # 0 = no prediction head; paper: proj_dim / 4 on ImageNet, none on CIFAR
    # Compute dtype of the body and heads: 'bfloat16' is mixed precision (float32 parameters, optimizer
    # state, batch-norm statistics and losses). float32 on this 2-core CPU: bfloat16 ran 0.97x (no gain).
    c.model.dtype = "float32"

    # Method: snn temperature, sharpening, me-max, the support batch (Sec. 3 and 4).
    c.method = ml_collections.ConfigDict()
    c.method.tau = 0.1  # paper: 0.1
    c.method.T = 0.25  # sharpening temperature; paper: 0.25
    c.method.me_max = True  # mean-entropy maximisation; paper: True
    c.method.classes_per_batch = 10  # classes in each support batch (paper: 960 ImageNet, 10 CIFAR-10)
    c.method.s_per_class = 8  # images of each class (paper: 7 ImageNet, 64 CIFAR-10)
    c.method.label_smoothing = 0.1  # paper: 0.1

    # Optimiser: the official LARS around SGD (momentum 0.9, lr inside the buffer), linear warmup
    # start_lr -> lr, cosine to final_lr; absolute rates as the official configs; weight decay and
    # LARS by the official parameter names (not biases, not 'bn' norms; downsample BN gammas included).
    c.optim = ml_collections.ConfigDict()
    c.optim.epochs = 1.0  # of the unlabelled data (468 steps); paper: 100 ImageNet, 600 CIFAR-10
    c.optim.warmup_epochs = 0.1  # paper: 10
    c.optim.start_lr = 0.1  # paper: 0.3 ImageNet, 0.8 CIFAR-10
    c.optim.lr = 1.0  # paper: 6.4 ImageNet (batch 4096), 3.2 CIFAR-10 (batch 256)
    c.optim.final_lr = 0.01  # paper: 0.064 ImageNet, 0.032 CIFAR-10
    c.optim.weight_decay = 1e-6  # paper: 1e-6
    c.optim.momentum = 0.9
    c.optim.trust_coefficient = 0.001  # LARS eta

    # Evaluation: weighted kNN on frozen features (k=20, T=0.07 as DINO); snn uses method.tau.
    c.eval = ml_collections.ConfigDict()
    c.eval.knn_every_steps = 0  # 0 = only at the start and the end
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.knn_train_examples = 0  # 0 = all; a positive number uses the first N (faster monitor)
    c.eval.knn_test_examples = 0  # also the snn test set
    c.eval.batch_size = 1000
    # The evaluation view (kNN monitor, common.evaluate): Resize(image_size / crop_fraction) and
    # CenterCrop(image_size) ('torch'), or SimCLR's centre crop + bicubic resize ('tf'); image_size 0 =
    # the whole canvas the host delivers (the default data's 28 px images).
    c.eval.image_size = 0
    c.eval.crop_fraction = 1.0
    c.eval.crop_style = "torch"

    # Checkpoints and logging.
    c.checkpoint_every_steps = 200
    c.log_every_steps = 50

    if preset == "smoke":
        c.data.batch_size = 16
        c.data.label_fraction = 0.01
        c.views.crop_size = 16
        c.views.local_crops_number = 1  # each crop traces its own view pipeline: fewer compile faster
        c.views.local_crop_size = 8
        c.model.proj_hidden_dim = 16
        c.model.proj_dim = 8
        c.method.s_per_class = 2
        # Gentle rates: with lr 1 the batch-norm parameters (no LARS scaling, as the official code)
        # move by ~1 per step, and the 8-vs-1-device comparison would measure that chaos instead.
        c.optim.start_lr = 0.01
        c.optim.lr = 0.1
        c.optim.final_lr = 0.001
        c.optim.epochs = 4 * 16 / 60000  # 4 steps
        c.optim.warmup_epochs = 16 / 60000
        c.eval.knn_train_examples = 200
        c.eval.knn_test_examples = 100
        c.eval.batch_size = 100
        c.checkpoint_every_steps = 2
        c.log_every_steps = 1
    elif preset == "cifar10":  # configs/paws/cifar10_train.yaml, one GPU
        c.data.name = "cifar10"
        c.data.batch_size = 256
        c.data.label_fraction = 0.08  # 4000 labels (unlabeled_frac 0.92, cifar10_subsets/spc.4000_*)
        c.views.crop_size = 32
        c.views.crop_scale = (0.75, 1.0)
        c.views.local_crops_number = 6
        c.views.local_crop_size = 18
        c.views.local_crop_scale = (0.3, 0.75)
        c.views.supervised_views = 2
        c.views.solarize_p = 0.2
        c.views.mean = (0.4914, 0.4822, 0.4465)
        c.views.std = (0.2023, 0.1994, 0.2010)
        c.model.name = "resnet18"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "cifar"
        c.model.proj_hidden_dim = 512
        c.model.proj_dim = 128
        c.method.classes_per_batch = 10
        c.method.s_per_class = 64
        c.optim.epochs = 600.0
        c.optim.warmup_epochs = 10.0
        c.optim.start_lr = 0.8
        c.optim.lr = 3.2
        c.optim.final_lr = 0.032
        c.eval.knn_every_steps = 5000
        c.checkpoint_every_steps = 2000
    elif preset == "imagenet":  # configs/paws/imgnt_train.yaml, 64 GPUs x (64 unlabelled, 15 x 7 supports)
        c.data.name = "imagenet2012"
        c.data.image_size = 512  # whole image, longer side <= 512: most ImageNet photos (500x375) stay native
        c.eval.image_size = (
            224  # PAWS' linear/fine-tune eval (suncet src/data_manager.py): Resize(256) + CenterCrop(224)
        )
        c.eval.crop_fraction = 0.875
        c.data.eval_split = "validation"
        c.data.batch_size = 4096
        c.data.label_fraction = 0.01  # unlabeled_frac 0.99; the yaml's 0.9 (10%) needs a ~25 GB pool
        c.views.crop_size = 224
        c.views.crop_scale = (0.14, 1.0)
        c.views.local_crops_number = 6
        c.views.local_crop_size = 96
        c.views.local_crop_scale = (0.05, 0.14)
        c.views.color_strength = 1.0
        c.views.gray_p = 0.2
        c.views.blur_p = 0.5
        c.views.mean = (0.485, 0.456, 0.406)
        c.views.std = (0.229, 0.224, 0.225)
        c.model.name = "resnet50"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.stem = "imagenet"
        c.model.proj_hidden_dim = 2048
        c.model.proj_dim = 2048
        c.model.pred_hidden_dim = 512
        c.method.classes_per_batch = 960
        c.method.s_per_class = 7
        c.optim.epochs = 100.0
        c.optim.warmup_epochs = 10.0
        c.optim.start_lr = 0.3
        c.optim.lr = 6.4
        c.optim.final_lr = 0.064
        c.eval.knn_every_steps = 10000
        c.eval.knn_train_examples = 100000
        c.checkpoint_every_steps = 2500
        c.log_every_steps = 100
    return c
