"""`rzrt bench MODEL`: latency and throughput per batch size, against onnxruntime, step by step."""
from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np

from rzrt.cli.main import cli
from rzrt.cli.options import example_feeds, mb, open_session, progress, session_options
from rzrt.errors import InputError

# The optimisation ladder, like the seed project's six versions: each step adds one thing.
LADDER = [
    ("graph as exported, im2col only, 1 thread", dict(level=0, memory_plan=False, threads=1, winograd=False)),
    ("+ graph passes (BN folding, fusions)", dict(level=2, memory_plan=False, threads=1, winograd=False)),
    ("+ static memory plan (no allocation per run)", dict(level=2, memory_plan=True, threads=1, winograd=False)),
    ("+ Winograd for 3x3 convolutions", dict(level=2, memory_plan=True, threads=1, winograd=True)),
    ("+ BLAS on all cores", dict(level=2, memory_plan=True, threads=None, winograd=True, images=False)),
    ("+ images shared by threads (batch > 1)", dict(level=2, memory_plan=True, threads=None, winograd=True)),
    ("+ convolutions shared by 2 processes (opt-in)", dict(level=2, memory_plan=True, threads=None, winograd=True,
                                                           processes=2)),
    ("1 process, non-BLAS work on threads (off: slower)", dict(level=2, memory_plan=True, threads=None,
                                                               winograd=True, split=True, images=False)),
]


def _batches(text: str) -> list:
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise InputError(f"--batch expects positive integers separated by commas, e.g. 1,8; got {text!r}")
    return out


def _time(fn, feeds) -> float:
    t = time.perf_counter()
    fn(feeds)
    return (time.perf_counter() - t) * 1e3


def _stats(ms: list, batch: int) -> dict:
    a = np.array(ms)
    return {"mean": a.mean(), "p50": np.percentile(a, 50), "p90": np.percentile(a, 90),
            "p99": np.percentile(a, 99), "ips": batch * 1e3 / a.mean()}


@cli.command()
@click.argument("model")
@click.option("--batch", "batch_text", default="1", show_default=True, help="batch sizes, e.g. 1,8")
@click.option("--runs", default=20, show_default=True, type=click.IntRange(min=1), help="measured runs per batch size")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="runs before measuring")
@click.option("--vs", "peer", metavar="BACKEND",
              help="also run another ONNX backend (an onnx.backend module, e.g. onnxruntime), interleaved, "
                   "and print the ratio")
@click.option("--settle", default=0.2, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
              help="with --vs: pause after every run, so neither runtime's idle threads (they spin for a while "
                   "after a run) slow the other's next run")
@click.option("--ladder", is_flag=True, help="run the optimisation steps one by one and print each step's latency")
@session_options
def bench(model, batch_text, runs, warmup, peer, settle, ladder, level, threads, processes):
    """Latency (mean, p50/p90/p99) and throughput of MODEL per batch size.

    \b
    rzrt bench resnet50.onnx --batch 1,8
    rzrt bench resnet50.onnx --vs onnxruntime
    rzrt bench resnet50.onnx --ladder
    """
    batches = _batches(batch_text)
    if ladder:
        return _ladder(model, batches[0], runs, warmup)
    sess = open_session(model, level=level, threads=threads, processes=processes)
    ort = _peer_backend(peer, model) if peer else None
    click.echo(f"{Path(model).name}: level {level}, threads {threads or 'all'}, processes {processes}, "
               f"{runs} runs after {warmup} warm-up")
    for line in blas_lines():
        click.echo(line)
    head = f"{'batch':>5}{'mean ms':>10}{'p50':>9}{'p90':>9}{'p99':>9}{'images/s':>10}{'arena':>10}"
    if ort:
        head += f"{peer[:12] + ' ms':>16}{'rzrt/' + peer[:12]:>18}"
    click.echo(head)
    for b in batches:
        feeds = example_feeds(sess, batch=b)

        def ours(f):
            return sess.run(None, f)

        def theirs(f):
            return ort.run(list(f.values()))
        mine, peer_ms = [], []
        with progress(range(warmup + runs), f"batch {b}") as bar:
            for i in bar:
                t = _time(ours, feeds)
                if i >= warmup:
                    mine.append(t)
                if ort:
                    time.sleep(settle)
                    t = _time(theirs, feeds)
                    if i >= warmup:
                        peer_ms.append(t)
                    time.sleep(settle)
        s = _stats(mine, b)
        line = (f"{b:>5}{s['mean']:>10.2f}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['ips']:>10.1f}"
                f"{mb(sess.memory_plan().arena_bytes):>10}")
        if ort:
            o = _stats(peer_ms, b)
            line += f"{o['p50']:>16.2f}{s['p50'] / o['p50']:>18.2f}"
        click.echo(line)


