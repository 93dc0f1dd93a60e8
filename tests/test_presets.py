"""Every paper preset against the official recipe it names: one table of official values per method.

Each row is (preset, config field, official value, source). The source names the official command or
the paper section the value comes from; a preset that departs from the official recipe on purpose says
so in its docstring, and its row here holds the value the preset uses together with the reason in the
source column (so a silent change of either still fails). Values are compared exactly (floats with
rtol 1e-9).
"""

import importlib

import numpy as np
import pytest

OFFICIAL = {}

# --- byol ---
# :imagenet = deepmind-research byol (d8df415) `python -m byol.main_loop --experiment_mode=pretrain
# --worker_mode=train --pretrain_epochs=1000` (main_loop's default --batch_size=4096), i.e.
# configs/byol.get_config(1000, 4096); published: 74.3% linear top-1 (paper Table 1; README: 74.0-74.5).
_BYOL_CMD = "deepmind-research byol/main_loop.py --pretrain_epochs=1000 -> configs/byol.py get_config(1000, 4096)"
_BYOL_AUG = "deepmind-research byol/utils/augmentations.py augment_config"
_BYOL_DATA = "deepmind-research byol/utils/dataset.py _decode_and_random_crop / normalize_images"
_BYOL_CIFAR = "no official BYOL CIFAR-10 recipe: the official 300-epoch preset, get_config(300, .)"
_BYOL_COMMON = [
    ("views.crop_ratio", (3 / 4, 4 / 3), _BYOL_DATA + ": log-uniform aspect (3/4, 4/3)"),
    ("views.flip_p", 0.5, _BYOL_AUG + ": random_flip"),
    ("views.color_jitter", (0.4, 0.4, 0.2, 0.1), _BYOL_AUG + ": brightness, contrast, saturation, hue"),
    ("views.color_p", 0.8, _BYOL_AUG + ": color_jitter_prob"),
    ("views.gray_p", 0.2, _BYOL_AUG + ": to_grayscale_prob"),
    ("views.blur_p", (1.0, 0.1), _BYOL_AUG + ": gaussian_blur apply_prob view1 / view2"),
    ("views.solarize_p", (0.0, 0.2), _BYOL_AUG + ": solarize apply_prob view1 / view2"),
    ("views.crop_scale", (0.08, 1.0), _BYOL_DATA + ": area uniform in (0.08, 1)"),
    ("model.proj_hidden_dim", 4096, "configs/byol.py network_config.projector_hidden_size"),
    ("model.proj_dim", 256, "configs/byol.py network_config.projector_output_size"),
    ("model.pred_hidden_dim", 4096, "configs/byol.py network_config.predictor_hidden_size"),
    ("model.bn_momentum", 0.9, "configs/byol.py bn_config.decay_rate 0.9 (NNX momentum = decay)"),
    ("model.padding", "haiku", "byol/utils/networks.py ResNetTorso: hk.Conv2D / max_pool padding='SAME'"),
    ("model.init", "haiku", "haiku Conv2D / Linear default w_init TruncatedNormal(1 / sqrt(fan_in))"),
    ("method.target_init", "independent", "byol_experiment.py _make_initial_state: rng_online, rng_target"),
    ("optim.momentum", 0.9, "configs/byol.py optimizer_config.momentum"),
    ("optim.trust_coefficient", 1e-3, "configs/byol.py optimizer_config.eta"),
    ("optim.warmup_epochs", 10.0, "configs/byol.py warmup_steps = 10 * train_images_per_epoch // batch_size"),
]
OFFICIAL["byol"] = [
    *[("imagenet", *row) for row in _BYOL_COMMON],
    ("imagenet", "data.name", "imagenet2012", _BYOL_DATA + ": TFDS imagenet2012 train (TRAIN_AND_VALID)"),
    ("imagenet", "data.batch_size", 4096, "byol/main_loop.py --batch_size default 4096"),
    ("imagenet", "optim.epochs", 1000.0, _BYOL_CMD + ": max_steps = 1000 * 1281167 // 4096"),
    ("imagenet", "optim.lr", 0.2, _BYOL_CMD + ": _LR_PRESETS[1000], x batch / 256 (schedules.learning_schedule)"),
    ("imagenet", "optim.weight_decay", 1.5e-6, _BYOL_CMD + ": _WD_PRESETS[1000]"),
    ("imagenet", "method.base_ema", 0.996, _BYOL_CMD + ": _EMA_PRESETS[1000]"),
    ("imagenet", "model.name", "resnet50", _BYOL_CMD + ": encoder_class 'ResNet50', width_multiplier 1"),
    ("imagenet", "model.stem", "imagenet", "byol/utils/networks.py ResNetTorso: 7x7/2 conv + 3x3/2 max-pool"),
    ("imagenet", "model.zero_init_residual", True, "haiku BlockV1 (0673817) batchnorm_2 scale_init zeros"),
    ("imagenet", "views.crop_size", 224, _BYOL_DATA + ": resize to 224 x 224"),
    ("imagenet", "views.mean", (0.485, 0.456, 0.406), _BYOL_DATA + ": mean_rgb"),
    ("imagenet", "views.std", (0.229, 0.224, 0.225), _BYOL_DATA + ": stddev_rgb"),
    *[("cifar10", *row) for row in _BYOL_COMMON],
    ("cifar10", "data.name", "cifar10", _BYOL_CIFAR),
    ("cifar10", "data.batch_size", 512, _BYOL_CIFAR + "; batch 512 chosen for one accelerator (official 4096)"),
    ("cifar10", "optim.epochs", 300.0, _BYOL_CIFAR),
    ("cifar10", "optim.lr", 0.3, _BYOL_CIFAR + ": _LR_PRESETS[300], x batch / 256"),
    ("cifar10", "optim.weight_decay", 1e-6, _BYOL_CIFAR + ": _WD_PRESETS[300]"),
    ("cifar10", "method.base_ema", 0.99, _BYOL_CIFAR + ": _EMA_PRESETS[300]"),
    ("cifar10", "model.name", "resnet18", "preset's choice for 32 px (official ResNet-50; README imagenette ResNet18)"),
    ("cifar10", "model.stem", "cifar", "preset's choice: 3x3/1 stem, no max-pool, for 32 px images"),
    ("cifar10", "model.zero_init_residual", False, "haiku BlockV1 zero-inits bottlenecks only (ResNet-18: none)"),
    ("cifar10", "views.crop_size", 32, "preset's choice: CIFAR-10's native 32 px (official 224)"),
    ("imagenet", "model.dtype", "bfloat16", "byol code: float32, no bfloat16 cast; departs: bf16, no loss scaling"),
]
# --- end byol ---

