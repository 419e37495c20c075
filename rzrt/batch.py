"""A batch shared among threads: each convolution's images split between this thread and workers.

    thread 0 (the caller)              thread 1 (a worker, its own core)
    step 0  Conv, images 0-3     |     step 0  Conv, images 4-7
            ------------- both done -------------
    step 1  MaxPool, images 0-3  |     step 1  MaxPool, images 4-7
    ...
    step k  Gemm (alone, BLAS on every core; the worker sleeps)

numpy runs its own loops (im2col copies, Winograd transforms, epilogues, pooling) on one core;
at batch 8 they are a third of ResNet-50's time. numpy releases the GIL inside those loops and
inside BLAS, so two threads can run two halves of a step at once, as long as each numpy call is
long: the GIL changes hands (~20 us here) only between calls. Split by images, each thread's
calls are a whole image's copy, GEMM or epilogue. Split within one image (rows, as rzrt/team.py
does with processes) the calls are short and the hand-overs ate the gain (1.5x slower at batch
1), so a step whose input has one image runs as before, BLAS using every core.

Meeting after every step is what costs. A thread that blocks (a semaphore, an event) lets its
virtual core halt, and waking a halted core takes 0.3 ms to several ms on these machines: RegNet's
tiny squeeze-excitation convolutions took 4 ms each that way, and the run 1.7x longer. So while
a run is among shared steps the worker does not block: it waits in pthread_spin_lock, called
through ctypes, which releases the GIL; a hand-over there takes ~3 us. Before a step that wants
BLAS on every core (a large MatMul or Gemm, an op rzrt does not know) and at the end of the run
the worker is parked (it sleeps on a semaphore, off its core, unpinned), and BLAS gets every
core back. While they work, the caller is pinned to the core it is on and the workers to its
other cores (rzrt/cores.py): without pinning, a woken worker shared its waker's core until the
scheduler moved one (MobileNetV2 0.94x before pinning, 0.81x after).

Each kernel that takes `_part=(rank, ranks)` (Conv, FusedConv, MaxPool) computes its share of
the images into the one output buffer; a worker uses its own scratch buffer, allocated once.
The caller waits for every worker's part before the step is done, also when one fails, so no
worker writes after the run has returned; a Ctrl-C waits for the end of the step. One run in the
process shares a batch at a time (BLAS's thread count and the cores are the process's). Linux
with glibc (spin locks, CPU affinity) only; elsewhere sessions run each step whole.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import signal
import sys
import threading
import weakref

import numpy as np

from rzrt import blas, cores
from rzrt.executor import Executor

SPLIT_IMAGES = True     # rzrt bench --ladder turns it off for its earlier steps
# Unshared steps the worker keeps spinning through (numpy's own loops, no BLAS: BLAS stays at one
# thread for them); before any other step it is parked and BLAS gets every core back. Between
# shared steps there are only these (shared_steps); the others come after (a classifier's Gemm).
LIGHT_OPS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Add", "Sub", "Mul",
             "Div", "Max", "Min", "Neg", "Exp", "Sqrt", "Pow", "Erf", "Gelu", "Identity", "GlobalAveragePool",
             "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "Concat", "Split",
             "Slice", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast",
             "Softmax", "Dropout", "Pad", "Resize", "Expand", "Tile", "BatchNormalization",
             "LayerNormalization", "InstanceNormalization", "Silu", "Mish", "Softplus"}
GEMM_OPS = {"MatMul", "Gemm", "Conv", "FusedConv", "FusedGemm", "FusedMatMul", "ConvTranspose"}   # (counted)


# Steps are shared only when each thread's parts are long enough, on average, to pay for the GIL
# hand-overs between their numpy calls; a part's time is estimated from its size (part_ms).
MIN_PART_MS = 0.45
GEMM_MACS_PER_MS = 50e6      # a dense convolution's multiply-adds on one core (~100 GFLOP/s)
DEPTHWISE_MACS_PER_MS = 5e6  # a depthwise one's (numpy's einsum loops, not BLAS)
VALUES_PER_MS = 1e6          # output values an epilogue or a pool writes


def _light(step) -> bool:
    return step.node.domain in ("", "ai.onnx") and step.node.op_type in LIGHT_OPS


PARK_MS = 1.0          # an unshared GEMM this long on one core gets BLAS on every core


def _heavy(step, args) -> bool:
    """Does an unshared step after the shared ones want BLAS on every core? Any op that is not
    light and not a GEMM rzrt knows (a custom kernel may call BLAS), or a MatMul, Gemm or
    convolution of at least PARK_MS on one core. A classifier's last Gemm is not: run on BLAS's
    two threads, it left OpenBLAS's worker spinning for ~0.1 s on the core the next run's shared
    steps need, and back-to-back runs of ResNet-50 at batch 8 lost the whole gain (416-438 ms
    against 426-429 unshared)."""
    if _light(step):
        return False
    op = step.node.op_type
    a, b = (list(args) + [None, None])[:2]
    if op not in GEMM_OPS or step.node.domain not in ("", "ai.onnx", "rzrt") or not isinstance(a, np.ndarray) \
            or not isinstance(b, np.ndarray) or a.ndim < 2 or b.ndim < 2:
        return True
    if "Conv" in op:
        macs = int(np.prod(step.out_spec[0] if step.out_spec else a.shape)) * int(np.prod(b.shape[1:]))
    else:                                           # MatMul / Gemm: (rows of A) x K x (columns of B)
        k = b.shape[-1] if step.kwargs.get("transB") else b.shape[-2]
        cols = b.shape[-2] if step.kwargs.get("transB") else b.shape[-1]
        macs = a.size // max(k, 1) * k * cols
    return macs / GEMM_MACS_PER_MS >= PARK_MS


def shared_steps(steps, constants, ranks: int) -> set:
    """ids of the steps to share, all or none: every step that can split by images when their
    parts average at least MIN_PART_MS, they are at least half of the plan's GEMM steps, and no
    other BLAS step sits among them. Sharing only some
    was worse than either: the unshared convolutions between them ran on one BLAS thread
    (MobileNetV2, batch 2: 1.54x), or each parked the worker and the next shared step paid for
    waking it (ResNet-18: 1.4x). A MatMul among them (ConvNeXt's linear layers) did the same."""
    can = [("_part" in s.kernel.context and s.kernel.takes_out and len(s.outputs) == 1
            and s.out_spec is not None and len(s.out_spec[0]) > 0 and s.out_spec[0][0] > 1) for s in steps]
    idx = [i for i, ok in enumerate(can) if ok]
    if not idx or ranks < 2:
        return set()
    if np.mean([part_ms(steps[i], constants, ranks) for i in idx]) < MIN_PART_MS:
        return set()
    if 2 * len(idx) < sum(s.node.op_type in GEMM_OPS for s in steps):    # a transformer's patch embedding:
        return set()                                 # too little to share for the wake-up and the pinning
    for i in range(idx[0], idx[-1]):
        s = steps[i]
        if not can[i] and not _light(s):
            return set()
    return {id(steps[i]) for i in idx}


def part_ms(step, constants, ranks: int) -> float:
    """Estimated ms of one thread's part of a step: its images' multiply-adds and output values."""
    shape = step.out_spec[0]
    if not shape:
        return 0.0
    n, per_image = shape[0], int(np.prod(shape[1:]))
    images = -(-n // ranks)
    w = constants.get(step.inputs[1]) if len(step.inputs) > 1 else None
    ms = per_image / VALUES_PER_MS
    if getattr(w, "ndim", 0) >= 3:
        macs = per_image * int(np.prod(w.shape[1:]))
        depthwise = step.kwargs.get("group", 1) > 1 and w.shape[1] == 1
        ms += macs / (DEPTHWISE_MACS_PER_MS if depthwise else GEMM_MACS_PER_MS)
    return images * ms


def _libc():
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_spin_lock, libc.pthread_spin_unlock, libc.pthread_spin_init     # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


LIBC = _libc()


def ranks_for(threads: int | None) -> int:
    """Threads a batch may be shared among: `threads` (None: every core this process may use);
    1 where spin locks or CPU affinity are missing."""
    if LIBC is None or not hasattr(os, "sched_getaffinity"):
        return 1
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, threads or cores))


