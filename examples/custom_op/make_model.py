"""Build swishnet.onnx: a tiny CIFAR-10-style classifier whose activations are com.example.Swish,
an operator outside the ONNX standard (random weights, seed 0).

    x (N,3,32,32) -> Conv 3->8, 3x3 s2 -> Swish -> Conv 8->16, 3x3 s2 -> Swish
      -> GlobalAveragePool -> Flatten -> Gemm 16->10 -> logits

    python examples/custom_op/make_model.py [-o swishnet.onnx]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b1": np.zeros(8, np.float32),
        "w2": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
        "b2": np.zeros(16, np.float32),
        "wf": rng.standard_normal((10, 16)).astype(np.float32) * 0.5,
        "bf": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Swish", ["c1"], ["s1"], name="swish1", domain="com.example", beta=1.0),
        helper.make_node("Conv", ["s1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Swish", ["c2"], ["s2"], name="swish2", domain="com.example", beta=1.0),
        helper.make_node("GlobalAveragePool", ["s2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "swishnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    helper.set_model_props(model, {"labels": json.dumps(CLASSES)})
    return model


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=str(Path(__file__).with_name("swishnet.onnx")))
    out = p.parse_args().output
    onnx.save(build(), out)
    print(f"wrote {out}")
