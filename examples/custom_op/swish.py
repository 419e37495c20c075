"""A plugin: the kernel of com.example.Swish, a activation that is not in the ONNX standard.

    Swish(x) = x * sigmoid(beta * x) = x / (1 + exp(-beta * x))

Load it with `rzrt run MODEL IMAGE --plugin swish.py`, or import it before creating a session.
"""
import numpy as np

import rzrt


def same_shape(x, **attrs):
    """The output has the input's (shape, dtype): this lets the memory plan place it."""
    return x


@rzrt.register_op("Swish", domain="com.example", shape=same_shape)
def Swish(X, *, beta=1.0):
    with np.errstate(over="ignore"):            # exp overflow for very negative x gives the right limit, 0
        return (X / (1 + np.exp(-beta * X))).astype(X.dtype)
