"""Custom operators: a Python function with a decorator takes part in everything a built-in does."""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import rzrt
import rzrt.cli.commands  # noqa: F401
from conftest import ROOT, export_cached, rel_err, torch_model
from rzrt.cli.main import cli
from rzrt.image import preprocess

EXAMPLE = ROOT / "examples" / "custom_op"


def swish(X, *, beta=1.0):
    """x * sigmoid(beta x)"""
    with np.errstate(over="ignore"):
        return (X / (1 + np.exp(-beta * X))).astype(X.dtype)


def same(x, **attrs):
    return x


@functools.lru_cache(maxsize=None)
def resnet18_with_swish() -> bytes:
    """ResNet-18 with every Relu replaced by com.example.Swish (beta=1, i.e. SiLU)."""
    proto = onnx.load(str(export_cached("resnet18", "folded")))
    for n in proto.graph.node:
        if n.op_type == "Relu":
            n.op_type, n.domain = "Swish", "com.example"
            n.attribute.append(helper.make_attribute("beta", 1.0))
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    return proto.SerializeToString()


def torch_resnet18_silu(x):
    import torch
    model = torch_model("resnet18")
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(m, child_name, torch.nn.SiLU())
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def photos(n=2):
    return np.stack([preprocess(ROOT / "tests" / "data" / "images" / p) for p in ["cat.jpg", "Ma.jpg"][:n]])


@pytest.mark.parametrize("with_shape_rule", [True, False])
def test_swish_inside_resnet18_matches_torch(with_shape_rule):
    x = photos()
    with rzrt.registry_scope():
        rzrt.register_op("Swish", domain="com.example", shape=same if with_shape_rule else None)(swish)
        sess = rzrt.InferenceSession(resnet18_with_swish())
        (got,) = sess.run(None, {"input": x})
        plan = sess.memory_plan()
    want = torch_resnet18_silu(x)
    assert rel_err(got, want) < 1e-4
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    swish_outputs = [s.outputs[0] for s in sess._steps if s.node.op_type == "Swish"]
    assert len(swish_outputs) == 17
    if with_shape_rule:    # placed in the arena: nothing left to run time
        assert not plan.dynamic
        assert all(o in plan.offsets for o in swish_outputs)
    else:                  # still runs; its outputs (and what depends on them) are listed as run-time values
        assert set(swish_outputs) <= set(plan.dynamic)


def test_registry_scope_leaves_nothing_behind():
    with rzrt.registry_scope():
        rzrt.register_op("Swish", domain="com.example")(swish)
        rzrt.InferenceSession(resnet18_with_swish())
    with pytest.raises(rzrt.UnsupportedOpError):
        rzrt.InferenceSession(resnet18_with_swish())


def test_registering_an_existing_op_needs_override():
    with rzrt.registry_scope():
        with pytest.raises(rzrt.RzrtError, match="already has a kernel.*override=True"):
            rzrt.register_op("Relu")(lambda X: X)
        rzrt.register_op("Swish", domain="com.example")(swish)
        rzrt.register_op("Swish", domain="com.example")(swish)     # the same function again (a reload): fine

        def other_swish(X, *, beta=1.0):
            return X
        with pytest.raises(rzrt.RzrtError, match="override=True"):
            rzrt.register_op("Swish", domain="com.example")(other_swish)
        rzrt.register_op("Swish", domain="com.example", override=True)(other_swish)
        rzrt.unregister_op("Swish", domain="com.example")
        with pytest.raises(rzrt.UnsupportedOpError):
            rzrt.InferenceSession(resnet18_with_swish())


def test_override_builtin_for_one_session_only(resnet18_path):
    @rzrt.custom_op("Relu", override=True, shape=same)
    def leaky_relu(X):
        return np.where(X > 0, X, 0.5 * X).astype(X.dtype)

    x = photos(1)
    normal = rzrt.InferenceSession(resnet18_path).run(None, {"input": x})[0]
    custom_sess = rzrt.InferenceSession(resnet18_path, custom_ops=[leaky_relu])
    custom = custom_sess.run(None, {"input": x})[0]
    again = rzrt.InferenceSession(resnet18_path).run(None, {"input": x})[0]
    assert rel_err(custom, normal) > 1e-2                # the override really ran ...
    np.testing.assert_array_equal(again, normal)          # ... in that session only
    # the fusion pass left the user's Relu alone rather than fusing rzrt's own in its place
    assert sum(s.node.op_type == "Relu" for s in custom_sess._steps) == 17


def test_custom_ops_without_decorator_or_override_are_errors(resnet18_path):
    def plain(X):
        return X
    with pytest.raises(rzrt.InputError, match="custom_op"):
        rzrt.InferenceSession(resnet18_path, custom_ops=[plain])

    @rzrt.custom_op("Relu")
    def my_relu(X):
        return X
    with pytest.raises(rzrt.InputError, match="override=True"):
        rzrt.InferenceSession(resnet18_path, custom_ops=[my_relu])


def test_unregistered_ops_are_all_listed_at_load():
    nodes = [helper.make_node("Foo", ["x"], ["a"], name="foo1", domain="com.example"),
             helper.make_node("Foo", ["a"], ["b"], name="foo2", domain="com.example"),
             helper.make_node("Bar", ["b"], ["y"], name="bar1", domain="org.other")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1),
                                            helper.make_opsetid("org.other", 3)])
    with pytest.raises(rzrt.UnsupportedOpError) as e:
        rzrt.InferenceSession(m)
    msg = str(e.value)
    for needle in ("2 operator(s)", "com.example.Foo", "opset 1", "foo1, foo2", "org.other.Bar", "opset 3", "bar1",
                   "@rzrt.register_op('Foo', domain='com.example')", "@rzrt.register_op('Bar', domain='org.other')",
                   "--plugin"):
        assert needle in msg
    assert "\n" not in msg


