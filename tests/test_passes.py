"""Each pass on a tiny graph: the rewritten structure, and equal outputs before and after."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rzrt
from rzrt.graph import Graph
from rzrt.passes.eliminate_dead import eliminate_dead
from rzrt.passes.eliminate_identity import eliminate_identity
from rzrt.passes.fold_batchnorm import fold_batchnorm
from rzrt.passes.fold_constants import fold_constants
from rzrt.passes.fuse_activation import fuse_activation
from rzrt.passes.fuse_conv_add import fuse_conv_add
from rzrt.passes.fuse_silu import fuse_silu
from rzrt.passes.pipeline import optimize

RNG = np.random.default_rng(1)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model(nodes, inits: dict, inputs=(("x", (2, 3, 8, 8)),), outputs=("y",), opset=17):
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def apply(proto, *passes):
    """(graph after the passes, outputs before, outputs after) on random inputs."""
    feeds = {i.name: rand(*[d.dim_value for d in i.type.tensor_type.shape.dim]) for i in proto.graph.input}
    before = rzrt.InferenceSession(proto, level=0).run(None, feeds)
    g = Graph.from_onnx(proto)
    changed = [p(g) for p in passes]
    assert any(changed), "the pass did not apply"
    g.lint()
    after = rzrt.InferenceSession(g.to_onnx(), level=0).run(None, feeds)
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return g


def ops(g):
    return [n.op_type for n in g.toposort()]


def bn_params(c):
    return {"s": rand(c) + 2, "bb": rand(c), "m": rand(c), "v": np.abs(rand(c)) + 0.5}


def test_fold_batchnorm_into_conv():
    p = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
               helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)],
              {"w": rand(4, 3, 3, 3), "b": rand(4), **bn_params(4)})
    g = apply(p, fold_batchnorm)
    assert ops(g) == ["Conv"]


def test_fold_batchnorm_into_grouped_conv_without_bias():
    p = model([helper.make_node("Conv", ["x", "w"], ["c"], group=3),
               helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"])],
              {"w": rand(6, 1, 3, 3), **bn_params(6)})
    assert ops(apply(p, fold_batchnorm)) == ["Conv"]


@pytest.mark.parametrize("transB", [0, 1])
def test_fold_batchnorm_into_gemm(transB):
    w = rand(5, 4) if transB else rand(4, 5)
    p = model([helper.make_node("Gemm", ["x", "w", "c0"], ["c"], transB=transB, beta=0.5),
               helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"])],
              {"w": w, "c0": rand(5), **bn_params(5)}, inputs=(("x", (3, 4)),))
    assert ops(apply(p, fold_batchnorm)) == ["Gemm"]


def test_fold_batchnorm_not_applicable():
    # the conv output has a second reader, and in another graph is a graph output: BN stays
    shared = model([helper.make_node("Conv", ["x", "w"], ["c"]),
                    helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"]),
                    helper.make_node("Relu", ["c"], ["z"])],
                   {"w": rand(4, 3, 1, 1), **bn_params(4)}, outputs=("y", "z"))
    g = Graph.from_onnx(shared)
    assert fold_batchnorm(g) is False
    # BN parameters computed at run time (not initializers): not applicable, no error
    dyn = model([helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("Relu", ["s0"], ["s"]),
                 helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"])],
                {"w": rand(4, 3, 1, 1), "s0": rand(4), "bb": rand(4), "m": rand(4), "v": np.ones(4, np.float32)})
    assert fold_batchnorm(Graph.from_onnx(dyn)) is False


@pytest.mark.parametrize("act,attrs,extra", [
    ("Relu", {}, {}), ("Sigmoid", {}, {}), ("LeakyRelu", {"alpha": 0.2}, {}), ("HardSwish", {}, {}),
    ("Clip", {}, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}),
])
def test_fuse_activation_into_conv(act, attrs, extra):
    inputs = ["c"] + (["lo", "hi"] if act == "Clip" else [])
    p = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
               helper.make_node(act, inputs, ["y"], **attrs)],
              {"w": rand(4, 3, 3, 3), "b": rand(4), **extra})
    g = apply(p, fuse_activation, eliminate_dead)
    assert ops(g) == ["FusedConv"]
    assert g.nodes[0].domain == "rzrt" and g.nodes[0].attrs["activation"] == act


def test_fuse_activation_into_gemm_and_matmul():
    p = model([helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["h"]),
               helper.make_node("MatMul", ["h", "w2"], ["m"]), helper.make_node("Sigmoid", ["m"], ["y"])],
              {"w": rand(5, 4), "w2": rand(5, 6)}, inputs=(("x", (3, 4)),))
    assert ops(apply(p, fuse_activation)) == ["FusedGemm", "FusedMatMul"]


def test_fuse_activation_not_applicable_when_output_is_read_twice():
    p = model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"]),
               helper.make_node("Neg", ["c"], ["z"])], {"w": rand(4, 3, 1, 1)}, outputs=("y", "z"))
    assert fuse_activation(Graph.from_onnx(p)) is False


@pytest.mark.parametrize("order", ["y*s", "s*y"])
@pytest.mark.parametrize("src", ["Conv", "Gemm", "MatMul"])
def test_fuse_silu(src, order):
    """x * sigmoid(x) after a Conv, Gemm or MatMul becomes the fused node's "Silu" activation."""
    if src == "Conv":
        first, inits, inputs = helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), \
            {"w": rand(4, 3, 3, 3), "b": rand(4)}, (("x", (2, 3, 8, 8)),)
    else:
        first = helper.make_node(src, ["x", "w"], ["c"], **({"transB": 1} if src == "Gemm" else {}))
        inits, inputs = {"w": rand(5, 4) if src == "Gemm" else rand(4, 5)}, (("x", (3, 4)),)
    mul = ["c", "s"] if order == "y*s" else ["s", "c"]
    p = model([first, helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", mul, ["y"])], inits,
              inputs=inputs)
    g = apply(p, fuse_silu)
    assert ops(g) == ["Fused" + src] and g.nodes[0].attrs["activation"] == "Silu"


def test_fuse_silu_not_applicable():
    """A sigmoid gate (SE block: Mul by another tensor), a sigmoid read twice, or y read a third time."""
    w = {"w": rand(4, 3, 1, 1)}
    gate = model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
                  helper.make_node("Mul", ["x", "s"], ["y"])], {"w": rand(3, 3, 1, 1)})
    twice = model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
                   helper.make_node("Mul", ["c", "s"], ["y"]), helper.make_node("Neg", ["s"], ["z"])], w,
                  outputs=("y", "z"))
    third = model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
                   helper.make_node("Mul", ["c", "s"], ["y"]), helper.make_node("Neg", ["c"], ["z"])], w,
                  outputs=("y", "z"))
    for p in (gate, twice, third):
        assert fuse_silu(Graph.from_onnx(p)) is False


