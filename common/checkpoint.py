"""Checkpoints, pre-emption and the non-finite guard: the method-neutral half of every training loop.

Every method keeps its whole training state in one pytree (models, optimizer, method buffers such as a
queue or a centre) plus the step. The data order is a pure function of (seed, step) (common/data.py),
so the step *is* the data position and the random state: a run restored at step k continues exactly as
an uninterrupted one would.

    ckpt = checkpoint.Checkpointer(workdir, config=config)
    state, start_step = ckpt.restore_or(state)      # resume if workdir holds a checkpoint
    ...
    ckpt.watch(step, metrics["finite"])             # every step: a device bool, no sync
    ckpt.save(step, state)                          # checks every watched step first
    if ckpt.preempted(step): ckpt.save(step, state); break

A checkpoint is only written after every step up to it was seen finite, so a run that diverges stops
with the last good checkpoint untouched (`NonFiniteLossError` names both steps). common/loop.py is
the one caller in training.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils


class NonFiniteLossError(FloatingPointError):
    pass


# A trained weight beyond this magnitude means a diverged run even when it is still finite: a learning
# rate of 1e30 left finite weights of 5e26 in the "last good" checkpoint, which diverged again on
# resume. Normal weights of every method here stay below 1e2 (BN statistics, queues and banks are not
# nnx.Param and are not checked).
MAX_ABS_PARAM = 1e6


@jax.jit
def _max_abs(params):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(p)) for p in jax.tree.leaves(params)] or [jnp.zeros(())]))


class Checkpointer:
    """Orbax CheckpointManager over `workdir/checkpoints`, with the non-finite guard and SIGTERM.

    `watch(step, finite)` collects each step's device flag (no host sync); `save` checks every flag
    collected so far before it writes, so a checkpoint never holds a state computed after a
    non-finite step, and a diverged run keeps its last good checkpoint (NonFiniteLossError names
    both steps). SIGTERM (what a scheduler or `kill` sends before pre-empting a job) only sets a
    flag; the loop asks `preempted(step)` after each step, saves, and exits cleanly. With several
    processes, JAX's pre-emption sync point makes every process stop at the same step.
    """

    def __init__(self, workdir, keep=2, config=None, handle_sigterm=False, max_abs_param=MAX_ABS_PARAM):
        self.max_abs_param = max_abs_param  # save() refuses weights beyond this magnitude (diverged)
        self.config = config  # the run's ConfigDict: names the fields that differ from a checkpoint's
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        sync_processes("ssljax_checkpointer")  # Orbax's first sync is a gloo collective with a 30 s deadline
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )
        self._pending = []  # [(step, device bool)] not yet checked
        self._sigterm = False
        if handle_sigterm and jax.process_count() == 1:  # training only: evaluation just stops
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self._sigterm = True

    def latest_step(self):
        return self.manager.latest_step()

    def restore_or(self, state, partial=False):
        """Returns (state, step): the newest good checkpoint if there is one, else (state, 0).

        `state` is an nnx.State (or any pytree of arrays); its shapes, dtypes and shardings tell Orbax
        how to lay out the restored arrays. partial=True restores only the parts `state` has (an
        evaluation that rebuilt the model without a stage's inputs) from host copies of the arrays.
        A checkpoint whose files do not match the checksums written with it (flipped bytes, a
        truncated file), or that holds non-finite values, is moved to `workdir/damaged/` (never
        deleted) with a message, and the next older one is used.
        """
        pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
        for step in sorted(self.manager.all_steps(), reverse=True):
            damage = self._verify(step)
            if damage is None:
                try:
                    if partial:  # read on this process; laid out as the template below
                        restored = _intersect(restore_tree(self.directory, step), pure)
                    else:
                        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
                        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
                except (ValueError, KeyError, TypeError) as e:
                    if os.path.exists(self._checksum_path(step)):  # the files are intact: another state
                        raise ValueError(self._mismatch_message(step, e)) from None
                    damage = f"it cannot be read ({str(e).strip().splitlines()[0][:200]})"
                else:
                    if all_finite(jnp.zeros(()), restored):
                        if isinstance(state, nnx.State):
                            leaves, treedef = jax.tree.flatten(state)
                            nnx.replace_by_pure_dict(state, restored)
                            if partial:  # onto the template's devices (every process's), not this one's
                                placed = map(_like, jax.tree.leaves(state), leaves)
                                state = jax.tree.unflatten(treedef, list(placed))
                            return state, step
                        return restored, step
                    damage = "it holds non-finite values"
            self._set_aside(step, damage)
        return state, 0

    def _checksum_path(self, step):
        return os.path.join(self.workdir, "checksums", f"{step}.json")

    def _files(self, step):
        root = os.path.join(self.directory, str(step))
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    def _digest(self, step, name):
        with open(os.path.join(self.directory, str(step), name), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def _write_checksums(self, step):
        """sha256 of every file of the checkpoint of `step`, beside the checkpoints (process 0)."""
        if jax.process_index() != 0:
            return
        write_json(self._checksum_path(step), {n: self._digest(step, n) for n in self._files(step)})
        kept = {str(s) for s in self.manager.all_steps()}
        for name in os.listdir(os.path.dirname(self._checksum_path(step))):  # those of deleted steps
            if name.endswith(".json") and name[:-5] not in kept:
                os.remove(os.path.join(os.path.dirname(self._checksum_path(step)), name))

    def _verify(self, step):
        """None if the checkpoint of `step` matches its checksums, else what is wrong with it."""
        path = self._checksum_path(step)
        if not os.path.exists(path):
            return None  # written before checksums existed, or by a run killed before it wrote them
        with open(path) as f:
            want = json.load(f)
        missing = sorted(set(want) - set(self._files(step)))
        if missing:
            return f"{len(missing)} file(s) are missing, e.g. {missing[0]}"
        changed = [n for n in want if self._digest(step, n) != want[n]]
        if changed:
            return f"{len(changed)} file(s) differ from their checksums, e.g. {changed[0]}"
        return None

    def _set_aside(self, step, damage):
        where = os.path.join(self.workdir, "damaged", str(step))
        message = f"The checkpoint at step {step} in {self.directory} is damaged: {damage}."
        if jax.process_count() > 1:
            raise ValueError(
                f"{message} Move {os.path.join(self.directory, str(step))} out of the "
                "way and rerun: the run resumes from the step before."
            )
        os.makedirs(os.path.dirname(where), exist_ok=True)
        if os.path.exists(where):
            where += f".{int(time.time())}"
        os.replace(os.path.join(self.directory, str(step)), where)
        if os.path.exists(self._checksum_path(step)):
            os.replace(self._checksum_path(step), where + ".sha256.json")
        self.manager.reload()
        print(
            f"{message} Moved it to {where}; resuming from the newest older checkpoint, if any.",
            file=sys.stderr,
            flush=True,
        )

    def _mismatch_message(self, step, error):
        """Why a checkpoint does not fit the state: the config fields that differ, when known."""
        where = f"The checkpoint at step {step} in {self.directory} does not fit this run's state"
        differ = config_differences(os.path.join(self.workdir, "config.json"), self.config)
        if differ:
            return (
                f"{where}: it was written with another config ({'; '.join(differ)}). "
                "Use a new --workdir (or the config that wrote it)."
            )
        first = str(error).strip().splitlines()[0][:200]
        return f"{where} ({first}). Use a new --workdir (or the config that wrote it)."

    def watch(self, step, finite):
        """Records step `step`'s device bool `finite` (loss and parameters finite), unchecked."""
        self._pending.append((step, finite))

    def check_finite(self):
        """Raises NonFiniteLossError if a watched step was not finite (one host transfer)."""
        if not self._pending:
            return
        flags = jax.device_get([f for _, f in self._pending])
        for (step, _), ok in zip(self._pending, flags):
            if not bool(ok):
                last = self.manager.latest_step()
                where = (
                    f"the last good checkpoint is step {last} in {self.directory}"
                    if last is not None
                    else "no checkpoint was written before it"
                )
                raise NonFiniteLossError(
                    f"Non-finite loss or parameters at step {step}; {where} (not overwritten). "
                    "Lower the learning rate (--config.optim.lr) or check the data, then rerun with "
                    "the same --workdir to resume from that checkpoint."
                )
        self._pending = []

    def save(self, step, state):
        """Writes `state` as step `step` once every watched step is finite. Blocks until written."""
        self.check_finite()
        if self.manager.latest_step() == step:
            return
        if isinstance(state, nnx.State) and self.max_abs_param:
            largest = float(_max_abs(nnx.to_pure_dict(state.filter(nnx.Param))))
            if not largest <= self.max_abs_param:
                last = self.manager.latest_step()
                raise NonFiniteLossError(
                    f"Parameters reached |w| = {largest:.3g} at step {step} (the guard's limit is "
                    f"{self.max_abs_param:g}): the run diverged; "
                    + (
                        f"the last good checkpoint is step {last} in {self.directory}"
                        if last is not None
                        else "no checkpoint was written"
                    )
                    + " (not overwritten). Lower the learning rate (--config.optim.lr), then rerun with the "
                    "same --workdir."
                )
        pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
        self.manager.save(step, args=ocp.args.StandardSave(pure), force=True)
        self.manager.wait_until_finished()
        self._write_checksums(step)

    def preempted(self, step):
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._sigterm

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _like(value, template):
    """`value` placed with `template`'s sharding (which may span other processes' devices)."""
    sharding = getattr(template, "sharding", None)
    if sharding is None:
        return value
    host = np.asarray(jax.device_get(value))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _intersect(tree, template):
    """The part of the nested dict `tree` whose keys `template` has too."""
    if not isinstance(template, dict):
        return tree
    # Orbax stores every key as a string; nnx.List children are keyed by integers in the template.
    return {k: _intersect(tree[k] if k in tree else tree[str(k)], v) for k, v in template.items()}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved_path, config):
    """['model.name resnet_tiny in the checkpoint, resnet18 in the config', ...] for the fields of
    the config.json at `saved_path` that differ from the ConfigDict `config` (empty if either is
    missing)."""
    if config is None or not os.path.exists(saved_path):
        return []
    with open(saved_path) as f:
        saved = _flatten(json.load(f))
    now = _flatten(json.loads(config.to_json_best_effort()))
    differ = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    # The fields that shape the state first: a run-length or logging field rarely explains a mismatch.
    shaping = [k for k in differ if k.split(".")[0] in ("model", "method", "views", "data", "stage")]
    return [f"{k} {saved.get(k)!r} in the checkpoint, {now.get(k)!r} in the config" for k in shaping or differ]