class _Bell:
    """A binary semaphore whose waiter spins in C, GIL released: ring() lets one wait() through."""

    def __init__(self):
        self._lock = ctypes.c_int(0)
        self._ptr = ctypes.pointer(self._lock)
        LIBC.pthread_spin_init(self._ptr, 0)
        LIBC.pthread_spin_lock(self._ptr)          # armed: the first wait() spins until ring()

    def ring(self) -> None:
        LIBC.pthread_spin_unlock(self._ptr)

    def wait(self) -> None:
        LIBC.pthread_spin_lock(self._ptr)          # returns with the lock taken again: re-armed


class _Worker:
    """A thread that runs parts of steps. Only the caller writes `job` and the flags; the worker
    writes `error` and rings `done` once per job it was given (a park or stop is a job too)."""
    PARK, STOP = "park", "stop"

    def __init__(self):
        self.job, self.error = None, None
        self.cores = None                           # where to run while awake (the caller sets it)
        self.go, self.done = _Bell(), _Bell()
        self.wake = threading.Semaphore(0)
        self.spinning = False                       # woken from the semaphore, not parked since
        self.busy = False                           # given a job whose `done` is not yet taken
        threading.Thread(target=self._serve, daemon=True, name="rzrt-batch").start()

    def _serve(self) -> None:
        while True:
            self.wake.acquire()                     # parked: asleep, off the core, free to run anywhere
            mask = cores.pin(self.cores)
            while True:
                self.go.wait()                      # among shared steps: spinning, ready in ~3 us
                job = self.job
                if job is self.PARK or job is self.STOP:
                    if mask is not None:
                        cores.unpin(mask)
                    self.done.ring()
                    if job is self.STOP:
                        return
                    break
                try:
                    context, fn, args, kwargs = job
                    context.run(fn, *args, **kwargs)     # the caller's context: np.errstate, say
                except BaseException as e:          # noqa: BLE001 - the caller raises it, with the node's name
                    self.error = e
                self.done.ring()

    def post(self, job) -> None:
        self.finish()
        if not self.spinning:
            self.wake.release()
            self.spinning = True
        self.job = job
        self.busy = True
        self.go.ring()

    def finish(self) -> None:
        """Wait until the job given is done (nothing to wait for if none is)."""
        if self.busy:
            self.done.wait()
            self.busy = False

    def park(self) -> None:
        self.finish()
        if self.spinning:
            self.post(self.PARK)
            self.finish()
            self.spinning = False

    def stop(self) -> None:
        """End the thread; no waiting (this may run from the garbage collector)."""
        if not self.spinning:
            self.wake.release()
        self.job = self.STOP
        self.go.ring()


