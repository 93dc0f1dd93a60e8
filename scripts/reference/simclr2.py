"""SimCLR v2 reference cases -> comparisons for scripts/check_reference.py.

Distillation cases (tests/reference/simclr2_distill_*.npz, the official `add_kd_loss` of
google-research/simclr tf2/colabs/distillation_self_training.ipynb): `simclr2.distillation_loss` on the
stored logits, in float32 (eager and jitted) against the official float64 run `loss_f64` (the cases'
recommended target for a float32 implementation), and once more run in float64 (jax.enable_x64)
against `loss_f64`. Tolerances: the case's `loss` entry. SimCLR v2's contrastive loss is checked on the
simclr_ntxent cases by tests/test_simclr2.py (check_reference sends those cases to the simclr runner).
"""

import jax
import jax.numpy as jnp
import numpy as np

from simclr2 import train as simclr2


def run(entry, arrays, path):
    if not entry["case"].startswith("simclr2_distill"):
        raise NotImplementedError(f"no SimCLR v2 runner for case {entry['case']!r}")
    student, teacher = np.asarray(arrays["student_logits"]), np.asarray(arrays["teacher_logits"])
    temperature = entry["hyper"]["temperature"]
    tol = entry["tolerance"]["loss"]["rtol"], entry["tolerance"]["loss"]["atol"]
    loss = simclr2.distillation_loss(student, teacher, temperature)
    loss_jit = jax.jit(simclr2.distillation_loss, static_argnums=2)(student, teacher, temperature)
    with jax.enable_x64(True):
        s64, t64 = jnp.asarray(student, jnp.float64), jnp.asarray(teacher, jnp.float64)
        loss_f64 = np.asarray(simclr2.distillation_loss(s64, t64, temperature))
    return [
        ("loss", loss, arrays["loss_f64"], *tol),
        ("loss (jit)", loss_jit, arrays["loss_f64"], *tol),
        ("loss (float64 run)", loss_f64, arrays["loss_f64"], *tol),
    ]
