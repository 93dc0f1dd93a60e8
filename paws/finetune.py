"""PAWS fine-tuning: the official protocol of facebookresearch/suncet src/fine_tune.py with
configs/paws/imgnt_fine_tune.yaml, on a PAWS run's workdir.

    python -m paws.finetune --workdir runs/paws                       # the run's own labelled images
    python -m paws.finetune --workdir runs/paws --label_fraction 0.1  # another class-balanced subset

What the official code does, and what this file does the same way:
* Model: the pretrained body, then the first layer of the projection head kept from pretraining
  (fc1 Linear, bn1 BatchNorm, ReLU: load_pretrained copies fc.fc1 / fc.bn1 by name), then a new
  Linear(hidden, classes) `fc2` initialised to ZERO (weights and bias, zero_init true). The
  projector's fc2/fc3 and the prediction head are dropped. Everything is trained (body in train mode).
* Data: the labelled images only (unlabeled_frac 0.9 -> the 10% subset file; 0.99 -> 1%), i.e. the
  same subset the pretraining drew its supports from (here: the run's labelled.json).
* Views: RandomResizedCrop(224, scale (0.08, 1)) + horizontal flip, no colour ("basic"
  augmentations); test: resize 256 + centre crop 224 (here: the evaluation preprocessing of
  common.evaluate on the host images).
* Optimiser: SGD, Nesterov momentum 0.9, lr 0.02 (absolute), weight decay 0 (the yaml; a positive one
  would go to the same name-based group as pretraining), no LARS (use_lars false), cosine from lr to 0
  over epochs x iterations without warmup (WarmupCosineSchedule), the lr inside the momentum buffer
  (src/sgd.py); cross-entropy without label smoothing; 50 epochs; batch 256 per GPU x 4 GPUs = 1024
  (suncet README), dropping the last partial batch.

Departure: the official run keeps the epoch with the best top-1 on a held-out list of 12,000 training
images (imagenet_subsets/val.txt) and reports that checkpoint on the validation set; here the last
epoch is reported (no model selection). Writes W/eval_paws_finetune_<pct>pct.json.
"""

import argparse
import functools
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import augment, checkpoint, data, evaluate


class FineTuneModel(nnx.Module):
    """fine_tune.py's encoder: body -> fc1 -> bn1 -> ReLU -> fc2 (zero-initialised classifier)."""

    def __init__(self, pretrained, num_classes, rngs):
        self.body = pretrained.body
        self.fc1 = pretrained.head.fc1  # kept from pretraining, as load_pretrained does by name
        self.bn1 = pretrained.head.bn1
        zeros = jax.nn.initializers.zeros
        self.fc2 = nnx.Linear(self.fc1.out_features, num_classes, kernel_init=zeros, bias_init=zeros, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.bn1(self.fc1(self.body(x)))))


def make_optimizer(lr, total_steps, momentum=0.9, weight_decay=0.0):
    """src/sgd.py with nesterov=True under WarmupCosineSchedule(warmup 0, final 0): d = -lr_k (g + wd p),
    buf = m buf + d, p += d + m buf. Weight decay only on the pretraining's name-based group."""
    from paws.train import lars_adapted

    mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: lars_adapted(path), params)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.scale_by_learning_rate(optax.cosine_decay_schedule(lr, max(1, total_steps))),
        optax.trace(decay=momentum, nesterov=True),
    )


