"""The training loop that every method's `main` calls: one plain function, nothing method-specific.

A method folder `M/` (simclr, byol, ... or a fork such as `mybyol`) holds the whole method in
`M/train.py`, which exposes this contract:

    create_state(config, steps_per_epoch, **inputs) -> (graphdef, state, step_fn)
        Pure: builds everything from its arguments, loads no data and reads no other run. `state` is
        the nnx.State of a dict of named parts ("online", "target", "optimizer", "queue", "centre",
        "memory", ...): the names key the checkpoints. `step_fn(state, batch, key) -> (state,
        metrics)` is pure and jittable; `metrics` holds scalars, among them "loss" and "finite" (a
        device bool: loss and parameters finite). What a stage needs from an earlier run (SimCLR
        v2's pretrained or teacher weights, PAWS' labelled images) comes in through `inputs`, each
        optional: without it the state has the same parts (or fewer) and is only good for restoring.
    get_body(graphdef, state) -> nnx.Module
        The representation f(.) in eval mode, a copy: what the kNN monitor and common.evaluate use.
    main(config, workdir) -> results dict, or None when pre-empted
        check_config(config), then `loop.train(...)`.
    state_inputs(config, train_data) -> dict, only where create_state needs inputs drawn from the
        training set (PAWS' labelled images): main passes them in; tools use `loop.state_inputs`.

`train` does the rest: the device mesh, the data order, resume, the kNN monitor at step 0 and every
`eval.knn_every_steps`, a progress line, the non-finite guard, checkpoints, SIGTERM and the final
evaluation into `results.json`. The method's name is its folder's name and its code is found again
by the module path recorded in results.json (`"module": "mybyol.train"`), so a copied folder is a
new method with no edit.
"""

import inspect
import json
import os
import pathlib
import sys
import time

import jax

from common import checkpoint, data, evaluate


def method_of(fn):
    """(name, module) of the train.py that defines `fn`: ('byol', 'byol.train') for byol/train.py,
    whether it was imported or run as a script. The name is the folder's, so a fork gets its own."""
    path = pathlib.Path(inspect.getfile(getattr(fn, "func", fn))).resolve()
    root = path.parent
    while not (root / "WORKSPACE").exists() and root != root.parent:
        root = root.parent
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    return path.parent.name, module


def state_inputs(module, config, train_data):
    """The inputs `module.create_state` needs from `train_data` ({} for most methods): what a tool that
    builds a runnable state outside main (benchmarks, the device tests) passes in."""
    return module.state_inputs(config, train_data) if hasattr(module, "state_inputs") else {}


