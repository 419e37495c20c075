"""numpy's BLAS thread count, set from any thread.

threadpoolctl (3.8) lets only one thread set OpenBLAS's count: the first that sets it, until
that thread clears its claim or dies; a set from any other thread silently does nothing. rzrt
sets the count around a run (threads=, sharing a batch, a team of processes), from whichever
thread calls run(): a web server's worker thread, say, after the main thread ran a session. So
each set here releases the claim at once. The count itself stays process-wide: two runs at once
with different counts share it (rzrt/batch.py lets one run at a time share a batch).
"""
from __future__ import annotations

import contextlib

_controllers = None


def controllers() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process."""
    global _controllers
    if _controllers is None:
        from threadpoolctl import ThreadpoolController
        _controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controllers


def set_threads(n) -> list:
    """Set every BLAS library to n threads (an int, or a list, one per library, as returned);
    return the counts they had. A library that another thread's threadpoolctl limit holds keeps
    its count: callers that need the count check it (threads_now)."""
    libs = controllers()
    before = [c.num_threads for c in libs]
    for c, k in zip(libs, n if isinstance(n, list) else [n] * len(libs)):
        c.set_num_threads(k)
        release = getattr(type(c), "clear_controlling_thread", None)   # threadpoolctl >= 3.8
        if release is not None:
            release()                        # (only clears a claim this thread holds)
    return before


def threads_now() -> list:
    return [c.num_threads for c in controllers()]


@contextlib.contextmanager
def limited(n: int):
    """BLAS at n threads inside the block, as it was after."""
    before = set_threads(n)
    try:
        yield
    finally:
        set_threads(before)
