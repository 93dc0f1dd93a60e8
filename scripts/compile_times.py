"""Cold compile time of every method's jitted train step, one fresh process per (method, preset).

    python scripts/compile_times.py                                   # all methods, :imagenet and default
    python scripts/compile_times.py --methods dino,swav --presets imagenet --batch_size 8
    python scripts/compile_times.py --methods dino --presets imagenet --dump_dir /tmp/xla  # + XLA dumps

Each measurement runs in its own Python process (nothing traced, compiled or cached is shared), with
JAX's persistent compilation cache disabled, and times `jax.jit(step_fn, donate_argnums=0)
.lower(state, batch, key)` (tracing + lowering to StableHLO) and `.compile()` (XLA) separately, as the
loop's first step pays them. The `:imagenet` presets read synthetic images (`data.name=synthetic` at
the preset's canvas size), so no ImageNet is needed, with a small global batch (--batch_size): the
compiled program's size does not depend on the batch, and the compile time depends on it only a little
(measure it: --batch_size 32). The default presets read their own data set at their own batch unless
--batch_size is given for them too (--default_batch_size).

Two adjustments, noted in the row: PAWS's support batch takes at most 10 classes on synthetic data
(`method.classes_per_batch`, 960 in the :imagenet preset), and a batch is rounded up to a multiple of
`method.bn_groups` (PIRL's :imagenet preset has 32 batch-norm groups); the program is the same but for
the size of those batches. Other overrides: --set METHOD:FIELD=VALUE (e.g. --set dino:model.depth=6), repeatable.

Prints a table (method, preset, batch, lower s, compile s, total s, the process's CPU s for both,
StableHLO ops, load average before/after) and, with --json, writes the rows. Times are wall-clock and
rise with the machine's load: read them beside the load average (1-minute, as /proc/loadavg) and the
CPU seconds.
"""

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("simclr", "simclr2", "moco", "pirl", "byol", "dino", "swav", "paws")


