"""Run onnx's node test cases through rzrt and print the count that can be quoted.

    python tests/conformance/report.py                 # "N of M node cases pass, K ops fully"
    python tests/conformance/report.py --op Resize     # the cases of some ops, with each failure's reason
    python tests/conformance/report.py --failing       # every failing case with its reason
"""
from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conformance.node_cases import all_cases, op_of_case, run_case  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", action="append", help="only the cases of this op (repeatable)")
    p.add_argument("--failing", action="store_true", help="list every failing case with its reason")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    cases = all_cases()
    results, by_op = {}, collections.defaultdict(list)
    for name, case in cases.items():
        op = op_of_case(name, case)
        if args.op and op not in args.op:
            continue
        ok, why = run_case(case)
        results[name] = (ok, why)
        by_op[op].append((name, ok, why))
    passed = sum(ok for ok, _ in results.values())
    full = sorted(op for op, rows in by_op.items() if all(ok for _, ok, _ in rows))
    if args.op or args.failing:
        for op in sorted(by_op):
            for name, ok, why in by_op[op]:
                if not ok or args.op:
                    print(f"{'ok  ' if ok else 'FAIL'} {op:<28} {name:<60} {why}")
    print(f"{passed} of {len(results)} node cases pass, {len(full)} ops fully")
    return 0


if __name__ == "__main__":
    sys.exit(main())
