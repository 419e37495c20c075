"""A small thread pool for the non-BLAS work numpy does on one core (copies, elementwise passes).

numpy releases the GIL inside its copy and ufunc loops, so two threads copying two halves of
an array really run at once. Kernels call `split(fn, n)`: fn(lo, hi) over [0, n) in chunks,
one per thread. The session sets the thread count for its runs (InferenceSession(threads=)).

Off by default (SPLIT = False), because it does not pay on the 2-core machines we measure on:
after each GEMM, OpenBLAS's worker threads keep spinning on the cores for a while, and a second
Python thread doing the im2col copy or the epilogue competes with them. Interleaved A/B in one
process (same input): ResNet-50 62.9 vs 65.1 ms at batch 1, 387 vs 408 ms at batch 8,
MobileNetV2 19.7 vs 21.7 ms with SPLIT off vs on. `rzrt bench --ladder` shows it as its own step.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_threads = os.cpu_count() or 1
_pool: ThreadPoolExecutor | None = None
MIN_WORK = 1 << 16          # elements below which a split costs more than it saves
SPLIT = False               # see above: measured slower on 2 cores, so off


def share(n: int, part) -> tuple:
    """[lo, hi): the share of range(n) that worker `rank` of `ranks` computes, part = (rank, ranks)
    (rzrt/team.py runs a kernel in several processes, each on its share of the output)."""
    if part is None:
        return 0, n
    rank, ranks = part
    return n * rank // ranks, n * (rank + 1) // ranks


def set_threads(n: int | None) -> None:
    global _threads
    _threads = max(1, n or os.cpu_count() or 1)


def reset_after_fork() -> None:
    """In a forked process: the pool's threads stayed with the parent, so start without one."""
    global _pool
    _pool = None


def threads() -> int:
    return _threads


def split(fn, n: int, work: int | None = None) -> None:
    """fn(lo, hi) for contiguous chunks covering range(n), in parallel when it pays."""
    global _pool
    k = min(_threads, n) if SPLIT else 1
    if k <= 1 or (work is not None and work < MIN_WORK):
        fn(0, n)
        return
    if _pool is None or _pool._max_workers < k:
        _pool = ThreadPoolExecutor(max_workers=max(k, os.cpu_count() or 1), thread_name_prefix="rzrt")
    bounds = [n * i // k for i in range(k + 1)]
    futures = [_pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, k)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()
