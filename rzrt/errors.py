"""Every error a user can cause is an RzrtError whose message says what was expected,
what was given, and the way out. The CLI prints it in one line and exits non-zero."""


class RzrtError(Exception):
    """Base of all errors rzrt raises on purpose."""


class ModelError(RzrtError):
    """The model file or graph is unusable: missing, not ONNX, truncated, malformed."""


class UnsupportedOpError(RzrtError):
    """The graph uses an operator (domain, op_type, opset) that no kernel implements."""


class InputError(RzrtError):
    """The inputs given to run() do not match the model: name, rank, shape or dtype."""


class KernelError(RzrtError):
    """A kernel failed while running; the message names the node, its op and input shapes."""


class PassError(RzrtError):
    """A graph pass failed; the message names the pass and the ones that ran before it."""
