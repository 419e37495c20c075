"""Options shared by the commands that open a model, and the one place that opens it."""
from __future__ import annotations

import sys
from contextlib import nullcontext

import click
import numpy as np

from rzrt.errors import InputError


def session_options(fn=None, *, level: int = 2):
    """Options every model-running command takes (`@session_options` or `@session_options(level=0)`)."""
    def deco(fn):
        fn = click.option("--plugin", "plugins", multiple=True, expose_value=False, callback=_load_plugins,
                          is_eager=True, metavar="FILE.py|MODULE",
                          help="load custom kernels (@rzrt.register_op) before the model; repeatable")(fn)
        fn = click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
                          help="share every convolution among this many processes, one per core "
                               "(Linux; not with profile)")(fn)
        fn = click.option("--threads", type=click.IntRange(min=1), default=None,
                          help="cores: BLAS threads, and at batch > 1 threads sharing the images  [default: all cores]")(fn)
        fn = click.option("--level", "-O", type=click.IntRange(0, 2), default=level, show_default=True,
                          help="graph optimisation: 0 off, 1 standard ONNX rewrites, 2 + rzrt fusions")(fn)
        return fn
    return deco(fn) if fn is not None else deco


def _load_plugins(ctx, param, values):
    from rzrt.plugins import load_plugin
    for v in values:
        load_plugin(v)


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


def parse_shape(text: str) -> tuple:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"--shape expects positive dimensions joined by x, e.g. 1x3x224x224; got {text!r}")
    return dims


def example_feeds(sess, shape: str | None = None, image: str | None = None, batch: int | None = None) -> dict:
    """Inputs for profiling and benchmarks: a picture, or seeded random numbers of the model's shape."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i, v in enumerate(sess.graph.inputs):
        if v.shape is None and not (i == 0 and shape):
            raise InputError(f"input {v.name!r} has no declared shape; give one with --shape, e.g. 1x3x224x224")
        dims = parse_shape(shape) if (i == 0 and shape) else tuple(
            d if isinstance(d, int) and d > 0 else 1 for d in v.shape)
        if batch is not None and dims:
            dims = (batch,) + dims[1:]
        if v.shape is not None and len(dims) != len(v.shape):
            raise InputError(f"--shape {shape} has rank {len(dims)} but input {v.name!r} has rank {len(v.shape)} "
                             f"({v.shape})")
        if i == 0 and image is not None:
            from rzrt.image import preprocess
            x = preprocess(image, size=int(dims[-1] * 256 / 224), crop=dims[-1])
            feeds[v.name] = np.ascontiguousarray(np.broadcast_to(x, (dims[0],) + x.shape)).astype(v.dtype)
        elif v.dtype is not None and v.dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(dims).astype(v.dtype)
        else:
            feeds[v.name] = np.zeros(dims, dtype=v.dtype or np.float32)
    return feeds


def progress(items, label: str):
    """click's progress bar on a terminal (stderr); nothing when piped."""
    if sys.stderr.isatty():
        return click.progressbar(items, label=label, file=sys.stderr)
    return nullcontext(items)


def ellipsize(text: str, width: int, keep_end: bool = True) -> str:
    """Fit text in width: node names keep their (more telling) end, op names their start."""
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1):] if keep_end else text[:width - 1] + "…"


def shape_str(shape) -> str:
    return "x".join(str(d) for d in shape) if shape is not None else "?"


def mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"
