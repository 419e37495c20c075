"""A team of processes on one arena: every convolution split in parts, one part per core.

    rank 0 (this process)              rank 1 (a forked worker)
    step 0  Conv, rows 0-55     |      step 0  Conv, rows 56-111
            -------------- barrier --------------
    step 1  Conv, rows 0-55     |      step 1  Conv, rows 56-111
    step 2  MaxPool (alone)     |      (waits)
    ...

numpy runs its own loops (im2col copies, depthwise sums, epilogues) on one core, and a second
Python thread cannot help: the GIL admits one thread into Python at a time, and on these
virtual machines handing the GIL over wakes the waiting thread with a ~20 us cross-core
interrupt, at every numpy call. A second *process* has its own interpreter and its own GIL.
After the plan is built, the session forks one worker per extra core; the arena is shared
memory (an anonymous shared mmap, allocated before the fork), so a kernel's output written by
rank 1 is where rank 0's next step reads it. Each kernel that takes `_part=(rank, ranks)`
(Conv, FusedConv) computes only its share: its images when there are several, else its output
rows, columns or channels (ops/conv.py). Every other step runs on rank 0 alone. The ranks meet
after every split step at a barrier: each bumps its counter in a shared array and spins until
the others have caught up (no system call, no GIL: a few microseconds). BLAS runs one thread
per process while the team works. Between runs the workers spin a millisecond, then sleep on a
pipe; a sleeping worker takes 0.3-0.5 ms to wake here, so rank 0 does not wait for it: it runs
the split steps whole until the workers say they are ready, then names the step where they
join (JOIN), and from there on every split step is shared.

Only a step whose every input the workers can see is split: constants (the fork copied them),
the graph inputs (copied into shared memory each run) and outputs planned in the arena.
Linux only (fork, CPU affinity); elsewhere, or with one core, the session runs as one process.
"""
from __future__ import annotations

import mmap
import os
import signal
import sys
import time
import weakref

import numpy as np

from rzrt.errors import KernelError, RzrtError
from rzrt.executor import Executor

GEN, ERROR, ABORT, JOIN = 0, 8, 16, 24        # int64 slots of the control block, a cache line apart
READY, SLEEP, PROGRESS = 32, 40, 48           # per rank r: slot + 24 * r
STEP = 1 << 20                                 # progress = generation * STEP + steps done
MESSAGE = 4096                                 # bytes for a worker's error message


def available(ranks: int) -> int:
    """How many processes a team can have here: 1 where fork or CPU affinity is missing."""
    if ranks <= 1 or sys.platform != "linux" or not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity"):
        return 1
    return max(1, min(ranks, len(os.sched_getaffinity(0))))


def shared_bytes(n: int) -> np.ndarray:
    """n bytes of memory that forked processes share (MAP_SHARED | MAP_ANONYMOUS), 64-byte aligned."""
    raw = np.frombuffer(mmap.mmap(-1, max(n, 1) + 64), np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + n]


def _blas(n: int) -> None:
    from threadpoolctl import ThreadpoolController
    global _BLAS
    if "_BLAS" not in globals():
        _BLAS = ThreadpoolController().select(user_api="blas").lib_controllers
    for c in _BLAS:
        c.set_num_threads(n)


