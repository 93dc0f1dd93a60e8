"""Every paper preset against the official recipe it names: one table of official values per method.

Each row is (preset, config field, official value, source). The source names the official command or
the paper section the value comes from; a preset that departs from the official recipe on purpose says
so in its docstring, and its row here holds the value the preset uses together with the reason in the
source column (so a silent change of either still fails). Values are compared exactly (floats with
rtol 1e-9).
"""

import importlib

import numpy as np
import pytest

OFFICIAL = {}

# --- byol ---
OFFICIAL["byol"] = []
# --- end byol ---

# --- dino ---
OFFICIAL["dino"] = []
# --- end dino ---

# --- moco ---
OFFICIAL["moco"] = []
# --- end moco ---

# --- paws ---
OFFICIAL["paws"] = []
# --- end paws ---

# --- pirl ---
OFFICIAL["pirl"] = []
# --- end pirl ---

# --- simclr ---
OFFICIAL["simclr"] = []
# --- end simclr ---

# --- simclr2 ---
OFFICIAL["simclr2"] = []
# --- end simclr2 ---

# --- swav ---
OFFICIAL["swav"] = []
# --- end swav ---


def _field(config, path):
    value = config
    for part in path.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("method", sorted(OFFICIAL))
@pytest.mark.parametrize("preset", ["cifar10", "imagenet"])
def test_preset_matches_the_official_recipe(method, preset):
    rows = [r for r in OFFICIAL[method] if r[0] == preset]
    assert rows, f"no official values recorded for {method}:{preset}"
    config = importlib.import_module(f"{method}.config").get_config(preset)
    wrong = []
    for _, path, official, source in rows:
        ours = _field(config, path)
        same = (
            np.allclose(np.asarray(ours, np.float64), np.asarray(official, np.float64), rtol=1e-9, atol=0)
            if isinstance(official, (int, float, tuple, list)) and not isinstance(official, bool)
            else ours == official
        )
        if not same:
            wrong.append(f"{path}: preset {ours!r}, official {official!r} ({source})")
    assert not wrong, f"{method}:{preset} departs from the official recipe:\n" + "\n".join(wrong)
