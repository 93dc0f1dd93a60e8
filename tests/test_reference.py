"""Every recorded reference case (outputs of the official implementations) through scripts/check_reference.py.

The cases are the files listed in the cases.json of tests/reference/ and its subfolders; a case added there
later in an existing format is checked here with no new code.
"""

import json

import pytest

from scripts import check_reference
from tests import helpers


def _cases():
    found = []
    for listing in sorted(helpers.REFERENCE.rglob("cases.json")):
        cases = json.load(open(listing))["cases"]
        for entry in cases.values() if isinstance(cases, dict) else cases:
            for name in [entry["file"], *(entry.get("checkpoint_files") or [])]:
                path = listing.parent / name
                if path.exists():
                    found.append(str(path.relative_to(helpers.REFERENCE)))
    return found


CASES = _cases()


def test_every_case_file_is_listed():
    files = {
        str(p.relative_to(helpers.REFERENCE))
        for p in helpers.REFERENCE.rglob("*")
        if p.suffix in (".npz", ".pth", ".tar", ".torch")
    }
    assert files <= set(CASES), f"case files without a cases.json entry: {sorted(files - set(CASES))}"


@pytest.mark.parametrize("case", CASES)
def test_reference_case(case):
    results = check_reference.check(str(helpers.REFERENCE / case))
    bad = [r for r in results if not r.passed]
    assert not bad, "\n".join(
        f"{r.name}: worst abs {r.worst_abs:.3g}, worst rel {r.worst_rel:.3g} (rtol {r.rtol:g}, atol {r.atol:g})"
        + (f" {r.note}" if r.note else "")
        for r in bad
    )
