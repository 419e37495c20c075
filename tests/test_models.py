"""Whole torchvision models, exported three ways, against torch itself (random weights, seed 0),
and against themselves across optimisation levels and memory plans."""
from __future__ import annotations

import functools
import tracemalloc

import numpy as np
import onnx
import pytest

import rzrt
from conftest import IMAGES, export_cached, rel_err, torch_model
from rzrt.image import preprocess

PHOTOS = ["cat.jpg", "Ji.jpg", "Ma.jpg"]


@functools.lru_cache(maxsize=None)
def torch_logits(name: str, batch: int) -> np.ndarray:
    import torch
    with torch.no_grad():
        return torch_model(name)(torch.from_numpy(photo_batch(batch))).numpy()


def photo_batch(batch: int) -> np.ndarray:
    return np.stack([preprocess(IMAGES / p) for p in PHOTOS[:batch]])


@functools.lru_cache(maxsize=None)
def session(name: str, flavour: str, level: int = 2) -> rzrt.InferenceSession:
    return rzrt.InferenceSession(export_cached(name, flavour), level=level)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("flavour", ["folded", "keepbn", "dynamo"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_matches_torch(name, flavour, batch):
    x = photo_batch(batch)
    (got,) = session(name, flavour).run(None, {"input": x})
    want = torch_logits(name, batch)
    assert got.shape == want.shape == (batch, 1000)
    assert rel_err(got, want) < 1e-4
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_exports_differ_as_intended():
    """The three flavours really are three different graphs."""
    ops = {f: {s.node.op_type for s in session("resnet50", f, 0)._steps} for f in ("folded", "keepbn", "dynamo")}
    assert "BatchNormalization" in ops["keepbn"] and "BatchNormalization" not in ops["folded"]
    assert session("resnet50", "dynamo").graph.opsets[""] >= 18
    assert session("resnet50", "folded").graph.opsets[""] == 17


@pytest.mark.parametrize("flavour", ["folded", "keepbn", "dynamo"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_levels_agree(name, flavour):
    x = photo_batch(2)
    out = {lvl: session(name, flavour, lvl).run(None, {"input": x})[0] for lvl in (0, 1, 2)}
    assert rel_err(out[1], out[0]) < 1e-5
    assert rel_err(out[2], out[0]) < 1e-5


def test_resnet50_level2_has_no_batchnorm_or_standalone_relu():
    ops = [s.node.op_type for s in session("resnet50", "keepbn", 2)._steps]
    assert "BatchNormalization" not in ops and "Relu" not in ops
    assert ops.count("FusedConv") == 49


def test_resnet50_memory_plan():
    sess = rzrt.InferenceSession(export_cached("resnet50", "keepbn"))
    x = photo_batch(1)
    (first,) = sess.run(None, {"input": x})            # warm-up: builds and caches the plan
    plan = sess.memory_plan()
    assert plan.arena_bytes <= 1.10 * plan.lower_bound_bytes
    assert plan.naive_bytes >= 5 * plan.arena_bytes
    assert not plan.dynamic
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        (again,) = sess.run(None, {"input": x})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 1 << 20, f"a warm run allocated {(peak - base) / 2**20:.2f} MB"
    np.testing.assert_array_equal(again, first)
    assert not np.shares_memory(again, first)          # outputs never alias the arena


def test_plans_are_cached_per_input_shape():
    sess = rzrt.InferenceSession(export_cached("resnet18", "folded"))
    sess.run(None, {"input": photo_batch(1)})
    sess.run(None, {"input": photo_batch(2)})
    sess.run(None, {"input": photo_batch(1)})
    assert len(sess._runs) == 2
    assert sess.memory_plan({"input": (2, 3, 224, 224)}).arena_bytes > sess.memory_plan({"input": (1, 3, 224, 224)}).arena_bytes


@pytest.mark.parametrize("level", [1, 2])
def test_optimize_writes_valid_onnx(tmp_path, level):
    from click.testing import CliRunner

    from rzrt.cli.main import cli
    import rzrt.cli.commands  # noqa: F401
    src = export_cached("resnet18", "keepbn")
    dst = tmp_path / "opt.onnx"
    res = CliRunner().invoke(cli, ["optimize", str(src), str(dst), "--level", str(level)])
    assert res.exit_code == 0, res.output
    assert "fold_batchnorm: 20 BatchNormalization removed" in res.output
    assert "arena" in res.output and "lower bound" in res.output
    proto = onnx.load(str(dst))
    onnx.checker.check_model(proto)
    x = photo_batch(2)
    want = session("resnet18", "keepbn", 0).run(None, {"input": x})[0]
    assert rel_err(rzrt.InferenceSession(dst, level=0).run(None, {"input": x})[0], want) < 1e-5
    if level == 1:   # standard ONNX only: onnxruntime runs it
        import onnxruntime as ort
        got = ort.InferenceSession(str(dst)).run(None, {"input": x})[0]
        assert rel_err(got, want) < 1e-4
    else:
        assert any(n.domain == "rzrt" for n in proto.graph.node)
