"""`rzrt ops` and the operator list in docs/operators.md, which must match the registry."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

import rzrt.cli.commands  # noqa: F401
from rzrt.cli.main import cli
from rzrt.cli.ops import markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "operators.md"


def test_rzrt_ops_lists_every_registered_kernel():
    from rzrt.ops.registry import all_kernels
    res = CliRunner().invoke(cli, ["ops"])
    assert res.exit_code == 0
    ops = {(k.domain or "ai.onnx", k.op_type) for k in all_kernels()}
    lines = res.output.splitlines()
    assert lines[-1].startswith(f"{len(ops)} operators")
    listed = {tuple(line.split()[:2]) for line in lines[:-1]}
    assert listed == ops
    assert any(line.split()[:3] == ["ai.onnx", "Softmax", "opsets"] and "1-12, 13+" in line for line in lines)


def test_docs_operator_list_is_current():
    assert DOC.read_text() == markdown(), "docs/operators.md is stale: run `rzrt ops --markdown > docs/operators.md`"
