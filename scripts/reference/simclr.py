"""SimCLR reference cases -> comparisons for scripts/check_reference.py.

Loss cases (tests/reference/simclr_ntxent_*.npz, google-research/simclr tf2/objective.py
`add_contrastive_loss` on concat([z1, z2])): `simclr.nt_xent_loss` on the stored raw projections, eager
and jitted, against the official float32 `loss` (the official function cannot run in float64: its
one_hot is float32, so the case has no `loss_f64`), and the view-1-to-view-2 logits recomputed with
simclr's own `l2_normalize` against the official `logits_ab`. Tolerances: the case's per-key entries.
The cases have no step, schedule or parameter arrays (the SimCLR step is checked by tests/test_simclr.py).
"""

import jax
import numpy as np

from scripts.reference import tolerance
from simclr import train as simclr


def run(entry, arrays, path):
    if not entry["case"].startswith("simclr_ntxent"):
        raise NotImplementedError(f"no SimCLR runner for case {entry['case']!r}")
    z1, z2 = np.asarray(arrays["z1"]), np.asarray(arrays["z2"])
    temperature = entry["hyper"]["temperature"]
    loss = simclr.nt_xent_loss(z1, z2, temperature)
    loss_jit = jax.jit(simclr.nt_xent_loss, static_argnums=2)(z1, z2, temperature)
    logits_ab = simclr.l2_normalize(z1) @ simclr.l2_normalize(z2).T / temperature  # [N, N]
    return [
        ("loss", loss, arrays["loss"], *tolerance(entry, "loss")),
        ("loss (jit)", loss_jit, arrays["loss"], *tolerance(entry, "loss")),
        ("logits_ab", logits_ab, arrays["logits_ab"], *tolerance(entry, "logits_ab")),
    ]
