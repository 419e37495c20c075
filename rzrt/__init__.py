"""rzrt: run ONNX models on the CPU with hand-written numpy kernels.

    import rzrt
    sess = rzrt.InferenceSession("resnet50.onnx")
    (logits,) = sess.run(None, {"input": x})
"""
from rzrt.errors import InputError, KernelError, ModelError, PassError, RzrtError, UnsupportedOpError
from rzrt import ops  # noqa: F401  (registers the built-in kernels)
from rzrt.ops.registry import registry_scope, unregister as _unregister, register as _register
from rzrt.session import InferenceSession, NodeArg

__version__ = "0.1.0"


def register_op(op_type: str, domain: str = "", since: int = 1, *, shape=None, inplace: bool = False,
                 override: bool = False):
    """Decorator: make a numpy function the kernel of (domain, op_type) from opset `since` on.

        @rzrt.register_op("Swish", domain="com.example")
        def Swish(X, *, beta=1.0):
            return X / (1 + np.exp(-beta * X))

    Inputs are positional, attributes keyword-only with their defaults. `shape(*inputs, **attrs)`
    receives (shape, dtype) per input and returns the output's (shape, dtype), so the memory
    plan can place the output; `inplace=True` lets the output reuse its first input's buffer.
    """
    def deco(fn):
        _register(fn, op_type, domain, since, shape=shape, inplace=(0,) if inplace else (), override=override)
        return fn
    return deco


def unregister_op(op_type: str, domain: str = "", since: int | None = None) -> None:
    """Remove a kernel registered with register_op (every version when since is None)."""
    _unregister(op_type, domain, since)


__all__ = ["InferenceSession", "NodeArg", "register_op", "unregister_op", "registry_scope",
           "RzrtError", "ModelError", "UnsupportedOpError", "InputError", "KernelError", "PassError"]
