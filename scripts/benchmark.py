"""Throughput of one method: the jitted train step alone, the augmentations alone, the full loop.

    python scripts/benchmark.py --config simclr/config.py            # the method is the config's folder
    python scripts/benchmark.py --config dino/config.py:imagenet --config.data.name=synthetic ...
    python scripts/benchmark.py --config simclr/config.py --augment_only --config.data.name=synthetic \
        --config.data.image_size=224 --config.views.crop_size=224 --config.data.batch_size=32

Prints images/s (images of the data set, not views), the compile time of the step, and the step's
FLOP rate from XLA's cost analysis, with MFU against --peak_tflops when given (e.g. 989 for an H100's
dense bf16, 67 for its fp32 without tensor cores). The step-alone figure reuses one device batch, so
it measures the accelerator; the full-loop figure adds host data loading and transfer.

Caveat, seen on an H100: XLA's cost analysis does not count convolutions that run as cuDNN custom
calls, so for ResNets `step_tflops` and `mfu_percent` are far below the truth (SimCLR ResNet-50 at
1141 images/s does about 28 TFLOP/s by the analytic 3 x 4.1 GFLOPs per view, not the 0.78 reported).
For ViTs, whose matmuls XLA does count, the figure is meaningful.
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

from common import checkpoint, data, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "A method's config, e.g. simclr/config.py:smoke.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps for each measurement (after warm-up).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "The device's peak TFLOP/s, for MFU (0: not printed).")
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
_AUGMENT_ONLY = flags.DEFINE_bool(
    "augment_only", False, "Time only the method's make_views on one batch (no state, step or loop)."
)


def timed(fn, n):
    jax.block_until_ready(fn())  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def main(argv):
    config = _CONFIG.value
    method = pathlib.Path(flags.FLAGS["config"].config_filename.split(":")[0]).resolve().parent.name
    module = importlib.import_module(f"{method}.train")
    mesh = data.make_mesh()
    data.check_batch_size(config.data.batch_size, mesh)
    dataset = data.load(config.data, config.data.train_split)
    loader = data.Loader(dataset, config.data.batch_size, config.seed, mesh)
    batch_size = config.data.batch_size
    key = jax.random.key(0)
    if _AUGMENT_ONLY.value:
        batch = loader.get(0)
        views = jax.jit(lambda k, images: module.make_views(k, images, config.views))
        start = time.perf_counter()
        jax.block_until_ready(views(key, batch["image"]))
        figures = {
            "method": method,
            "device": str(jax.devices()[0].device_kind),
            "batch_size": batch_size,
            "image_shape": list(dataset.image_shape),
            "augment_compile_and_first_s": round(time.perf_counter() - start, 2),
            "augment_images_per_s": round(batch_size / timed(lambda: views(key, batch["image"]), _STEPS.value), 1),
        }
        print(json.dumps(figures))
        if _JSON.value:
            pathlib.Path(_JSON.value).write_text(json.dumps(figures, indent=2))
        return
    inputs = loop.state_inputs(module, config, dataset)
    graphdef, state, step_fn = module.create_state(config, loader.steps_per_epoch, **inputs)
    state = checkpoint.replicate(state, mesh)
    batch = loader.get(0)

    start = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        return metrics["loss"]

    step_s = timed(one_step, _STEPS.value)
    views = jax.jit(lambda k, images: module.make_views(k, images, config.views))
    augment_s = timed(lambda: views(key, batch["image"]), _STEPS.value)

    iterator = loader.iterate(1)
    next(iterator)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        _, b = next(iterator)
        holder["state"], metrics = compiled(holder["state"], b, key)
    jax.block_until_ready(metrics["loss"])
    loop_s = (time.perf_counter() - start) / _STEPS.value
    # Stops the loader's prefetch thread now: left running into interpreter shutdown, it aborted the
    # process after the figures were printed (seen for moco on CPU).
    iterator.close()

    figures = {
        "method": method,
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "batch_size": batch_size,
        "compile_s": round(compile_s, 2),
        "step_images_per_s": round(batch_size / step_s, 1),
        "augment_images_per_s": round(batch_size / augment_s, 1),
        "loop_images_per_s": round(batch_size / loop_s, 1),
        "step_tflops": round(flops / step_s / 1e12, 3),
    }
    if _PEAK.value:
        figures["mfu_percent"] = round(100 * flops / step_s / 1e12 / _PEAK.value, 2)  # XLA costs the per-device program
    print(json.dumps(figures))
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    app.run(main)
