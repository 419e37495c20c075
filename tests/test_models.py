"""Whole torchvision models, exported three ways, against torch itself (random weights, seed 0)."""
from __future__ import annotations

import functools

import numpy as np
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
def session(name: str, flavour: str) -> rzrt.InferenceSession:
    return rzrt.InferenceSession(export_cached(name, flavour))


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
    ops = {f: {s.node.op_type for s in session("resnet50", f)._steps} for f in ("folded", "keepbn", "dynamo")}
    assert "BatchNormalization" in ops["keepbn"] and "BatchNormalization" not in ops["folded"]
    assert session("resnet50", "dynamo").graph.opsets[""] >= 18
    assert session("resnet50", "folded").graph.opsets[""] == 17
