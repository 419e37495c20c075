"""What a compiled kernel would buy: MobileNetV2's depthwise convolutions, rzrt's numpy kernels
against the same convolution as a plain loop compiled by numba (not a dependency of rzrt; this
script is evidence for a project decision, issue 7: pip install numba).

    python bench/compiled.py

First rzrt's and onnxruntime's whole runs (interleaved, as bench/compare.py; before numba's
threads exist), then each depthwise convolution's time in rzrt (profiled, median per node) and in
numba (channels last, bias and ReLU6 in the loop; on one thread, and with rows shared by numba's
threads), and the whole run rzrt would have with numba's depthwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import SETTLE, measure, model_path  # noqa: E402


def compiled_depthwise(parallel: bool):
    """y[i, j, c] = clip(b[c] + sum_{u,v} w[u, v, c] * xp[i*s + u, j*s + v, c], 0, 6); parallel: rows
    shared by numba's threads (which sleep between calls here, and waking them costs)."""
    try:
        from numba import njit, prange
    except ImportError:
        sys.exit("bench/compiled.py needs numba: pip install numba")

    @njit(parallel=parallel, fastmath=True)
    def dw3x3(xp, w, b, s, y):
        h, wd, c = y.shape
        for i in prange(h):
            acc = np.empty(c, np.float32)
            for j in range(wd):
                acc[:] = b
                for u in range(3):
                    for v in range(3):
                        row, wu = xp[i * s + u, j * s + v], w[u, v]
                        for k in range(c):
                            acc[k] += wu[k] * row[k]
                for k in range(c):
                    y[i, j, k] = min(max(acc[k], 0.0), 6.0)
    return dw3x3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    import onnx
    import onnxruntime as ort

    import rzrt
    path = model_path("mobilenet_v2", "folded")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    depthwise = {}                                          # node name -> (channels, stride)
    for n in onnx.load(str(path)).graph.node:
        a = {at.name: at for at in n.attribute}
        if n.op_type == "Conv" and "group" in a and a["group"].i > 1:
            depthwise[n.name] = (a["group"].i, a["strides"].ints[0] if "strides" in a else 1)

    sess = rzrt.InferenceSession(path)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    osess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fns = {"rzrt": lambda x: sess.run(None, {"input": x}), "onnxruntime": lambda x: osess.run(None, {"input": x})}
    med = measure(fns, x, args.runs, 3, settle=SETTLE)
    del sess, osess                                         # (before numba starts its threads)
    prof = rzrt.InferenceSession(path, profile=True)
    for _ in range(args.runs + 2):
        prof.run(None, {"input": x})
    per_node, out_shape = defaultdict(list), {}
    for r in prof.profile()["nodes"]:
        if r["node"] in depthwise:
            per_node[r["node"]].append(r["dur_us"] / 1e3)
            out_shape[r["node"]] = r["outputs"][0]
    kernels = [compiled_depthwise(False), compiled_depthwise(True)]
    rng = np.random.default_rng(1)
    total_np, total_nb = 0.0, [0.0, 0.0]
    print(f"{'depthwise 3x3 (H x W x C, stride)':<36} {'rzrt ms':>8} {'numba ms':>9} {'threads':>8}")
    for name, (c, s) in depthwise.items():
        shape = out_shape[name]                             # (1, H, W, C) channels last, or NCHW
        h, w = (shape[1], shape[2]) if shape[-1] == c else (shape[2], shape[3])
        xp = rng.standard_normal(((h - 1) * s + 3, (w - 1) * s + 3, c)).astype(np.float32)
        wt, b = rng.standard_normal((3, 3, c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        y = np.empty((h, w, c), np.float32)
        want = b + sum(wt[u, v] * xp[u:u + (h - 1) * s + 1:s, v:v + (w - 1) * s + 1:s]
                       for u in range(3) for v in range(3))
        ms_nb = []
        for dw3x3 in kernels:
            dw3x3(xp, wt, b, s, y)                          # compile, and check it once
            assert np.allclose(np.clip(want, 0, 6), y, atol=1e-4)
            ts = []
            for _ in range(args.runs):
                t = time.perf_counter()
                dw3x3(xp, wt, b, s, y)
                ts.append(time.perf_counter() - t)
            ms_nb.append(float(np.median(ts)) * 1e3)
        ms_np = float(np.median(per_node[name][2:]))
        total_np, total_nb = total_np + ms_np, [a + b for a, b in zip(total_nb, ms_nb)]
        print(f"{f'{h} x {w} x {c}, {s}':<36} {ms_np:>8.3f} {ms_nb[0]:>9.3f} {ms_nb[1]:>8.3f}")
    print(f"{'all ' + str(len(depthwise)):<36} {total_np:>8.2f} {total_nb[0]:>9.2f} {total_nb[1]:>8.2f}")

    ort_ms = med["onnxruntime"]
    print(f"\nMobileNetV2 batch 1 (ms): rzrt {med['rzrt']:.2f}, onnxruntime {ort_ms:.2f}, "
          f"rzrt/ort {med['rzrt'] / ort_ms:.2f}")
    for label, nb in zip(("one thread", "threads"), total_nb):
        with_nb = med["rzrt"] - total_np + nb
        print(f"with numba's depthwise ({label}): rzrt {with_nb:.2f}, rzrt/ort {with_nb / ort_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
