"""rzrt vs onnxruntime vs torch eager, same process, same input, interleaved.

    python bench/compare.py                       # ResNet-50 (BN kept), MobileNetV2, ResNet-18 at batch 1 and 8
    python bench/compare.py --models resnet50 --batches 1 --runs 30

For each case: the median latency of each runtime over --runs runs (after warm-up), run one
after the other in every round so load on the machine hits all alike, and rzrt/onnxruntime.
After every run the round pauses --settle seconds (default 0.2), so that no runtime's idle
threads are still busy when the next one starts: numpy's OpenBLAS workers spin for about 0.1 s
after rzrt's last GEMM, on the cores onnxruntime needs next, and there is no switch to stop them.
Without the pause (--settle 0) onnxruntime ran ResNet-50 at batch 1 in 55.9 ms right after rzrt
against 41.8 ms after a 0.2 s pause (same process, alternating, 15 runs each), and rzrt/onnxruntime
came out 1.2 where it is 1.4-1.6. onnxruntime runs with spinning off and torch with
OMP_WAIT_POLICY=PASSIVE for the same reason; "ort solo" is onnxruntime alone with its defaults
(its threads spin between runs), its best case. "rzrt x2" is rzrt with processes=2 (rzrt/team.py:
every convolution shared by two processes), where the machine allows it.
Then peak memory (max RSS) of each runtime, each measured alone in a fresh process that
loads the model and runs it a few times. Models are exported with random weights (seed 0);
speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# torch's OpenMP threads busy-wait after each run, on the cores the next runtime in the round
# needs; passive waiting gives every runtime the courtesy onnxruntime gets (spinning off, below)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
CASES = {"resnet50": "keepbn", "mobilenet_v2": "folded", "resnet18": "folded"}


def model_path(name: str, flavour: str) -> Path:
    import export
    cache = Path(os.environ.get("RZRT_BENCH_CACHE", Path.home() / ".cache" / "rzrt-bench"))
    path = cache / f"{name}-{flavour}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export.export(name, path, weights="none", keep_bn=flavour == "keepbn")
    return path


def runners(name: str, path: Path, threads: int | None):
    """{runtime: fn(x) -> logits}, each set up once."""
    import onnxruntime as ort
    import torch

    import export
    import rzrt

    sess = rzrt.InferenceSession(path, threads=threads)
    team = rzrt.InferenceSession(path, threads=threads, processes=2) if rzrt.team.available(2) > 1 else None
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't steal the next runtime's cores
    if threads:
        opts.intra_op_num_threads = threads
    osess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model, _ = export.build_model(name, "none")
    if threads:
        torch.set_num_threads(threads)

    def run_torch(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    fns = {"rzrt": lambda x: sess.run(None, {"input": x})[0],
           "onnxruntime": lambda x: osess.run(None, {"input": x})[0],
           "torch": run_torch}
    if team is not None:                                # rzrt with its convolutions shared by 2 processes
        fns["rzrt x2"] = lambda x: team.run(None, {"input": x})[0]
    return fns


def ort_solo(path: Path, x: np.ndarray, runs: int, warmup: int, threads) -> float:
    """onnxruntime alone, with its default options (its threads spin between runs): its best case."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return measure({"ort": lambda x: s.run(None, {"input": x})}, x, runs, warmup, settle=0.0)["ort"]


SETTLE = 0.2    # seconds of pause after each run: longer than OpenBLAS's ~0.1 s of spinning after a GEMM


def measure(fns: dict, x: np.ndarray, runs: int, warmup: int, times=None, settle: float = SETTLE) -> dict:
    """Median ms per runtime; each run's times go to `times` (runtime -> list) when given.
    settle: seconds to pause after each run, so that no runtime's idle threads still spin
    when the next one starts (numpy's OpenBLAS workers spin ~0.1 s after rzrt's last GEMM)."""
    times = {k: [] for k in fns} if times is None else times
    for i in range(warmup + runs):
        for k, f in fns.items():
            t = time.perf_counter()
            f(x)
            if i >= warmup:
                times.setdefault(k, []).append((time.perf_counter() - t) * 1e3)
            if settle:
                time.sleep(settle)
    return {k: float(np.median(v)) for k, v in times.items()}


def paired_ratio(a: list, b: list) -> float:
    """The median over rounds of a[i] / b[i]: runs of the same round share the machine's load of
    that moment, so their ratio drifts less than the ratio of the two medians."""
    return float(np.median(np.array(a) / np.array(b)))


