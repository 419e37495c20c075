"""onnx's node test cases for every operator rzrt registers.

A case is claimed when the operator it tests has a kernel in rzrt (`rzrt ops`); each claimed
case must pass, or stand in exclusions.py with its reason (and then it must still fail, so
the list stays true). Cases with random outputs (exclusions.RANDOM) are checked for the
shapes and dtypes of their outputs only. `python tests/conformance/report.py` prints the overall count.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conformance.exclusions import EXCLUDED, RANDOM  # noqa: E402
from tests.conformance.node_cases import all_cases, op_of_case, run_case  # noqa: E402


def claimed() -> list:
    from rzrt.ops.registry import all_kernels
    registered = {k.op_type for k in all_kernels()}
    return sorted(name for name, case in all_cases().items() if op_of_case(name, case) in registered)


def params():
    for name in claimed():
        marks = [pytest.mark.xfail(reason=EXCLUDED[name], strict=True)] if name in EXCLUDED else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", params())
def test_node_case(name):
    ok, why = run_case(all_cases()[name], values=name not in RANDOM)
    assert ok, why


def test_exclusions_name_real_cases():
    missing = sorted((set(EXCLUDED) | set(RANDOM)) - set(all_cases()))
    assert not missing, f"exclusions for cases onnx does not have: {missing}"
