"""The passes for each level, looped to a fixed point.

    level 0   nothing
    level 1   standard ONNX rewrites: the result runs anywhere
    level 2   level 1 + fusions into rzrt-domain ops (FusedConv, FusedGemm, FusedMatMul; SiLU too)

A pass that raises is named in a PassError, with the passes that ran before it.
"""
from __future__ import annotations

from collections import Counter

from rzrt.errors import PassError
from rzrt.passes.eliminate_dead import eliminate_dead
from rzrt.passes.eliminate_identity import eliminate_identity
from rzrt.passes.fold_batchnorm import fold_batchnorm
from rzrt.passes.fold_constants import fold_constants
from rzrt.passes.fuse_activation import fuse_activation
from rzrt.passes.fuse_conv_add import fuse_conv_add
from rzrt.passes.fuse_silu import fuse_silu

BASIC = [eliminate_identity, fold_constants, fold_batchnorm, eliminate_dead]
LEVELS = {0: [], 1: BASIC, 2: BASIC + [fuse_conv_add, fuse_silu, fuse_activation, eliminate_dead]}
MAX_ROUNDS = 10


def passes_for(level: int) -> list:
    if level not in LEVELS:
        raise PassError(f"optimisation level must be 0, 1 or 2, got {level!r}")
    return LEVELS[level]


def optimize(graph, level: int = 2) -> list:
    """Rewrite `graph` in place; return one report line per pass that changed something."""
    passes = passes_for(level)
    removed, added, ran = {}, {}, []
    for _ in range(MAX_ROUNDS):
        any_change = False
        for p in passes:
            before, n_init = _ops(graph), len(graph.initializers)
            try:
                changed = p(graph)
            except Exception as e:
                raise PassError(f"pass {p.__name__} failed ({type(e).__name__}: {e}); passes before it: "
                                f"{', '.join(ran) or 'none'}; level=0 skips optimisation") from e
            ran.append(p.__name__)
            if changed:
                any_change = True
                after = _ops(graph)
                removed.setdefault(p.__name__, Counter()).update(before - after)
                added.setdefault(p.__name__, Counter()).update(after - before)
                if len(graph.initializers) < n_init:
                    removed[p.__name__]["initializers"] += n_init - len(graph.initializers)
        if not any_change:
            break
    return [_describe(name, removed[name], added.get(name, Counter())) for name in removed]


def _ops(graph) -> Counter:
    return Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.nodes)


def _describe(name, removed: Counter, added: Counter) -> str:
    def fmt(c):
        return ", ".join(f"{v} {k}" for k, v in c.most_common())
    if not added:
        return f"{name}: {fmt(removed)} removed"
    return f"{name}: {fmt(removed)} -> {fmt(added)}"
