"""rzrt at a git revision vs rzrt in this working tree: same process, same input, interleaved.

    python bench/ab.py HEAD~3                              # ResNet-50 (BN kept) at batch 1
    python bench/ab.py 819cd8a --models resnet50,mobilenet_v2 --batches 1,8 --runs 30

On a shared, noisy machine two timings taken minutes apart can differ by 50%; runs taken in
turn in one process see the same load. The revision is checked out into a temporary git
worktree and imported as a second copy of the package (its own kernel registry), so both
sessions live side by side. Prints the medians, their ratio, and the largest difference
between the two outputs (a speed-up must not change the numbers beyond float rounding).
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from compare import CASES, model_path  # noqa: E402


def package_dir(tree: Path, into: Path) -> Path:
    """A directory holding tree's rzrt package laid out as installed: rzrt/, rzrt/ops -> ops/, ..."""
    pkg = into / "rzrt"
    pkg.mkdir(parents=True)
    for f in (tree / "rzrt").iterdir():
        (pkg / f.name).symlink_to(f)
    for sub in ("ops", "passes", "cli"):
        (pkg / sub).symlink_to(tree / sub)
    return into


def load(path_entry: Path):
    """Import the rzrt package found at path_entry, as a fresh copy."""
    for name in [m for m in sys.modules if m == "rzrt" or m.startswith("rzrt.")]:
        del sys.modules[name]
    sys.path.insert(0, str(path_entry))
    try:
        return importlib.import_module("rzrt")
    finally:
        sys.path.remove(str(path_entry))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="git revision to compare against, e.g. HEAD~1 or a commit")
    ap.add_argument("--models", default="resnet50",
                    help=f"comma-separated, from {', '.join(CASES)}, or paths to .onnx files")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    models = args.models.split(",")
    for m in models:
        if m not in CASES and not (m.endswith(".onnx") and Path(m).is_file()):
            sys.exit(f"error: unknown model {m!r}; expected one of {', '.join(CASES)} or an existing .onnx file")
    path = {m: model_path(m, CASES[m]) if m in CASES else m for m in models}
    with tempfile.TemporaryDirectory(prefix="rzrt-ab-") as tmp:
        tmp = Path(tmp)
        done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tmp / "tree"),
                               args.rev], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"error: cannot check out {args.rev!r}: {done.stderr.strip()}")
        try:
            old = load(package_dir(tmp / "tree", tmp / "old"))
            sessions_old = {m: old.InferenceSession(path[m]) for m in models}
            new = load(package_dir(ROOT, tmp / "new"))
            sessions_new = {m: new.InferenceSession(path[m]) for m in models}
            print(f"{args.rev} vs working tree, median of {args.runs} interleaved runs after {args.warmup} warm-up")
            print(f"{'model':22s} {'batch':>5s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s} {'max |diff|':>11s}")
            for m in models:
                name, shape = sessions_new[m].get_inputs()[0].name, sessions_new[m].get_inputs()[0].shape
                hw = [d if isinstance(d, int) else 224 for d in shape[2:]]
                for batch in (int(b) for b in args.batches.split(",")):
                    x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
                    times, outs = {"old": [], "new": []}, {}
                    for r in range(args.warmup + args.runs):
                        for label, sess in (("old", sessions_old[m]), ("new", sessions_new[m])):
                            t = time.perf_counter()
                            outs[label] = sess.run(None, {name: x})[0]
                            if r >= args.warmup:
                                times[label].append(time.perf_counter() - t)
                    o, n = (float(np.median(times[k])) * 1e3 for k in ("old", "new"))
                    diff = float(np.abs(outs["old"] - outs["new"]).max())
                    print(f"{Path(m).stem:22s} {batch:5d} {o:9.1f} {n:9.1f} {n / o:8.2f} {diff:11.1e}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")],
                           capture_output=True)


if __name__ == "__main__":
    main()
