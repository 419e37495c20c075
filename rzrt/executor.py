"""The executor: one loop over the planned steps, no per-op branches.

    for step in steps:
        outputs = kernel(*inputs, **attributes)
        forget every value whose last reader was this step

The shape of torch.fx's Interpreter: run() calls run_node(step, args) for each step,
and analyses (profiling, tracing) subclass it and override run_node, calling super().
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rzrt.errors import KernelError, RzrtError
from rzrt.graph import Node
from rzrt.ops.registry import Kernel


@dataclass
class Step:
    node: Node
    kernel: Kernel
    kwargs: dict                 # attributes (converted once at load) + context
    inputs: tuple                # value names; "" for an absent optional input
    outputs: tuple
    frees: tuple = ()            # values whose last reader is this step
    out: object = None           # the output's planned buffer (a view into the arena)
    out_spec: tuple | None = None   # (shape, dtype) the plan expects; with out=None, allocated per run
    scratch: object = None       # the planned scratch buffer
    unplanned: tuple = ()        # indices of outputs the plan does not track: they must not point into the arena

    @property
    def fn(self):
        return self.kernel.fn


def last_uses(steps, keep=()) -> None:
    """Fill each step's `frees` with the values it reads last (never those in `keep`)."""
    last = {}
    for i, s in enumerate(steps):
        for name in s.inputs:
            if name:
                last[name] = i
        for name in s.outputs:   # produced but never read: free right after it is made
            if name:
                last.setdefault(name, i)
    keep = set(keep)
    by_step = [[] for _ in steps]
    for name, i in last.items():
        if name not in keep:
            by_step[i].append(name)
    for s, names in zip(steps, by_step):
        s.frees = tuple(names)


@dataclass
class Executor:
    steps: list
    constants: dict              # initializers: name -> array, never freed
    output_names: list
    arena: np.ndarray | None = None

    def run(self, feeds: dict) -> dict:
        env = self.execute(feeds)
        held = {id(_root(a)) for a in feeds.values() if isinstance(a, np.ndarray)}
        results = {}
        for n in self.output_names:
            value = self._owned(env[n], held)
            if isinstance(value, np.ndarray):
                if any(isinstance(r, np.ndarray) and np.may_share_memory(value, r) for r in results.values()):
                    value = value.copy()       # two outputs (y and Identity(y)) are two arrays, as in onnxruntime
            results[n] = value
        return results

    def execute(self, feeds: dict) -> dict:
        """Every step in order; the values left at the end (the graph outputs among them)."""
        env = dict(self.constants)
        env.update(feeds)
        for step in self.steps:
            self.run_step(step, env)
        return env

    def run_step(self, step: Step, env: dict) -> None:
        """One step: its inputs from env, its outputs into env, and the values it read last out."""
        args = [env[n] if n else None for n in step.inputs]
        results = self.run_node(step, args)
        for name, value in zip(step.outputs, results):
            if name:
                env[name] = value
        for name in step.frees:
            env.pop(name, None)

    def _owned(self, value, held: set):
        """Outputs are the caller's own, as onnxruntime's are: never a view of the arena (the next
        run overwrites it) or of a feed, and never read-only. Initializers and attribute tensors are
        read-only (the session marks them), and so is every view of them: they are copied too."""
        if isinstance(value, list):
            return [self._owned(v, held) for v in value]
        if not isinstance(value, np.ndarray):
            return value
        if not value.flags.writeable or id(_root(value)) in held \
                or (self.arena is not None and np.may_share_memory(value, self.arena)):
            return value.copy()
        return value

    def run_node(self, step: Step, args: list) -> list:
        try:
            result = self.call_kernel(step, args)
        except RzrtError:
            raise
        except Exception as e:
            raise KernelError(f"{describe(step, args)} failed: {type(e).__name__}: {e}") from e
        outs = outputs_of(step, result, args)
        for i in step.unplanned:
            # a view of a planned input (np.split, a kernel returning its input) that the plan
            # does not know about would be overwritten when the input's bytes are reused: copy it
            if i < len(outs):
                outs[i] = self._detached(outs[i])
        return outs

    def _detached(self, value):
        if isinstance(value, list):              # a sequence: each element may be a view
            return [self._detached(v) for v in value]
        if isinstance(value, np.ndarray) and np.may_share_memory(value, self.arena):
            return value.copy()
        return value

    def kernel_kwargs(self, step: Step) -> dict:
        """The keyword arguments of step's kernel (attributes and context); subclasses may add."""
        return step.kwargs

    def call_kernel(self, step: Step, args: list):
        kwargs = self.kernel_kwargs(step)
        if step.out_spec is not None and step.kernel.takes_out:
            out = step.out if step.out is not None else np.empty(*step.out_spec)
            kwargs = dict(kwargs, out=out)
        if step.scratch is not None:
            kwargs = dict(kwargs, scratch=step.scratch)
        return step.kernel.fn(*args, **kwargs)


def _root(a: np.ndarray):
    """The object that owns a's memory (numpy collapses view chains, but a base may be a buffer)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def describe_value(a) -> str:
    if a is None:
        return "None"
    if isinstance(a, list):
        return f"sequence of {len(a)}" + (f" {describe_value(a[0])}" if a else "")
    if isinstance(a, np.ndarray):
        return f"{a.dtype}{list(a.shape)}"
    return type(a).__name__


def describe(step: Step, args: list) -> str:
    shapes = ", ".join(describe_value(a) for a in args)
    return f"node {step.node.name!r} ({step.node.qualified_op}, kernel {step.kernel.name}) on inputs ({shapes})"


def outputs_of(step: Step, result, args) -> list:
    """Normalise a kernel's return value to one array per node output."""
    results = list(result) if isinstance(result, tuple) else [result]   # a tuple: several outputs; a list: one sequence
    wanted = len(step.outputs)
    needed = max((i + 1 for i, n in enumerate(step.outputs) if n), default=0)
    if len(results) < needed:
        raise KernelError(f"{describe(step, args)} returned {len(results)} output(s); "
                          f"the node expects {wanted}")
    # a list is a sequence value and None an empty optional: both pass through as they are
    results = [r if isinstance(r, (np.ndarray, list)) or r is None else np.asarray(r) for r in results[:wanted]]
    if step.out_spec is not None:
        shape, dtype = step.out_spec
        got = results[0]
        if got.shape != tuple(shape) or got.dtype != dtype:
            raise KernelError(f"{describe(step, args)} returned {got.dtype}{list(got.shape)}, but the shape rule "
                              f"said {np.dtype(dtype)}{list(shape)}; fix the kernel or its shape= rule")
        if step.out is not None and got is not step.out:
            np.copyto(step.out, got)      # a kernel without out=: its result moves into the planned buffer
            results[0] = step.out
    return results
