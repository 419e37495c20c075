"""Every torchvision classifier, exported by models/export.py (random weights, seed 0), runs in
rzrt and matches torch: relative error below 1e-4 and the same top-1, at levels 0 and 2, batch 2."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import rzrt
from conftest import export_cached, rel_err, torch_model

ZOO = ["alexnet", "vgg11_bn", "googlenet", "inception_v3", "squeezenet1_1", "densenet121", "resnet18", "resnet50",
       "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
       "mnasnet0_5", "shufflenet_v2_x1_0", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny", "vit_b_16",
       "swin_t", "maxvit_t"]
# (model, flavour) pairs torch itself cannot export, with the reason
CANNOT_EXPORT = {}


def size(name):
    return 299 if name == "inception_v3" else 224


@functools.lru_cache(maxsize=4)
def inputs_and_truth(name):
    import torch
    x = np.random.default_rng(0).standard_normal((2, 3, size(name), size(name))).astype(np.float32)
    with torch.no_grad():
        y = torch_model(name)(torch.from_numpy(x))
    return x, y.numpy()


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("flavour", ["folded", "dynamo"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_torch(name, flavour, level):
    if (name, flavour) in CANNOT_EXPORT:
        pytest.skip(CANNOT_EXPORT[name, flavour])
    path = export_cached(name, flavour)
    x, want = inputs_and_truth(name)
    (got,) = rzrt.InferenceSession(path, level=level).run(None, {"input": x})
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-4
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
