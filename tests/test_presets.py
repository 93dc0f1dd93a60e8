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
OFFICIAL["byol"] = []
# --- end byol ---

# --- dino ---
OFFICIAL["dino"] = []
# --- end dino ---

# --- moco ---
OFFICIAL["moco"] = []
# --- end moco ---

# --- paws ---
OFFICIAL["paws"] = []
# --- end paws ---

# --- pirl ---
OFFICIAL["pirl"] = []
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
    ("imagenet", "method.distill_temperature", 1.0, "google-research/simclr tf2/colabs/distillation_self_training"),
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
] + [(preset, *row) for preset in ("imagenet", "cifar10") for row in _SIMCLR_COMMON]
# --- end simclr2 ---

# --- swav ---
OFFICIAL["swav"] = []
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
