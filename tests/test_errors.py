"""Every error a user can cause is an RzrtError subclass with a one-line message that names
the thing at fault and says what was expected.

Each test checks the exception type, that the message names the relevant file, node, op,
value or input, and that it is a single line (the CLI prints it as is).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rzrt
from rzrt.errors import InputError, KernelError, ModelError, RzrtError, UnsupportedOpError


def check(excinfo, *names: str) -> str:
    """The message is one line and names every one of `names`; returns it."""
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, RzrtError)
    assert "\n" not in msg and "\r" not in msg, msg
    for name in names:
        assert name in msg, f"{name!r} not in {msg!r}"
    return msg


# --- tiny models ------------------------------------------------------------------------
def make(nodes, inputs, outputs, initializers=(), opsets=(("", 13),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def relu_model(shape=("N", 3, 4, 4)) -> onnx.ModelProto:
    return make([helper.make_node("Relu", ["X"], ["Y"], name="relu")], [vi("X", list(shape))], [vi("Y", list(shape))])


def conv_add_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((2,)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal((1, 2, 2, 2)).astype(np.float32), "C")]
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "C"], ["Y"], name="add")]
    return make(nodes, [vi("X", [1, 3, 4, 4])], [vi("Y", [1, 2, 2, 2])], inits)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(conv_add_model(), path)
    return path


# --- the file ---------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "missing.onnx"
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(str(path))
    check(e, str(path), "not found")


def test_a_directory(tmp_path):
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(tmp_path)
    check(e, str(tmp_path), "directory")


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(path)
    check(e, str(path), "empty")


@pytest.mark.parametrize("text", [
    "hello, this is not a model\n",
    "ir_version: 8\ngraph { name: 'g' }\n",          # protobuf text format is not the binary format
    "<html><body>404 Not Found</body></html>\n",     # what a failed download often saves
    "{\"a\": 1}",
])
def test_a_text_file(tmp_path, text):
    path = tmp_path / "notes.onnx"
    path.write_text(text)
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(path)
    check(e, str(path))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(seed).bytes(2000))
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(path)
    check(e, str(path))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
def test_a_truncated_file(model_path, fraction):
    data = model_path.read_bytes()
    model_path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(model_path)
    check(e, str(model_path))


def test_every_truncation_of_a_model_is_a_model_error():
    # This model serialises as ir_version, graph, opset_import (fields in number order), so
    # every strict prefix is either a torn field or lacks the graph or the opset imports:
    # none of them is a usable model, and none may load silently or raise something else.
    data = conv_add_model().SerializeToString()
    for cut in range(len(data)):
        try:
            rzrt.InferenceSession(data[:cut])
        except ModelError as e:
            assert "\n" not in str(e)
        else:
            pytest.fail(f"a model cut to {cut} of {len(data)} bytes loaded")


def _top_level_fields(data: bytes) -> list:
    """(field number, start offset) of each top-level protobuf field in a serialised message."""
    def varint(i):
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    fields, i = [], 0
    while i < len(data):
        key, j = varint(i)
        wire = key & 7
        if wire == 0:
            _, j = varint(j)
        elif wire == 2:
            size, j = varint(j)
            j += size
        else:
            j += {1: 8, 5: 4}[wire]
        fields.append((key >> 3, i))
        i = j
    return fields


def test_a_truncated_exported_model(resnet18_path, tmp_path):
    # A real torch export: cut inside the weights at 10%, 50% and 90%, and also exactly at each
    # top-level field boundary (where protobuf parses the prefix without complaint), up to the
    # opset imports. Only metadata_props (14) follow them, and a model without its metadata
    # still computes the same thing.
    data = resnet18_path.read_bytes()
    fields = _top_level_fields(data)
    opset_field = next(k for k, (number, _) in enumerate(fields) if number == 8)
    cuts = [int(len(data) * f) for f in (0.1, 0.5, 0.9)] + [start for _, start in fields[1:opset_field + 1]]
    path = tmp_path / "resnet18_cut.onnx"
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(ModelError) as e:
            rzrt.InferenceSession(path)
        check(e, str(path))


def test_a_model_without_opset_imports(tmp_path):
    model = relu_model()
    del model.opset_import[:]
    path = tmp_path / "no_opset.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(path)
    check(e, str(path), "opset")


def test_not_a_model_at_all():
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(12345)
    check(e, "int", "path")


def test_external_data_from_a_model_proto(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(conv_add_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.data", size_threshold=0)
    proto = onnx.load_model(path, load_external_data=False)
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(proto)
    check(e, "w.data")


def test_truncated_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(conv_add_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.data", size_threshold=0)
    data_file = tmp_path / "w.data"
    data_file.write_bytes(data_file.read_bytes()[:50])
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(path)
    check(e, "w.data")


def test_a_path_the_os_rejects(tmp_path):
    path = tmp_path / ("x" * 5000 + ".onnx")      # too long a name: stat() itself fails
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(path)
    check(e, "xxxx")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(model_path):
    model_path.chmod(0)
    try:
        with pytest.raises(ModelError) as e:
            rzrt.InferenceSession(model_path)
        check(e, str(model_path))
    finally:
        model_path.chmod(0o644)


# --- the graph --------------------------------------------------------------------------
def test_a_graph_with_a_cycle():
    nodes = [helper.make_node("Add", ["X", "c"], ["a"], name="loop_add"),
             helper.make_node("Relu", ["a"], ["b"], name="loop_relu"),
             helper.make_node("Neg", ["b"], ["c"], name="loop_neg"),
             helper.make_node("Identity", ["b"], ["Y"], name="out")]
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("Y", [2])]))
    msg = check(e, "cycle", "loop_add", "loop_relu", "loop_neg")
    assert "'out'" not in msg            # downstream of the cycle, not on it


def test_a_node_reading_its_own_output():
    nodes = [helper.make_node("Add", ["X", "a"], ["a"], name="selfish"),
             helper.make_node("Identity", ["a"], ["Y"], name="out")]
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("Y", [2])]))
    check(e, "cycle", "selfish")


def test_a_node_input_nothing_produces():
    nodes = [helper.make_node("Add", ["X", "ghost"], ["Y"], name="haunted")]
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("Y", [2])]))
    check(e, "ghost", "haunted")


def test_a_value_produced_twice():
    nodes = [helper.make_node("Relu", ["X"], ["dup"], name="first"),
             helper.make_node("Neg", ["X"], ["dup"], name="second"),
             helper.make_node("Identity", ["dup"], ["Y"], name="out")]
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("Y", [2])]))
    check(e, "dup", "first", "second")


def test_a_node_overwriting_a_graph_input():
    nodes = [helper.make_node("Relu", ["X"], ["X"], name="clobber")]
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("X", [2])]))
    check(e, "'X'", "clobber", "graph input")


def test_a_graph_output_nothing_produces():
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="relu")]
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("Y", [2]), vi("Z", [2])]))
    check(e, "'Z'", "output")


# --- operators and attributes -----------------------------------------------------------
def test_unsupported_ops_fail_at_load_naming_all_of_them():
    nodes = [helper.make_node("Foo", ["X"], ["f"], name="foo_node", domain="com.example"),
             helper.make_node("Bar", ["f"], ["Y"], name="bar_node")]
    model = make(nodes, [vi("X", [2])], [vi("Y", [2])], opsets=(("", 13), ("com.example", 1)))
    with pytest.raises(UnsupportedOpError) as e:
        rzrt.InferenceSession(model)          # at load: no run() needed
    msg = check(e, "Foo", "Bar", "com.example", "foo_node", "bar_node", "register_op")
    assert "opset 1" in msg and "opset 13" in msg
    assert "ai.onnx" in msg or "default domain" in msg


def test_an_unsupported_op_can_be_registered():
    nodes = [helper.make_node("Foo", ["X"], ["Y"], name="foo_node", domain="com.example")]
    model = make(nodes, [vi("X", [2])], [vi("Y", [2])], opsets=(("", 13), ("com.example", 1)))
    with rzrt.registry_scope():
        @rzrt.register_op("Foo", domain="com.example")
        def Foo(X):
            return X + 1

        (y,) = rzrt.InferenceSession(model).run(None, {"X": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(y, [1, 1])
    with pytest.raises(UnsupportedOpError):
        rzrt.InferenceSession(model)


def test_an_unknown_attribute_on_a_known_op():
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="odd_relu", flavour=3)]
    with pytest.raises(RzrtError) as e:
        rzrt.InferenceSession(make(nodes, [vi("X", [2])], [vi("Y", [2])]))
    check(e, "odd_relu", "flavour")


def test_an_attribute_of_undefined_type():
    # A typeless attribute (what a corrupt file can hold) whose name the kernel knows must not
    # silently become the default value.
    model = conv_add_model()
    model.graph.node[0].attribute.add(name="strides")
    with pytest.raises(ModelError) as e:
        rzrt.InferenceSession(model)
    check(e, "'conv'", "'strides'", "UNDEFINED")


# --- inputs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relu_session():
    return rzrt.InferenceSession(relu_model())


def x(shape=(1, 3, 4, 4), dtype=np.float32):
    return np.zeros(shape, dtype)


def test_wrong_input_name(relu_session):
    with pytest.raises(InputError) as e:
        relu_session.run(None, {"input": x()})
    check(e, "'input'", "'X'")


def test_missing_input():
    model = make([helper.make_node("Add", ["A", "B"], ["Y"], name="add")],
                 [vi("A", [2]), vi("B", [2])], [vi("Y", [2])])
    sess = rzrt.InferenceSession(model)
    with pytest.raises(InputError) as e:
        sess.run(None, {"A": np.zeros(2, np.float32)})
    check(e, "missing", "'B'")
    with pytest.raises(InputError) as e:
        sess.run(None, {})
    check(e, "missing", "'A'")


def test_wrong_rank(relu_session):
    with pytest.raises(InputError) as e:
        relu_session.run(None, {"X": x((3, 4, 4))})
    check(e, "'X'", "rank 4", "rank 3")


def test_wrong_fixed_dim(relu_session):
    with pytest.raises(InputError) as e:
        relu_session.run(None, {"X": x((2, 5, 4, 4))})
    check(e, "'X'", "[2, 5, 4, 4]", "dimension 1", "3")


def test_wrong_dtype(relu_session):
    with pytest.raises(InputError) as e:
        relu_session.run(None, {"X": x(dtype=np.float64)})
    check(e, "'X'", "float32", "float64", "astype")


@pytest.mark.parametrize("feed", [[np.zeros((1, 3, 4, 4), np.float32)], np.zeros((1, 3, 4, 4), np.float32), None])
def test_feed_that_is_not_a_dict(relu_session, feed):
    with pytest.raises(InputError) as e:
        relu_session.run(None, feed)
    check(e, "dict", type(feed).__name__)


def test_unknown_output_name(relu_session):
    with pytest.raises(InputError) as e:
        relu_session.run(["Z"], {"X": x()})
    check(e, "'Z'", "'Y'")


def test_a_list_input_is_converted_or_rejected(relu_session):
    (y,) = relu_session.run(None, {"X": x().tolist()})
    assert y.dtype == np.float32 and y.shape == (1, 3, 4, 4)
    with pytest.raises(InputError) as e:
        relu_session.run(None, {"X": "not numbers"})
    check(e, "'X'")


# --- kernels at run time ----------------------------------------------------------------
def test_a_kernel_failing_at_run_time():
    model = make([helper.make_node("Reshape", ["X", "shape"], ["Y"], name="bad_reshape")],
                 [vi("X", [1, 3, 4, 4]), vi("shape", [2], TensorProto.INT64)], [vi("Y", None)])
    sess = rzrt.InferenceSession(model)
    with pytest.raises(KernelError) as e:
        sess.run(None, {"X": x(), "shape": np.array([5, 7], np.int64)})
    check(e, "bad_reshape", "Reshape", "[1, 3, 4, 4]", "[2]")


def test_every_error_message_is_one_line():
    # RzrtError itself keeps messages on one line, whatever the text it is given.
    for cls in (RzrtError, ModelError, UnsupportedOpError, InputError, KernelError):
        e = cls("first line\nsecond line\r\n  third")
        assert "\n" not in str(e) and "\r" not in str(e)
        assert "first line" in str(e) and "third" in str(e)