def finetune(
    pretrained,
    config,
    train_dataset,
    test_dataset,
    mesh,
    *,
    epochs=50,
    batch_size=1024,
    lr=0.02,
    weight_decay=0.0,
    crop_scale=(0.08, 1.0),
    seed=0,
):
    """Fine-tunes a copy of `pretrained` (a PAWS model) on `train_dataset` as fine_tune.py and returns
    {'top1', 'top5'} (percent) of the last epoch on `test_dataset`."""
    mean, std = evaluate.normalization(config)
    size = int(config.views.crop_size)
    model = FineTuneModel(nnx.clone(pretrained), train_dataset.num_classes, nnx.Rngs(seed))
    model.train()
    loader = data.Loader(
        train_dataset, evaluate.batch_size_for(batch_size, train_dataset.num_examples, mesh), seed, mesh
    )
    total = max(1, int(epochs * loader.steps_per_epoch))
    optimizer = nnx.Optimizer(model, make_optimizer(lr, total, weight_decay=weight_decay), wrt=nnx.Param)
    graphdef, state = nnx.split({"model": model, "optimizer": optimizer})
    state = checkpoint.replicate(state, mesh)

    def view(key, image, extent):  # the "basic" augmentations: random resized crop + flip, no colour
        k_crop, k_flip = jax.random.split(key)
        x = augment.random_resized_crop(k_crop, image, size, scale=tuple(crop_scale), extent=extent)
        return augment.random_flip(k_flip, x)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, images, extents, labels, key):
        parts = nnx.merge(graphdef, state)
        x = augment.apply_per_image(view, key, augment.to_float(images), extents=extents)
        x = augment.normalize(x, mean, std)

        def loss_fn(model):
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model(x), labels))

        loss, grads = nnx.value_and_grad(loss_fn)(parts["model"])
        parts["optimizer"].update(parts["model"], grads)
        return nnx.state(parts), loss

    root, start = jax.random.key(seed), time.time()
    batches = loader.iterate(0)
    for s, batch in batches:
        if s >= total:
            break
        state, loss = step(state, batch["image"], batch["extent"], batch["label"], jax.random.fold_in(root, s))
        evaluate._progress("PAWS fine-tuning", s + 1, total, start)
    batches.close()
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"Fine-tuning diverged (loss {float(loss)}); lower --lr.")
    model = nnx.merge(graphdef, state)["model"]
    # Logits on the run's evaluation view (resize + centre crop), as every protocol, in eval mode.
    eval_logits = evaluate.frozen_embed_fn(model, mean, std, evaluate.protocol_view(config))
    eval_batch = evaluate.batch_size_for(int(config.eval.batch_size), test_dataset.num_examples, mesh)
    logits, labels = evaluate.extract_features(eval_logits, test_dataset, eval_batch, mesh)
    return evaluate.topk_accuracy(logits, labels)


def load_run(workdir, steps_per_epoch):
    """(config, model, step): the PAWS model of the latest checkpoint of the run in `workdir`, built by
    the train.py that wrote it (results.json's module, so a fork is loaded with its own code)."""
    config, method, module_name = evaluate.read_run(workdir)
    graphdef, state, _ = importlib.import_module(module_name).create_state(config, steps_per_epoch)
    state = checkpoint.replicate(state, data.make_mesh())  # restored onto every device of every process
    ckpt = checkpoint.Checkpointer(workdir)
    state, step = ckpt.restore_or(state, partial=True)
    ckpt.close()
    if step == 0:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train the run first.")
    return config, nnx.merge(graphdef, state)["model"], step


def finetune_run(
    workdir, *, label_fraction=None, epochs=50, batch_size=1024, lr=0.02, test_examples=0, seed=0, output=None
):
    """Fine-tunes the run in `workdir` on its labelled images (label_fraction None: labelled.json's,
    the pretraining's own) or on a class-balanced `label_fraction`; writes and returns the JSON."""
    start = time.time()
    config, _, _ = evaluate.read_run(workdir)
    mesh = data.make_mesh()
    train = data.load(config.data, config.data.train_split)
    test = data.load(config.data, config.data.eval_split)
    config, model, step = load_run(workdir, max(1, train.num_examples // config.data.batch_size))
    if label_fraction is None:
        with open(os.path.join(workdir, "labelled.json")) as f:
            recorded = json.load(f)
        labelled, label_fraction = train.subset(recorded["indices"]), recorded["label_fraction"]
    else:
        labelled = evaluate.labelled_fraction(train, label_fraction, seed)
    if test_examples:
        test = test.subset(range(min(test_examples, test.num_examples)))
    scores = finetune(model, config, labelled, test, mesh, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = {
        "method": "paws",
        "protocol": "paws_finetune (suncet src/fine_tune.py)",
        "step": int(step),
        "label_fraction": label_fraction,
        "labelled_examples": labelled.num_examples,
        "test_examples": test.num_examples,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        **scores,
        "wall_time_s": round(time.time() - start, 1),
        "machine": evaluate.machine(),
    }
    path = output or os.path.join(workdir, f"eval_paws_finetune_{round(100 * label_fraction):g}pct.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"paws fine-tuned on {labelled.num_examples} labelled images: top-1 {result['top1']:.2f}%; wrote {path}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="A PAWS run's workdir.")
    parser.add_argument("--label_fraction", type=float, default=None, help="Default: the run's labelled.json.")
    parser.add_argument("--epochs", type=int, default=50, help="Official 50.")
    parser.add_argument("--batch_size", type=int, default=1024, help="Official 256 per GPU x 4 GPUs.")
    parser.add_argument("--lr", type=float, default=0.02, help="Official 0.02 (not scaled with the batch).")
    parser.add_argument("--test_examples", type=int, default=0, help="Use the first N test examples (0: all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    checkpoint.maybe_initialize_distributed()  # several processes, as training and common.evaluate
    checkpoint.use_compilation_cache()
    return finetune_run(
        args.workdir,
        label_fraction=args.label_fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        test_examples=args.test_examples,
        seed=args.seed,
        output=args.output,
    )


if __name__ == "__main__":
    main()
