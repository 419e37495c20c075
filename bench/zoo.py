"""Every torchvision classifier: rzrt vs onnxruntime, same process, same input, interleaved.

    python bench/zoo.py                               # all 21 models, batch 1, 5 runs each
    python bench/zoo.py --models convnext_tiny,swin_t --runs 10

For each model: the median latency of rzrt (default level) and onnxruntime (spinning off, as in
compare.py) over --runs interleaved runs, with compare.py's pause after each run (--settle), their ratio, and the op type where rzrt spends most
(from one profiled run): the place to look first. Sorted by ratio, worst first. Exports with
random weights (seed 0) are cached with compare.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import SETTLE, model_path  # noqa: E402

ZOO = ["alexnet", "vgg11_bn", "googlenet", "inception_v3", "squeezenet1_1", "densenet121", "resnet18", "resnet50",
       "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
       "mnasnet0_5", "shufflenet_v2_x1_0", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny", "vit_b_16",
       "swin_t", "maxvit_t"]


def measure(name: str, runs: int, warmup: int, settle: float = SETTLE) -> dict:
    import onnxruntime as ort

    import rzrt
    from rzrt.profiler import by_op_type
    path = model_path(name, "folded")
    size = 299 if name.startswith("inception") else 224
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    sess = rzrt.InferenceSession(path)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    osess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    times = {"rzrt": [], "ort": []}
    for r in range(warmup + runs):
        for label, fn in (("rzrt", lambda: sess.run(None, {"input": x})), ("ort", lambda: osess.run(None, {"input": x}))):
            t = time.perf_counter()
            fn()
            if r >= warmup:
                times[label].append(time.perf_counter() - t)
            time.sleep(settle)
    prof = rzrt.InferenceSession(path, profile=True)
    prof.run(None, {"input": x})
    prof.clear_profile()
    prof.run(None, {"input": x})
    ops = by_op_type(prof.profile())
    total = sum(r["ms"] for r in ops) or 1.0
    op, ms = ops[0]["op"], ops[0]["ms"]
    rz, ox = (float(np.median(times[k])) * 1e3 for k in ("rzrt", "ort"))
    return {"model": name, "rzrt_ms": rz, "ort_ms": ox, "ratio": rz / ox, "top_op": op, "top_share": ms / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ZOO), help="comma-separated torchvision names")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--settle", type=float, default=SETTLE, metavar="SECONDS",
                    help="pause after every run, as in compare.py (0: none)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        if name not in ZOO:
            sys.exit(f"error: unknown model {name!r}; expected one of {', '.join(ZOO)}")
        rows.append(measure(name, args.runs, args.warmup, args.settle))
        print(f"  measured {name}", file=sys.stderr, flush=True)
    print(f"batch 1, median of {args.runs} interleaved runs, {args.settle} s pause after each; load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':20s} {'rzrt ms':>9s} {'ort ms':>9s} {'rzrt/ort':>9s}  rzrt's top op type")
    for r in sorted(rows, key=lambda r: -r["ratio"]):
        print(f"{r['model']:20s} {r['rzrt_ms']:9.1f} {r['ort_ms']:9.1f} {r['ratio']:9.2f}  "
              f"{r['top_op']} ({r['top_share']:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