# --- dino ---
# facebookresearch/dino README "Vanilla DINO training" (ViT-S/16, 100 epochs, 8 GPUs):
#   python -m torch.distributed.launch --nproc_per_node=8 main_dino.py --arch vit_small --data_path ... --output_dir ...
# so every value is main_dino.py's get_args_parser() default; published: 69.3% k-NN, 74.0% linear (README).
_DINO_CMD = "dino README vanilla ViT-S/16 command, main_dino.py default"
_DINO_CIFAR = "no official CIFAR recipe: the :imagenet command's value"
_DINO_SIZES = "no official CIFAR recipe: sized for 32 px CIFAR-10 images"
OFFICIAL["dino"] = [
    ("imagenet", "data.batch_size", 512, "dino README vanilla command: --nproc_per_node=8 x --batch_size_per_gpu 64"),
    ("imagenet", "model.name", "vit_small", "dino README vanilla command: --arch vit_small"),
    ("imagenet", "model.patch_size", 16, f"{_DINO_CMD} --patch_size 16"),
    ("imagenet", "model.drop_path_rate", 0.1, f"{_DINO_CMD} --drop_path_rate 0.1"),
    ("imagenet", "model.out_dim", 65536, f"{_DINO_CMD} --out_dim 65536"),
    ("imagenet", "model.head_hidden_dim", 2048, "dino vision_transformer.py DINOHead(hidden_dim=2048)"),
    ("imagenet", "model.head_bottleneck_dim", 256, "dino vision_transformer.py DINOHead(bottleneck_dim=256)"),
    ("imagenet", "model.norm_last_layer", True, f"{_DINO_CMD} --norm_last_layer True (not set by the command)"),
    ("imagenet", "model.use_bn_in_head", False, f"{_DINO_CMD} --use_bn_in_head False"),
    ("imagenet", "optim.optimizer", "adamw", f"{_DINO_CMD} --optimizer adamw"),
    ("imagenet", "optim.epochs", 100, f"{_DINO_CMD} --epochs 100"),
    ("imagenet", "optim.lr", 5e-4, f"{_DINO_CMD} --lr 0.0005 per 256 images, scaled by batch / 256 in main_dino"),
    ("imagenet", "optim.warmup_epochs", 10, f"{_DINO_CMD} --warmup_epochs 10"),
    ("imagenet", "optim.final_lr", 1e-6, f"{_DINO_CMD} --min_lr 1e-6"),
    ("imagenet", "optim.weight_decay", 0.04, f"{_DINO_CMD} --weight_decay 0.04"),
    ("imagenet", "optim.weight_decay_end", 0.4, f"{_DINO_CMD} --weight_decay_end 0.4 (cosine)"),
    ("imagenet", "optim.clip_grad", 3.0, f"{_DINO_CMD} --clip_grad 3.0"),
    ("imagenet", "optim.freeze_last_layer", 1, f"{_DINO_CMD} --freeze_last_layer 1"),
    ("imagenet", "method.teacher_temp", 0.04, f"{_DINO_CMD} --teacher_temp 0.04"),
    ("imagenet", "method.warmup_teacher_temp", 0.04, f"{_DINO_CMD} --warmup_teacher_temp 0.04"),
    ("imagenet", "method.warmup_teacher_temp_epochs", 0, f"{_DINO_CMD} --warmup_teacher_temp_epochs 0"),
    ("imagenet", "method.momentum_teacher", 0.996, f"{_DINO_CMD} --momentum_teacher 0.996 (cosine to 1)"),
    ("imagenet", "method.student_temp", 0.1, "main_dino.py DINOLoss(student_temp=0.1)"),
    ("imagenet", "method.center_momentum", 0.9, "main_dino.py DINOLoss(center_momentum=0.9)"),
    ("imagenet", "views.crop_size", 224, "main_dino.py DataAugmentationDINO: RandomResizedCrop(224)"),
    ("imagenet", "views.crop_scale", (0.4, 1.0), f"{_DINO_CMD} --global_crops_scale 0.4 1."),
    ("imagenet", "views.local_crop_size", 96, "main_dino.py DataAugmentationDINO: RandomResizedCrop(96)"),
    ("imagenet", "views.local_crop_scale", (0.05, 0.4), f"{_DINO_CMD} --local_crops_scale 0.05 0.4"),
    ("imagenet", "views.local_crops_number", 8, f"{_DINO_CMD} --local_crops_number 8"),
    ("imagenet", "views.color_jitter", (0.4, 0.4, 0.2, 0.1), "main_dino.py DataAugmentationDINO: ColorJitter"),
    ("imagenet", "views.blur_p", (1.0, 0.1, 0.5), "main_dino.py DataAugmentationDINO: GaussianBlur p"),
    ("imagenet", "views.solarize_p", 0.2, "main_dino.py DataAugmentationDINO: Solarization(0.2)"),
    ("cifar10", "data.batch_size", 512, f"{_DINO_CIFAR} (8 GPUs x 64)"),
    ("cifar10", "model.name", "vit_small", f"{_DINO_CIFAR} --arch vit_small"),
    ("cifar10", "model.patch_size", 4, f"{_DINO_SIZES}: patch 16 would leave 2 x 2 tokens"),
    ("cifar10", "views.crop_size", 32, f"{_DINO_SIZES}: the whole image (official 224)"),
    ("cifar10", "views.local_crop_size", 16, f"{_DINO_SIZES}: about 96 / 224 of it, a multiple of the patch"),
    ("cifar10", "model.drop_path_rate", 0.1, f"{_DINO_CIFAR} --drop_path_rate 0.1"),
    ("cifar10", "model.out_dim", 65536, f"{_DINO_CIFAR} --out_dim 65536"),
    ("cifar10", "model.norm_last_layer", True, f"{_DINO_CIFAR} --norm_last_layer True"),
    ("cifar10", "model.use_bn_in_head", False, f"{_DINO_CIFAR} --use_bn_in_head False"),
    ("cifar10", "optim.optimizer", "adamw", f"{_DINO_CIFAR} --optimizer adamw"),
    ("cifar10", "optim.epochs", 100, f"{_DINO_CIFAR} --epochs 100"),
    ("cifar10", "optim.lr", 5e-4, f"{_DINO_CIFAR} --lr 0.0005 per 256 images"),
    ("cifar10", "optim.warmup_epochs", 10, f"{_DINO_CIFAR} --warmup_epochs 10"),
    ("cifar10", "optim.final_lr", 1e-6, f"{_DINO_CIFAR} --min_lr 1e-6"),
    ("cifar10", "optim.weight_decay", 0.04, f"{_DINO_CIFAR} --weight_decay 0.04"),
    ("cifar10", "optim.weight_decay_end", 0.4, f"{_DINO_CIFAR} --weight_decay_end 0.4"),
    ("cifar10", "optim.clip_grad", 3.0, f"{_DINO_CIFAR} --clip_grad 3.0"),
    ("cifar10", "optim.freeze_last_layer", 1, f"{_DINO_CIFAR} --freeze_last_layer 1"),
    ("cifar10", "method.teacher_temp", 0.04, f"{_DINO_CIFAR} --teacher_temp 0.04"),
    ("cifar10", "method.warmup_teacher_temp", 0.04, f"{_DINO_CIFAR} --warmup_teacher_temp 0.04"),
    ("cifar10", "method.warmup_teacher_temp_epochs", 0, f"{_DINO_CIFAR} --warmup_teacher_temp_epochs 0"),
    ("cifar10", "method.momentum_teacher", 0.996, f"{_DINO_CIFAR} --momentum_teacher 0.996"),
    ("cifar10", "method.student_temp", 0.1, f"{_DINO_CIFAR} (DINOLoss student_temp 0.1)"),
    ("cifar10", "method.center_momentum", 0.9, f"{_DINO_CIFAR} (DINOLoss center_momentum 0.9)"),
    ("cifar10", "views.crop_scale", (0.4, 1.0), f"{_DINO_CIFAR} --global_crops_scale 0.4 1."),
    ("cifar10", "views.local_crop_scale", (0.05, 0.4), f"{_DINO_CIFAR} --local_crops_scale 0.05 0.4"),
    ("cifar10", "views.local_crops_number", 8, f"{_DINO_CIFAR} --local_crops_number 8"),
    ("imagenet", "model.dtype", "bfloat16", f"{_DINO_CMD} --use_fp16 True; bf16 instead of fp16: no loss scaling"),
]
# --- end dino ---

