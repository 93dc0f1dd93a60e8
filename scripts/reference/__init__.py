"""Runners of scripts/check_reference.py, one per method (and augmentations, convert), and what they share."""

import fnmatch


def tolerance(table, name):
    """(rtol, atol) of array `name`: `table` is a cases.json entry, its "tolerance" dict (per-key
    {"rtol", "atol"} dicts, looked up by the whole name and then by its last "/" part; or "rules": glob
    patterns, the first match wins) or a bare list of such rules."""
    if isinstance(table, dict) and "tolerance" in table:
        table = table["tolerance"]
    rules = table if isinstance(table, list) else table.get("rules")
    if rules is not None:
        for rule in rules:
            if fnmatch.fnmatchcase(name, rule["pattern"]):
                return rule["rtol"], rule["atol"]
        raise KeyError(f"no tolerance rule matches {name!r}: {[r['pattern'] for r in rules]}")
    t = table[name] if name in table else table[name.split("/")[-1]]
    return t["rtol"], t["atol"]
