"""SimCLRv2 config. Chen, Kornblith, Swersky, Norouzi, Hinton, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029). One config for the three stages; `stage`
chooses the run and `init_workdir` points at the previous stage's workdir.

    python simclr2/train.py --config simclr2/config.py --workdir runs/simclr2/pretrain     # 2 CPU cores
    python simclr2/train.py --config simclr2/config.py --config.stage=finetune \\
        --config.init_workdir=runs/simclr2/pretrain --workdir runs/simclr2/finetune_10pct
    python simclr2/train.py --config simclr2/config.py --config.stage=distill \\
        --config.init_workdir=runs/simclr2/finetune_10pct --workdir runs/simclr2/distill_10pct
    python simclr2/train.py --config simclr2/config.py --config.stage=finetune \\
        --config.init_workdir='' --workdir runs/simclr2/scratch_10pct        # supervised baseline
    python simclr2/train.py --config simclr2/config.py:smoke           # seconds; used by the tests
    python simclr2/train.py --config simclr2/config.py:cifar10         # paper-style CIFAR-10 (accelerator)
    python simclr2/train.py --config simclr2/config.py:imagenet        # paper's ImageNet settings (accelerator)

Paper preset :imagenet, stage by stage (google-research/simclr, README.md at commit 383d414, and the
SimCLRv2 paper's Appendix; ResNet-50 1x without selective kernels):
  pretrain  batch 4096, 800 epochs, LARS 0.1 x sqrt(B) = 6.4, warmup 40 epochs (5%), weight decay 1e-4,
            temperature 0.1, 3-layer head, proj_out_dim 128. Published: 71.7 linear top-1 (README table,
            r50_1x_sk0).
  finetune  the README's command "to fine-tune the whole network on ImageNet (1% of labels)": run.py
            --train_mode=finetune --fine_tune_after_block=-1 --zero_init_logits_layer=True
            --global_bn=True --optimizer=lars --learning_rate=0.005 --learning_rate_scaling=sqrt
            --weight_decay=0 --train_epochs=60 --train_batch_size=1024 --warmup_epochs=0
            --num_proj_layers=3 --ft_proj_selector=1 (0.005 x sqrt(1024) = 0.16). Published for it:
            57.9 top-1 (README table, r50_1x_sk0, F-T 1%). 10% of the labels: add
            --config.data.label_fraction=0.1 --config.finetune.epochs=30 (paper: 30 epochs; 68.4).
  distill   self-distillation into the same body on the unlabelled images, 400 epochs with the
            pretraining's schedule, weight decay and batch (paper, Appendix); temperature 0.1, the
            paper's value for self-distillation (Appendix: 0.1 for self-distillation, 1.0 for
            big-to-small, "the effect of temperatures between 0.1 and 1 is very small"); the official
            colab (add_kd_loss, with its T^2 factor) shows big-to-small at 1.0. The README has no
            distillation command.
The official pipeline feeds [0, 1] images (no mean/std normalisation), as these presets. Pretraining
reports the kNN monitor (results.json: knn_top1, ...), fine-tuning and distillation the test top-1 (top1,
top1_init, label_fraction); the README's benchmark table gives the default pipeline's results and hardware.

Deliberate deviations from the paper: no MoCo-style memory of negatives (the official code has none
either; the paper reports ~1% from it); no linear head trained on labels during pretraining (the kNN
monitor replaces it). In the default preset only: a tiny body, 2 pretraining epochs and 1 distillation
epoch so the pipeline runs in minutes on a CPU; crop scale (0.4, 1) because 28x28 images lose the
object below that; colour strength 0.5 and no blur (as SimCLR's CIFAR setting); square-root
learning-rate scaling, which SimCLR recommends for small batches; batch 256 in every stage.

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
    c.seed = 0  # also chooses the labelled fraction
    c.stage = "pretrain"  # 'pretrain' (1), 'finetune' (2) or 'distill' (3): Fig. 3 of the paper
    c.init_workdir = ""  # previous stage's workdir; finetune: '' = random init (supervised baseline)

    # Data: any TFDS name, or an image folder (data.folder). Images are resized on the host to
    # image_size (0 = native size); the random crops are taken on device.
    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist_local"  # embedded default: Fashion-MNIST from the Debian package
    c.data.folder = ""  # an image folder: root/<split>/<class>/* or a flat folder of images
    c.data.data_dir = ""  # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)
    c.data.image_size = 0  # host-side size; 0 keeps 28x28
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.batch_size = 256  # global batch of pretraining, over all devices (paper: 4096)
    c.data.fit = "whole"  # host fit: the whole image, aspect kept, in a canvas with its extent; or 'centre'
    c.data.workers = 8  # host decode threads per data set (data.py; e.g. 16 on an accelerator host)
    c.data.num_classes = 10
    c.data.label_fraction = 0.1  # fine-tuning's class-balanced labelled fraction (paper: 0.01 and 0.1)

    # Views (SimCLR Sec. 3 and Appendix A), TensorFlow semantics. Pretraining uses all of them;
    # fine-tuning and distillation only the crop and the flip (paper, Appendix).
    c.views = ml_collections.ConfigDict()
    c.views.crop_size = 28  # paper: 224
    c.views.crop_scale = (0.4, 1.0)  # paper: (0.08, 1.0)
    c.views.crop_ratio = (3 / 4, 4 / 3)
    c.views.flip_p = 0.5
    c.views.color_strength = 0.5  # s in SimCLR's Appendix A; paper: 1.0 (ImageNet)
    c.views.color_p = 0.8
    c.views.gray_p = 0.2
    c.views.blur_p = 0.0  # paper: 0.5 on ImageNet
    c.views.mean = (0.2860, 0.2860, 0.2860)  # per-channel normalisation of the data set
    c.views.std = (0.3530, 0.3530, 0.3530)

    # Model: body, the deeper projection head (Sec. 2), the fine-tuning layer, the distillation student.
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet_tiny"  # paper: ResNet-50 to ResNet-152 (3x + SK)
    c.model.stem = "small"  # 'imagenet' (7x7/2 + max-pool), 'cifar' (3x3/1), 'small' (3x3/2)
    c.model.bn_momentum = 0.9  # NNX convention: running = m * running + (1 - m) * batch; official decay 0.9
    # Last BN gamma of each residual block at 0 (official resnet.py: True, the paper presets). Off in the
    # default preset: measured there it cost kNN (0.5 epoch: 77.5% vs 78.9% without).
    c.model.zero_init_residual = False
    c.model.proj_layers = 3  # paper: 3 (SimCLR: 2)
    c.model.proj_hidden_dim = 128  # paper: 2048 (= body width)
    c.model.proj_dim = 64  # paper: 128
    c.model.ft_proj_layer = 1  # fine-tune from this head layer's output; paper: 1 (0 with 100% labels)
    c.model.student_name = "resnet_tiny"  # paper: the same body (self-distillation) or a smaller one
    # Compute dtype of the body and heads: 'bfloat16' is mixed precision (float32 parameters, optimizer
    # state, batch-norm statistics and losses). float32 on this 2-core CPU: bfloat16 ran 0.97x (no gain).
    c.model.dtype = "float32"

    # Method: NT-Xent temperature tau and distillation temperature T (Eq. 2).
    c.method = ml_collections.ConfigDict()
    c.method.temperature = 0.2  # paper: 0.1
    # Paper (Appendix): 0.1 for self-distillation, 1.0 big-to-small (the official colab's 1.0). The
    # default keeps 1.0, measured with it; the paper finds temperatures in [0.1, 1] about equal.
    c.method.distill_temperature = 1.0

    # Optimiser of pretraining: LARS, linear warmup then cosine decay; biases, norms and the classifier
    # skip decay and trust-ratio adaptation. momentum and trust_coefficient apply to every stage.
    c.optim = ml_collections.ConfigDict()
    c.optim.epochs = 2.0  # paper: 800
    c.optim.warmup_epochs = 0.2  # paper: 5% of the epochs
    c.optim.lr = 0.075  # base rate; paper: 0.1 (sqrt), i.e. 6.4 at B = 4096
    c.optim.lr_scaling = "sqrt"  # 'linear': lr * B / 256; 'sqrt': lr * sqrt(B)
    c.optim.weight_decay = 1e-6  # paper: 1e-4 (ResNet-50, 800 epochs)
    c.optim.momentum = 0.9
    c.optim.trust_coefficient = 0.001  # LARS eta

    # Fine-tuning (stage 2, Appendix; the README's command): LARS without weight decay and warmup.
    c.finetune = ml_collections.ConfigDict()
    c.finetune.batch_size = 256  # global batch; official: 1024 (1% and 10% of the labels)
    c.finetune.zero_init_classifier = True  # official: --zero_init_logits_layer=True
    c.finetune.epochs = 30.0  # paper: 60 with 1% of the labels, 30 with 10%
    c.finetune.warmup_epochs = 0.0  # paper: none
    c.finetune.lr = 0.005  # paper: 0.005 (sqrt), i.e. 0.16 at B = 1024
    c.finetune.lr_scaling = "sqrt"
    c.finetune.weight_decay = 0.0  # paper: none

    # Distillation (stage 3, Appendix): the pretraining schedule, decay and batch.
    c.distill = ml_collections.ConfigDict()
    c.distill.batch_size = 256  # global batch; paper: as pretraining
    c.distill.epochs = 1.0  # paper: 400
    c.distill.warmup_epochs = 0.1  # paper: as pretraining
    c.distill.lr = 0.075  # paper: as pretraining
    c.distill.lr_scaling = "sqrt"
    c.distill.weight_decay = 1e-6  # paper: as pretraining

    # Evaluation: weighted kNN on frozen features after pretraining (k=20, T=0.07 as DINO); test top-1
    # of the classifier after fine-tuning and distillation (knn_test_examples limits it too).
    c.eval = ml_collections.ConfigDict()
    c.eval.knn_every_steps = 0  # 0 = only at the start and the end (of every stage)
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
        c.data.label_fraction = 0.01
        c.views.crop_size = 16
        c.model.proj_hidden_dim = 16
        c.model.proj_dim = 8
        c.optim.epochs = 4 * 16 / 60000  # 4 steps
        c.optim.warmup_epochs = 16 / 60000
        c.finetune.batch_size = 16
        c.finetune.epochs = 4 / 37  # 4 steps: 600 labelled images make 37 batches of 16
        c.distill.batch_size = 16
        c.distill.epochs = 4 * 16 / 60000
        c.distill.warmup_epochs = 16 / 60000
        c.eval.knn_train_examples = 200
        c.eval.knn_test_examples = 100
        c.eval.batch_size = 100
        c.checkpoint_every_steps = 2
        c.log_every_steps = 1
    elif preset == "cifar10":  # SimCLR's README CIFAR-10 command with SimCLRv2's head and stages (no official
        # SimCLRv2 CIFAR-10 recipe exists; fine-tuning and distillation at the pretraining batch)
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
        c.model.student_name = "resnet18"
        c.model.proj_hidden_dim = 512
        c.model.proj_dim = 128
        c.method.temperature = 0.5
        c.optim.epochs = 1000.0
        c.optim.warmup_epochs = 10.0
        c.optim.lr = 1.0
        c.optim.lr_scaling = "linear"
        c.optim.weight_decay = 1e-4
        c.finetune.batch_size = 512
        c.distill.batch_size = 512
        c.distill.weight_decay = 1e-4
        c.distill.epochs = 400.0
        c.distill.warmup_epochs = 10.0
        c.distill.lr = 1.0
        c.distill.lr_scaling = "linear"
        c.eval.knn_every_steps = 5000
        c.checkpoint_every_steps = 2000
    elif preset == "imagenet":  # Appendix: ResNet-50, batch 4096, 800 epochs, LARS 0.1 x sqrt(B)
        c.data.name = "imagenet2012"
        c.data.image_size = 512  # whole image, longer side <= 512: most ImageNet photos (500x375) stay native
        c.eval.image_size = 224  # SimCLR's data_util.center_crop: 87.5% of the shorter side, bicubic resize to 224
        c.eval.crop_fraction = 0.875
        c.data.eval_split = "validation"
        c.data.batch_size = 4096
        c.data.num_classes = 1000
        c.data.label_fraction = 0.01  # the README's fine-tuning command (1% subset)
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
        c.model.student_name = "resnet50"
        c.model.proj_hidden_dim = 2048
        c.model.proj_dim = 128
        c.method.temperature = 0.1
        c.method.distill_temperature = 0.1  # paper, Appendix: self-distillation (the student is the same ResNet-50)
        c.optim.epochs = 800.0
        c.optim.warmup_epochs = 40.0
        c.optim.lr = 0.1
        c.optim.weight_decay = 1e-4
        c.finetune.batch_size = 1024
        c.finetune.epochs = 60.0
        c.distill.batch_size = 4096
        c.distill.epochs = 400.0
        c.distill.warmup_epochs = 20.0
        c.distill.lr = 0.1
        c.distill.weight_decay = 1e-4
        c.eval.knn_every_steps = 10000
        c.eval.knn_train_examples = 100000
        c.checkpoint_every_steps = 2500
        c.log_every_steps = 100
    return c
