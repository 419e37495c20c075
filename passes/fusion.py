"""What the fusing passes share: turning Conv/Gemm/MatMul into their rzrt-domain fused form.

    Conv -> rzrt.FusedConv(X, W, B, Z; activation, activation_params)
    Gemm -> rzrt.FusedGemm(A, B, C; activation, activation_params)
    MatMul -> rzrt.FusedMatMul(A, B; activation, activation_params)
The fused kernels (ops/fused.py) run the base op into the output buffer, add Z, then apply the
activation in place: no extra tensor, no extra node.
"""
from __future__ import annotations

FUSED = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}
DOMAIN = "rzrt"


def as_fused(graph, node, fused_op: str) -> None:
    """Rewrite `node` in place as the rzrt-domain fused op (a no-op if it already is one)."""
    if node.domain == DOMAIN:
        return
    node.op_type, node.domain = fused_op, DOMAIN
    graph.opsets.setdefault(DOMAIN, 1)


def fusable(node) -> bool:
    """A Conv/Gemm/MatMul, or a fused one that has no activation yet."""
    if not node.domain:
        return node.op_type in FUSED
    return node.domain == DOMAIN and node.op_type in FUSED.values() and not node.attrs.get("activation")


def is_builtin(graph, node) -> bool:
    """Whether rzrt's own kernel would run this node: a pass rewrites only what it understands,
    never a node a user has overridden with a kernel of their own."""
    from rzrt.ops import registry
    k = registry.lookup(node.op_type, node.domain, graph.opsets.get(node.domain))
    return k is not None and registry.is_rzrt_kernel(k)