def peak_rss(runtime: str, path: Path, name: str, batch: int, threads) -> float:
    """Peak RSS (MB, VmHWM) of a fresh process that loads the model and runs it 5 times."""
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(ROOT / 'bench')!r}); sys.path.insert(0, {str(ROOT / 'models')!r})
from compare import runners
from pathlib import Path
x = np.random.default_rng(0).standard_normal(({batch}, 3, 224, 224)).astype(np.float32)
"""
    if runtime in ("rzrt", "rzrt x2"):
        procs = 2 if runtime == "rzrt x2" else 1
        code += (f"import rzrt\ns = rzrt.InferenceSession({str(path)!r}, threads={threads}, processes={procs})\n"
                 "f = lambda x: s.run(None, {'input': x})\n")
    elif runtime == "onnxruntime":
        code += f"import onnxruntime as ort\ns = ort.InferenceSession({str(path)!r})\nf = lambda x: s.run(None, {{'input': x}})\n"
    else:
        code += (f"import torch, export\nm, _ = export.build_model({name!r}, 'none')\n"
                 "f = lambda x: m(torch.from_numpy(x))\ntorch.set_grad_enabled(False)\n")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the (large) parent process
    code += "for _ in range(5): f(x)\n"
    if runtime == "rzrt x2":     # two processes sharing pages: their proportional set sizes add up to the whole
        code += ("pids = [os.getpid()] + [p for e in s._runs.values() for p, _ in getattr(e, 'workers', [])]\n"
                 "pss = lambda p: [int(l.split()[1]) for l in open(f'/proc/{p}/smaps_rollup') if l.startswith('Pss:')][0]\n"
                 "print(sum(pss(p) for p in pids) / 1024)\n")
        code = "import os\n" + code
    else:
        code += "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(CASES), help="comma-separated: resnet50, mobilenet_v2, resnet18")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--settle", type=float, default=SETTLE, metavar="SECONDS",
                   help="pause after every run, so no runtime's spinning threads slow the next one (0: none)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    import onnxruntime
    import torch

    import rzrt
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, "
          f"rzrt {rzrt.__version__}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")
    print(f"median of {args.runs} interleaved runs after {args.warmup} warm-up"
          f"{f', {args.settle} s pause after each run' if args.settle else ''}; threads: {args.threads or 'all'}; "
          f"load average {os.getloadavg()[0]:.2f} (a busy machine hurts the runtimes unevenly)")
    print("paired: the median over rounds of rzrt's time / onnxruntime's in the same round")
    print("rzrt x2: rzrt with processes=2 (rzrt/team.py), its memory the Pss of both processes after the runs")
    print(f"{'model':<22}{'batch':>6}{'rzrt ms':>10}{'x2 ms':>8}{'ort ms':>9}{'torch ms':>10}{'rzrt/ort':>9}{'paired':>8}"
          f"{'x2/ort':>8}{'ort solo':>10}" + ("" if args.no_rss else f"{'rzrt MB':>9}{'x2 MB':>7}{'ort MB':>8}{'torch MB':>9}"))
    results = []
    for name in args.models.split(","):
        flavour = CASES[name]
        path = model_path(name, flavour)
        fns = runners(name, path, args.threads)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            times: dict = {}
            ms = measure(fns, x, args.runs, args.warmup, times, args.settle)
            solo = ort_solo(path, x, args.runs, args.warmup, args.threads)
            x2 = ms.get("rzrt x2", float("nan"))
            row = {"model": name + (" (BN kept)" if flavour == "keepbn" else ""), "batch": batch, **ms,
                   "ratio": ms["rzrt"] / ms["onnxruntime"], "paired": paired_ratio(times["rzrt"], times["onnxruntime"]),
                   "x2_ratio": x2 / ms["onnxruntime"], "ort_solo": solo}
            line = (f"{row['model']:<22}{batch:>6}{ms['rzrt']:>10.1f}{x2:>8.1f}{ms['onnxruntime']:>9.1f}"
                    f"{ms['torch']:>10.1f}{row['ratio']:>9.2f}{row['paired']:>8.2f}{row['x2_ratio']:>8.2f}{solo:>10.1f}")
            if not args.no_rss:
                kinds = ("rzrt", "rzrt x2", "onnxruntime", "torch") if "rzrt x2" in ms else ("rzrt", "onnxruntime", "torch")
                rss = {k: peak_rss(k, path, name, batch, args.threads) for k in kinds}
                row["rss_mb"] = rss
                line += (f"{rss['rzrt']:>9.0f}{rss.get('rzrt x2', float('nan')):>7.0f}{rss['onnxruntime']:>8.0f}"
                         f"{rss['torch']:>9.0f}")
            print(line, flush=True)
            results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
