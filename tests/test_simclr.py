"""SimCLR: the loss against the official code, a smoke run of main, resume, 8 devices vs 1, bad config."""

import json
import re

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
    helpers.close(jax.jit(simclr.nt_xent_loss, static_argnums=2)(z["z1"], z["z2"], T), z["loss"],
                  case["tolerance"]["loss"])


def test_nt_xent_is_symmetric_and_minimal_for_aligned_views():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 8, 16)).astype(np.float32)
    assert np.isclose(simclr.nt_xent_loss(z1, z2, 0.5), simclr.nt_xent_loss(z2, z1, 0.5), rtol=1e-6)
    assert simclr.nt_xent_loss(z1, z1, 0.5) < simclr.nt_xent_loss(z1, z2, 0.5)


def test_smoke_run_then_resume_after_sigterm_equals_uninterrupted_run(tmp_path):
    config = helpers.smoke_config("simclr", checkpoint_every_steps=100)
    results = simclr.main(config, str(tmp_path / "straight"))
    saved = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert saved == results and saved["step"] == 4 and saved["method"] == "simclr"
    for key in ("knn_top1", "knn_top5", "knn_top1_init", "knn_top5_init"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["knn_top5"] >= saved["knn_top1"]
    assert saved["knn_top1_init"] > 10.0  # ten classes: even a random body's features beat chance
    assert (tmp_path / "straight" / "config.json").exists()

    assert helpers.run_with_sigterm_at(simclr, config, str(tmp_path / "resumed"), step=2) is None
    assert helpers.final_params(str(tmp_path / "resumed"))[0] == 2  # SIGTERM saved step 2 and stopped
    simclr.main(config, str(tmp_path / "resumed"))
    step_a, straight = helpers.final_params(str(tmp_path / "straight"))
    step_b, resumed = helpers.final_params(str(tmp_path / "resumed"))
    assert step_a == step_b == 4
    np.testing.assert_array_equal(straight, resumed)


def test_eight_devices_equal_one():
    one = helpers.run_devices("simclr", 1)
    eight = helpers.run_devices("simclr", 8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eight["params"], one["params"], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Warmup starts at lr 0, so the first step is finite and saved; then lr 1e30 blows the weights up.
    config = helpers.smoke_config("simclr", checkpoint_every_steps=1)
    config.unlock()
    config.optim.epochs = 8 * 16 / 60000
    config.optim.warmup_epochs = 2 * 16 / 60000
    config.optim.lr = 1e30
    with pytest.raises(FloatingPointError, match=r"Non-finite loss or parameters at step (\d+)") as err:
        simclr.main(config, str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    good_step, params = helpers.final_params(str(tmp_path))
    assert 1 <= good_step < bad_step
    assert f"last good checkpoint is step {good_step}" in str(err.value)
    assert np.all(np.isfinite(params))


@pytest.mark.parametrize("field,value,message", [
    ("method.temperature", 0.0, "temperature"),
    ("optim.lr_scaling", "cubic", "lr_scaling"),
    ("data.batch_size", 1, "batch_size"),
])
def test_bad_config_fails_before_any_work(tmp_path, field, value, message):
    config = helpers.smoke_config("simclr", **{field: value})
    with pytest.raises(ValueError, match=message):
        simclr.main(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
