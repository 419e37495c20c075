"""rzrt: run ONNX models on the CPU with hand-written numpy kernels.

    import rzrt
    sess = rzrt.InferenceSession("resnet50.onnx")
    (logits,) = sess.run(None, {"input": x})
"""
from rzrt.errors import InputError, KernelError, ModelError, PassError, RzrtError, UnsupportedOpError
from rzrt import ops  # noqa: F401  (registers the built-in kernels)
from rzrt.ops.registry import make_kernel as _make_kernel, registry_scope, unregister as _unregister, \
    register as _register
from rzrt.plugins import load_plugin
from rzrt.session import InferenceSession, NodeArg

__version__ = "0.1.0"


def register_op(op_type: str, domain: str = "", since: int = 1, *, shape=None, inplace: bool = False,
                override: bool = False):
    """Decorator: make a numpy function the kernel of (domain, op_type) from opset `since` on.

        @rzrt.register_op("Swish", domain="com.example", shape=lambda x, **attrs: x)
        def Swish(X, *, beta=1.0):
            return X / (1 + np.exp(-beta * X))

    Inputs are positional, attributes keyword-only with their defaults (the ONNX defaults).
    shape(*inputs, **attrs) receives (shape, dtype) per input and returns the output's
    (shape, dtype) (a list of them for several outputs), so the memory plan can place the output;
    without it the output is allocated at run time. A kernel may also take `out=` and write
    into it. inplace=True lets the output reuse the first input's buffer when that input dies.
    An op that already has a kernel is an error unless override=True.
    """
    def deco(fn):
        k = _register(fn, op_type, domain, since, shape=shape, inplace=(0,) if inplace else (), override=override)
        fn.rzrt_kernel, fn.rzrt_override = k, override
        return fn
    return deco


def custom_op(op_type: str, domain: str = "", since: int = 1, *, shape=None, inplace: bool = False,
              override: bool = False):
    """Like register_op, but registers nothing globally: give the function to one session,
    InferenceSession(path, custom_ops=[fn]); override=True then replaces a built-in there only."""
    def deco(fn):
        fn.rzrt_kernel = _make_kernel(fn, op_type, domain, since, shape=shape, inplace=(0,) if inplace else ())
        fn.rzrt_override = override
        return fn
    return deco


def unregister_op(op_type: str, domain: str = "", since: int | None = None) -> None:
    """Remove a kernel registered with register_op (every version when since is None)."""
    _unregister(op_type, domain, since)


__all__ = ["InferenceSession", "NodeArg", "register_op", "custom_op", "unregister_op", "registry_scope",
           "load_plugin", "RzrtError", "ModelError", "UnsupportedOpError", "InputError", "KernelError", "PassError"]