# --- moco ---
_MOCO = (
    "facebookresearch/moco README (MoCo v2): main_moco.py -a resnet50 --lr 0.03 --batch-size 256 "
    "--mlp --moco-t 0.2 --aug-plus --cos"
)
_MOCO_MAIN = "facebookresearch/moco main_moco.py"
_MOCO_DEMO = "facebookresearch/moco colab/moco_cifar10_demo.ipynb (branch colab-notebook), args with --cos, asymmetric"
OFFICIAL["moco"] = [
    ("imagenet", "model.name", "resnet50", _MOCO + ": -a resnet50"),
    ("imagenet", "data.batch_size", 256, _MOCO + ": --batch-size 256"),
    ("imagenet", "optim.epochs", 200.0, _MOCO_MAIN + " --epochs default 200"),
    ("imagenet", "optim.lr", 0.03, _MOCO + ": --lr 0.03"),
    ("imagenet", "optim.scale_lr", False, _MOCO_MAIN + ": --lr used as given, no batch scaling"),
    ("imagenet", "optim.cos", True, _MOCO + ": --cos"),
    ("imagenet", "optim.lr_schedule", "per_epoch", _MOCO_MAIN + " adjust_learning_rate, once per epoch"),
    ("imagenet", "optim.weight_decay", 1e-4, _MOCO_MAIN + " --wd default 1e-4"),
    ("imagenet", "optim.momentum", 0.9, _MOCO_MAIN + " --momentum default 0.9"),
    ("imagenet", "method.temperature", 0.2, _MOCO + ": --moco-t 0.2"),
    ("imagenet", "method.queue_size", 65536, _MOCO_MAIN + " --moco-k default 65536"),
    ("imagenet", "method.momentum", 0.999, _MOCO_MAIN + " --moco-m default 0.999"),
    ("imagenet", "method.bn_groups", 8, _MOCO + " on 8 GPUs: per-GPU batch norm over 32 images (shuffling BN)"),
    ("imagenet", "model.mlp", True, _MOCO + ": --mlp"),
    ("imagenet", "model.proj_hidden_dim", 2048, "moco/builder.py: the MLP's hidden width = the fc input, 2048"),
    ("imagenet", "model.proj_dim", 128, _MOCO_MAIN + " --moco-dim default 128"),
    ("imagenet", "views.aug_plus", True, _MOCO + ": --aug-plus"),
    ("imagenet", "views.crop_size", 224, _MOCO_MAIN + " aug_plus: RandomResizedCrop(224, scale=(0.2, 1.0))"),
    ("imagenet", "views.crop_scale", (0.2, 1.0), _MOCO_MAIN + " aug_plus: RandomResizedCrop scale"),
    ("imagenet", "views.color_jitter", (0.4, 0.4, 0.4, 0.1), _MOCO_MAIN + " aug_plus: ColorJitter(0.4, 0.4, 0.4, 0.1)"),
    ("imagenet", "views.color_p", 0.8, _MOCO_MAIN + " aug_plus: RandomApply(ColorJitter, p=0.8)"),
    ("imagenet", "views.gray_p", 0.2, _MOCO_MAIN + " aug_plus: RandomGrayscale(p=0.2)"),
    ("imagenet", "views.blur_p", 0.5, _MOCO_MAIN + " aug_plus: RandomApply(GaussianBlur, p=0.5)"),
    ("imagenet", "views.blur_sigma", (0.1, 2.0), _MOCO_MAIN + " aug_plus: GaussianBlur([0.1, 2.0])"),
    ("imagenet", "views.flip_p", 0.5, _MOCO_MAIN + " aug_plus: RandomHorizontalFlip()"),
    ("imagenet", "eval.image_size", 224, "facebookresearch/moco main_lincls.py val: Resize(256), CenterCrop(224)"),
    ("imagenet", "eval.crop_fraction", 0.875, "facebookresearch/moco main_lincls.py val: 224 / 256"),
    ("cifar10", "model.name", "resnet18", _MOCO_DEMO + ": --arch resnet18"),
    ("cifar10", "model.stem", "cifar", _MOCO_DEMO + ": ModelBase conv1 3x3 stride 1, no max-pool"),
    ("cifar10", "model.mlp", False, _MOCO_DEMO + ": the head is resnet18's fc, one Linear"),
    ("cifar10", "model.proj_dim", 128, _MOCO_DEMO + ": --moco-dim 128"),
    ("cifar10", "data.batch_size", 512, _MOCO_DEMO + ": --batch-size 512"),
    ("cifar10", "optim.epochs", 200.0, _MOCO_DEMO + ": args.epochs = 200 (kNN 82.6)"),
    ("cifar10", "optim.lr", 0.06, _MOCO_DEMO + ": --lr 0.06 for batch 512"),
    ("cifar10", "optim.scale_lr", False, _MOCO_DEMO + ": lr used as given"),
    ("cifar10", "optim.cos", True, _MOCO_DEMO + ": args.cos = True"),
    ("cifar10", "optim.lr_schedule", "per_epoch", _MOCO_DEMO + ": adjust_learning_rate once per epoch"),
    ("cifar10", "optim.weight_decay", 5e-4, _MOCO_DEMO + ": --wd 5e-4"),
    ("cifar10", "optim.momentum", 0.9, _MOCO_DEMO + ": SGD(momentum=0.9)"),
    ("cifar10", "method.temperature", 0.1, _MOCO_DEMO + ": --moco-t 0.1"),
    ("cifar10", "method.queue_size", 4096, _MOCO_DEMO + ": --moco-k 4096"),
    ("cifar10", "method.momentum", 0.99, _MOCO_DEMO + ": --moco-m 0.99"),
    ("cifar10", "method.bn_groups", 8, _MOCO_DEMO + ": --bn-splits 8 (SplitBatchNorm)"),
    ("cifar10", "views.crop_size", 32, _MOCO_DEMO + ": RandomResizedCrop(32)"),
    ("cifar10", "views.crop_scale", (0.08, 1.0), _MOCO_DEMO + ": RandomResizedCrop's default scale"),
    ("cifar10", "views.color_jitter", (0.4, 0.4, 0.4, 0.1), _MOCO_DEMO + ": ColorJitter(0.4, 0.4, 0.4, 0.1)"),
    ("cifar10", "views.color_p", 0.8, _MOCO_DEMO + ": RandomApply(ColorJitter, p=0.8)"),
    ("cifar10", "views.gray_p", 0.2, _MOCO_DEMO + ": RandomGrayscale(p=0.2)"),
    ("cifar10", "views.blur_p", 0.0, _MOCO_DEMO + ": no blur"),
    ("cifar10", "views.flip_p", 0.5, _MOCO_DEMO + ": RandomHorizontalFlip(p=0.5)"),
    ("cifar10", "views.std", (0.2023, 0.1994, 0.2010), _MOCO_DEMO + ": Normalize std"),
    ("cifar10", "eval.knn_k", 200, _MOCO_DEMO + ": --knn-k 200 (the monitor its 82.6 comes from)"),
    ("cifar10", "eval.knn_temperature", 0.1, _MOCO_DEMO + ": --knn-t 0.1"),
    ("imagenet", "model.dtype", "bfloat16", _MOCO_MAIN + ": float32, no AMP; departs: bf16, no loss scaling"),
]
# --- end moco ---

