"""The kernel registry: one dict keyed by (domain, op_type), each entry a list of versions.

    @kernel("Relu")
    def Relu(X, *, out=None):
        return np.maximum(X, 0, out=out)

A kernel is a plain function: inputs positional (None for an absent optional input),
attributes keyword-only with the ONNX defaults written in the signature, and an optional
`out=` (the planned buffer for its single output), which it writes into when given.
Selection follows onnx: the highest `since` not above the model's opset for that domain.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Callable

from rzrt.errors import RzrtError

ONNX_DOMAINS = ("", "ai.onnx")


def normalize_domain(domain: str | None) -> str:
    return "" if domain in (None, "ai.onnx") else domain


@dataclass(frozen=True)
class Kernel:
    op_type: str
    domain: str
    since: int
    fn: Callable
    shape: Callable | None = None      # (*input (shape, dtype), **attrs) -> (shape, dtype) or a list of them
    inplace: tuple = ()                # inputs whose buffer the output may take over when they die here
    view: bool = False                 # the output is a view of input 0 (Reshape, Flatten, ...): no bytes of its own
    scratch: Callable | None = None    # (*input (shape, dtype), **attrs) -> scratch bytes the kernel wants
    attrs: dict = field(default_factory=dict)   # attribute name -> default (from the signature)
    context: frozenset = frozenset()   # keyword-only `_name` parameters the session fills in
    takes_out: bool = False
    takes_scratch: bool = False
    min_inputs: int = 0
    max_inputs: int | None = None      # None: variadic

    @property
    def name(self) -> str:
        return f"{self.domain + '.' if self.domain else ''}{self.op_type}-{self.since}"

    def bind(self, attrs: dict, where: str) -> dict:
        """Check a node's attributes against the signature once, at load; return the kwargs."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise UnsupportedAttributeError(
                f"{where}: attribute(s) {', '.join(unknown)} not supported by kernel {self.name}; "
                f"it takes {', '.join(sorted(self.attrs)) or 'no attributes'}")
        return dict(attrs)


class UnsupportedAttributeError(RzrtError):
    pass


def is_rzrt_kernel(k: Kernel) -> bool:
    """Whether k is one of rzrt's own kernels (not a user's): what passes and plan-time steps may
    rewrite, fold or relay out; a user's kernel always runs as written."""
    return k.fn.__module__.startswith("rzrt.ops.")


_REGISTRY: dict[tuple[str, str], dict[int, Kernel]] = {}


def _describe(fn: Callable) -> dict:
    sig = inspect.signature(fn)
    attrs, context, takes_out, takes_scratch, lo, hi = {}, set(), False, False, 0, 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            hi = None
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if hi is not None:
                hi += 1
            if p.default is p.empty:
                lo += 1
        elif p.kind == p.KEYWORD_ONLY:
            if p.name == "out":
                takes_out = True
            elif p.name == "scratch":
                takes_scratch = True
            elif p.name.startswith("_"):
                context.add(p.name)   # filled in by the session (e.g. _outputs: the node's output count)
            else:
                attrs[p.name] = None if p.default is p.empty else p.default
    return dict(attrs=attrs, context=frozenset(context), takes_out=takes_out, takes_scratch=takes_scratch,
                min_inputs=lo, max_inputs=hi)


def make_kernel(fn: Callable, op_type: str, domain: str = "", since: int = 1, *, shape=None,
                inplace=(), view: bool = False, scratch=None) -> Kernel:
    if not callable(fn):
        raise RzrtError(f"a kernel for {op_type} must be a function, got {type(fn).__name__}")
    inplace = (inplace,) if isinstance(inplace, int) else tuple(inplace or ())
    return Kernel(op_type, normalize_domain(domain), int(since), fn, shape, inplace, view, scratch, **_describe(fn))


