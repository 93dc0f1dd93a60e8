"""Checkpoints, pre-emption and the non-finite guard: the method-neutral half of every training loop.

Every method keeps its whole training state in one pytree (models, optimizer, method buffers such as a
queue or a centre) plus the step. The data order is a pure function of (seed, step) (common/data.py),
so the step *is* the data position and the random state: a run restored at step k continues exactly as
an uninterrupted one would.

    ckpt = checkpoint.Checkpointer(workdir, every_steps=config.checkpoint_every)
    state, start_step = ckpt.restore_or(state)      # resume if workdir holds a checkpoint
    ...
    ckpt.save(step, state)                          # after a step whose loss was finite
    if ckpt.preempted(step): ckpt.save(step, state, force=True); break

A checkpoint is only written after the guard has seen every loss up to that step finite, so a run that
diverges stops with the last good checkpoint untouched (`NonFiniteLossError` names both steps).
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
    """Orbax CheckpointManager over `workdir/checkpoints`, with SIGTERM handling.

    SIGTERM (what a scheduler or `kill` sends before pre-empting a job) only sets a flag; the loop asks
    `preempted(step)` after each step, saves, and exits cleanly. With several processes, JAX's
    pre-emption sync point makes every process stop at the same step.
    """

    def __init__(self, workdir, every_steps, keep=2):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._sigterm = False
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self._sigterm = True

    def latest_step(self):
        return self.manager.latest_step()

    def restore_or(self, state):
        """Returns (state, step): the latest checkpoint if there is one, else (state, 0) unchanged.

        `state` is an nnx.State (or any pytree of arrays); its shapes, dtypes and shardings tell Orbax
        how to lay out the restored arrays.
        """
        step = self.manager.latest_step()
        if step is None:
            return state, 0
        pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        if isinstance(state, nnx.State):
            nnx.replace_by_pure_dict(state, restored)
            return state, step
        return restored, step

    def save(self, step, state, force=False):
        """Saves at multiples of `every_steps` (or always with force). Blocks until written."""
        if not force and (self.every_steps <= 0 or step % self.every_steps):
            return
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


class FiniteGuard:
    """Collects the per-step `finite` flags (device scalars, no sync) and checks them in one transfer.

    `check()` is called before every checkpoint and at every log step, so a non-finite step is found
    before anything computed after it is saved.
    """

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.pending = []  # [(step, device bool)]

    def add(self, step, finite):
        self.pending.append((step, finite))

    def check(self):
        if not self.pending:
            return
        flags = jax.device_get([f for _, f in self.pending])
        for (step, _), ok in zip(self.pending, flags):
            if not bool(ok):
                last = self.checkpointer.latest_step()
                where = (f"the last good checkpoint is step {last} in {self.checkpointer.directory}"
                         if last is not None else "no checkpoint was written before it")
                raise NonFiniteLossError(
                    f"Non-finite loss or parameters at step {step}; {where} (not overwritten). "
                    "Lower the learning rate (--config.optim.lr) or check the data, then rerun with "
                    "the same --workdir to resume from that checkpoint.")
        self.pending = []


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


def write_results(path, results):
    """Writes a run's results dict as JSON (process 0 only: every process holds the same numbers)."""
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