# --- paws ---
_PAWS_C = "suncet configs/paws/cifar10_train.yaml"
_PAWS_I = "suncet configs/paws/imgnt_train.yaml"
_PAWS_T = "suncet src/paws_train.py"
_PAWS_D = "suncet src/data_manager.py"
OFFICIAL["paws"] = [
    ("cifar10", "data.name", "cifar10", _PAWS_C + " data.dataset"),
    ("cifar10", "data.batch_size", 256, _PAWS_C + " criterion.unsupervised_batch_size (1 GPU)"),
    ("cifar10", "data.label_fraction", 0.08, _PAWS_C + " data.unlabeled_frac 0.92 (4000 labels)"),
    ("cifar10", "views.crop_size", 32, _PAWS_D + " _make_cifar10_transforms RandomResizedCrop(32)"),
    ("cifar10", "views.crop_scale", (0.75, 1.0), _PAWS_T + " main: crop_scale with multicrop > 0 (cifar10)"),
    ("cifar10", "views.crop_ratio", (0.75, 1.3333333333333333), "torchvision RandomResizedCrop default ratio"),
    ("cifar10", "views.local_crops_number", 6, _PAWS_C + " data.multicrop"),
    ("cifar10", "views.local_crop_size", 18, _PAWS_T + " main: mc_size (cifar10)"),
    ("cifar10", "views.local_crop_scale", (0.3, 0.75), _PAWS_T + " main: mc_scale (cifar10)"),
    ("cifar10", "views.supervised_views", 2, _PAWS_C + " criterion.supervised_views"),
    ("cifar10", "views.color_strength", 0.5, _PAWS_C + " data.color_jitter_strength"),
    ("cifar10", "views.color_p", 0.8, _PAWS_D + " get_color_distortion RandomApply(p=0.8)"),
    (
        "cifar10",
        "views.solarize_p",
        0.2,
        _PAWS_D + " Solarize(p=0.2) (Equalize p=0.2 not implemented: config docstring)",
    ),
    ("cifar10", "views.gray_p", 0.0, _PAWS_D + ": no grayscale for cifar10"),
    ("cifar10", "views.blur_p", 0.0, _PAWS_D + ": no blur for cifar10"),
    ("cifar10", "views.mean", (0.4914, 0.4822, 0.4465), _PAWS_D + " Normalize"),
    ("cifar10", "views.std", (0.2023, 0.1994, 0.201), _PAWS_D + " Normalize"),
    (
        "cifar10",
        "model.name",
        "resnet18",
        "departure: " + _PAWS_C + " meta.model_name wide_resnet28w2 (not in common/models.py)",
    ),
    (
        "cifar10",
        "model.proj_hidden_dim",
        512,
        "departure: " + _PAWS_T + " init_model hidden_dim = body width (128 for WRN-28-2, 512 here)",
    ),
    ("cifar10", "model.proj_dim", 128, _PAWS_C + " meta.output_dim"),
    ("cifar10", "model.pred_hidden_dim", 0, _PAWS_C + " meta.use_pred_head false"),
    ("cifar10", "model.bn_momentum", 0.9, "torch BatchNorm default momentum 0.1"),
    ("cifar10", "method.tau", 0.1, _PAWS_C + " criterion.temperature"),
    ("cifar10", "method.T", 0.25, _PAWS_C + " criterion.sharpen"),
    ("cifar10", "method.me_max", True, _PAWS_C + " criterion.me_max"),
    ("cifar10", "method.classes_per_batch", 10, _PAWS_C + " criterion.classes_per_batch"),
    ("cifar10", "method.s_per_class", 64, _PAWS_C + " criterion.supervised_imgs_per_class"),
    ("cifar10", "method.label_smoothing", 0.1, _PAWS_C + " data.label_smoothing"),
    ("cifar10", "optim.epochs", 600.0, _PAWS_C + " optimization.epochs"),
    ("cifar10", "optim.warmup_epochs", 10.0, _PAWS_C + " optimization.warmup"),
    ("cifar10", "optim.start_lr", 0.8, _PAWS_C + " optimization.start_lr"),
    ("cifar10", "optim.lr", 3.2, _PAWS_C + " optimization.lr (absolute, not scaled)"),
    ("cifar10", "optim.final_lr", 0.032, _PAWS_C + " optimization.final_lr"),
    ("cifar10", "optim.weight_decay", 1e-06, _PAWS_C + " optimization.weight_decay"),
    ("cifar10", "optim.momentum", 0.9, _PAWS_C + " optimization.momentum (nesterov false)"),
    ("cifar10", "optim.trust_coefficient", 0.001, _PAWS_T + " init_opt LARS(trust_coefficient=0.001)"),
    ("imagenet", "data.name", "imagenet2012", _PAWS_I + " data.dataset"),
    ("imagenet", "data.batch_size", 4096, _PAWS_I + " criterion.unsupervised_batch_size 64 x 64 GPUs (suncet README)"),
    (
        "imagenet",
        "data.label_fraction",
        0.01,
        "departure: " + _PAWS_I + " unlabeled_frac 0.9 (10%); 1% = 0.99 (the labelled pool lives on device)",
    ),
    ("imagenet", "views.crop_size", 224, _PAWS_D + " _make_imgnt_transforms RandomResizedCrop(224)"),
    ("imagenet", "views.crop_scale", (0.14, 1.0), _PAWS_T + " main: crop_scale with multicrop > 0"),
    ("imagenet", "views.crop_ratio", (0.75, 1.3333333333333333), "torchvision RandomResizedCrop default ratio"),
    ("imagenet", "views.local_crops_number", 6, _PAWS_I + " data.multicrop"),
    ("imagenet", "views.local_crop_size", 96, _PAWS_T + " main: mc_size"),
    ("imagenet", "views.local_crop_scale", (0.05, 0.14), _PAWS_T + " main: mc_scale"),
    ("imagenet", "views.supervised_views", 1, _PAWS_I + " criterion.supervised_views"),
    ("imagenet", "views.color_strength", 1.0, _PAWS_I + " data.color_jitter_strength"),
    ("imagenet", "views.color_p", 0.8, _PAWS_D + " get_color_distortion RandomApply(p=0.8)"),
    ("imagenet", "views.gray_p", 0.2, _PAWS_D + " RandomGrayscale(p=0.2)"),
    ("imagenet", "views.blur_p", 0.5, _PAWS_D + " GaussianBlur(p=0.5)"),
    ("imagenet", "views.solarize_p", 0.0, _PAWS_D + ": no solarize for imagenet"),
    ("imagenet", "views.mean", (0.485, 0.456, 0.406), _PAWS_D + " Normalize"),
    ("imagenet", "views.std", (0.229, 0.224, 0.225), _PAWS_D + " Normalize"),
    ("imagenet", "model.name", "resnet50", _PAWS_I + " meta.model_name"),
    ("imagenet", "model.stem", "imagenet", "suncet src/resnet.py resnet50 (7x7 conv + max-pool)"),
    ("imagenet", "model.proj_hidden_dim", 2048, _PAWS_T + " init_model hidden_dim 2048 (resnet50)"),
    ("imagenet", "model.proj_dim", 2048, _PAWS_I + " meta.output_dim"),
    (
        "imagenet",
        "model.pred_hidden_dim",
        512,
        _PAWS_I + " meta.use_pred_head true; suncet src/paws_train.py init_model output_dim // 4",
    ),
    (
        "imagenet",
        "model.bn_momentum",
        0.9,
        "torch BatchNorm default momentum 0.1 (apex SyncBN over all GPUs = global BN)",
    ),
    ("imagenet", "method.tau", 0.1, _PAWS_I + " criterion.temperature"),
    ("imagenet", "method.T", 0.25, _PAWS_I + " criterion.sharpen"),
    ("imagenet", "method.me_max", True, _PAWS_I + " criterion.me_max"),
    (
        "imagenet",
        "method.classes_per_batch",
        960,
        _PAWS_I + " criterion.classes_per_batch 15 x 64 GPUs (unique_classes_per_rank)",
    ),
    ("imagenet", "method.s_per_class", 7, _PAWS_I + " criterion.supervised_imgs_per_class"),
    ("imagenet", "method.label_smoothing", 0.1, _PAWS_I + " data.label_smoothing"),
    ("imagenet", "optim.epochs", 100.0, _PAWS_I + " optimization.epochs"),
    ("imagenet", "optim.warmup_epochs", 10.0, _PAWS_I + " optimization.warmup"),
    ("imagenet", "optim.start_lr", 0.3, _PAWS_I + " optimization.start_lr"),
    ("imagenet", "optim.lr", 6.4, _PAWS_I + " optimization.lr (absolute, not scaled)"),
    ("imagenet", "optim.final_lr", 0.064, _PAWS_I + " optimization.final_lr"),
    ("imagenet", "optim.weight_decay", 1e-06, _PAWS_I + " optimization.weight_decay"),
    ("imagenet", "optim.momentum", 0.9, _PAWS_I + " optimization.momentum (nesterov false)"),
    ("imagenet", "optim.trust_coefficient", 0.001, _PAWS_T + " init_opt LARS(trust_coefficient=0.001)"),
    ("imagenet", "model.dtype", "bfloat16", _PAWS_I + " meta.use_fp16 true; bf16 instead of fp16: no loss scaling"),
]
# --- end paws ---

