"""Shared test helpers: running a method's main on the smoke preset, and the 8-vs-1 device comparison."""

import dataclasses
import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np

from common import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
# Every method folder of the monorepo: a folder with a train.py and a config.py beside it.
METHODS = sorted(p.name for p in ROOT.iterdir() if (p / "train.py").is_file() and (p / "config.py").is_file())


def reference_cases(method, function):
    """The cases.json entries recorded for `function` (a name, e.g. 'nt_xent_loss') of `method`."""
    with open(REFERENCE / "cases.json") as f:
        cases = json.load(f)["cases"]
    found = [c for c in cases if c["method"] == method and c["function"].startswith(function + "(")]
    assert found, f"no reference case for {method}.{function}"
    return found


def close(got, want, tol):
    """|got - want| <= atol + rtol * |want|, the reference README's rule, with the worst offender shown."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"])


def smoke_config(method, **overrides):
    config = importlib.import_module(f"{method}.config").get_config("smoke")
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def run_with_sigterm_at(module, config, workdir, step):
    """Runs module.main, sending a real SIGTERM to this process once `step` steps are done."""
    original = checkpoint.Checkpointer.preempted

    def preempted(self, s):
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, s)

    checkpoint.Checkpointer.preempted = preempted
    try:
        return module.main(config, workdir)
    finally:
        checkpoint.Checkpointer.preempted = original
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclasses.dataclass
class SmokeRuns:
    straight: pathlib.Path  # the smoke preset run to the end (checkpoints every step: steps 3 and 4 kept)
    resumed: pathlib.Path  # the same, pre-empted by SIGTERM after step 2, then rerun to the end
    results: dict  # what main returned for the straight run
    preempted_results: object  # what main returned when pre-empted (None)
    preempted_step: int  # the latest checkpoint right after the pre-emption


def smoke_runs(method, tmp):
    """Runs `method`'s smoke preset straight, and pre-empted at step 2 then resumed, in `tmp`."""
    module = importlib.import_module(f"{method}.train")
    config = smoke_config(method, checkpoint_every_steps=1)
    straight, resumed = pathlib.Path(tmp) / "straight", pathlib.Path(tmp) / "resumed"
    results = module.main(config, str(straight))
    preempted = run_with_sigterm_at(module, config, str(resumed), step=2)
    preempted_step = final_params(str(resumed))[0]
    module.main(config, str(resumed))
    return SmokeRuns(straight, resumed, results, preempted, preempted_step)


def restore(workdir, step=None):
    """The checkpoint of `step` (default: the latest) in workdir, as a nested dict of numpy arrays keyed
    by the state's part names."""
    return jax.tree.map(np.asarray, checkpoint.restore_tree(os.path.join(workdir, "checkpoints"), step))


def final_params(workdir):
    """(step, every array of the latest checkpoint in workdir flattened to one float64 vector)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = manager.latest_step()
    manager.close()
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(restore(workdir, step))]
    return step, np.concatenate(leaves)


def run_devices(method, devices, steps=2):
    """The method's train step run `steps` times on a fixed batch on `devices` simulated CPU devices:
    {'devices': n, 'losses': [...], 'params': {part name: flat list of every array of that part}}."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "multidevice_step.py"), method, str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
