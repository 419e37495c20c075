"""The memory planner alone: hand-written lifetimes, no kernels, no graphs."""
from __future__ import annotations

import random

import pytest

from rzrt.planner import ALIGN, Request, lower_bound, plan


def overlapping(a: Request, b: Request) -> bool:
    return a.start <= b.end and b.start <= a.end


def assert_valid(requests, p, shares=None):
    """No two values whose lifetimes overlap share a byte, unless one reuses the other's block."""
    shares = shares or {}
    group = {}
    for r in requests:
        g = r.name
        while g in shares:
            g = shares[g]
        group[r.name] = g
    for i, a in enumerate(requests):
        oa, na = p.offsets[a.name]
        assert oa % ALIGN == 0
        assert oa + na <= p.arena_bytes
        for b in requests[i + 1:]:
            if group[a.name] == group[b.name] or not overlapping(a, b):
                continue
            ob, nb = p.offsets[b.name]
            assert oa + na <= ob or ob + nb <= oa, f"{a} and {b} overlap in memory"


def test_chain_reuses_memory():
    # a -> b -> c -> d, each read only by the next: two buffers suffice
    reqs = [Request("a", 1000, 0, 1), Request("b", 1000, 1, 2), Request("c", 1000, 2, 3), Request("d", 1000, 3, 4)]
    p = plan(reqs)
    assert_valid(reqs, p)
    assert p.arena_bytes == 2 * 1024          # 1000 rounded up to the alignment, twice
    assert p.naive_bytes == 4000
    assert p.lower_bound_bytes == 2 * 1024


def test_all_live_at_once_share_nothing():
    reqs = [Request(n, 640, 0, 5) for n in "abcd"]
    p = plan(reqs)
    assert_valid(reqs, p)
    assert p.arena_bytes == 4 * 640 == p.lower_bound_bytes


def test_gap_is_reused_best_fit():
    # a small value dies early; a later small value should land in its hole, not on top
    reqs = [Request("big", 4096, 0, 10), Request("small", 64, 0, 1), Request("big2", 4096, 0, 10),
            Request("late", 64, 2, 3)]
    p = plan(reqs)
    assert_valid(reqs, p)
    assert p.arena_bytes == 4096 * 2 + 64


def test_shared_block_in_place():
    # y = Relu(x) in place: x dies at step 1 where y is born; they share x's block
    reqs = [Request("x", 256, 0, 1), Request("y", 256, 1, 2), Request("z", 256, 2, 3)]
    p = plan(reqs, shares={"y": "x"})
    assert p.offsets["y"] == p.offsets["x"]
    assert p.shared == {"y": "x"}
    assert_valid(reqs, p, {"y": "x"})


def test_dynamic_values_are_listed():
    p = plan([Request("a", 64, 0, 1)], dynamic=["unknown"])
    assert p.dynamic == ["unknown"]
    assert "unknown size" in p.summary()


@pytest.mark.parametrize("seed", range(30))
def test_random_lifetimes(seed):
    rng = random.Random(seed)
    reqs = []
    for i in range(rng.randint(1, 60)):
        start = rng.randint(0, 40)
        reqs.append(Request(f"v{i}", rng.choice([1, 64, 100, 1000, 5000, 40000]), start, start + rng.randint(0, 10)))
    p = plan(reqs)
    assert_valid(reqs, p)
    assert p.lower_bound_bytes <= p.arena_bytes <= sum(-(-r.nbytes // ALIGN) * ALIGN for r in reqs)
    assert p.lower_bound_bytes == lower_bound([Request(r.name, -(-r.nbytes // ALIGN) * ALIGN, r.start, r.end)
                                               for r in reqs])


def test_views_the_plan_does_not_know_are_not_overwritten():
    """np.split returns views of its input; when the input's bytes are reused, those views must
    already be copies (found on torchvision's shufflenet_v2 exported by dynamo)."""
    import numpy as np
    from onnx import TensorProto, helper

    import rzrt
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Split", ["a"], ["b", "c"], axis=1, num_outputs=2),
             helper.make_node("Neg", ["b"], ["d"]),          # may take a's bytes: a died at Split
             helper.make_node("Exp", ["d"], ["e"]),
             helper.make_node("Add", ["e", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 8, 5)).astype(np.float32)
    a = np.maximum(x, 0)
    want = np.exp(-a[:, :4]) + a[:, 4:]
    for memory_plan in (False, True):
        got = rzrt.InferenceSession(m, memory_plan=memory_plan).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6)
