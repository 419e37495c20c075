"""Every error a user can cause is an RzrtError whose message says what was expected,
what was given, and the way out. The CLI prints it in one line and exits non-zero.

RzrtError keeps that promise itself: whatever text it is given (often the str() of a
lower-level exception, which may span lines), its message is folded onto one line.
"""
from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def one_line(text: str) -> str:
    """`text` with every line break (and the blanks around it) folded into a single space."""
    return _LINE_BREAKS.sub(" ", str(text)).strip()


class RzrtError(Exception):
    """Base of all errors rzrt raises on purpose; its message is always a single line."""

    def __init__(self, message: object = "", *args):
        super().__init__(one_line(message), *args)


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
