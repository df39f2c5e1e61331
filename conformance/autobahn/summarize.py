#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient report and judge it.

Reads <report-dir>/index.json (written by `wstest -m fuzzingclient`), prints how
many cases got each verdict in `behavior` and in `behaviorClose`, lists every
case whose verdict is not OK (with the reason from its per-case JSON for the
ones that fail the bar), and exits:

  0  every case passes the bar and exactly --expect cases were found
  1  a case FAILED or was NON-STRICT (in either field), or the case count is wrong
  2  the report is missing or unreadable, or the agent is not in it

Verdicts as wstest writes them, and how this script counts them (the same
colours the testsuite's own index.html uses):

  fail        FAILED, UNCLEAN (close), NO_CLOSE, and anything unknown
  non-strict  NON-STRICT, WRONG CODE (close)
  pass        OK, INFORMATIONAL, UNIMPLEMENTED, FAILED BY CLIENT (close: the
              suite had to drop TCP after a clean close handshake; the HTML
              report shows it as "almost" passing)

With --no-unimplemented, UNIMPLEMENTED fails: in the compression cases (12.*,
13.*) it means permessage-deflate was not negotiated at all.

Uses only the Python 3 standard library.
"""

import argparse
import json
import os
import re
import sys
from collections import Counter

STANDARD = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
PASSING = {"OK", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED BY CLIENT"}
NON_STRICT = {"NON-STRICT", "WRONG CODE"}


def classify(verdict):
    """Returns "pass", "non-strict" or "fail" for one verdict string."""
    if verdict in PASSING:
        return "pass"
    if verdict in NON_STRICT:
        return "non-strict"
    return "fail"


def case_key(case_id):
    """Sorts "9.10.2" after "9.2.1": numeric per component."""
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def plain(text, limit=160):
    """One line of text from a description that may hold HTML and newlines."""
    text = re.sub(r"<[^>]+>", " ", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_case(report_dir, entry):
    """The per-case JSON (description, result, ...) or {} if unreadable."""
    name = entry.get("reportfile")
    if not name:
        return {}
    try:
        with open(os.path.join(report_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_dir", help="the fuzzingclient outdir holding index.json")
    parser.add_argument("--agent", help="agent to judge (default: the only one in index.json)")
    parser.add_argument(
        "--expect", type=int, default=301,
        help="number of cases the run must contain (default 301 = cases 1.* to 10.*)")
    parser.add_argument(
        "--no-unimplemented", action="store_true",
        help="count UNIMPLEMENTED as a failure (cases 12.*/13.*: the extension was not agreed)")
    args = parser.parse_args(argv)

    index_path = os.path.join(args.report_dir, "index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print(f"summarize: cannot read {index_path}: {e}; did wstest finish?", file=sys.stderr)
        return 2

    agent = args.agent
    if agent is None:
        if len(index) != 1:
            print(f"summarize: {index_path} has agents {sorted(index)}; pick one with --agent",
                  file=sys.stderr)
            return 2
        agent = next(iter(index))
    if agent not in index:
        print(f"summarize: agent {agent!r} not in {index_path} (has {sorted(index)})",
              file=sys.stderr)
        return 2
    cases = index[agent]

    behavior = Counter(c.get("behavior", "?") for c in cases.values())
    behavior_close = Counter(c.get("behaviorClose", "?") for c in cases.values())
    extra = sorted((set(behavior) | set(behavior_close)) - set(STANDARD))

    print(f"Autobahn|Testsuite summary for agent {agent!r}: {len(cases)} cases "
          f"(expected {args.expect})")
    print(f"  {'verdict':<18}{'behavior':>10}{'behaviorClose':>15}")
    for verdict in STANDARD + extra:
        print(f"  {verdict:<18}{behavior[verdict]:>10}{behavior_close[verdict]:>15}")

    failing = []
    not_ok = []
    for case_id in sorted(cases, key=case_key):
        c = cases[case_id]
        b, bc = c.get("behavior", "?"), c.get("behaviorClose", "?")
        if b == "OK" and bc == "OK":
            continue
        worst = max((classify(b), classify(bc)), key=["pass", "non-strict", "fail"].index)
        if args.no_unimplemented and "UNIMPLEMENTED" in (b, bc):
            worst = "fail"
        not_ok.append((case_id, b, bc, c.get("remoteCloseCode"), worst))
        if worst != "pass":
            failing.append(case_id)

    if not_ok:
        print("\nCases not OK in both fields:")
        for case_id, b, bc, code, worst in not_ok:
            mark = {"pass": "  ", "non-strict": "! ", "fail": "X "}[worst]
            print(f"  {mark}{case_id:<9} behavior={b:<14} behaviorClose={bc:<17} "
                  f"remoteCloseCode={code}")
            if worst == "pass":
                continue
            detail = load_case(args.report_dir, cases[case_id])
            for label, key in (("description", "description"), ("expectation", "expectation"),
                               ("result", "result"), ("resultClose", "resultClose"),
                               ("notClean", "wasNotCleanReason")):
                value = detail.get(key)
                if value:
                    print(f"       {label}: {plain(value)}")
            report = cases[case_id].get("reportfile")
            if report:
                print(f"       report: {os.path.join(args.report_dir, report[:-5])}.html")

    problems = []
    if failing:
        problems.append(f"{len(failing)} case(s) FAILED or NON-STRICT"
                        f"{' or UNIMPLEMENTED' if args.no_unimplemented else ''}: {', '.join(failing)}")
    if len(cases) != args.expect:
        problems.append(f"found {len(cases)} cases, expected {args.expect}")
    if problems:
        print("\nRESULT: FAIL - " + "; ".join(problems))
        return 1
    print(f"\nRESULT: PASS - {len(cases)} cases, 0 FAILED, 0 NON-STRICT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