@contextlib.contextmanager
def workdir_lock(workdir):
    """Held while a run trains in `workdir`: checks that it can hold a run (fails fast, before any data
    loading or compiling) and refuses a second trainer on the same workdir. An advisory lock on
    workdir/.lock (process 0), which the system drops when the process ends, even by SIGKILL."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise FileExistsError(f"--workdir {workdir} is a file, not a folder; choose another --workdir.")
    os.makedirs(workdir, exist_ok=True)
    if not os.access(workdir, os.W_OK):
        raise PermissionError(f"--workdir {workdir} is not writable; choose another --workdir.")
    if jax.process_index() != 0:
        yield
        return
    with open(os.path.join(workdir, ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise FileExistsError(
                f"Another run is training in --workdir {workdir} (process "
                f"{f.read().strip() or '?'}); wait for it or choose another --workdir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def all_finite(loss, params):
    """A device bool: the loss and every parameter are finite. Cheap: one reduction per leaf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]
    return jnp.isfinite(loss) & jnp.all(jnp.stack(leaves))


def use_compilation_cache():
    """A persistent XLA compilation cache, so a rerun (a resume, the next preset, common.evaluate) loads
    the compiled step instead of compiling it again: DINO's `:imagenet` step took 31 s cold on the
    project's 2-core CPU and 10-14 s from a cache. JAX_COMPILATION_CACHE_DIR (or an earlier
    jax.config setting) wins; otherwise ~/.cache/ssljax/xla, or $XDG_CACHE_HOME/ssljax/xla."""
    if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "ssljax", "xla"))


