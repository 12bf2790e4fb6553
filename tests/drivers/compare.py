#!/usr/bin/env python3
"""Compares a driver's test-suite results directly and through tidepool.

Usage: compare.py ALLOW_LIST DIRECT.xml MODE=RESULT.xml [MODE=RESULT.xml ...]

Each RESULT.xml is pytest's JUnit report of one run. A test that passes
directly but not through tidepool in MODE is a regression unless the allow
list names it for that mode (`MODE TEST_ID  # reason`; MODE is `session`,
`transaction` or `any`). Prints a summary per mode, the regressions, and
allow-list entries that no longer fail (so the list shrinks as tidepool
gets better). Exits 1 on any regression, 2 on bad input.
"""

import sys
import xml.etree.ElementTree as ET


def outcomes(path):
    """test id -> 'passed' | 'failed' | 'skipped' from a JUnit report."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = "{}::{}".format(case.get("classname", ""), case.get("name", ""))
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            state = "failed"
        elif "skipped" in kinds:
            state = "skipped"
        else:
            state = "passed"
        # A test reported twice (its call and its teardown) fails if either did.
        if out.get(test_id) != "failed":
            out[test_id] = state
    return out


def allow_list(path):
    """(mode, test id) -> reason."""
    allowed = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            entry, _, reason = line.partition("#")
            if not entry.strip():
                continue
            parts = entry.split()
            if len(parts) != 2 or parts[0] not in ("session", "transaction", "any"):
                sys.exit(f"{path}:{n}: want `MODE TEST_ID  # reason`, got {line.strip()!r}")
            if not reason.strip():
                sys.exit(f"{path}:{n}: every entry says why (`# reason`)")
            allowed[(parts[0], parts[1])] = reason.strip()
    return allowed


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    allowed = allow_list(argv[1])
    direct = outcomes(argv[2])
    passed_directly = {t for t, s in direct.items() if s == "passed"}
    print(f"direct: {len(passed_directly)} passed of {len(direct)}")
    regressions = []
    used = set()
    passing = set()
    for arg in argv[3:]:
        mode, _, path = arg.partition("=")
        through = outcomes(path)
        passing |= {(m, t) for m in (mode, "any") for t, st in through.items() if st == "passed"}
        lost, excused = [], []
        for test in sorted(passed_directly):
            if through.get(test) == "passed":
                continue
            key = next(((m, test) for m in (mode, "any") if (m, test) in allowed), None)
            if key:
                used.add(key)
                excused.append(test)
            else:
                lost.append(test)
        ok = sum(1 for t in passed_directly if through.get(t) == "passed")
        print(
            f"{mode}: {ok} of the {len(passed_directly)} that pass directly pass "
            f"through tidepool; {len(excused)} allow-listed, {len(lost)} regressions"
        )
        regressions += [(mode, t) for t in lost]
    for key in sorted((set(allowed) - used) & passing):
        mode, test = key
        print(f"allow-list entry passed this time (remove it if it keeps passing): {mode} {test}")
    for mode, test in regressions:
        print(f"REGRESSION ({mode}): {test}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
