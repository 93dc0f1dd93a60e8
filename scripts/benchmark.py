"""Throughput of one method: the host pipeline, the augmentations, the jitted train step, the full loop.

    python scripts/benchmark.py --config simclr/config.py            # the method is the config's folder
    python scripts/benchmark.py --config dino/config.py:imagenet --config.data.name=synthetic ...
    python scripts/benchmark.py --config simclr/config.py --augment_only --config.data.name=synthetic \
        --config.data.image_size=224 --config.views.crop_size=224 --config.data.batch_size=32

Several processes (one JSON line, from process 0; every figure is global, over all devices):
    JAX_COORDINATOR_ADDRESS=127.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1 \
        python scripts/benchmark.py --config simclr/config.py:smoke --steps 2

Prints one JSON line (and writes it to --json): images/s of the data set (images, not views) for
  host      the loader alone (decode, fit, batch, placement on the devices) on rows not read before;
  augment   the method's make_views alone on one device batch;
  step      the compiled train step alone, on one device batch reused;
  loop      `common.loop.steps`, the path a training run takes (the loader's thread decoding and
            placing the next batches while the step runs, a new key and batch every step), after
            warm-up steps that leave the loader's queue in its steady state;
and the step's compile time (lowering + compilation, cold unless the compilation cache holds it).

FLOPs: `flops_per_image` is XLA's cost analysis of the LOWERED step (StableHLO, before compilation;
the global batch, before partitioning over devices) divided by the global batch. On CPU it agrees with
the compiled executable's analysis (`compiled_flops_per_image`, printed beside it). On GPU the
compiled analysis misses every convolution that runs as a cuDNN custom call (a ResNet-50's step then
reported 0.78 TFLOP/s where 3 x 4.1 GFLOPs per view x 1141 images/s is about 28), while the lowered
program still holds the convolutions as ordinary ops and counts them. The analysis also counts the body of a
loop once, so a step with a loop in it (the ViT blocks' lax.scan) is lowered a second time for the count, with
the blocks unrolled (`models.SCAN_BLOCKS = False`); the timed program keeps the scan. `step_tflops` is
flops_per_image x step images/s, and `mfu_percent` sets it against --peak_tflops per device times the
number of devices (e.g. 989 for an H100 SXM's dense bf16, 67 for its fp32 without tensor cores).

In a training run whose kNN monitor reads the whole training split at step 0 (eval.knn_train_examples
0) and whose split fits in host memory (data.MAX_IN_MEMORY_BYTES), every training image has been
decoded once before step 1 and later reads copy it from memory; the loop figure is taken in that
state too (`warm_data: true` in the output), after the host figure is taken on rows not read before.
"""

import importlib
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
from absl import app, flags
from ml_collections import config_flags

from common import checkpoint, data, loop, models