# --- pirl ---
_PIRL = "facebookresearch/vissl configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml"
_PIRL_CIFAR = "no official CIFAR-10 recipe (paper: ImageNet, YFCC); the VISSL ImageNet value"
_JIGSAW = "vissl ImgPatchesFromTensor default patch_jitter 21 (85-pixel cells, 64-pixel patches)"
_PIRL_ROWS = [
    ("data.batch_size", 1024, "BATCHSIZE_PER_REPLICA 32 x NUM_NODES 4 x NUM_PROC_PER_NODE 8"),
    ("method.bn_groups", 32, "per-GPU batch norm over 32 images (SYNC_BN_CONFIG.CONVERT_BN_TO_SYNC_BN default False)"),
    ("optim.epochs", 800.0, "OPTIMIZER.num_epochs 800"),
    ("optim.lr", 0.03, "auto_lr_scaling base_value 0.03 per base_lr_batch_size 256 (0.12 at 1024)"),
    ("optim.final_lr_fraction", 0.001, "cosine end_value 0.00012 / start_value 0.12"),
    ("optim.lr_schedule", "per_epoch", "param_schedulers.lr update_interval: epoch"),
    ("optim.weight_decay", 1e-4, "OPTIMIZER.weight_decay 0.0001 (regularize_bn/bias False)"),
    ("optim.momentum", 0.9, "OPTIMIZER.momentum 0.9, nesterov False"),
    ("method.temperature", 0.07, "nce_loss_with_memory.temperature 0.07"),
    ("method.num_negatives", 32000, "negative_sampling_params.num_negatives 32000"),
    ("method.memory_momentum", 0.5, "memory_params.momentum 0.5"),
    ("method.norm_constant", -1.0, "norm_constant -1 (estimated at the first step)"),
    ("method.loss_type", "nce", "nce_loss_with_memory (NCE, not cross-entropy)"),
    ("method.memory_init", "random", "memory_params.norm_init True: random unit rows"),
    ("model.embed_dim", 128, "memory_params.embedding_dim 128, heads [2048, 128]"),
    ("views.crop_scale", (0.08, 1.0), "ImgPilToPatchesAndImage crop_scale_image [0.08, 1.0]"),
    ("views.patch_crop_size", 255, "ImgPilToPatchesAndImage crop_size_patches 255"),
    ("views.patch_crop_scale", (0.6, 1.0), "ImgPilToPatchesAndImage crop_scale_patches [0.6, 1.0]"),
    ("views.grid", 3, "ImgPilToPatchesAndImage num_patches 9"),
    ("views.color_jitter", (0.4, 0.4, 0.4, 0.2), "ColorJitter 0.4, 0.4, 0.4, hue 0.2"),
    ("views.photometric_p", 0.66, "ImgPilRandomPhotometric default p 0.66"),
    ("views.gray_p", 0.2, "RandomGrayscale p 0.2"),
    ("views.flip_p", 0.5, "RandomHorizontalFlip"),
]
OFFICIAL["pirl"] = (
    [("imagenet", path, value, f"{_PIRL}: {why}") for path, value, why in _PIRL_ROWS]
    + [
        ("imagenet", "model.name", "resnet50", f"{_PIRL}: TRUNK resnet DEPTH 50"),
        ("imagenet", "method.memory_size", 1281167, f"{_PIRL}: num_train_samples 1281167"),
        ("imagenet", "views.crop_size", 224, f"{_PIRL}: crop_size_image 224"),
        ("imagenet", "views.patch_jitter", 21, _JIGSAW),
        ("imagenet", "eval.image_size", 224, "vissl linear benchmark (TEST: Resize 256, CenterCrop 224)"),
        ("imagenet", "eval.crop_fraction", 0.875, "vissl linear benchmark: 224 / 256"),
    ]
    + [
        ("cifar10", path, value, f"{_PIRL_CIFAR}: {why}")
        for path, value, why in _PIRL_ROWS
        if path not in ("data.batch_size", "method.bn_groups", "views.patch_crop_size")
    ]
    + [
        ("cifar10", "data.batch_size", 256, f"{_PIRL_CIFAR}: departs, batch 256 for one accelerator (lr x B/256)"),
        ("cifar10", "method.bn_groups", 8, f"{_PIRL_CIFAR}: 32 images per batch-norm group as VISSL's GPUs"),
        ("cifar10", "method.memory_size", 50000, "CIFAR-10's 50000 training images (one bank row each)"),
        ("cifar10", "views.crop_size", 32, "departs: CIFAR's 32x32 images"),
        ("cifar10", "views.patch_crop_size", 36, "departs: 255/224 of the 32 image crop, cells of 12"),
        ("cifar10", "views.patch_jitter", 3, "departs: cells of 12, patches of 9 (VISSL 85 -> 64)"),
        ("cifar10", "model.name", "resnet18", "departs: a CIFAR ResNet-18 (paper ResNet-50)"),
        ("imagenet", "model.dtype", "bfloat16", _PIRL + ": float32, AMP off; departs: bf16, no loss scaling"),
    ]
)
# --- end pirl ---