def _one_op_model(op="Twice"):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="the_node", domain="com.example")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


@pytest.mark.parametrize("kernel,shape,match", [
    (lambda X: 1 / 0, None, "ZeroDivisionError"),
    (lambda X: (), None, "returned 0 output"),
    (lambda X: np.zeros((3, 2), np.float32), same, r"returned float32\[3, 2\].*shape rule said float32\[2, 3\]"),
    (lambda X: np.zeros((2, 3), np.float64), same, r"returned float64.*said float32"),
])
def test_faulty_custom_kernels_are_reported_by_op_and_node(kernel, shape, match):
    with rzrt.registry_scope():
        rzrt.register_op("Twice", domain="com.example", shape=shape)(kernel)
        sess = rzrt.InferenceSession(_one_op_model())
        with pytest.raises(rzrt.KernelError, match=match) as e:
            sess.run(None, {"x": np.ones((2, 3), np.float32)})
    assert "the_node" in str(e.value) and "com.example.Twice" in str(e.value)


def test_custom_kernel_with_out_writes_into_the_arena():
    seen = {}

    def twice(X, *, out=None):
        seen["out"] = out
        return np.multiply(X, 2, out=out)
    g = helper.make_graph([helper.make_node("Twice", ["x"], ["t"], domain="com.example"),
                           helper.make_node("Neg", ["t"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with rzrt.registry_scope():
        rzrt.register_op("Twice", domain="com.example", shape=same)(twice)
        sess = rzrt.InferenceSession(m)
        y = sess.run(None, {"x": np.ones((2, 3), np.float32)})[0]
    np.testing.assert_array_equal(y, -2 * np.ones((2, 3)))
    assert seen["out"] is not None and "t" in sess.memory_plan().offsets


def test_profile_names_the_custom_op():
    with rzrt.registry_scope():
        rzrt.register_op("Swish", domain="com.example", shape=same)(swish)
        sess = rzrt.InferenceSession(resnet18_with_swish(), profile=True)
        sess.run(None, {"input": photos(1)})
    ops = {r["op"] for r in sess.profile()["nodes"]}
    assert "com.example.Swish" in ops


# --- the example and the CLI ---------------------------------------------------------------
@pytest.fixture
def swishnet(tmp_path) -> Path:
    out = tmp_path / "swishnet.onnx"
    subprocess.run([sys.executable, str(EXAMPLE / "make_model.py"), "-o", str(out)], check=True, capture_output=True)
    return out


def test_example_plugin_from_the_cli(swishnet):
    cat = ROOT / "tests" / "data" / "images" / "cat.jpg"
    runner = CliRunner()
    without = runner.invoke(cli, ["run", str(swishnet), str(cat)])
    assert without.exit_code != 0 and "com.example.Swish" in without.stderr and "Traceback" not in without.output
    with rzrt.registry_scope():
        ok = runner.invoke(cli, ["run", str(swishnet), str(cat), "--plugin", str(EXAMPLE / "swish.py"), "--top-k", "3"])
        assert ok.exit_code == 0, ok.output + ok.stderr
        lines = ok.output.splitlines()
        assert len(lines) == 4 and any(c in ok.output for c in ("cat", "dog", "truck", "bird", "automobile"))
        for cmd in (["profile", str(swishnet), "--runs", "1"], ["summary", str(swishnet)],
                    ["bench", str(swishnet), "--runs", "1", "--warmup", "0"],
                    ["optimize", str(swishnet), str(swishnet.with_name("o.onnx"))]):
            res = runner.invoke(cli, cmd + ["--plugin", str(EXAMPLE / "swish.py")])
            assert res.exit_code == 0, (cmd, res.output, res.stderr)
        assert "com.example.Swish" in runner.invoke(cli, ["profile", str(swishnet), "--runs", "1"]).output


def test_plugin_by_module_name_and_plugin_errors(swishnet, tmp_path, monkeypatch):
    (tmp_path / "my_kernels.py").write_text((EXAMPLE / "swish.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    cat = str(ROOT / "tests" / "data" / "images" / "cat.jpg")
    runner = CliRunner()
    with rzrt.registry_scope():
        res = runner.invoke(cli, ["run", str(swishnet), cat, "--plugin", "my_kernels"])
        assert res.exit_code == 0, res.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("raise ValueError('oops')\n")
    for plugin, needle in ((str(bad), "raised ValueError while loading: oops"), ("missing.py", "not found"),
                           ("no_such_module_xyz", "neither a .py file nor an importable module")):
        res = runner.invoke(cli, ["run", str(swishnet), cat, "--plugin", plugin])
        assert res.exit_code != 0 and needle in res.stderr and "Traceback" not in res.stderr + res.output


def test_example_python_use(swishnet):
    """What examples/custom_op/README.md shows for Python."""
    with rzrt.registry_scope():
        rzrt.load_plugin(str(EXAMPLE / "swish.py"))
        sess = rzrt.InferenceSession(swishnet)
        x = preprocess(ROOT / "tests" / "data" / "images" / "cat.jpg", size=36, crop=32)[None]
        (logits,) = sess.run(None, {"input": x})
    assert logits.shape == (1, 10)