def test_fuse_conv_add_then_relu():
    p = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
               helper.make_node("Add", ["x3", "c"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
              {"w": rand(3, 3, 3, 3), "b": rand(3)}, inputs=(("x", (2, 3, 8, 8)), ("x3", (2, 3, 8, 8))))
    g = apply(p, fuse_conv_add, fuse_activation)
    assert ops(g) == ["FusedConv"]
    n = g.nodes[0]
    assert n.inputs[3] == "x3" and n.attrs["activation"] == "Relu"


def test_fold_constants():
    p = model([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
               helper.make_node("Mul", ["c1", "k"], ["c2"]), helper.make_node("Add", ["x", "c2"], ["y"])],
              {"c1": rand(8)})
    g = apply(p, fold_constants, eliminate_dead)
    assert ops(g) == ["Add"]


def test_fold_constants_skips_oversized_and_warns_on_failure():
    big = model([helper.make_node("Expand", ["one", "shape"], ["e"]), helper.make_node("Add", ["x", "e"], ["y"])],
                {"one": np.ones(1, np.float32), "shape": np.array([2048, 1024], np.int64)}, inputs=(("x", (2048, 1024)),))
    g = Graph.from_onnx(big)
    assert fold_constants(g) is False and "Expand" in ops(g)
    bad = model([helper.make_node("Reshape", ["c", "shape"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])],
                {"c": rand(6), "shape": np.array([4, 4], np.int64)}, inputs=(("x", (4, 4)),))
    g = Graph.from_onnx(bad)
    with pytest.warns(UserWarning, match="kept node"):
        assert fold_constants(g) is False
    assert "Reshape" in ops(g)


def test_eliminate_identity_and_dropout():
    p = model([helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
               helper.make_node("Relu", ["d"], ["r"]), helper.make_node("Identity", ["r"], ["y"])], {})
    g = apply(p, eliminate_identity)
    assert ops(g) == ["Relu"]
    assert g.nodes[0].outputs == ["y"]       # the graph output name survives


def test_eliminate_identity_noop_reshape_and_cast():
    p = model([helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["c"]),
               helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)],
              {"shape": np.array([2, 3, 8, 8], np.int64)})
    g = Graph.from_onnx(p)
    g.value_info["c"] = rzrt.graph.Value("c", (2, 3, 8, 8), np.dtype(np.float32))
    assert eliminate_identity(g)
    assert ops(g) == ["Relu"]
    # a real reshape stays
    p2 = model([helper.make_node("Reshape", ["x", "shape"], ["y"])], {"shape": np.array([2, -1], np.int64)})
    assert eliminate_identity(Graph.from_onnx(p2)) is False


def test_eliminate_dead():
    p = model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["unused"]),
               helper.make_node("Add", ["unused", "w"], ["unused2"])], {"w": rand(8)})
    g = apply(p, eliminate_dead)
    assert ops(g) == ["Relu"] and not g.initializers


def test_pipeline_reports_and_reaches_fixed_point():
    p = model([helper.make_node("Conv", ["x", "w"], ["c"]),
               helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
               helper.make_node("Identity", ["n"], ["i"]), helper.make_node("Relu", ["i"], ["y"])],
              {"w": rand(4, 3, 1, 1), **bn_params(4)})
    g = Graph.from_onnx(p)
    report = optimize(g, level=2)
    assert ops(g) == ["FusedConv"]
    assert any(line.startswith("fold_batchnorm: 1 BatchNormalization") for line in report)
    g1 = Graph.from_onnx(p)
    optimize(g1, level=1)
    assert ops(g1) == ["Conv", "Relu"] and all(not n.domain for n in g1.nodes)


def test_pipeline_names_the_failing_pass(monkeypatch):
    from rzrt.passes import pipeline

    def broken(graph):
        raise RuntimeError("boom")
    monkeypatch.setitem(pipeline.LEVELS, 1, [pipeline.eliminate_identity, broken])
    p = model([helper.make_node("Relu", ["x"], ["y"])], {})
    with pytest.raises(rzrt.PassError, match=r"pass broken failed.*boom.*passes before it: eliminate_identity"):
        rzrt.InferenceSession(p, level=1)