# --- simclr ---
_R = "google-research/simclr README.md@383d414"
_IN = f"{_R} ImageNet pretraining command"
_C10 = f"{_R} CIFAR-10 pretraining command"
_RUN = "google-research/simclr tf2/run.py default"
_DU = "google-research/simclr tf2/data_util.py"
_SIMCLR_COMMON = [
    ("optim.momentum", 0.9, f"{_RUN} --momentum (LARS, classic momentum)"),
    ("optim.trust_coefficient", 0.001, "google-research/simclr tf2/lars_optimizer.py EETA_DEFAULT"),
    ("model.bn_momentum", 0.9, f"{_RUN} --batch_norm_decay"),
    ("model.zero_init_residual", True, "google-research/simclr tf2/resnet.py BatchNormRelu(init_zero=True)"),
    ("model.proj_dim", 128, f"{_RUN} --proj_out_dim"),
    ("views.crop_scale", (0.08, 1.0), f"{_DU} crop_and_resize area_range"),
    ("views.crop_ratio", (3 / 4, 4 / 3), f"{_DU} crop_and_resize aspect_ratio_range"),
    ("views.flip_p", 0.5, f"{_DU} preprocess_for_train random_flip_left_right"),
    ("views.color_p", 0.8, f"{_DU} random_color_jitter"),
    ("views.gray_p", 0.2, f"{_DU} random_color_jitter"),
    ("views.mean", (0.0, 0.0, 0.0), f"{_DU}: images in [0, 1], no normalisation"),
    ("views.std", (1.0, 1.0, 1.0), f"{_DU}: images in [0, 1], no normalisation"),
]
OFFICIAL["simclr"] = [
    ("imagenet", "data.batch_size", 4096, f"{_IN} --train_batch_size"),
    ("imagenet", "optim.epochs", 100.0, f"{_IN} --train_epochs"),
    ("imagenet", "method.temperature", 0.1, f"{_IN} --temperature"),
    ("imagenet", "optim.lr", 0.075, f"{_IN} --learning_rate"),
    ("imagenet", "optim.lr_scaling", "sqrt", f"{_IN} --learning_rate_scaling"),
    ("imagenet", "optim.weight_decay", 1e-4, f"{_IN} --weight_decay"),
    ("imagenet", "model.name", "resnet50", f"{_RUN} --resnet_depth=50"),
    ("imagenet", "model.stem", "imagenet", "google-research/simclr tf2/model.py cifar_stem=image_size<=32"),
    ("imagenet", "model.proj_hidden_dim", 2048, "google-research/simclr tf2/model.py: hidden width = body width"),
    ("imagenet", "views.crop_size", 224, f"{_IN} --image_size"),
    ("imagenet", "views.color_strength", 1.0, f"{_RUN} --color_jitter_strength"),
    ("imagenet", "views.blur_p", 0.5, f"{_RUN} --use_blur; tf2/data_util.py batch_random_blur p=0.5"),
    ("cifar10", "data.batch_size", 512, f"{_C10} --train_batch_size"),
    ("cifar10", "optim.epochs", 1000.0, f"{_C10} --train_epochs"),
    ("cifar10", "method.temperature", 0.5, f"{_C10} --temperature"),
    ("cifar10", "optim.lr", 1.0, f"{_C10} --learning_rate"),
    ("cifar10", "optim.lr_scaling", "linear", f"{_RUN} --learning_rate_scaling"),
    ("cifar10", "optim.weight_decay", 1e-4, f"{_C10} --weight_decay"),
    ("cifar10", "model.name", "resnet18", f"{_C10} --resnet_depth=18"),
    ("cifar10", "model.stem", "cifar", "google-research/simclr tf2/model.py cifar_stem=image_size<=32"),
    ("cifar10", "model.proj_hidden_dim", 512, "google-research/simclr tf2/model.py: hidden width = body width"),
    ("cifar10", "views.crop_size", 32, f"{_C10} --image_size"),
    ("cifar10", "views.color_strength", 0.5, f"{_C10} --color_jitter_strength"),
    ("cifar10", "views.blur_p", 0.0, f"{_C10} --use_blur=False"),
    ("imagenet", "optim.warmup_epochs", 10.0, f"{_RUN} --warmup_epochs"),
    ("cifar10", "optim.warmup_epochs", 10.0, f"{_RUN} --warmup_epochs"),
    ("imagenet", "model.dtype", "bfloat16", "simclr code: float32, no bfloat16 cast; departs: bf16, no loss scaling"),
] + [(preset, *row) for preset in ("imagenet", "cifar10") for row in _SIMCLR_COMMON]
# --- end simclr ---

