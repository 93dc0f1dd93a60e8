"""Test-wide settings. XLA's backend optimisation level 0 roughly halves compile time on CPU, which
dominates these tiny-model tests; numerics stay within float rounding (the 8-vs-1 device comparisons
use the same level on both sides)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
