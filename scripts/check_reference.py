"""Checks recorded reference cases (outputs of the official implementations) against this project.

    python scripts/check_reference.py tests/reference/moco_loss_N8_D16_K32.npz tests/reference/steps/*.npz

Each case file has an entry in the `cases.json` beside it (matched by its "file" field). The entry's
method picks a runner module `scripts/reference/<name>.py` (`convert` for the `convert/` folder and for
checkpoint files), whose `run(entry, arrays, path)` computes the project's outputs for the case's inputs and returns
comparisons `(name, ours, expected, rtol, atol)`; this script prints, per array, the worst absolute and
relative difference and pass/fail at the recorded tolerance, where an array passes when
|ours - expected| <= atol + rtol * |expected| elementwise (numpy.allclose's rule). The exit status is 0
only when every comparison of every case passes. A case added later in an existing format needs no new
code; a new format needs a new branch in its runner.
"""

import argparse
import dataclasses
import importlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@dataclasses.dataclass
class Result:
    case: str
    name: str
    worst_abs: float
    worst_rel: float
    rtol: float
    atol: float
    passed: bool
    note: str = ""


def entry_for(path):
    """The cases.json entry of the case file `path`: the entry whose "file" is it, or whose
    "checkpoint_files" (paths relative to the cases.json) list it; the cases.json is the one beside the
    file or in a folder above it."""
    path = os.path.abspath(os.path.normpath(path))
    folder = os.path.dirname(path)
    while True:
        listing = os.path.join(folder, "cases.json")
        if os.path.exists(listing):
            break
        if os.path.dirname(folder) == folder:
            raise FileNotFoundError(
                f"{path}: no cases.json beside it or above it; "
                "a reference case is listed in the cases.json of its folder"
            )
        folder = os.path.dirname(folder)
    cases = json.load(open(listing))["cases"]
    relative = os.path.relpath(path, folder)
    for entry in cases.values() if isinstance(cases, dict) else cases:
        if entry.get("file") == relative or relative in (entry.get("checkpoint_files") or []):
            return entry
    raise KeyError(f"{path}: {listing} has no entry with file {relative!r}")


def runner_for(path, entry):
    """The runner module for a case: its folder's (convert/) or its method's."""
    parts = os.path.abspath(path).split(os.sep)
    folder = "convert" if "convert" in parts[-3:-1] else parts[-2]
    container = not path.endswith(".npz") or str(entry.get("kind", "")).startswith("checkpoint")
    name = "convert" if folder == "convert" or container else str(entry.get("method", "")).split(",")[0].split(" ")[0]
    try:
        return importlib.import_module(f"scripts.reference.{name}")
    except ModuleNotFoundError as e:
        raise NotImplementedError(f"{path}: no runner scripts/reference/{name}.py for method {name!r}") from e


def compare(case, name, ours, expected, rtol, atol):
    ours = np.asarray(ours, np.float64)
    expected = np.asarray(expected, np.float64)
    if ours.shape != expected.shape:
        return Result(case, name, np.inf, np.inf, rtol, atol, False, f"shape {ours.shape} != {expected.shape}")
    if ours.size == 0:
        return Result(case, name, 0.0, 0.0, rtol, atol, True)
    diff = np.abs(ours - expected)
    rel = diff / np.maximum(np.abs(expected), 1e-12)
    passed = bool(np.all(diff <= atol + rtol * np.abs(expected))) and bool(np.all(np.isfinite(ours)))
    return Result(case, name, float(diff.max()), float(rel.max()), rtol, atol, passed)


def check(path):
    """All comparisons of one case file -> [Result]."""
    entry = entry_for(path)
    arrays = dict(np.load(path, allow_pickle=False)) if path.endswith(".npz") else {}
    runner = runner_for(path, entry)
    case = os.path.basename(os.path.normpath(path))
    results = [compare(case, *c) for c in runner.run(entry, arrays, path)]
    if not results:
        raise AssertionError(f"{path}: the runner compared nothing")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="case files (.npz, or the container files a cases.json lists)")
    parser.add_argument("--all", action="store_true", help="print every array, not only failures and a summary")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.cases:
        try:
            results = check(path)
        except Exception as e:  # a case that cannot run is a failure, reported in one line
            print(f"FAIL {path}: {type(e).__name__}: {e}")
            failed += 1
            continue
        bad = [r for r in results if not r.passed]
        print(
            f"{'PASS' if not bad else 'FAIL'} {path}: {len(results) - len(bad)}/{len(results)} arrays within tolerance"
        )
        for r in results if args.all else bad:
            print(
                f"  {'ok  ' if r.passed else 'FAIL'} {r.name}: worst abs {r.worst_abs:.3g}, worst rel {r.worst_rel:.3g}"
                f" (rtol {r.rtol:g}, atol {r.atol:g}){' ' + r.note if r.note else ''}"
            )
        failed += bool(bad)
    print(f"{len(args.cases) - failed}/{len(args.cases)} cases pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