# --- simclr2 ---
_V2 = "SimCLRv2 (arXiv:2006.10029) Appendix"
_FT = f"{_R} fine-tuning command (ImageNet, 1% of labels)"
OFFICIAL["simclr2"] = [
    ("imagenet", "data.batch_size", 4096, f"{_V2}: pretraining batch 4096"),
    ("imagenet", "optim.epochs", 800.0, f"{_V2}: 800 pretraining epochs"),
    ("imagenet", "optim.warmup_epochs", 40.0, f"{_V2}: warmup over the first 5% of epochs"),
    ("imagenet", "optim.lr", 0.1, f"{_V2}: lr 6.4 = 0.1 x sqrt(4096)"),
    ("imagenet", "optim.lr_scaling", "sqrt", f"{_V2}: lr 6.4 = 0.1 x sqrt(4096)"),
    ("imagenet", "optim.weight_decay", 1e-4, f"{_V2}: weight decay 1e-4"),
    ("imagenet", "method.temperature", 0.1, f"{_V2}: temperature 0.1"),
    ("imagenet", "model.name", "resnet50", f"{_R} table row r50_1x_sk0"),
    ("imagenet", "model.proj_layers", 3, f"{_FT} --num_proj_layers"),
    ("imagenet", "model.ft_proj_layer", 1, f"{_FT} --ft_proj_selector"),
    ("imagenet", "model.proj_dim", 128, f"{_RUN} --proj_out_dim"),
    ("imagenet", "model.proj_hidden_dim", 2048, "google-research/simclr tf2/model.py: hidden width = body width"),
    ("imagenet", "data.label_fraction", 0.01, f"{_FT} --dataset=imagenet2012_subset/1pct"),
    ("imagenet", "finetune.batch_size", 1024, f"{_FT} --train_batch_size"),
    ("imagenet", "finetune.epochs", 60.0, f"{_FT} --train_epochs"),
    ("imagenet", "finetune.warmup_epochs", 0.0, f"{_FT} --warmup_epochs"),
    ("imagenet", "finetune.lr", 0.005, f"{_FT} --learning_rate"),
    ("imagenet", "finetune.lr_scaling", "sqrt", f"{_FT} --learning_rate_scaling"),
    ("imagenet", "finetune.weight_decay", 0.0, f"{_FT} --weight_decay"),
    ("imagenet", "finetune.zero_init_classifier", True, f"{_FT} --zero_init_logits_layer"),
    ("imagenet", "distill.batch_size", 4096, f"{_V2}: distillation with the pretraining batch"),
    ("imagenet", "distill.epochs", 400.0, f"{_V2}: 400 distillation epochs"),
    ("imagenet", "distill.warmup_epochs", 20.0, f"{_V2}: the pretraining schedule (5% warmup)"),
    ("imagenet", "distill.lr", 0.1, f"{_V2}: the pretraining learning rate"),
    ("imagenet", "distill.weight_decay", 1e-4, f"{_V2}: the pretraining weight decay"),
    ("imagenet", "method.distill_temperature", 0.1, "paper Appendix: 0.1 self-distillation (1.0 big-to-small)"),
    ("imagenet", "model.student_name", "resnet50", f"{_V2}: self-distillation (same body)"),
    ("imagenet", "views.crop_size", 224, f"{_RUN} --image_size"),
    ("imagenet", "views.color_strength", 1.0, f"{_RUN} --color_jitter_strength"),
    ("imagenet", "views.blur_p", 0.5, f"{_RUN} --use_blur; tf2/data_util.py batch_random_blur p=0.5"),
    # cifar10: no official SimCLRv2 CIFAR-10 recipe; pretraining is SimCLR's README CIFAR-10 command.
    ("cifar10", "data.batch_size", 512, f"{_C10} --train_batch_size"),
    ("cifar10", "optim.epochs", 1000.0, f"{_C10} --train_epochs"),
    ("cifar10", "optim.lr", 1.0, f"{_C10} --learning_rate"),
    ("cifar10", "optim.lr_scaling", "linear", f"{_RUN} --learning_rate_scaling"),
    ("cifar10", "optim.weight_decay", 1e-4, f"{_C10} --weight_decay"),
    ("cifar10", "method.temperature", 0.5, f"{_C10} --temperature"),
    ("cifar10", "model.name", "resnet18", f"{_C10} --resnet_depth=18"),
    ("cifar10", "model.stem", "cifar", "google-research/simclr tf2/model.py cifar_stem=image_size<=32"),
    ("cifar10", "views.crop_size", 32, f"{_C10} --image_size"),
    ("cifar10", "views.color_strength", 0.5, f"{_C10} --color_jitter_strength"),
    ("cifar10", "views.blur_p", 0.0, f"{_C10} --use_blur=False"),
    ("cifar10", "optim.warmup_epochs", 10.0, f"{_RUN} --warmup_epochs"),
    ("cifar10", "finetune.batch_size", 512, "no official CIFAR-10 fine-tuning command: the pretraining batch"),
    ("cifar10", "finetune.lr", 0.005, f"{_FT} --learning_rate (the ImageNet command's rate)"),
    ("cifar10", "finetune.zero_init_classifier", True, f"{_FT} --zero_init_logits_layer"),
    ("imagenet", "model.dtype", "bfloat16", "simclr code: float32, no bfloat16 cast; departs: bf16, no loss scaling"),
] + [(preset, *row) for preset in ("imagenet", "cifar10") for row in _SIMCLR_COMMON]
# --- end simclr2 ---

