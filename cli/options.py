"""Options shared by the commands that open a model, and the one place that opens it."""
from __future__ import annotations


import click

from rzrt.errors import InputError


def session_options(fn):
    """Options every model-running command takes."""
    fn = click.option("--level", "-O", type=click.IntRange(0, 2), default=2, show_default=True,
                      help="graph optimisation: 0 off, 1 standard ONNX rewrites, 2 + rzrt fusions")(fn)
    return fn


def open_session(model: str, **kw):
    from rzrt.session import InferenceSession
    return InferenceSession(model, **kw)


def floats(text: str, option: str, n: int) -> tuple:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise InputError(f"{option} expects {n} comma-separated numbers (R,G,B), got {text!r}")
    return vals


