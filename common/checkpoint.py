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

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


class NonFiniteLossError(FloatingPointError):
    pass


class Checkpointer:
    """Orbax CheckpointManager over `workdir/checkpoints`, with the non-finite guard and SIGTERM.

    `watch(step, finite)` collects each step's device flag (no host sync); `save` checks every flag
    collected so far before it writes, so a checkpoint never holds a state computed after a
    non-finite step, and a diverged run keeps its last good checkpoint (NonFiniteLossError names
    both steps). SIGTERM (what a scheduler or `kill` sends before pre-empting a job) only sets a
    flag; the loop asks `preempted(step)` after each step, saves, and exits cleanly. With several
    processes, JAX's pre-emption sync point makes every process stop at the same step.
    """

    def __init__(self, workdir, keep=2, config=None):
        self.config = config  # the run's ConfigDict: names the fields that differ from a checkpoint's
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._pending = []  # [(step, device bool)] not yet checked
        self._sigterm = False
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self._sigterm = True

    def latest_step(self):
        return self.manager.latest_step()

    def restore_or(self, state, partial=False):
        """Returns (state, step): the latest checkpoint if there is one, else (state, 0) unchanged.

        `state` is an nnx.State (or any pytree of arrays); its shapes, dtypes and shardings tell Orbax
        how to lay out the restored arrays. partial=True restores only the parts `state` has (an
        evaluation that rebuilt the model without a stage's inputs) from host copies of the arrays.
        """
        step = self.manager.latest_step()
        if step is None:
            return state, 0
        pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
        try:
            if partial:
                restored = _intersect(self.manager.restore(step, args=ocp.args.StandardRestore()), pure)
            else:
                abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError) as e:
            raise ValueError(self._mismatch_message(step, e)) from None
        if isinstance(state, nnx.State):
            nnx.replace_by_pure_dict(state, restored)
            return state, step
        return restored, step

    def _mismatch_message(self, step, error):
        """Why a checkpoint does not fit the state: the config fields that differ, when known."""
        where = f"The checkpoint at step {step} in {self.directory} does not fit this run's state"
        differ = config_differences(os.path.join(self.workdir, "config.json"), self.config)
        if differ:
            return (f"{where}: it was written with another config ({'; '.join(differ)}). "
                    "Use a new --workdir (or the config that wrote it).")
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
                where = (f"the last good checkpoint is step {last} in {self.directory}"
                         if last is not None else "no checkpoint was written before it")
                raise NonFiniteLossError(
                    f"Non-finite loss or parameters at step {step}; {where} (not overwritten). "
                    "Lower the learning rate (--config.optim.lr) or check the data, then rerun with "
                    "the same --workdir to resume from that checkpoint.")
        self._pending = []

    def save(self, step, state):
        """Writes `state` as step `step` once every watched step is finite. Blocks until written."""
        self.check_finite()
        if self.manager.latest_step() == step:
            return
        pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
        self.manager.save(step, args=ocp.args.StandardSave(pure), force=True)
        self.manager.wait_until_finished()

    def preempted(self, step):
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self._sigterm

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


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
    return [f"{k} {saved.get(k)!r} in the checkpoint, {now.get(k)!r} in the config"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def check_workdir(workdir):
    """Fails fast, before any data loading or compiling, when `workdir` cannot hold a run."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise FileExistsError(f"--workdir {workdir} is a file, not a folder; choose another --workdir.")
    os.makedirs(workdir, exist_ok=True)
    if not os.access(workdir, os.W_OK):
        raise PermissionError(f"--workdir {workdir} is not writable; choose another --workdir.")


def all_finite(loss, params):
    """A device bool: the loss and every parameter are finite. Cheap: one reduction per leaf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]
    return jnp.isfinite(loss) & jnp.all(jnp.stack(leaves))


def maybe_initialize_distributed():
    """Joins JAX's distributed runtime when the job was started as one process of several.

    Cluster environments that JAX detects by itself (SLURM, Open MPI, TPU pods, Kubernetes via
    JAX_COORDINATOR_ADDRESS) need no arguments. A single process on one machine skips it.
    """
    env = os.environ
    multi = (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or "TPU_WORKER_HOSTNAMES" in env
    )
    if multi:
        jax.distributed.initialize()


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
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(path + ".tmp", path)


def load_part(workdir, part):
    """The part `part` (e.g. 'model') of the latest checkpoint of the run in `workdir`, as a nested
    dict of host arrays: what a later stage starts from (SimCLR v2's fine-tuning and distillation)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(directory) if os.path.isdir(directory) else None
    step = manager.latest_step() if manager else None
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {directory}: the workdir of a finished run is needed.")
    restored = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
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
        raise ValueError("The checkpoint's arrays do not fit this config's model: use the same config.model "
                         "as the run that wrote it.")
    nnx.update(module, state)