# --- swav ---
_SWAV = "facebookresearch/swav scripts/swav_800ep_pretrain.sh (README: 800 ep, batch 4096, 2x224 + 6x96, 75.3)"
_SWAV_MAIN = "facebookresearch/swav main_swav.py"
_SWAV_DATA = "facebookresearch/swav src/multicropdataset.py"
_SWAV_256 = "facebookresearch/swav scripts/swav_400ep_bs256_pretrain.sh (batch 256, queue 3840 from epoch 15)"
_SWAV_CIFAR = "not in the paper (SwAV has no CIFAR recipe): the batch-256 recipe " + _SWAV_256
OFFICIAL["swav"] = [
    ("imagenet", "model.name", "resnet50", _SWAV + ": --arch resnet50"),
    ("imagenet", "model.stem", "imagenet", "facebookresearch/swav src/resnet50.py: 7x7/2 conv + 3x3/2 max-pool"),
    ("imagenet", "model.proj_hidden_dim", 2048, _SWAV_MAIN + " --hidden_mlp default 2048"),
    ("imagenet", "model.proj_dim", 128, _SWAV + ": --feat_dim 128"),
    ("imagenet", "model.num_prototypes", 3000, _SWAV + ": --nmb_prototypes 3000"),
    ("imagenet", "data.batch_size", 4096, _SWAV + ": --batch_size 64 on 64 GPUs"),
    ("imagenet", "views.crop_size", 224, _SWAV + ": --size_crops 224 96"),
    ("imagenet", "views.local_crop_size", 96, _SWAV + ": --size_crops 224 96"),
    ("imagenet", "views.local_crops_number", 6, _SWAV + ": --nmb_crops 2 6"),
    ("imagenet", "views.crop_scale", (0.14, 1.0), _SWAV + ": --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14"),
    (
        "imagenet",
        "views.local_crop_scale",
        (0.05, 0.14),
        _SWAV + ": --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14",
    ),
    ("imagenet", "views.color_strength", 1.0, _SWAV_DATA + " get_color_distortion(s=1.0)"),
    ("imagenet", "views.color_p", 0.8, _SWAV_DATA + " RandomApply([color_jitter], p=0.8)"),
    ("imagenet", "views.gray_p", 0.2, _SWAV_DATA + " RandomGrayscale(p=0.2)"),
    ("imagenet", "views.blur_p", 0.5, _SWAV_DATA + " PILRandomGaussianBlur(p=0.5, radius 0.1-2)"),
    ("imagenet", "views.flip_p", 0.5, _SWAV_DATA + " RandomHorizontalFlip(p=0.5)"),
    ("imagenet", "method.crops_for_assign", (0, 1), _SWAV + ": --crops_for_assign 0 1"),
    ("imagenet", "method.temperature", 0.1, _SWAV + ": --temperature 0.1"),
    ("imagenet", "method.epsilon", 0.05, _SWAV + ": --epsilon 0.05"),
    ("imagenet", "method.sinkhorn_iterations", 3, _SWAV + ": --sinkhorn_iterations 3"),
    ("imagenet", "method.queue_length", 0, _SWAV + ": --queue_length 0"),
    ("imagenet", "method.freeze_prototypes_steps", 313, _SWAV + ": --freeze_prototypes_niters 313"),
    (
        "imagenet",
        "method.bn_groups",
        8,
        _SWAV + ": --sync_bn apex, syncbn_process_group_size 8: 8 groups of 8 GPUs x 64",
    ),
    ("imagenet", "optim.epochs", 800.0, _SWAV + ": --epochs 800"),
    ("imagenet", "optim.lr", 4.8, _SWAV + ": --base_lr 4.8 (for batch 4096, no scaling rule in code)"),
    ("imagenet", "optim.final_lr", 0.0048, _SWAV + ": --final_lr 0.0048"),
    ("imagenet", "optim.warmup_epochs", 10.0, _SWAV + ": --warmup_epochs 10"),
    ("imagenet", "optim.start_lr", 0.3, _SWAV + ": --start_warmup 0.3"),
    ("imagenet", "optim.weight_decay", 1e-6, _SWAV + ": --wd 0.000001"),
    ("imagenet", "optim.momentum", 0.9, _SWAV_MAIN + " main(): SGD(momentum=0.9)"),
    ("imagenet", "optim.trust_coefficient", 0.001, _SWAV_MAIN + " main(): LARC(trust_coefficient=0.001, clip=False)"),
    ("cifar10", "model.name", "resnet18", _SWAV_CIFAR + "; resnet18 as the other methods' CIFAR presets"),
    ("cifar10", "model.stem", "cifar", _SWAV_CIFAR + "; CIFAR stem (3x3/1, no max-pool) for 32 px images"),
    ("cifar10", "model.proj_hidden_dim", 2048, _SWAV_256 + ": --hidden_mlp default 2048"),
    ("cifar10", "model.proj_dim", 128, _SWAV_256 + ": --feat_dim 128"),
    ("cifar10", "model.num_prototypes", 3000, _SWAV_256 + ": --nmb_prototypes 3000"),
    ("cifar10", "data.batch_size", 256, _SWAV_256 + ": --batch_size 64 on 4 GPUs"),
    ("cifar10", "views.crop_size", 32, _SWAV_CIFAR + "; 224 -> 32 px (the image size)"),
    ("cifar10", "views.local_crop_size", 16, _SWAV_CIFAR + "; 96 -> 16 px"),
    ("cifar10", "views.local_crops_number", 6, _SWAV_256 + ": --nmb_crops 2 6"),
    ("cifar10", "views.crop_scale", (0.14, 1.0), _SWAV_256 + ": --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14"),
    ("cifar10", "views.local_crop_scale", (0.05, 0.14), _SWAV_256 + ": --min_scale_crops 0.14 0.05"),
    ("cifar10", "views.color_strength", 1.0, _SWAV_DATA + " get_color_distortion(s=1.0)"),
    ("cifar10", "views.blur_p", 0.0, _SWAV_CIFAR + "; no blur on 32 px images, as SimCLR's CIFAR recipe"),
    ("cifar10", "method.temperature", 0.1, _SWAV_256 + ": --temperature 0.1"),
    ("cifar10", "method.epsilon", 0.05, _SWAV_256 + ": --epsilon 0.05"),
    ("cifar10", "method.sinkhorn_iterations", 3, _SWAV_256 + ": --sinkhorn_iterations 3"),
    ("cifar10", "method.queue_length", 3840, _SWAV_256 + ": --queue_length 3840"),
    ("cifar10", "method.epoch_queue_starts", 15.0, _SWAV_256 + ": --epoch_queue_starts 15"),
    (
        "cifar10",
        "method.freeze_prototypes_steps",
        195,
        _SWAV_CIFAR + "; one epoch (official 5005 = one ImageNet epoch)",
    ),
    ("cifar10", "method.bn_groups", 1, _SWAV_256 + ": --sync_bn pytorch, global SyncBN"),
    ("cifar10", "optim.epochs", 400.0, _SWAV_256 + ": --epochs 400"),
    ("cifar10", "optim.lr", 0.6, _SWAV_256 + ": --base_lr 0.6"),
    ("cifar10", "optim.final_lr", 0.0006, _SWAV_256 + ": --final_lr 0.0006"),
    ("cifar10", "optim.warmup_epochs", 0.0, _SWAV_256 + ": --warmup_epochs 0"),
    ("cifar10", "optim.weight_decay", 1e-6, _SWAV_256 + ": --wd 0.000001"),
    ("cifar10", "optim.momentum", 0.9, _SWAV_MAIN + " main(): SGD(momentum=0.9)"),
    ("cifar10", "optim.trust_coefficient", 0.001, _SWAV_MAIN + " main(): LARC(trust_coefficient=0.001, clip=False)"),
    ("imagenet", "model.dtype", "bfloat16", _SWAV + ": --use_fp16 true; bf16 instead of fp16: no loss scaling"),
]
# --- end swav ---


def _field(config, path):
    value = config
    for part in path.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("method", sorted(OFFICIAL))
@pytest.mark.parametrize("preset", ["cifar10", "imagenet"])
def test_preset_matches_the_official_recipe(method, preset):
    rows = [r for r in OFFICIAL[method] if r[0] == preset]
    assert rows, f"no official values recorded for {method}:{preset}"
    config = importlib.import_module(f"{method}.config").get_config(preset)
    wrong = []
    for _, path, official, source in rows:
        ours = _field(config, path)
        same = (
            np.allclose(np.asarray(ours, np.float64), np.asarray(official, np.float64), rtol=1e-9, atol=0)
            if isinstance(official, (int, float, tuple, list)) and not isinstance(official, bool)
            else ours == official
        )
        if not same:
            wrong.append(f"{path}: preset {ours!r}, official {official!r} ({source})")
    assert not wrong, f"{method}:{preset} departs from the official recipe:\n" + "\n".join(wrong)