class TeamExecutor(Executor):
    """Executor.run with `ranks` processes; see the module's docstring."""

    def __init__(self, steps, constants, output_names, arena, ranks: int, input_names: list):
        super().__init__(steps, constants, output_names, arena)
        self.ranks = ranks
        self.rank = 0
        self.cpus = sorted(os.sched_getaffinity(0))[:ranks]
        self.ctl = shared_bytes(8 * (PROGRESS + 24 * ranks)).view(np.int64)
        self.ctl[:] = 0
        self.message = shared_bytes(MESSAGE)
        self.inputs = {}                   # graph input -> its shared copy, made at the first run
        self.input_names = list(input_names)
        self.split = self._splittable()
        self.last_split = max((i for i, s in enumerate(self.split) if s), default=-1)
        self.workers = []                  # (pid, pipe to write)
        self.gen = 0
        self._finalizer = None
        self.owner = os.getpid()            # the process whose arena and workers these are
        self._split_ids = {id(st) for st, sp in zip(self.steps, self.split) if sp}
        self.planned = {st.outputs[0]: st.out for st in self.steps if st.out is not None and len(st.outputs) == 1}
        self._part = None                  # (rank, ranks) for the split step running now

    def _splittable(self) -> list:
        """Per step: do all ranks run it? It must take _part, write its one output into the arena,
        and read only what the workers see: constants, graph inputs, outputs planned in the arena."""
        seen = set(self.constants) | set(self.input_names)
        split = []
        for s in self.steps:
            ok = "_part" in s.kernel.context and s.out is not None and len(s.outputs) == 1 \
                and all(not n or n in seen for n in s.inputs)
            split.append(ok)
            if s.out is not None and len(s.outputs) == 1:
                seen.add(s.outputs[0])
        return split

    def run(self, feeds: dict) -> dict:
        results = super().run(feeds)
        for n, v in results.items():             # never hand out a view of the shared input copies
            if isinstance(v, np.ndarray) and any(np.may_share_memory(v, b) for b in self.inputs.values()):
                results[n] = v.copy()
        return results

    def call_kernel(self, step, args: list):
        if id(step) in self._split_ids:
            step.kwargs["_part"] = self._part
        return super().call_kernel(step, args)

    # --- the team ----------------------------------------------------------------------
    def _start(self, feeds: dict) -> None:
        for n in self.input_names:
            a = feeds.get(n)
            if isinstance(a, np.ndarray):
                self.inputs[n] = shared_bytes(a.nbytes).view(a.dtype).reshape(a.shape)
        sys.stdout.flush()
        sys.stderr.flush()
        for rank in range(1, self.ranks):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                   # the worker: serve runs until the pipe says stop or closes
                code = 0
                try:
                    os.close(w)
                    self._serve(rank, r)
                except BaseException:      # noqa: BLE001 - a worker must never return into the caller's code
                    code = 1
                finally:
                    os._exit(code)
            os.close(r)
            self.workers.append((pid, w))
        self._finalizer = weakref.finalize(self, _stop, list(self.workers))

    def _serve(self, rank: int, pipe: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the caller's: it stops us by closing the pipe
        self.rank, self.workers, self._finalizer = rank, [], None
        try:
            os.sched_setaffinity(0, {self.cpus[rank]})
        except OSError:
            pass
        _blas(1)
        sizes = [s.scratch.size for s in self.steps if s.scratch is not None]
        own = np.empty(max(sizes, default=0), np.uint8)     # scratch is private: one buffer, a step at a time
        for s in self.steps:
            if s.scratch is not None:
                s.scratch = own[:s.scratch.size]
        parent, served, ctl = os.getppid(), 0, self.ctl
        env0 = {**self.constants, **self.inputs, **self.planned}    # every value a split step reads
        while True:
            gen = _spin_for_run(ctl, served, GRACE)
            if gen == served:                            # nothing for a while: sleep until woken
                ctl[SLEEP + 24 * rank] = 1
                gen = int(ctl[GEN])
                if gen == served:
                    if os.read(pipe, 1) != b"r":
                        return
                    gen = int(ctl[GEN])
                ctl[SLEEP + 24 * rank] = 0
                if gen == served:                        # a second wake for a run already served
                    continue
            served = gen
            env = dict(env0)
            try:
                self._steps(env, gen, parent)
            except _Aborted:
                continue
            except BaseException as e:     # noqa: BLE001 - reported to rank 0, which raises it
                text = (str(e) if isinstance(e, RzrtError) else f"{type(e).__name__}: {e}").encode()[:MESSAGE - 1]
                self.message[:len(text) + 1] = np.frombuffer(text + b"\0", np.uint8)
                self.ctl[ERROR] = gen

    def execute(self, feeds: dict) -> dict:
        if os.getpid() != self.owner:      # a fork of ours (multiprocessing): the arena is shared with us
            raise RzrtError("this session (processes > 1) belongs to the process that created it; in a "
                            "forked child, create a new session")
        if not self.workers:
            self._start(feeds)
        if any(_dead(pid) for pid, _ in self.workers):
            raise RzrtError("a worker process of this session has died; create the session again "
                            "(or use processes=1)")
        self.gen += 1                      # wake the workers first: they take a while
        self.ctl[GEN] = self.gen
        for r, (_, w) in enumerate(self.workers, 1):
            if self.ctl[SLEEP + 24 * r]:
                os.write(w, b"r")
        env = dict(self.constants)
        env.update(feeds)
        for n, buf in self.inputs.items():
            np.copyto(buf, feeds[n])
            env[n] = buf
        self.ctl[PROGRESS] = self.gen * STEP          # the inputs are in place: step 0 may start
        mask = os.sched_getaffinity(0)
        _blas(1)                           # before pinning: threads OpenBLAS starts inherit this thread's mask
        try:
            os.sched_setaffinity(0, {self.cpus[0]})
        except OSError:
            pass
        try:
            self._steps(env, self.gen, None)
        except BaseException:
            self.ctl[ABORT] = self.gen     # the workers stop at their next barrier
            raise
        finally:
            os.sched_setaffinity(0, mask)
            _blas(len(mask))
        return env

    def _steps(self, env: dict, gen: int, parent) -> None:
        rank, base, ctl = self.rank, gen * STEP, self.ctl
        start, joined, waited = 0, False, False
        if rank:                                         # say so, then learn where to join
            ctl[READY + 24 * rank] = gen
            self._wait_slot(JOIN, base, gen, parent)
            start = int(ctl[JOIN]) - base
        for i in range(start, len(self.steps)):
            step, split = self.steps[i], self.split[i]
            if rank and i > self.last_split:
                return
            if split and not rank and not joined:        # the workers are awake: they join here
                if not waited:                           # the first split step: give them a moment
                    waited = self._wait_ready(gen)
                joined = all(ctl[READY + 24 * r] == gen for r in range(1, self.ranks))
                if joined:
                    ctl[JOIN] = base + i
            if split and rank:                           # rank 0 has made every input of step i
                self._wait(0, base + i, gen, parent)
            if split or not rank:
                self._part = (rank, self.ranks) if split and (rank or joined) else (0, 1)
                self.run_step(step, env)
            ctl[PROGRESS + 24 * rank] = base + i + 1
            if split and joined:                         # every rank's part is in the arena
                for r in range(1, self.ranks):
                    self._wait(r, base + i + 1, gen, parent)
        if not rank and not joined:                      # the workers woke too late: nothing for them
            ctl[JOIN] = base + len(self.steps)

    def _wait_ready(self, gen: int) -> bool:
        """Spin up to WAKE seconds for the workers to be ready: a sleeping worker wakes in 0.3-0.5 ms
        here, and the step it helps with is usually longer than that."""
        end = time.perf_counter() + WAKE
        while any(self.ctl[READY + 24 * r] != gen for r in range(1, self.ranks)) and time.perf_counter() < end:
            pass
        return True

    def _wait(self, rank: int, target: int, gen: int, parent) -> None:
        self._wait_slot(PROGRESS + 24 * rank, target, gen, parent, rank)

    def _wait_slot(self, slot: int, target: int, gen: int, parent, rank: int = 0) -> None:
        ctl, spins = self.ctl, 0
        while ctl[slot] < target:
            spins += 1
            if spins & 0x3FFF == 0:
                if ctl[ERROR] == gen:
                    text = bytes(self.message).split(b"\0", 1)[0].decode(errors="replace")
                    raise KernelError(f"worker process {rank}: {text}")
                if ctl[ABORT] == gen:
                    raise _Aborted()
                if parent is not None and os.getppid() != parent:
                    os._exit(0)                          # the caller is gone
                if parent is None and any(_dead(pid) for pid, _ in self.workers):
                    raise RzrtError("a worker process of this session died during the run")
                if spins > 1 << 22:
                    os.sched_yield()                     # a long wait: stop hogging the core

    def close(self) -> None:
        """Stop the workers; the next run starts new ones."""
        if self._finalizer is not None:
            self._finalizer()
        self.workers, self._finalizer = [], None


GRACE = 2e-3     # seconds a worker spins after a run before it sleeps: back-to-back runs find it awake
WAKE = 1e-3      # seconds rank 0 waits for a waking worker at the first split step


def _spin_for_run(ctl, served: int, seconds: float) -> int:
    """Spin until a new run's generation appears in ctl[GEN] or `seconds` pass; the generation."""
    end = time.perf_counter() + seconds
    while ctl[GEN] == served and time.perf_counter() < end:
        pass
    return int(ctl[GEN])


def _dead(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:                    # already reaped
        return True


class _Aborted(Exception):
    """Rank 0 failed during this run: the workers drop it and wait for the next."""


def _stop(workers) -> None:
    for pid, w in workers:
        try:
            os.write(w, b"q")
            os.close(w)
        except OSError:
            pass
    for pid, _ in workers:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
