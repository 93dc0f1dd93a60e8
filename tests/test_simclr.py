"""SimCLR: the loss against the official code (the loop, resume, devices and bad configs: test_contract)."""

import jax
import numpy as np
import pytest

from simclr import train as simclr
from tests import helpers


@pytest.mark.parametrize("case", helpers.reference_cases("simclr", "nt_xent_loss"), ids=lambda c: c["case"])
def test_nt_xent_matches_official(case):
    z = np.load(helpers.REFERENCE / case["file"])
    T = case["hyper"]["temperature"]
    helpers.close(simclr.nt_xent_loss(z["z1"], z["z2"], T), z["loss"], case["tolerance"]["loss"])
    helpers.close(
        jax.jit(simclr.nt_xent_loss, static_argnums=2)(z["z1"], z["z2"], T), z["loss"], case["tolerance"]["loss"]
    )


def test_nt_xent_is_symmetric_and_minimal_for_aligned_views():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 8, 16)).astype(np.float32)
    assert np.isclose(simclr.nt_xent_loss(z1, z2, 0.5), simclr.nt_xent_loss(z2, z1, 0.5), rtol=1e-6)
    assert simclr.nt_xent_loss(z1, z1, 0.5) < simclr.nt_xent_loss(z1, z2, 0.5)