def _parse_value(text):
    """A --set value as Python would read it (int, float, bool, tuple), else the string itself."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def build_config(method, preset, batch_size, overrides):
    """The preset's config with the measurement's data settings and the overrides applied."""
    config = importlib.import_module(f"{method}.config").get_config(None if preset == "default" else preset)
    notes = []
    if preset != "default":
        # Synthetic images at the preset's canvas (0 = 224), so that no data set is needed.
        config.data.name = "synthetic"
        config.data.folder = ""
        if method == "paws" and config.method.classes_per_batch > 10:
            notes.append(f"method.classes_per_batch {config.method.classes_per_batch} -> 10 (synthetic has 10)")
            config.method.classes_per_batch = 10
    if batch_size:
        groups = config.method.get("bn_groups", 1)  # batch-norm groups need a multiple of their count
        if batch_size % groups:
            notes.append(f"batch {batch_size} -> {groups * -(-batch_size // groups)} (method.bn_groups {groups})")
            batch_size = groups * -(-batch_size // groups)
        config.data.batch_size = batch_size
    for field, value in overrides:
        *parents, leaf = field.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = _parse_value(value)
        notes.append(f"{field}={value}")
    return config, notes


def measure(method, preset, batch_size, overrides, count_ops=True):
    """In this process: build the state and step as scripts/benchmark.py does and time lower/compile."""
    sys.path.insert(0, str(ROOT))
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # cold: nothing read from or written to disk

    from common import checkpoint, data, loop

    config, notes = build_config(method, preset, batch_size, overrides)
    module = importlib.import_module(f"{method}.train")
    mesh = data.make_mesh()
    data.check_batch_size(config.data.batch_size, mesh)
    dataset = data.load(config.data, config.data.train_split)
    loader = data.Loader(dataset, config.data.batch_size, config.seed, mesh)
    inputs = loop.state_inputs(module, config, dataset)
    graphdef, state, step_fn = module.create_state(config, loader.steps_per_epoch, **inputs)
    state = checkpoint.replicate(state, mesh)
    batch = loader.get(0)
    key = jax.random.key(0)

    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    lowered = jax.jit(step_fn, donate_argnums=0).lower(state, batch, key)
    lower_s, lower_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    lowered.compile()
    compile_s, compile_cpu = time.perf_counter() - start, time.process_time() - cpu
    load_after = os.getloadavg()[0]
    row = {
        "method": method,
        "preset": preset,
        "body": config.model.name,
        "batch_size": config.data.batch_size,
        "image_shape": list(dataset.image_shape),
        "lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
        "total_s": round(lower_s + compile_s, 2),
        # CPU seconds of this process (all its threads): less sensitive to the machine's load than
        # wall time, though XLA compiles some parts in parallel threads.
        "lower_cpu_s": round(lower_cpu, 2),
        "compile_cpu_s": round(compile_cpu, 2),
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
        "notes": notes,
    }
    if count_ops:
        # StableHLO ops of the lowered step: a measure of the program XLA has to compile (an unrolled
        # ViT repeats every block's ops; a scan keeps one copy).
        text = lowered.as_text()
        row["stablehlo_ops"] = sum(1 for line in text.splitlines() if " = " in line and "stablehlo." in line)
    return row


def run_child(method, preset, batch_size, overrides, dump_dir, timeout):
    """One measurement in a fresh interpreter; returns its row (or an error row)."""
    command = [sys.executable, __file__, "--child", f"{method}:{preset}", "--batch_size", str(batch_size)]
    for method_and_field in overrides:
        command += ["--set", method_and_field]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if dump_dir:
        target = pathlib.Path(dump_dir) / f"{method}_{preset}"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={target}").strip()
    # An empty cache directory as well, should anything still look for one.
    with tempfile.TemporaryDirectory() as cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        try:
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"method": method, "preset": preset, "error": f"timeout after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"method": method, "preset": preset, "error": f"exit {done.returncode}: " + " | ".join(tail)}


def format_table(rows):
    header = ("method", "preset", "body", "batch", "lower s", "compile s", "total s", "CPU s", "ops", "load")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['preset']} | error: {r['error']} |")
            continue
        cells = (
            r["method"],
            r["preset"],
            r["body"],
            r["batch_size"],
            f"{r['lower_s']:.1f}",
            f"{r['compile_s']:.1f}",
            f"{r['total_s']:.1f}",
            f"{r['lower_cpu_s'] + r['compile_cpu_s']:.1f}",
            r.get("stablehlo_ops", ""),
            f"{r['load_before']:.1f}-{r['load_after']:.1f}",
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method folders")
    parser.add_argument("--presets", default="imagenet,default", help="comma-separated presets")
    parser.add_argument("--batch_size", type=int, default=8, help="global batch of the non-default presets")
    parser.add_argument(
        "--default_batch_size", type=int, default=0, help="global batch of the default presets (0: the preset's)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each (method, preset)")
    parser.add_argument("--set", action="append", default=[], help="METHOD:FIELD=VALUE override (repeatable)")
    parser.add_argument("--dump_dir", default="", help="also dump XLA's HLO passes under this folder")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed to one measurement")
    parser.add_argument("--json", default="", help="write the rows to this JSON file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one measurement, in this (fresh) process
        method, preset = args.child.split(":")
        overrides = [tuple(s.split(":", 1)[1].split("=", 1)) for s in args.set if s.split(":", 1)[0] == method]
        print(json.dumps(measure(method, preset, args.batch_size, overrides)), flush=True)
        return

    rows = []
    for preset in args.presets.split(","):
        batch = args.default_batch_size if preset == "default" else args.batch_size
        for method in args.methods.split(","):
            for _ in range(args.repeat):
                row = run_child(method, preset, batch, args.set, args.dump_dir, args.timeout)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(format_table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