def add(k: Kernel, table: dict, override: bool = False) -> None:
    """Put kernel k into a registry table.

    Without override it is an error if the op already has a kernel for the same opset, or any
    kernel from another module (one module may register several versions of its op).
    With override, k replaces every version from k.since on, so it is the one chosen.
    """
    versions = table.setdefault((k.domain, k.op_type), {})
    clash = versions.get(k.since) or next((v for v in versions.values() if v.fn.__module__ != k.fn.__module__), None)
    if clash is not None and _same_source(clash.fn, k.fn):
        clash = None      # the same function loaded again (a plugin re-imported): replace it quietly
    if clash is not None and not override:
        raise RzrtError(f"op {k.domain + '.' if k.domain else ''}{k.op_type} already has a kernel "
                        f"({clash.fn.__module__}.{clash.fn.__qualname__}, opsets {', '.join(map(str, sorted(versions)))});"
                        f" pass override=True to replace it")
    if override:
        for s in [s for s in versions if s >= k.since]:
            del versions[s]
    versions[k.since] = k


def _same_source(a, b) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__) and not a.__module__.startswith("rzrt.ops")


def register(fn: Callable, op_type: str, domain: str = "", since: int = 1, *, shape=None,
             inplace=(), view: bool = False, scratch=None, override: bool = False) -> Kernel:
    k = make_kernel(fn, op_type, domain, since, shape=shape, inplace=inplace, view=view, scratch=scratch)
    add(k, _REGISTRY, override)
    return k


def kernel(op_type: str, domain: str = "", since: int = 1, *, shape=None, inplace=(), view: bool = False,
           scratch=None, override: bool = False):
    """Decorator: register `fn` as the kernel of (domain, op_type) from opset `since` on.

    shape(*inputs, **attrs) -> (shape, dtype): the output from the inputs' (shape, dtype), for the plan.
    inplace: indices of inputs whose buffer the output may take over when that input dies here.
    view: the output is a view of input 0 and needs no buffer.
    scratch(*inputs, **attrs) -> bytes of scratch memory the kernel wants as `scratch=`.
    """
    def deco(fn):
        register(fn, op_type, domain, since, shape=shape, inplace=inplace, view=view, scratch=scratch,
                 override=override)
        return fn
    return deco


def unregister(op_type: str, domain: str = "", since: int | None = None) -> None:
    """Remove one version (or, with since=None, every version) of an op."""
    key = (normalize_domain(domain), op_type)
    if since is None:
        _REGISTRY.pop(key, None)
    else:
        _REGISTRY.get(key, {}).pop(since, None)


# Kernels given to one session (InferenceSession(custom_ops=...)): consulted before the global
# table while that session loads and runs, so an override stays inside the session.
_SESSION: contextvars.ContextVar = contextvars.ContextVar("rzrt_session_kernels", default=None)


@contextlib.contextmanager
def session_kernels(table: dict | None):
    token = _SESSION.set(table)
    try:
        yield
    finally:
        _SESSION.reset(token)


def lookup(op_type: str, domain: str, opset: int | None) -> Kernel | None:
    """The kernel with the highest `since` not above `opset` (None: the newest), or None."""
    key = (normalize_domain(domain), op_type)
    local = _SESSION.get()
    for table in ((local or {}), _REGISTRY):
        versions = table.get(key, {})
        ok = [s for s in versions if opset is None or s <= opset]
        if ok:
            return versions[max(ok)]
    return None


def all_kernels() -> list[Kernel]:
    return sorted((k for vs in _REGISTRY.values() for k in vs.values()),
                  key=lambda k: (k.domain, k.op_type, k.since))


def snapshot() -> dict:
    return {key: dict(vs) for key, vs in _REGISTRY.items()}


def restore(snap: dict) -> None:
    _REGISTRY.clear()
    _REGISTRY.update({key: dict(vs) for key, vs in snap.items()})


@contextlib.contextmanager
def registry_scope():
    """Kernels registered (or overridden) inside the block are gone after it."""
    snap = snapshot()
    try:
        yield
    finally:
        restore(snap)


# --- constants ---------------------------------------------------------------------------
# Arrays a session owns and never changes (initializers, attribute tensors), marked read-only
# at load. Kernels may cache what they derive from them (Winograd's packed filters); a read-only
# array from elsewhere (a user's read-only view of data that changes) is not one of them.
_CONSTANTS: dict = {}


def mark_constant(a) -> None:
    a.setflags(write=False)
    key = id(a)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = weakref.ref(a, lambda _, key=key: _CONSTANTS.pop(key, None))


def is_constant(a) -> bool:
    ref = _CONSTANTS.get(id(a))
    return ref is not None and ref() is a