_CONFIG = config_flags.DEFINE_config_file("config", None, "A method's config, e.g. simclr/config.py:smoke.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps for each measurement (after warm-up).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Step and loop measurements, alternated; the means are reported.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "One device's peak TFLOP/s, for MFU (0: not printed).")
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file (process 0).")
_AUGMENT_ONLY = flags.DEFINE_bool(
    "augment_only", False, "Time only the method's make_views on one batch (no state, step or loop)."
)
# Enough warm-up for the first call's compilation and for the loader's queue (two batches ahead and
# one in the making) to reach its steady state, so that batches prepared during the compilation do
# not flatter the loop figure.
LOOP_WARMUP_STEPS = 5


def timed(fn, n):
    """Seconds per call of `fn` (returning device arrays), after one call of warm-up."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def report(figures):
    """One JSON line (and the --json file), from process 0 only."""
    if jax.process_index() == 0:
        print(json.dumps(figures), flush=True)
        if _JSON.value:
            pathlib.Path(_JSON.value).write_text(json.dumps(figures, indent=2))


def main(argv):
    loop.quiet()
    checkpoint.maybe_initialize_distributed()  # before any other JAX call
    checkpoint.use_compilation_cache()
    config = _CONFIG.value
    method = pathlib.Path(flags.FLAGS["config"].config_filename.split(":")[0]).resolve().parent.name
    module = importlib.import_module(f"{method}.train")
    mesh = data.make_mesh()
    batch_size = config.data.batch_size  # global, over every device of every process
    data.check_batch_size(batch_size, mesh)
    dataset = data.load(config.data, config.data.train_split)
    loader = data.Loader(dataset, batch_size, config.seed, mesh)  # each process decodes only its rows
    key = jax.random.key(0)
    views = jax.jit(lambda k, b: module.make_views(k, b["image"], config.views, b["extent"]))
    figures = {
        "method": method,
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "batch_size": batch_size,
        "image_shape": list(dataset.image_shape),
        "dtype": str(config.model.get("dtype", "float32")),  # the bodies' compute dtype, where the config has one
    }

    if _AUGMENT_ONLY.value:
        batch = loader.get(0)
        start = time.perf_counter()
        jax.block_until_ready(views(key, batch))
        figures["augment_compile_and_first_s"] = round(time.perf_counter() - start, 2)
        figures["augment_images_per_s"] = round(batch_size / timed(lambda: views(key, batch), _STEPS.value), 1)
        report(figures)
        return

    # The host pipeline alone, on batches of the first epoch that the loop below does not read first.
    unread = iter(range(loader.steps_per_epoch // 2, loader.steps_per_epoch // 2 + _STEPS.value + 1))
    host_s = timed(lambda: loader.get(next(unread)), _STEPS.value)
    figures["warm_data"] = bool(dataset.decoded_once and not config.eval.knn_train_examples)
    if figures["warm_data"]:  # as the run's step-0 kNN monitor does: the whole split read once
        for _ in data.eval_batches(dataset, config.eval.batch_size, mesh):
            pass

    inputs = loop.state_inputs(module, config, dataset)
    graphdef, state, step_fn = module.create_state(config, loader.steps_per_epoch, **inputs)
    state = checkpoint.replicate(state, mesh)
    batch = loader.get(0)

    start = time.perf_counter()
    lowered = jax.jit(step_fn, donate_argnums=0).lower(state, batch, key)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops_per_image = models.step_flops(step_fn, lowered, state, batch, key) / batch_size  # the global program
    compiled_flops_per_image = models.flops_of(compiled) * jax.device_count() / batch_size  # per device

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        return metrics["loss"]

    def loop_seconds(start_step):
        """Seconds per step of common.loop.steps, as loop.train runs it (the same executable), from
        `start_step` of the data order, after LOOP_WARMUP_STEPS."""
        end = start_step + LOOP_WARMUP_STEPS + _STEPS.value
        run = loop.steps(compiled, holder.pop("state"), loader, jax.random.key(config.seed), start_step, end)
        try:
            for step, state, metrics in run:
                holder["state"] = state  # the last one is not donated: the next round starts from it
                if step == start_step + LOOP_WARMUP_STEPS:
                    jax.block_until_ready(metrics["loss"])
                    start = time.perf_counter()
            jax.block_until_ready(metrics["loss"])
            return (time.perf_counter() - start) / _STEPS.value
        finally:
            run.close()  # stops the loader's thread before the interpreter shuts down

    # Step and loop alternate (_ROUNDS times), so that a shared machine's changing load falls on both.
    step_s = loop_s = 0.0
    for r in range(_ROUNDS.value):
        step_s += timed(one_step, _STEPS.value) / _ROUNDS.value
        loop_s += loop_seconds(r * (LOOP_WARMUP_STEPS + _STEPS.value)) / _ROUNDS.value
    augment_s = timed(lambda: views(key, batch), _STEPS.value)

    step_images_per_s = batch_size / step_s
    figures.update(
        compile_s=round(compile_s, 2),
        host_images_per_s=round(batch_size / host_s, 1),
        augment_images_per_s=round(batch_size / augment_s, 1),
        step_images_per_s=round(step_images_per_s, 1),
        loop_images_per_s=round(batch_size / loop_s, 1),
        loop_over_step=round(step_s / loop_s, 3),
        flops_per_image=flops_per_image,
        compiled_flops_per_image=compiled_flops_per_image,
        step_tflops=round(flops_per_image * step_images_per_s / 1e12, 4),
    )
    if _PEAK.value:
        figures["mfu_percent"] = round(100 * figures["step_tflops"] / (_PEAK.value * jax.device_count()), 2)
    report(figures)


if __name__ == "__main__":
    app.run(main)
