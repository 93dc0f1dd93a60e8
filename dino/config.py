"""DINO config. Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294); defaults of facebookresearch/dino.

    python dino/train.py --config dino/config.py                     # embedded Fashion-MNIST, 2 CPU cores
    python dino/train.py --config dino/config.py:smoke               # seconds; used by the tests (tiny ViT)
    python dino/train.py --config dino/config.py:cifar10             # the same recipe, ViT-S/4 on 32 px
    python dino/train.py --config dino/config.py:imagenet            # the README's vanilla ViT-S/16 run
    python dino/visualize_attention.py --workdir runs/dino           # attention maps of a ViT run

`:imagenet` is the official README's "Vanilla DINO training" command (facebookresearch/dino):
    python -m torch.distributed.launch --nproc_per_node=8 main_dino.py --arch vit_small \
        --data_path /path/to/imagenet/train --output_dir /path/to/saving_dir
i.e. every main_dino.py default on 8 GPUs: ViT-S/16, batch 8 x 64 = 512, 100 epochs, AdamW, lr 5e-4 per
256 images (peak 1e-3) after 10 warmup epochs, cosine to min_lr 1e-6, weight decay 0.04 -> 0.4 (cosine),
teacher temperature 0.04 (warmup_teacher_temp 0.04, no warmup epochs), teacher momentum 0.996 -> 1,
2 x 224 px global crops (scale 0.4-1) + 8 x 96 px local crops (scale 0.05-0.4), K = 65536,
norm_last_layer True, last layer frozen for 1 epoch, per-tensor gradient clipping at 3.0, drop path
0.1. Published for it (README): 69.3% k-NN and 74.0% linear top-1 on ImageNet (1.75 days on 8 GPUs).
(The README's boosted ViT-S/16 run, 300 epochs with teacher_temp 0.07 over 30 warmup epochs and
norm_last_layer False on 16 GPUs, reaches 73.3% / 76.0%; the paper's 77.0% linear is an 800-epoch run
with 10 local crops.) Departures: bfloat16 mixed precision instead of fp16 (Precision, below); crops
resized bilinearly and blurred with torchvision's kernel (below).
`:cifar10`: there is no official CIFAR recipe; it is the same command's recipe with the sizes
CIFAR-10 needs: 32 px global and 16 px local crops, ViT-S with patch 4 (16 would leave 2 x 2 tokens),
the CIFAR-10 mean and std; batch 512 as the command's global batch. Not measured.

Default preset (see README's benchmark table for the measured numbers): a tiny ResNet for 2.8 epochs
of Fashion-MNIST, 2 global 28x28 crops + 2 local 12x12 crops; kNN on the test split with the teacher's
body, written to results.json beside the same body's kNN at initialisation.

Deliberate deviations from the paper, default preset only: a tiny ResNet (a ViT learns more slowly in
minutes of CPU) trained with the official ResNet-50 recipe's optimiser (SGD, momentum 0.9, weight decay
1e-4) at base rate 0.15 (recipe 0.03) and the official use_bn_in_head option, with a small head (K =
1024 outputs, not 65536); 2 local crops (paper 8) for 2.8 epochs, so warmup (0.2 epochs), frozen last
layer (0.2 epochs) and teacher momentum (0.97, paper 0.996) are scaled to the short run; a constant
teacher temperature 0.04 (the official default; the paper warms 0.04 -> 0.07 over 30 epochs). Full
default runs on this project's 2-core CPU, kNN top-1 against 78.25% for the random body: SGD 0.06 with
teacher momentum 0.99 reached 79.23%; SGD 0.15 with 0.97 reached 81.60% (81.10% with the code of
2026-12-01). Views chosen by measurement at about the same CPU time (2026-12-01, both runs sharing the
machine): 6 local crops for 2 epochs, 889 CPU-seconds, 81.10%; 2 local crops for 2.8 epochs (a step
1.43x faster: 65 against 88 MFLOPs per image), 1007 CPU-seconds, 83.53%, now the default. The body,
chosen by measurement (kNN gain per CPU-minute, whole runs with both kNN passes): the tiny ResNet with 2
local crops gains 5.29 points in 1007 CPU-seconds (0.32 per CPU-minute; 6 local crops: 2.86 in 889,
0.19); a ViT-Tiny with 4 px patches and 4 blocks (the ViT recipe: AdamW 5e-4, weight decay 0.04 -> 0.4,
no batch norm in the head, 2 local crops) costs 1777 MFLOPs per image against the ResNet's 66 and runs
at least 2.3x its FLOP rate on this CPU (0.050 against 0.022 TFLOP/s: 28 images/s while a test run
shared the machine, against 332 alone), so in 0.4 epochs and 1747 CPU-seconds it went from 60.25% to
62.26% (0.07 per CPU-minute). AdamW at 2e-3 without batch norm in the head (the ViT recipe) was not run
end to end: in an 80-step check its loss stayed at log K and the kNN accuracy fell (70.05% against
74.40% on 10,000 / 2,000 images).
Everywhere: crops resized bilinearly (official: bicubic) and blurred with torchvision's kernel of
about 10% of the side (official: PIL's blur); see dino/train.py.

Precision: `:imagenet` and `:cifar10` set model.dtype = 'bfloat16', the bodies' and heads' convolutions
and matmuls in bfloat16 with float32 parameters, optimizer state, batch-norm statistics, normalisations,
softmaxes, losses and buffers (the default and `:smoke` presets stay float32). The official run trains
in fp16 mixed precision (main_dino.py --use_fp16 True by default: torch.cuda.amp autocast with a
GradScaler). bfloat16 rather than fp16 because it has float32's exponent range: no loss scaling
(GradScaler) is needed.
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
    c.data.batch_size = 256  # global batch, over all devices (paper: 1024)
    c.data.fit = "whole"  # host fit: the whole image, aspect kept, in a canvas with its extent; or 'centre'
    c.data.workers = 8  # host decode threads per data set (data.py; e.g. 16 on an accelerator host)

    # Views (Sec. 3.1, Appendix; DataAugmentationDINO): multi-crop with torchvision semantics.
    c.views = ml_collections.ConfigDict()
    c.views.crop_size = 28  # global crops; paper: 224
    c.views.crop_scale = (0.4, 1.0)  # global crops' area range; paper: (0.4, 1.0) ((0.25, 1.0) for 800 ep.)
    c.views.local_crop_size = 12  # paper: 96
    c.views.local_crop_scale = (0.05, 0.4)  # paper: (0.05, 0.4)
    c.views.local_crops_number = 2  # paper: 8 (10 for the best ViT-S/16); 2 in the CPU default (docstring)
    c.views.crop_ratio = (3 / 4, 4 / 3)
    c.views.flip_p = 0.5
    c.views.color_jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue; paper: same
    c.views.color_p = 0.8
    c.views.gray_p = 0.2
    c.views.blur_p = (1.0, 0.1, 0.5)  # global crop 1, global crop 2, local crops; paper: same
    c.views.solarize_p = 0.2  # global crop 2 only; paper: same
    c.views.mean = (0.2860, 0.2860, 0.2860)  # per-channel normalisation of the data set
    c.views.std = (0.3530, 0.3530, 0.3530)

    # Model: body (ViT or ResNet) and the DINO head: 3-layer MLP, bottleneck, l2 norm, weight-normed layer.
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet_tiny"  # paper: vit_small
    c.model.stem = "small"  # ResNets: 'imagenet' (7x7/2 + max-pool), 'cifar' (3x3/1), 'small' (3x3/2)
    c.model.bn_momentum = 0.9  # ResNets; NNX convention: running = m * running + (1 - m) * batch
    c.model.patch_size = 16  # ViTs: paper 16 (or 8)
    c.model.depth = 12  # ViTs: number of blocks; paper 12
    c.model.drop_path_rate = 0.0  # ViTs: stochastic depth of the student; paper 0.1
    c.model.head_hidden_dim = 512  # paper: 2048
    c.model.head_bottleneck_dim = 128  # paper: 256
    c.model.out_dim = 1024  # K; paper: 65536
    c.model.norm_last_layer = True  # fix the last layer's weight norm g = 1; paper: True
    c.model.use_bn_in_head = True  # batch norm after the head's hidden layers (official option); ViT: False
    # Compute dtype of the body and heads: 'bfloat16' is mixed precision (float32 parameters, optimizer
    # state, batch-norm statistics and losses). float32 on this 2-core CPU: bfloat16 ran 0.97x (no gain).
    c.model.dtype = "float32"

    # Method: temperatures (Sec. 3.1), centring (eq. 4) and the teacher's EMA.
    c.method = ml_collections.ConfigDict()
    c.method.student_temp = 0.1  # tau_s; paper: 0.1
    c.method.teacher_temp = 0.04  # tau_t after warmup; paper: 0.07 (official default 0.04)
    c.method.warmup_teacher_temp = 0.04  # tau_t at epoch 0; paper: 0.04
    c.method.warmup_teacher_temp_epochs = 0  # whole epochs of linear warmup; paper: 30
    c.method.center_momentum = 0.9  # m; paper: 0.9
    c.method.momentum_teacher = 0.97  # lambda at step 0, cosine to 1; paper: 0.996

    # Optimiser: AdamW, linear warmup then cosine learning rate; cosine weight decay; per-tensor clipping.
    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "sgd"  # 'adamw' (paper, ViTs), 'sgd' (official ResNet-50 recipe) or 'lars'
    c.optim.epochs = 2.8  # paper: 100-800
    c.optim.warmup_epochs = 0.2  # paper: 10
    c.optim.lr = 0.15  # per 256 images (peak = lr * B / 256); paper: 5e-4 (AdamW, ViT), 0.03 (SGD, ResNet-50)
    c.optim.final_lr = 1e-6  # end of the cosine decay (official --min_lr); paper: 1e-6
    c.optim.weight_decay = 1e-4  # at step 0, cosine to weight_decay_end; paper: 0.04 (ViT), 1e-4 (ResNet-50)
    c.optim.weight_decay_end = 1e-4  # paper: 0.4 (ViT), 1e-4 (ResNet-50)
    c.optim.clip_grad = 3.0  # max norm of each parameter's gradient, 0 = off; paper: 3.0
    c.optim.freeze_last_layer = 0.2  # epochs with the head's last layer frozen; paper: 1

    # Evaluation: weighted kNN on frozen teacher features (k=20, T=0.07 as DINO).
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
    c.eval.crop_style = "torch"

    # Checkpoints and logging.
    c.checkpoint_every_steps = 200
    c.log_every_steps = 50

    if preset == "smoke":  # a 2-block ViT, so the attention maps are covered too
        c.data.batch_size = 16
        c.views.crop_size = 16
        c.views.local_crop_size = 8
        c.views.local_crops_number = 2
        c.model.name = "vit_tiny"
        c.model.patch_size = 4
        c.model.depth = 2
        c.model.head_hidden_dim = 32
        c.model.head_bottleneck_dim = 16
        c.model.out_dim = 32
        c.model.use_bn_in_head = False
        c.optim.optimizer = "adamw"
        c.optim.weight_decay = 0.04
        c.optim.weight_decay_end = 0.4
        c.optim.lr = 2e-3
        c.optim.epochs = 4 * 16 / 60000  # 4 steps
        c.optim.warmup_epochs = 16 / 60000
        c.optim.freeze_last_layer = 2 * 16 / 60000  # the last layer trains from step 2 on
        c.eval.knn_train_examples = 200
        c.eval.knn_test_examples = 100
        c.eval.batch_size = 100
        c.checkpoint_every_steps = 2
        c.log_every_steps = 1
    elif preset == "cifar10":  # no official CIFAR recipe: :imagenet's command at CIFAR sizes (docstring)
        c.data.name = "cifar10"
        c.data.batch_size = 512
        c.views.crop_size = 32
        c.views.local_crop_size = 16
        c.views.local_crops_number = 8
        c.views.mean = (0.4914, 0.4822, 0.4465)
        c.views.std = (0.2470, 0.2435, 0.2616)
        c.model.name = "vit_small"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.patch_size = 4
        c.model.drop_path_rate = 0.1
        c.model.head_hidden_dim = 2048
        c.model.head_bottleneck_dim = 256
        c.model.out_dim = 65536
        c.model.use_bn_in_head = False
        c.method.momentum_teacher = 0.996
        c.optim.optimizer = "adamw"
        c.optim.epochs = 100.0
        c.optim.warmup_epochs = 10.0
        c.optim.lr = 5e-4
        c.optim.weight_decay = 0.04
        c.optim.weight_decay_end = 0.4
        c.optim.freeze_last_layer = 1.0
        c.eval.knn_every_steps = 5000
        c.checkpoint_every_steps = 2000
    elif preset == "imagenet":  # the README's vanilla ViT-S/16 command (docstring)
        c.data.name = "imagenet2012"
        c.data.image_size = 512  # whole image, longer side <= 512: most ImageNet photos (500x375) stay native
        c.eval.image_size = 224  # DINO's eval_linear.py / eval_knn.py: Resize(256, bicubic) + CenterCrop(224)
        c.eval.crop_fraction = 0.875
        c.data.eval_split = "validation"
        c.data.batch_size = 512  # 8 GPUs x --batch_size_per_gpu 64
        c.views.crop_size = 224
        c.views.local_crop_size = 96
        c.views.local_crops_number = 8
        c.views.mean = (0.485, 0.456, 0.406)
        c.views.std = (0.229, 0.224, 0.225)
        c.model.name = "vit_small"
        c.model.dtype = "bfloat16"  # mixed precision on the accelerator (the docstring's Precision)
        c.model.patch_size = 16
        c.model.drop_path_rate = 0.1
        c.model.head_hidden_dim = 2048
        c.model.head_bottleneck_dim = 256
        c.model.out_dim = 65536
        c.model.use_bn_in_head = False
        c.method.momentum_teacher = 0.996
        c.optim.optimizer = "adamw"
        c.optim.epochs = 100.0
        c.optim.warmup_epochs = 10.0
        c.optim.weight_decay = 0.04
        c.optim.weight_decay_end = 0.4
        c.optim.lr = 5e-4
        c.optim.freeze_last_layer = 1.0
        c.eval.knn_every_steps = 10000
        c.eval.knn_train_examples = 100000
        c.checkpoint_every_steps = 2500
        c.log_every_steps = 100
    return c
