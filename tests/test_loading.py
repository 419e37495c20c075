"""Loading: every kind of source, external data, opsets, node order, I/O metadata, run().

Every model here is built with onnx.helper in a few lines; onnxruntime is the oracle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rzrt
import rzrt.graph
from rzrt.graph import Graph

RNG = np.random.default_rng(0)


# --- tiny models ------------------------------------------------------------------------
def conv_add_model(batch="N", opset=13, **conv_attrs) -> onnx.ModelProto:
    """X(batch,3,4,4) -> Conv(W, B) -> Add(C) -> Y(batch,2,2,2), weights as initializers."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((2,)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((1, 2, 1, 1)).astype(np.float32), "C"),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "W", "B"], ["conv_out"], name="conv", **conv_attrs),
        helper.make_node("Add", ["conv_out", "C"], ["Y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "conv_add",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, 2, 2, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def x_input(n=1) -> np.ndarray:
    return RNG.standard_normal((n, 3, 4, 4)).astype(np.float32)


def ort_run(model: onnx.ModelProto, feed: dict, names=None) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, feed)


def assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- sources ----------------------------------------------------------------------------
def test_every_source_kind_gives_the_same_outputs_as_onnxruntime(tmp_path):
    model = conv_add_model()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    x = x_input(2)
    (want,) = ort_run(model, {"X": x})

    sources = {
        "str path": str(path),
        "pathlib.Path": path,
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
        "ModelProto": model,
    }
    results = {}
    for kind, src in sources.items():
        (results[kind],) = rzrt.InferenceSession(src).run(None, {"X": x})
    for kind, got in results.items():
        assert got.shape == want.shape, kind
        assert_close(got, want)
        np.testing.assert_array_equal(got, results["str path"], err_msg=kind)


def test_loading_a_model_proto_does_not_modify_it():
    model = conv_add_model()
    before = model.SerializeToString()
    rzrt.InferenceSession(model).run(None, {"X": x_input()})
    assert model.SerializeToString() == before


# --- external data ----------------------------------------------------------------------
def save_external(model: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.data", size_threshold=0)
    assert (tmp_path / "w.data").is_file()
    return path


def test_external_data_loads_from_its_path(tmp_path):
    model = conv_add_model()
    path = save_external(onnx.ModelProto.FromString(model.SerializeToString()), tmp_path)
    # the weights really are outside the .onnx file
    assert not any(t.raw_data for t in onnx.load_model(path, load_external_data=False).graph.initializer)
    x = x_input()
    (want,) = ort_run(model, {"X": x})
    (got,) = rzrt.InferenceSession(path).run(None, {"X": x})
    (got_str,) = rzrt.InferenceSession(str(path)).run(None, {"X": x})
    assert_close(got, want)
    np.testing.assert_array_equal(got, got_str)
    # onnxruntime, from the same path, agrees
    (ort_got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    assert_close(got, ort_got)


def test_external_data_from_bytes_is_a_model_error_naming_the_data_file(tmp_path):
    path = save_external(conv_add_model(), tmp_path)
    with pytest.raises(rzrt.ModelError) as e:
        rzrt.InferenceSession(path.read_bytes())
    msg = str(e.value)
    assert "w.data" in msg and "path" in msg and "\n" not in msg


def test_external_data_file_missing_is_a_model_error_naming_it(tmp_path):
    path = save_external(conv_add_model(), tmp_path)
    (tmp_path / "w.data").unlink()
    with pytest.raises(rzrt.ModelError) as e:
        rzrt.InferenceSession(path)
    msg = str(e.value)
    assert "w.data" in msg and "\n" not in msg


# --- opsets -----------------------------------------------------------------------------
def test_the_opset_of_every_domain_is_read():
    nodes = [helper.make_node("Relu", ["X"], ["r"], name="relu"),
             helper.make_node("Twice", ["r"], ["Y"], name="twice", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.example", 1)])
    with rzrt.registry_scope():
        @rzrt.register_op("Twice", domain="com.example")
        def Twice(X):
            return X * 2

        sess = rzrt.InferenceSession(model)
        assert sess.graph.opsets == {"": 13, "com.example": 1}
        x = RNG.standard_normal((2, 3)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0) * 2)


def test_ai_onnx_spelled_out_is_the_default_domain():
    node = helper.make_node("Relu", ["X"], ["Y"], name="relu", domain="ai.onnx")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx", 14)])
    sess = rzrt.InferenceSession(model)
    assert sess.graph.opsets == {"": 14}
    (y,) = sess.run(None, {"X": np.array([-1, 2], np.float32)})
    np.testing.assert_array_equal(y, [0, 2])


def softmax_model(opset: int) -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["X"], ["Y"], name="softmax", axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_kernel_selection_follows_the_opset():
    # opset 11: coerce to 2-D at axis 1, softmax over the 12 trailing elements;
    # opset 13: softmax along axis 1 only. onnxruntime gives a different answer for each.
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    got, want = {}, {}
    for opset in (11, 13):
        model = softmax_model(opset)
        (got[opset],) = rzrt.InferenceSession(model).run(None, {"X": x})
        (want[opset],) = ort_run(model, {"X": x})
        assert_close(got[opset], want[opset])
    assert not np.allclose(want[11], want[13])        # the oracle really does differ
    assert not np.allclose(got[11], got[13])
    np.testing.assert_allclose(got[11].reshape(2, -1).sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(got[13].sum(axis=1), 1, rtol=1e-5)


# --- node order -------------------------------------------------------------------------
def chain_model(reverse: bool) -> onnx.ModelProto:
    c = numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "c")
    nodes = [
        helper.make_node("Relu", ["X"], ["a"], name="n0"),
        helper.make_node("Add", ["a", "c"], ["b"], name="n1"),
        helper.make_node("Neg", ["X"], ["d"], name="n2"),
        helper.make_node("Mul", ["b", "d"], ["e"], name="n3"),
        helper.make_node("Sigmoid", ["e"], ["Y"], name="n4"),
    ]
    if reverse:
        nodes = nodes[::-1]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])], initializer=[c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_nodes_written_in_reverse_order_still_run():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    (want,) = ort_run(chain_model(reverse=False), {"X": x})   # ort may reject the unsorted file
    sess = rzrt.InferenceSession(chain_model(reverse=True))
    (got,) = sess.run(None, {"X": x})
    assert_close(got, want)
    order = [n.name for n in sess.graph.toposort()]
    position = {name: i for i, name in enumerate(order)}
    for producer, consumer in [("n0", "n1"), ("n1", "n3"), ("n2", "n3"), ("n3", "n4")]:
        assert position[producer] < position[consumer]


def test_toposort_keeps_an_already_sorted_file_order():
    graph = Graph.from_onnx(chain_model(reverse=False))
    assert [n.name for n in graph.toposort()] == ["n0", "n1", "n2", "n3", "n4"]


# --- get_inputs / get_outputs -----------------------------------------------------------
def test_inputs_and_outputs_describe_themselves_like_onnxruntime():
    model = conv_add_model(batch="batch")
    ours = rzrt.InferenceSession(model)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in [(ours.get_inputs(), theirs.get_inputs()), (ours.get_outputs(), theirs.get_outputs())]:
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.name == w.name
            assert g.shape == w.shape
            assert isinstance(g.shape, list)
            assert g.type == w.type
    assert ours.get_inputs()[0].shape == ["batch", 3, 4, 4]
    assert ours.get_inputs()[0].type == "tensor(float)"


def identity_model(types: dict, shape) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"], name=f"id_{k}") for k in types]
    graph = helper.make_graph(nodes, "ids",
                              [helper.make_tensor_value_info(f"in_{k}", t, shape) for k, t in types.items()],
                              [helper.make_tensor_value_info(f"out_{k}", t, shape) for k, t in types.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


ELEMENT_TYPES = {"f16": TensorProto.FLOAT16, "f64": TensorProto.DOUBLE, "i64": TensorProto.INT64,
                 "i32": TensorProto.INT32, "u8": TensorProto.UINT8, "i8": TensorProto.INT8,
                 "bool": TensorProto.BOOL}


def test_type_names_match_onnxruntime_for_every_element_type():
    model = identity_model(ELEMENT_TYPES, [None, "seq", 2])
    ours = rzrt.InferenceSession(model)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = [(a.name, a.shape, a.type) for a in ours.get_inputs() + ours.get_outputs()]
    want = [(a.name, a.shape, a.type) for a in theirs.get_inputs() + theirs.get_outputs()]
    assert got == want
    assert ours.get_inputs()[0].shape == [None, "seq", 2]


def test_type_names_of_the_rarer_element_types():
    for elem, name in [(TensorProto.BFLOAT16, "bfloat16"), (TensorProto.COMPLEX64, "complex64"),
                       (TensorProto.COMPLEX128, "complex128"), (TensorProto.STRING, "string")]:
        assert rzrt.graph.Value("v", (1,), rzrt.graph.dtype_of(elem)).type_str == f"tensor({name})"


def test_an_input_without_a_shape_describes_itself_like_onnxruntime():
    model = identity_model({"f": TensorProto.FLOAT}, None)
    ours = rzrt.InferenceSession(model).get_inputs()[0]
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).get_inputs()[0]
    assert (ours.name, ours.shape, ours.type) == (theirs.name, theirs.shape, theirs.type)


def test_a_dynamic_batch_accepts_any_size():
    model = conv_add_model(batch="N")
    sess = rzrt.InferenceSession(model)
    for n in (1, 3):
        x = x_input(n)
        (got,) = sess.run(None, {"X": x})
        assert_close(got, ort_run(model, {"X": x})[0])


# --- run --------------------------------------------------------------------------------
def two_output_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["X"], ["pos"], name="relu"),
             helper.make_node("Neg", ["X"], ["neg"], name="neg")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("pos", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("neg", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_run_returns_all_outputs_in_order_or_the_ones_asked_for():
    sess = rzrt.InferenceSession(two_output_model())
    x = np.array([-2, -1, 1, 2], np.float32)
    everything = sess.run(None, {"X": x})
    assert isinstance(everything, list) and len(everything) == 2
    np.testing.assert_array_equal(everything[0], np.maximum(x, 0))
    np.testing.assert_array_equal(everything[1], -x)

    only_neg = sess.run(["neg"], {"X": x})
    assert len(only_neg) == 1
    np.testing.assert_array_equal(only_neg[0], -x)

    swapped = sess.run(["neg", "pos"], {"X": x})
    np.testing.assert_array_equal(swapped[0], -x)
    np.testing.assert_array_equal(swapped[1], np.maximum(x, 0))

    assert [o.name for o in sess.get_outputs()] == ["pos", "neg"]
    for ours, theirs in zip(everything, ort_run(two_output_model(), {"X": x})):
        np.testing.assert_array_equal(ours, theirs)


def test_run_with_an_empty_output_list_returns_everything_like_onnxruntime():
    x = np.array([-2, -1, 1, 2], np.float32)
    assert len(rzrt.InferenceSession(two_output_model()).run([], {"X": x})) == \
        len(ort_run(two_output_model(), {"X": x}, [])) == 2


# --- attributes -------------------------------------------------------------------------
def test_conv_without_attributes_takes_the_kernel_signature_defaults():
    model = conv_add_model()                  # Conv with no strides, pads, dilations, group
    assert not model.graph.node[0].attribute
    x = x_input()
    (got,) = rzrt.InferenceSession(model).run(None, {"X": x})
    assert_close(got, ort_run(model, {"X": x})[0])
    conv = rzrt.ops.registry.lookup("Conv", "", 13)
    assert conv.attrs["group"] == 1 and conv.attrs["auto_pad"] == "NOTSET"


def test_conv_with_attributes_matches_onnxruntime():
    model = conv_add_model(batch=1, strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], kernel_shape=[3, 3])
    x = x_input()
    (got,) = rzrt.InferenceSession(model).run(None, {"X": x})
    assert_close(got, ort_run(model, {"X": x})[0])


def test_attributes_are_converted_once_at_load(monkeypatch):
    calls = []
    real = rzrt.graph.attribute_value

    def counting(a, where):
        calls.append(a.name)
        return real(a, where)

    monkeypatch.setattr(rzrt.graph, "attribute_value", counting)
    model = conv_add_model(batch=1, strides=[2, 2], pads=[1, 1, 1, 1])
    sess = rzrt.InferenceSession(model, level=0)     # level 0: the graph as loaded, no fusions
    assert sorted(calls) == ["pads", "strides"]
    conv = next(n for n in sess.graph.nodes if n.op_type == "Conv")
    assert conv.attrs == {"strides": (2, 2), "pads": (1, 1, 1, 1)}
    assert all(type(d) is int for d in conv.attrs["strides"])
    for _ in range(2):
        sess.run(None, {"X": x_input()})
    assert len(calls) == 2


def test_attribute_values_become_python_values():
    t = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "value")
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=t),
             helper.make_node("Add", ["X", "k"], ["s"], name="add"),
             helper.make_node("LeakyRelu", ["s"], ["Y"], name="leaky", alpha=0.25)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = rzrt.InferenceSession(model, level=0)     # level 0: Constant is not folded away
    attrs = {n.name: n.attrs for n in sess.graph.nodes}
    assert isinstance(attrs["const"]["value"], np.ndarray)
    np.testing.assert_array_equal(attrs["const"]["value"], numpy_helper.to_array(t))
    assert attrs["leaky"]["alpha"] == pytest.approx(0.25) and isinstance(attrs["leaky"]["alpha"], float)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    (got,) = sess.run(None, {"X": x})
    assert_close(got, ort_run(model, {"X": x})[0])


def test_to_onnx_round_trips_the_graph():
    model = conv_add_model(batch="N", strides=[1, 1], pads=[0, 0, 0, 0])
    back = Graph.from_onnx(model).to_onnx()
    onnx.checker.check_model(back)
    x = x_input(2)
    assert_close(rzrt.InferenceSession(back).run(None, {"X": x})[0], ort_run(model, {"X": x})[0])


def test_to_onnx_keeps_empty_list_attributes_typed():
    # An empty list has no element type of its own; the schema says what it is.
    node = helper.make_node("Transpose", ["X"], ["Y"], name="t")
    node.attribute.append(helper.make_attribute("perm", [], attr_type=onnx.AttributeProto.INTS))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = Graph.from_onnx(model)
    assert g.nodes[0].attrs == {"perm": ()}
    back = g.to_onnx()
    (attr,) = back.graph.node[0].attribute
    assert attr.name == "perm" and attr.type == onnx.AttributeProto.INTS and not attr.ints
    onnx.checker.check_model(back)
