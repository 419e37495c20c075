"""rzrt's time per convolution against its BLAS floor: what numpy's BLAS alone takes for that
convolution's GEMM, weights cold (streamed from memory, as in a real run), input warm.

    python bench/floor.py                               # ResNet-50 (BN kept), batch 1
    python bench/floor.py --models resnet50,mobilenet_v2 --batch 8 --vs

rzrt's time over onnxruntime's splits in two parts:
  floor / onnxruntime     how the BLAS GEMMs alone compare with onnxruntime's whole run
                          (its own convolution kernels, epilogues fused in)
  (rzrt - floor)          what rzrt adds around the GEMMs: im2col copies, Winograd transforms,
                          bias / residual / activation passes, pooling, Python
The floor is the GEMM at its most favourable: one call per image and group over every output
pixel (rzrt may run bands), the same GEMM shape rzrt picks (Winograd's (m+2)^2 products over all
tiles at once, or im2col's W @ cols). A depthwise convolution runs no GEMM: its floor is 0.
Models come from the bench cache (bench/compare.py exports them there).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import CASES, SETTLE, measure, model_path  # noqa: E402

FLUSH = np.ones((64 << 20) // 4, np.float32)     # 64 MB: more than this machine's caches


def _median_us(fn, warm, runs: int = 15) -> float:
    """Median time of fn() over runs, each after the caches were flushed and warm() re-read."""
    fn()
    ts = []
    for _ in range(runs):
        FLUSH.__iadd__(1.0)
        warm()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


def conv_gemms(node, x_shape, w_shape, dtype) -> tuple:
    """(kind, [(a, b) operand shapes, count]) of the GEMMs rzrt runs for this convolution."""
    from rzrt.ops import winograd
    a = {at.name: at for at in node.attribute}
    ints = lambda k, d=None: list(a[k].ints) if k in a else d   # noqa: E731
    group = a["group"].i if "group" in a else 1
    auto_pad = a["auto_pad"].s.decode() if "auto_pad" in a else "NOTSET"
    k, s = tuple(w_shape[2:]), tuple(ints("strides", [1] * (len(w_shape) - 2)))
    n, c = x_shape[:2]
    m = w_shape[0]
    if group > 1 and group == c and w_shape[1] == 1:
        return "depthwise", []
    wm = winograd.tile_size(x_shape, w_shape, group, ints("kernel_shape"), ints("strides"), ints("dilations"),
                            ints("pads"), auto_pad, dtype)
    if wm:
        tiles = n * -(-x_shape[2] // wm) * -(-x_shape[3] // wm)
        p = (wm + 2) ** 2
        return f"winograd F{wm}", [((p, tiles, c), (p, c, m), 1)]
    from rzrt.ops.conv import conv_geometry
    *_, osp = conv_geometry(x_shape, w_shape, ints("kernel_shape"), ints("strides"), ints("dilations"),
                            ints("pads"), auto_pad)
    pixels = int(np.prod(osp))
    kk = w_shape[1] * int(np.prod(k))
    kind = ("1x1" if all(v == 1 for v in k) else "x".join(map(str, k))) + ("" if all(v == 1 for v in s) else " s2")
    return kind, [((m // group, kk), (kk, pixels), n * group)]


def floor_us(gemms, dtype, cache: dict) -> float:
    total = 0.0
    for ashape, bshape, count in gemms:
        key = (ashape, bshape)
        if key not in cache:
            rng = np.random.default_rng(0)
            A, B = rng.random(ashape, dtype=dtype), rng.random(bshape, dtype=dtype)
            C = np.matmul(A, B)
            cache[key] = _median_us(lambda: np.matmul(A, B, out=C), lambda: B.sum())
        total += cache[key] * count
    return total


def analyse(path: Path, batch: int, runs: int, vs: bool, top: int) -> None:
    import onnx
    from onnx import shape_inference

    import rzrt

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*g.value_info, *g.input, *g.output)}
    inits = {i.name: list(i.dims) for i in g.initializer}
    convs = {nd.name: nd for nd in g.node if nd.op_type == "Conv"}
    sess = rzrt.InferenceSession(str(path), profile=True)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch,) + tuple(shapes[name][1:]), dtype=np.float32)
    for i in range(3 + runs):
        if i == 3:
            sess.clear_profile()
        sess.run(None, {name: x})
    per_node = {}
    for r in sess.profile()["nodes"]:                    # the median per node: robust to a noisy run
        per_node.setdefault(r["node"], (r["op"], []))[1].append(r["dur_us"] / 1e3)
    rows = [{"node": k, "op": op, "ms": float(np.median(v))} for k, (op, v) in per_node.items()]
    cache, out, total_floor, total = {}, [], 0.0, 0.0
    for r in rows:
        nd = convs.get(r["node"])
        kind, fl = r["op"], 0.0
        if nd is not None:
            xs = [batch] + shapes[nd.input[0]][1:]
            kind, gemms = conv_gemms(nd, xs, inits[nd.input[1]], np.float32)
            fl = floor_us(gemms, np.float32, cache) / 1e3
        out.append((r["ms"], fl, kind, r["node"]))
        total += r["ms"]
        total_floor += fl
    by_kind = {}
    for ms, fl, kind, _ in out:
        k = by_kind.setdefault(kind, [0, 0.0, 0.0])
        k[0] += 1
        k[1] += ms
        k[2] += fl
    print(f"\n{path.name}, batch {batch}: rzrt {total:.1f} ms in its kernels (profiled: per node, the median of "
          f"{runs} runs), "
          f"BLAS floor {total_floor:.1f} ms, rzrt - floor {total - total_floor:.1f} ms")
    print(f"{'kind':18s} {'nodes':>5s} {'rzrt ms':>8s} {'floor ms':>8s} {'rzrt-floor':>10s}")
    for kind, (cnt, ms, fl) in sorted(by_kind.items(), key=lambda kv: -(kv[1][1] - kv[1][2])):
        print(f"{kind:18s} {cnt:5d} {ms:8.2f} {fl:8.2f} {ms - fl:10.2f}")
    if top:
        print(f"largest rzrt - floor, per node:")
        for ms, fl, kind, node in sorted(out, key=lambda r: -(r[0] - r[1]))[:top]:
            print(f"  {ms - fl:6.2f} ms  ({ms:.2f} vs {fl:.2f})  {kind:14s} {node}")
    if vs:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        o = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        plain = rzrt.InferenceSession(str(path))
        ms = measure({"rzrt": lambda v: plain.run(None, {name: v}), "onnxruntime": lambda v: o.run(None, {name: v})},
                     x, runs, 3, settle=SETTLE)
        print(f"interleaved, {SETTLE} s pause after each run: rzrt {ms['rzrt']:.1f} ms, onnxruntime "
              f"{ms['onnxruntime']:.1f} ms (x{ms['rzrt'] / ms['onnxruntime']:.2f}); BLAS floor / onnxruntime "
              f"{total_floor / ms['onnxruntime']:.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50", help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--top", type=int, default=8, help="nodes furthest above their floor to list")
    p.add_argument("--vs", action="store_true", help="also time rzrt and onnxruntime, interleaved")
    args = p.parse_args(argv)
    print(f"cores {os.cpu_count()}, numpy {np.__version__}; floor: each GEMM's median over 15 calls, "
          "caches flushed (64 MB) and the input re-read before each")
    for name in args.models.split(","):
        analyse(model_path(name, CASES.get(name, "folded")), args.batch, args.runs, args.vs, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
