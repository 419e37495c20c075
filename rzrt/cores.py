"""Where the threads and processes that share a run may run (Linux CPU affinity).

Those that share a run (rzrt/batch.py's threads, rzrt/team.py's processes) pin the caller to the
core it is on and the others to the caller's other cores, where the scheduler places them. A
woken thread lands on its waker's core by default (wake-affine), and the two then share one core
until the scheduler moves one; fixed cores (the first ones) would put every process's threads on
cores 0 and 1 of a larger machine.
"""
from __future__ import annotations

import ctypes
import os
import sys


def _sched_getcpu():
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None


_GETCPU = _sched_getcpu()


def allowed() -> set:
    """The cores this thread may run on (empty where that is unknown)."""
    try:
        return os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return set()


def current(among: set) -> int:
    """The core this thread runs on (glibc's sched_getcpu) if it is among these, else the first."""
    here = _GETCPU() if _GETCPU is not None else -1
    return here if here in among else min(among)


def pin(cores):
    """Run the calling thread on these cores only; return its cores before (None: not possible)."""
    if not cores:
        return None
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cores)
        return before
    except (OSError, AttributeError):
        return None


def unpin(before) -> None:
    """Back to what pin() returned."""
    if before is None:
        return
    try:
        os.sched_setaffinity(0, before)
    except OSError:
        pass