_ACTIVE = threading.Lock()      # held by the run sharing a batch now: BLAS's thread count and the
                                # cores are the process's, so two sessions never share at once


def _after_fork_in_child() -> None:
    global _ACTIVE
    _ACTIVE = threading.Lock()      # (a fork taken while a run held it would leave it held for good)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class BatchExecutor(Executor):
    """Executor.run with each image-splittable step shared among `ranks` threads; see the module."""

    def __init__(self, steps, constants, output_names, arena, ranks: int, shared: set):
        super().__init__(steps, constants, output_names, arena)
        self.ranks = ranks
        self._split_ids = shared                    # shared_steps(steps, constants, ranks)
        sizes = [s.scratch.size for s in steps if id(s) in self._split_ids and s.scratch is not None]
        self._scratch = [np.empty(max(sizes, default=0), np.uint8) for _ in range(ranks - 1)]
        self._workers = []          # started at the first shared step
        self._holding = False       # this run holds _ACTIVE: BLAS at one thread, this thread pinned
        self._blas = None           # our hold on BLAS's thread count (rzrt/blas.py)
        self._mask = None           # this thread's CPU mask before
        self._pid = os.getpid()
        self.shared_steps = 0       # steps run shared so far (tests and curious users)

    def execute(self, feeds: dict) -> dict:
        if os.getpid() != self._pid:                # a forked child: the worker threads stayed behind
            self._workers, self._holding, self._pid = [], False, os.getpid()
        try:
            return super().execute(feeds)
        finally:
            try:
                with _interrupts_deferred():
                    self._rest()
            except KeyboardInterrupt:               # one that came before the deferral was in place
                self._rest()
                raise

    def call_kernel(self, step, args):
        x = args[0] if args else None
        if id(step) not in self._split_ids or not isinstance(x, np.ndarray) or x.ndim < 1 or x.shape[0] < 2:
            if self._holding and _heavy(step, args):
                with _interrupts_deferred():
                    self._rest()                    # BLAS on every core for it, the workers off them
            return super().call_kernel(step, args)
        with _interrupts_deferred():                # (a Ctrl-C waits for the end of the step)
            if not self._holding and not self._take():
                return super().call_kernel(step, args)     # another session shares a batch now: whole
            return self._shared(step, args)

    def _take(self) -> bool:
        """Hold _ACTIVE and set up for shared steps; False (and nothing changed) where that fails.
        This thread is pinned to the core it runs on, the workers to its other cores (cores.py)."""
        allowed = cores.allowed()
        if len(allowed) < 2:                       # this thread was given one core: it runs alone
            return False
        if not self._workers:                      # before the pin below: a thread inherits its maker's mask
            self._workers = [_Worker() for _ in range(self.ranks - 1)]
            weakref.finalize(self, _stop, list(self._workers)).atexit = False
        if not _ACTIVE.acquire(blocking=False):
            return False
        self._blas = blas.hold(1)
        if any(k != 1 for k in blas.threads_now()):         # another thread's threadpoolctl limit
            blas.release(self._blas)                        # holds BLAS: run whole
            self._blas = None
            _ACTIVE.release()
            return False
        here = cores.current(allowed)
        for w in self._workers:
            w.cores = allowed - {here}             # (read when the worker wakes, after this)
        self._mask = cores.pin({here})
        self._holding = True
        return True

    def _shared(self, step, args):
        self.shared_steps += 1
        kwargs = self.kernel_kwargs(step)
        out = step.out if step.out is not None else np.empty(*step.out_spec)
        context = contextvars.copy_context()
        try:
            for r, w in enumerate(self._workers, 1):
                part = dict(kwargs, out=out, _part=(r, self.ranks))
                if step.scratch is not None:
                    part["scratch"] = self._scratch[r - 1][:step.scratch.size]
                w.post((context, step.kernel.fn, args, part))
            mine = dict(kwargs, out=out, _part=(0, self.ranks))
            if step.scratch is not None:
                mine["scratch"] = step.scratch
            step.kernel.fn(*args, **mine)
        finally:
            errors = []
            for w in self._workers:                 # every part is in `out` (or failed) before we go on
                w.finish()
                if w.error is not None:             # taken now, even when rank 0 failed too
                    errors.append(w.error)
                    w.error = None
        if errors:
            raise errors[0]
        return out

    def _rest(self) -> None:
        """The workers asleep, this thread unpinned and BLAS on every core again (before a BLAS
        step, after the run)."""
        for w in self._workers:
            w.park()
        if self._holding:
            cores.unpin(self._mask)
            self._mask = None
            blas.release(self._blas)
            self._blas = None
            self._holding = False
            _ACTIVE.release()


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C (in the main thread, where Python raises it) held back until the block is done, so
    the hand-over between the threads is never cut in half: a worker left with a job nobody
    waits for, or BLAS left at one thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        old = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(frame))
    except ValueError:                              # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            if callable(old):
                old(signal.SIGINT, caught[0])
            elif old == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _stop(workers) -> None:
    for w in workers:
        w.stop()
