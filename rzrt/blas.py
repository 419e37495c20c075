"""numpy's BLAS thread count, set from any thread, by runs that may overlap.

threadpoolctl (3.8) lets only one thread set OpenBLAS's count: the first that sets it, until
that thread clears its claim or dies; a set from any other thread silently does nothing. rzrt
sets the count around a run (threads=, sharing a batch, a team of processes), from whichever
thread calls run(): a web server's worker thread, say, after the main thread ran a session. So
each set here releases the claim at once.

The count is one setting for the whole process, and runs in two threads may overlap. Each run
holds the count it wants (hold) and lets go after (release): the first holder saves the count
found, the newest holder's count is in force, and when the last lets go the saved count comes
back. (Each run saving and restoring what it found would leave the process at another run's
temporary count when the two end in the other order.)
"""
from __future__ import annotations

import contextlib
import threading

_controllers = None
_lock = threading.Lock()
_held: list = []            # [count] per run holding BLAS now, oldest first
_saved = None               # the counts before the first of them


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
        release_claim = getattr(type(c), "clear_controlling_thread", None)   # threadpoolctl >= 3.8
        if release_claim is not None:
            release_claim()                  # (only clears a claim this thread holds)
    return before


def threads_now() -> list:
    return [c.num_threads for c in controllers()]


def hold(n: int) -> list:
    """BLAS at n threads until release(the token returned)."""
    global _saved
    token = [n]
    with _lock:
        if not _held:
            _saved = threads_now()
        _held.append(token)
        set_threads(n)
    return token


def release(token: list) -> None:
    """Let go of hold()'s count: the newest other holder's count, or the saved one, is back."""
    with _lock:
        _held.remove(token)
        set_threads(_held[-1][0] if _held else _saved)


@contextlib.contextmanager
def limited(n: int):
    """BLAS at n threads inside the block."""
    token = hold(n)
    try:
        yield
    finally:
        release(token)
