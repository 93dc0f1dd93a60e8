"""scripts/benchmark.py as a user runs it: two processes on localhost (the README's plain launch, as
tests/test_multiprocess.py starts runs) print one set of global figures, and the augment-only mode
runs in one process. Subprocesses: each compiles the smoke preset's step (the tests' compilation
cache serves repeats)."""

import json
import os
import subprocess
import sys

from tests import helpers
from tests.test_multiprocess import launch_command

FIGURES = ("host_images_per_s", "augment_images_per_s", "step_images_per_s", "loop_images_per_s", "compile_s")


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_two_processes_print_the_global_figures_once(tmp_path):
    output = tmp_path / "bench.json"
    args = ["scripts/benchmark.py", "--config=simclr/config.py:smoke", "--steps=2", "--rounds=1", f"--json={output}"]
    outputs = launch_command(args, 2, timeout=600)
    for rc, _, err in outputs:
        assert rc == 0, err[-3000:]
    (_, out0, _), (_, out1, _) = outputs
    assert json_lines(out1) == []  # process 1 prints nothing
    lines = json_lines(out0)
    assert len(lines) == 1, out0
    figures = lines[0]
    assert figures["method"] == "simclr" and figures["devices"] == 2 and figures["processes"] == 2
    assert figures["batch_size"] == 16  # the global batch: the images/s are global
    for name in FIGURES:
        assert figures[name] > 0, (name, figures)
    # The lowered (global) program's FLOPs per image against the compiled per-device program's: the
    # same computation, so within a few percent on CPU (measured: 8.59e6 vs 9.22e6 here).
    assert figures["flops_per_image"] > 1e6
    assert abs(figures["compiled_flops_per_image"] / figures["flops_per_image"] - 1) < 0.15, figures
    assert json.loads(output.read_text()) == figures  # the --json file, written once


def test_augment_only_in_one_process():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "scripts/benchmark.py", "--config=simclr/config.py:smoke", "--steps=2", "--augment_only"]
    done = subprocess.run(cmd, cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json_lines(done.stdout)
    assert len(lines) == 1, done.stdout
    assert lines[0]["devices"] == 1 and lines[0]["augment_images_per_s"] > 0
    assert "step_images_per_s" not in lines[0]  # no state, step or loop in this mode