def sync_processes(name, timeout_s=1800):
    """Waits until every process has reached `name`, through the coordination service, whose timeout
    is ours to set (no-op with one process). Without it, a process that reaches the first collective
    more than 30 s after another (host work, a loaded machine: seen with two processes of
    paws.finetune on this 2-core CPU) fails in gloo: "Gloo context initialization failed:
    DEADLINE_EXCEEDED: GetKeyValue() timed out"."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, timeout=timeout_s, processes=set(range(jax.process_count())))


def maybe_initialize_distributed():
    """Joins JAX's distributed runtime when the job was started as one process of several.

    Plain environment variables (any machine, e.g. two processes on one host):
        JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i python M/train.py ...
    are passed to `jax.distributed.initialize` explicitly (JAX 0.10 reads only the address itself).
    Cluster environments that JAX detects by itself (SLURM, Open MPI, TPU pods) need no arguments.
    On CPU the processes talk through gloo. A single process on one machine skips all of it. It must
    run before any other JAX call: loop.cli calls it first, loop.train again (a no-op then).
    """
    env = os.environ
    if jax.distributed.is_initialized():
        return
    if "JAX_NUM_PROCESSES" in env or "JAX_PROCESS_ID" in env:
        missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(
                f"A multi-process launch needs {', '.join(missing)} as well "
                "(JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i)."
            )
        _use_gloo_on_cpu()
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
        _open_collectives()
        return
    multi = (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or "TPU_WORKER_HOSTNAMES" in env
    )
    if multi:
        _use_gloo_on_cpu()
        jax.distributed.initialize()
        _open_collectives()


def _open_collectives():
    """Every process waits for the others (coordination service, our timeout), then one collective
    over all devices sets up the collectives' context (gloo on CPU) while the processes are together:
    setting it up has a 30 s deadline, which a process that reaches its first collective late (host
    work on a loaded machine) misses ("Gloo context initialization failed: DEADLINE_EXCEEDED"); once
    set up, later collectives reuse it."""
    sync_processes("ssljax_start")
    multihost_utils.sync_global_devices("ssljax_collectives")


def _use_gloo_on_cpu():
    """CPU devices of several processes need a collectives backend; gloo ships with jaxlib."""
    if os.environ.get("JAX_PLATFORMS", "") in ("cpu", "") and "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def replicate(tree, mesh):
    """Places every array of `tree` fully replicated on the mesh (parameters in data parallelism)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.device_put(tree, sharding)


