"""onnx's own operator test cases (onnx.backend.test.case.node), run through rzrt.backend.

Each case is a small model with inputs and expected outputs, generated in memory by
`collect_testcases()`; a case passes when every output matches within the case's tolerance
(rtol 1e-3, atol 1e-7 unless the case says otherwise), as onnx's BackendTest checks.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
from onnx import numpy_helper


@functools.lru_cache(maxsize=1)
def all_cases() -> dict:
    """name -> TestCase, for every node case onnx ships."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {c.name: c for c in cases if c.model is not None}


def case_ops(case) -> set:
    """(domain, op_type) of every node in the case's graph (function bodies excluded)."""
    return {(n.domain or "", n.op_type) for n in case.model.graph.node}


@functools.lru_cache(maxsize=1)
def _op_names() -> list:
    import onnx
    return sorted({s.name for s in onnx.defs.get_all_schemas_with_history()}, key=len, reverse=True)


def op_of_case(name: str, case) -> str:
    """The op a case is about: the longest ONNX op name that the case name starts with
    (test_averagepool_2d_pads -> AveragePool), else the case's first node's op."""
    stem = name[len("test_"):].replace("_", "").lower()
    for op in _op_names():
        if stem.startswith(op.lower()):
            return op
    ops = [op for _, op in case_ops(case)]
    return ops[0] if ops else "?"


def run_case(case, values=True) -> tuple:
    """(passed, reason). Runs every input/output set of the case; values=False checks only the
    outputs' shapes and dtypes (cases whose expected values are random draws)."""
    import rzrt.backend as backend
    try:
        rep = backend.prepare(case.model)
    except Exception as e:
        return False, f"load: {type(e).__name__}: {str(e)[:200]}"
    for inputs, expected in case.data_sets:
        try:
            got = rep.run(list(inputs) if isinstance(inputs, (list, tuple)) else inputs)
        except Exception as e:
            return False, f"run: {type(e).__name__}: {str(e)[:200]}"
        ok, why = compare(list(got), list(expected), case.rtol, case.atol, values)
        if not ok:
            return False, why
    return True, ""


def compare(got, expected, rtol, atol, values=True) -> tuple:
    if len(got) < len(expected):
        return False, f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if isinstance(e, list):   # a sequence output
            if not isinstance(g, (list, tuple)) or len(g) != len(e):
                return False, f"output {i}: expected a sequence of {len(e)}"
            ok, why = compare(list(g), e, rtol, atol, values)
            if not ok:
                return False, why
            continue
        if isinstance(e, onnx.TensorProto):
            e = numpy_helper.to_array(e)
        e = np.asarray(e)
        g = np.asarray(g)
        if g.shape != e.shape:
            return False, f"output {i}: shape {g.shape}, expected {e.shape}"
        if e.dtype == object or g.dtype == object:
            if not np.array_equal(g.astype(object), e.astype(object)):
                return False, f"output {i}: values differ"
            continue
        if g.dtype != e.dtype:
            return False, f"output {i}: dtype {g.dtype}, expected {e.dtype}"
        if not values:
            continue
        if e.dtype.kind == "V" or e.dtype.names is None and e.dtype.kind not in "biufcOSU?":
            e, g = e.astype(np.float32), g.astype(np.float32)    # ml_dtypes (float8, bfloat16, int4): compare as float
        if e.dtype.kind in "fc":
            try:
                np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
            except AssertionError:
                err = np.nanmax(np.abs(g.astype(np.float64) - e.astype(np.float64))) if e.size else 0
                return False, f"output {i}: values differ (max abs err {err:.3g})"
        elif not np.array_equal(g, e):
            return False, f"output {i}: values differ"
    return True, ""
