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
import inspect
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


def register(fn: Callable, op_type: str, domain: str = "", since: int = 1, *, shape=None,
             inplace=(), view: bool = False, scratch=None, override: bool = False) -> Kernel:
    domain = normalize_domain(domain)
    versions = _REGISTRY.setdefault((domain, op_type), {})
    if since in versions and not override:
        raise RzrtError(f"kernel {domain + '.' if domain else ''}{op_type} (since opset {since}) is "
                        f"already registered by {versions[since].fn.__module__}.{versions[since].fn.__qualname__}; "
                        f"pass override=True to replace it")
    inplace = (inplace,) if isinstance(inplace, int) else tuple(inplace or ())
    k = Kernel(op_type, domain, since, fn, shape, inplace, view, scratch, **_describe(fn))
    versions[since] = k
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


def lookup(op_type: str, domain: str, opset: int | None) -> Kernel | None:
    """The kernel with the highest `since` not above `opset` (None: the newest), or None."""
    versions = _REGISTRY.get((normalize_domain(domain), op_type), {})
    ok = [s for s in versions if opset is None or s <= opset]
    return versions[max(ok)] if ok else None


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
