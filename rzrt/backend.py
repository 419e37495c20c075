"""rzrt as an onnx.backend.base.Backend, so onnx's BackendTest and node cases can drive it."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from rzrt.session import InferenceSession


class RzrtRep(BackendRep):
    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs, **kwargs):
        names = [i.name for i in self.session.get_inputs()]
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feed = dict(zip(names, inputs))
        # onnx's test cases give types numpy lacks (float8, int4, bfloat16) as TensorProto
        feed = {k: numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for k, v in feed.items()}
        return tuple(self.session.run(None, feed))


class RzrtBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        return RzrtRep(InferenceSession(model, **kwargs))

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("rzrt runs whole models; wrap the node in a graph")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = RzrtBackend.prepare
run_model = RzrtBackend.run_model
run_node = RzrtBackend.run_node
supports_device = RzrtBackend.supports_device