def _peer_backend(name: str, model: str):
    """A peer through onnx's Backend API (onnx.backend.base): `name.backend` or `name` itself provides
    prepare(model) -> rep with rep.run(inputs). rzrt depends on no peer; the user names one installed."""
    import importlib

    import onnx
    module = None
    for candidate in (f"{name}.backend", name):
        try:
            module = importlib.import_module(candidate)
            break
        except ImportError:
            continue
    if module is None or not hasattr(module, "prepare"):
        raise InputError(f"--vs {name}: expected an installed ONNX backend module ({name}.backend or {name} with "
                         f"prepare()), e.g. --vs onnxruntime after pip install onnxruntime")
    return module.prepare(onnx.load(str(model)), "CPU")


def blas_lines() -> list:
    """What does the GEMMs: numpy's BLAS, its kernels and threads; and a hint when an
    OPENBLAS_CORETYPE setting holds it below what the CPU can do (it decides most of the speed)."""
    from threadpoolctl import threadpool_info
    lines = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        arch = info.get("architecture")
        lines.append(f"BLAS: {info.get('internal_api')} {info.get('version') or ''}"
                     f"{f', {arch} kernels' if arch else ''}, {info.get('num_threads')} threads")
        forced = os.environ.get("OPENBLAS_CORETYPE")
        if forced and arch and arch.lower() == forced.lower() and "avx512" not in arch.lower() \
                and _cpu_has("avx512f") and not arch.lower().startswith(("skylakex", "cooperlake", "sapphire")):
            lines.append(f"  note: OPENBLAS_CORETYPE={forced} holds numpy's BLAS below this CPU's AVX-512")
    return lines


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def _ladder(model, batch, runs, warmup):
    click.echo(f"{Path(model).name}: optimisation ladder at batch {batch}, median of {runs} runs after {warmup} warm-up")
    for line in blas_lines():
        click.echo(line)
    click.echo(f"{'step':<50}{'p50 ms':>10}{'step gain':>11}{'total gain':>12}")
    from rzrt import batch as images
    from rzrt.ops import conv, parallel
    first = prev = None
    for label, kw in LADDER:
        kw = dict(kw)
        conv.WINOGRAD = kw.pop("winograd")
        parallel.SPLIT = kw.pop("split", False)
        images.SPLIT_IMAGES = kw.pop("images", True)
        sess = open_session(model, **kw)
        feeds = example_feeds(sess, batch=batch)
        ms = []
        with progress(range(warmup + runs), label[:20]) as bar:
            for i in bar:
                t = _time(lambda f: sess.run(None, f), feeds)
                if i >= warmup:
                    ms.append(t)
        p50 = float(np.percentile(ms, 50))
        first = first or p50
        gain = f"{prev / p50:.2f}x" if prev else ""
        click.echo(f"{label:<50}{p50:>10.2f}{gain:>11}{first / p50:>11.2f}x")
        prev = p50
    conv.WINOGRAD, parallel.SPLIT, images.SPLIT_IMAGES = True, False, True