def to_host(x):
    return np.asarray(jax.device_get(x))


def write_json(path, obj):
    """Writes `obj` as JSON, atomically (a crash leaves the old file or the new one, never half), and
    from process 0 only: every process holds the same numbers."""
    if jax.process_index() == 0:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise FileExistsError(f"--workdir {folder} is a file, not a folder; choose another --workdir.")
        os.makedirs(folder, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(path + ".tmp", path)


def restore_tree(directory, step=None):
    """The checkpoint of `step` (default: the latest) in `directory` as a nested dict of arrays on
    this process's first device, whatever devices and processes wrote it (a run of two processes is
    evaluated by one). Raises FileNotFoundError when there is none."""
    manager = (
        ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
        if os.path.isdir(directory)
        else None
    )
    step = (manager.latest_step() if manager else None) if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {directory}: the workdir of a finished run is needed.")
    metadata = manager.item_metadata(step)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    is_array = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        getattr(metadata, "tree", metadata),
        is_leaf=is_array,
    )
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    manager.close()
    return restored


def load_part(workdir, part):
    """The part `part` (e.g. 'model') of the latest checkpoint of the run in `workdir`, as a nested
    dict of host arrays: what a later stage starts from (SimCLR v2's fine-tuning and distillation)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    restored = restore_tree(directory)
    if part not in restored:
        raise ValueError(f"The checkpoint in {directory} has no part {part!r} (it has {sorted(restored)}).")
    return jax.tree.map(np.asarray, restored[part])


def assign(module, pure):
    """Copies the arrays of the nested dict `pure` (all of the module's, or a subset) into `module`;
    refuses arrays whose shapes differ from the module's."""
    state = nnx.state(module)
    shapes = [x.shape for x in jax.tree.leaves(state)]
    nnx.replace_by_pure_dict(state, pure)
    if [x.shape for x in jax.tree.leaves(state)] != shapes:
        raise ValueError(
            "The checkpoint's arrays do not fit this config's model: use the same config.model "
            "as the run that wrote it."
        )
    nnx.update(module, state)
