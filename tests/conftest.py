"""Shared fixtures: torchvision models exported once per test session (cached on disk).

Exports use random weights with a fixed seed (no downloads here). The cache lives in
$RZRT_TEST_CACHE (default ~/.cache/rzrt-tests), keyed by torch version, so a second run of
the suite skips the export step; delete it to force fresh exports.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "data" / "images"
sys.path.insert(0, str(ROOT / "models"))

FLAVOURS = {
    "folded": dict(),                     # legacy exporter, opset 17, BN folded by constant folding
    "keepbn": dict(keep_bn=True),         # legacy exporter, BatchNormalization kept
    "dynamo": dict(dynamo=True),          # torch.export-based exporter, opset 18
}


EXPORT_VERSION = 2   # bump when models/export.py changes what it writes


def cache_dir() -> Path:
    import torch
    base = Path(os.environ.get("RZRT_TEST_CACHE", Path.home() / ".cache" / "rzrt-tests"))
    d = base / f"torch-{torch.__version__.split('+')[0]}-export{EXPORT_VERSION}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def export_cached(name: str, flavour: str = "folded") -> Path:
    """Path to torchvision `name` exported with random weights (seed 0) in the given flavour."""
    import export  # models/export.py
    path = cache_dir() / f"{name}-{flavour}.onnx"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
        export.export(name, tmp, weights="none", **FLAVOURS[flavour])
        tmp.replace(path)
    return path


def torch_model(name: str):
    """The same torch model the export used: same seed, same randomised BatchNorm statistics."""
    import export
    model, _ = export.build_model(name, "none", seed=0)
    return model


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the output's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="session")
def resnet18_path() -> Path:
    return export_cached("resnet18", "folded")


@pytest.fixture
def images() -> Path:
    return IMAGES