def log(message):
    """One console line, from process 0 only (every process holds the same numbers)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def _format_scores(scores, init=None):
    return ", ".join(
        f"{k} {v:.2f}%" + (f" (init {init[k]:.2f}%)" if init and k in init else "") for k, v in scores.items()
    )


def steps(step_fn, state, loader, root_key, start_step, total_steps):
    """Runs the training steps start_step .. total_steps - 1: yields (step, state, metrics) after each,
    `step` counting the steps completed. The one path from data to update that `train` and
    scripts/benchmark.py share.

    step_fn: the method's step, jitted with the state donated (`jax.jit(step_fn, donate_argnums=0)`,
        or that compiled ahead of time), so each call returns as soon as the step is queued. Nothing
        here waits for the device: the loader (`data.Loader.iterate`) decodes the next batches and
        places them on the devices in a background thread while the step runs, and the caller
        decides when to read a metric (a host sync); `train` does it only at its log lines. The key
        of step s is fold_in(root_key, s), so a resumed run draws what an uninterrupted one draws.
        The state yielded is donated to the next step: use it before asking for the next item.
        Closing the generator stops the loader's thread.
    """
    batches = loader.iterate(start_step)
    try:
        for step, batch in batches:
            if step >= total_steps:
                return
            state, metrics = step_fn(state, batch, jax.random.fold_in(root_key, step))
            yield step + 1, state, metrics
    finally:
        batches.close()


def train(
    config, workdir, create_state, get_body, *, epochs, train_data=None, scores=None, initialize=None, results=None
):
    """Trains `create_state`'s state for `epochs` epochs of `train_data` and evaluates it.

    train_data: the training set (default: config.data's train split).
    scores(graphdef, state, knn_train, knn_test, mesh) -> {name: percent}: the evaluation run at step
        0, every eval.knn_every_steps and at the end (default: kNN top-1/top-5 of get_body's body).
    initialize(graphdef, state, mesh) -> state: applied once to a fresh state after the step-0
        evaluation, never on resume (PIRL's memory bank filled with the initial embeddings).
    results: extra fields for results.json (e.g. the stage or the label fraction).
    Returns the results dict, or None after a pre-emption (state saved; rerun to resume).
    """
    name, module = method_of(create_state)
    checkpoint.maybe_initialize_distributed()
    with checkpoint.workdir_lock(workdir):  # a second trainer on this workdir is refused
        mesh = data.make_mesh()
        data.check_batch_size(config.data.batch_size, mesh)
        train_data = train_data or data.load(config.data, config.data.train_split)
        knn_train, knn_test = evaluate.load_knn_data(config)
        if scores is None and not knn_train.num_classes:
            log(f"{knn_train!r} has no labels: kNN skipped (the run trains; evaluate it on labelled data).")
            scores = lambda *args: {}
        elif scores is None:
            scores = lambda graphdef, state, *sets: evaluate.knn_scores(get_body(graphdef, state), config, *sets)
        loader = data.Loader(train_data, config.data.batch_size, config.seed, mesh)
        total_steps = max(1, int(epochs * loader.steps_per_epoch))
        graphdef, state, step_fn = create_state(config, loader.steps_per_epoch)
        state = checkpoint.replicate(state, mesh)
        ckpt = checkpoint.Checkpointer(workdir, config=config, handle_sigterm=True)
        state, start_step = ckpt.restore_or(state)
        log(
            f"{name}: {config.model.name} on {train_data.name}:{train_data.split} ({train_data.num_examples} "
            f"images), {jax.device_count()} x {jax.devices()[0].platform} in {jax.process_count()} process(es), "
            f"{total_steps} steps of batch {config.data.batch_size} ({epochs:g} epochs)"
            + (f", resuming at step {start_step}" if start_step else "")
            + f"; workdir {workdir}"
        )

        from clu import metric_writers  # TensorBoard events in the workdir (console lines are ours)

        writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
        results_path = os.path.join(workdir, "results.json")
        if start_step == 0 or not os.path.exists(results_path):  # what the initial network scores
            results = {"method": name, "module": module, **(results or {}), "wall_time_s": 0.0}
            if start_step == 0:
                initial = scores(graphdef, state, knn_train, knn_test, mesh)
                results.update({f"{k}_init": v for k, v in initial.items()})
                writer.write_scalars(0, initial)
                log(f"step 0: {_format_scores(initial)}")
                if initialize is not None:
                    state = checkpoint.replicate(initialize(graphdef, state, mesh), mesh)
            checkpoint.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
            checkpoint.write_json(results_path, results)
        else:
            with open(results_path) as f:
                results = json.load(f)

        start_time = last_time = time.time()
        step = last_step = start_step
        step_fn = jax.jit(step_fn, donate_argnums=0)
        run = steps(step_fn, state, loader, jax.random.key(config.seed), start_step, total_steps)
        try:
            for step, state, metrics in run:
                ckpt.watch(step, metrics["finite"])  # a device bool, read at the next log line
                if step % config.log_every_steps == 0 or step == total_steps:
                    ckpt.check_finite()
                    metrics = {k: float(v) for k, v in metrics.items() if k != "finite"}
                    now = time.time()
                    rate = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    writer.write_scalars(step, {**metrics, "steps_per_sec": rate})
                    log(
                        f"step {step}/{total_steps}  loss {metrics['loss']:.4f}  {rate:.2f} steps/s  "
                        f"ETA {time.strftime('%H:%M:%S', time.gmtime((total_steps - step) / rate))}"
                    )
                if config.eval.knn_every_steps and step % config.eval.knn_every_steps == 0 and step < total_steps:
                    monitor = scores(graphdef, state, knn_train, knn_test, mesh)
                    writer.write_scalars(step, monitor)
                    log(f"step {step}: {_format_scores(monitor)}")
                if step % config.checkpoint_every_steps == 0 or step == total_steps:
                    ckpt.save(step, state)
                if ckpt.preempted(step):
                    ckpt.save(step, state)
                    results["wall_time_s"] += time.time() - start_time
                    checkpoint.write_json(results_path, results)
                    log(f"Pre-empted: saved step {step} to {ckpt.directory}; rerun with the same --workdir to resume.")
                    return None
        finally:
            run.close()  # stops the loader's thread before the interpreter can shut down under it
            writer.flush()
            ckpt.close()

        final = scores(graphdef, state, knn_train, knn_test, mesh)
        writer.write_scalars(step, final)
        writer.flush()
        results.update(final, step=step, wall_time_s=results["wall_time_s"] + time.time() - start_time)
        checkpoint.write_json(results_path, results)
        init = {k: results[f"{k}_init"] for k in final if f"{k}_init" in results}
        log(f"{name} step {step}: {_format_scores(final, init)}; results in {results_path}")
        return results


def cli(main):
    """`python M/train.py --config M/config.py[:preset] [--workdir W] [--config.F=V ...]`: parses the
    flags and calls main(config, workdir). Library INFO logs stay hidden unless --verbosity=1 or more;
    a bad config or input ends with one line naming it (--verbosity=1 shows the traceback)."""
    from absl import app, flags
    from ml_collections import config_flags

    name, _ = method_of(main)
    config = config_flags.DEFINE_config_file(
        "config", None, f"A config file, e.g. {name}/config.py:smoke.", lock_config=True
    )
    workdir = flags.DEFINE_string("workdir", f"runs/{name}", "Checkpoints, logs and results; rerun to resume.")

    def run(argv):
        verbose = flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1
        if not verbose:
            quiet()
        checkpoint.maybe_initialize_distributed()  # before main's first JAX call
        checkpoint.use_compilation_cache()
        try:
            main(config.value, workdir.value)  # returns None: app.run would exit 1 on a dict
        except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
            if verbose:
                raise
            sys.exit(f"{name}: {type(e).__name__}: {e}")

    try:
        app.run(run)
    except AttributeError as e:  # raised while parsing a --config.<field> override
        if "--verbosity=1" in sys.argv or "-v=1" in sys.argv:
            raise
        hint = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "")
        sys.exit(
            f"{name}: a --config.<field>=<value> override names no field of the config ({hint}); "
            f"the fields are listed in {name}/config.py."
        )


def quiet():
    """Hides library INFO chatter (Orbax, absl, TensorFlow, TFDS); warnings and errors still show."""
    import logging as pylogging

    from absl import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its start-up notice; TF only decodes images here
    logging.set_verbosity(logging.WARNING)
    for noisy in ("absl", "orbax", "tensorflow", "tensorflow_datasets", "jax._src.xla_bridge"):
        pylogging.getLogger(noisy).setLevel(pylogging.WARNING)
    # TFDS advises installing OpenCV on every image decode set-up: advice, not a problem of the run.
    pylogging.getLogger("absl").addFilter(lambda record: "OpenCV is not installed" not in record.getMessage())
