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
(Conv, FusedConv, MaxPool) computes only its share: its images when there are several, else its output
rows or channels (ops/conv.py). Every other step runs on rank 0 alone. The ranks meet after
every split step at a barrier: each bumps its counter in a shared array and spins until the
others have caught up (no system call, no GIL: a few microseconds). BLAS runs one thread per
process while the team works. Between runs a worker spins GRACE (2 ms), then sleeps on a pipe;
a sleeping worker takes 0.3-0.5 ms to wake here, so rank 0 waits for it at most WAKE (1 ms) at
the first split step, runs the split steps whole until the workers say they are ready, then
names the step where they join (JOIN); from there on every split step is shared.

A run is a generation (GEN); every counter a rank waits on carries it, and a worker drops a run
as soon as GEN moves on or rank 0 aborts it (ABORT). A failed run is only over for rank 0 once
every worker has said it left it (DONE): no worker may still write into the arena then.

Only a step whose every input the workers can see is split: constants (the fork copied them),
the graph inputs (copied into shared memory each run) and outputs planned in the arena.
Linux only (fork, CPU affinity); elsewhere, or with one core, the session runs as one process.
While a run lasts, rank 0 is pinned to the core it is on (CORE) and the workers to its other
cores (rzrt/cores.py), so two processes with a team each do not both work on the first cores.
"""
from __future__ import annotations

import mmap
import os
import signal
import sys
import time
import weakref

import numpy as np

from rzrt import blas, cores
from rzrt.errors import KernelError, RzrtError
from rzrt.executor import Executor

GEN, ERROR, ABORT, JOIN, CORE = 0, 8, 16, 24, 32   # int64 slots of the control block, a cache line apart
READY, SLEEP, PROGRESS, DONE = 40, 48, 56, 64       # per rank r: slot + 32 * r
PER_RANK = 32
STEP = 1 << 20                                 # progress = generation * STEP + steps done
MESSAGE = 4096                                 # bytes for a worker's error message
GRACE = 2e-3     # seconds a worker spins after a run before it sleeps: back-to-back runs find it awake
WAKE = 1e-3      # seconds rank 0 waits for a waking worker at the first split step
LEAVE = 5.0      # seconds rank 0 waits, after a failed run, for the workers to leave it
_PIPES: set = set()  # write ends of every team's pipes in this process: a new worker closes its copies


def available(ranks: int) -> int:
    """How many processes a team can have here: 1 where fork or CPU affinity is missing."""
    if ranks <= 1 or sys.platform != "linux" or not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity"):
        return 1
    return max(1, min(ranks, len(os.sched_getaffinity(0))))


def aligned_bytes(n: int, shared: bool = False) -> np.ndarray:
    """n bytes, 64-byte aligned; shared: memory that forked processes share (MAP_SHARED | MAP_ANONYMOUS)."""
    raw = np.frombuffer(mmap.mmap(-1, n + 64), np.uint8) if shared else np.empty(n + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + n]


class TeamExecutor(Executor):
    """Executor.run with `ranks` processes; see the module's docstring."""

    def __init__(self, steps, constants, output_names, arena, ranks: int, input_names: list):
        super().__init__(steps, constants, output_names, arena)
        self.ranks = ranks
        self.rank = 0
        self.ctl = aligned_bytes(8 * (DONE + PER_RANK * ranks), shared=True).view(np.int64)
        self.ctl[:] = 0
        self.message = aligned_bytes(MESSAGE, shared=True)
        self.inputs = {}                   # graph input -> its shared copy, made at the first run
        self.input_names = list(input_names)
        self.split = self._splittable()
        self.last_split = max((i for i, s in enumerate(self.split) if s), default=-1)
        self.planned = {s.outputs[0]: s.out for s in self.steps if s.out is not None and len(s.outputs) == 1}
        self.workers = []                  # (pid, pipe to write)
        self.gen = 0
        self.owner = os.getpid()           # the process whose arena and workers these are
        self._finalizer = None
        self._split_ids = {id(s) for s, split in zip(self.steps, self.split) if split}
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

    def kernel_kwargs(self, step) -> dict:
        if id(step) in self._split_ids:          # (a copy: the step's own kwargs serve every plan)
            return dict(step.kwargs, _part=self._part)
        return step.kwargs

    # --- the team ----------------------------------------------------------------------
    def _start(self, feeds: dict) -> None:
        for n in self.input_names:
            a = feeds.get(n)
            if isinstance(a, np.ndarray) and n not in self.inputs:
                self.inputs[n] = aligned_bytes(a.nbytes, shared=True).view(a.dtype).reshape(a.shape)
        sys.stdout.flush()
        sys.stderr.flush()
        for rank in range(1, self.ranks):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                   # the worker: serve runs until the pipe says stop or closes
                code = 0
                try:
                    for fd in _PIPES | {w}:    # others' pipes: their workers must see EOF when we die
                        os.close(fd)
                    self._serve(rank, r)
                except BaseException:      # noqa: BLE001 - a worker must never return into the caller's code
                    code = 1
                finally:
                    os._exit(code)
            os.close(r)
            _PIPES.add(w)
            self.workers.append((pid, w))
        self._finalizer = weakref.finalize(self, _stop, list(self.workers), self.ctl, self.owner)

    def _serve(self, rank: int, pipe: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the caller's: it stops us by closing the pipe
        self.rank, self.workers, self._finalizer = rank, [], None
        from rzrt.ops import parallel
        parallel.reset_after_fork()                      # the caller's thread pool did not come along
        allowed, away_from = cores.allowed(), None      # (the caller's cores: it was not pinned at the fork)
        blas.set_threads(1)
        sizes = [s.scratch.size for s in self.steps if s.scratch is not None]
        own = np.empty(max(sizes, default=0), np.uint8)     # scratch is private: one buffer, a step at a time
        for s in self.steps:
            if s.scratch is not None:
                s.scratch = own[:s.scratch.size]
        parent, ctl = os.getppid(), self.ctl
        served = self.gen                                # the runs before the fork are not ours
        env0 = {**self.constants, **self.inputs, **self.planned}    # every value a split step reads
        while True:
            gen = _spin_for_run(ctl, served, GRACE)
            if gen == served:                            # nothing for a while: sleep until woken
                ctl[SLEEP + PER_RANK * rank] = 1
                gen = int(ctl[GEN])
                if gen == served:
                    if os.read(pipe, 1) != b"r":
                        return
                    gen = int(ctl[GEN])
                ctl[SLEEP + PER_RANK * rank] = 0
                if gen == served:                        # a second wake for a run already served
                    continue
            served = gen
            if ctl[CORE] != away_from and len(allowed - {int(ctl[CORE])}) > 0:
                away_from = int(ctl[CORE])               # off rank 0's core (set before GEN)
                cores.pin(allowed - {away_from})
            try:
                self._steps(dict(env0), gen, parent)
            except _Aborted:
                pass
            except BaseException as e:     # noqa: BLE001 - reported to rank 0, which raises it
                text = (str(e) if isinstance(e, RzrtError) else f"{type(e).__name__}: {e}").encode()[:MESSAGE - 1]
                self.message[:len(text) + 1] = np.frombuffer(text + b"\0", np.uint8)
                ctl[ERROR] = gen
            ctl[DONE + PER_RANK * rank] = gen            # this worker writes nothing more for run `gen`

    def execute(self, feeds: dict) -> dict:
        if os.getpid() != self.owner:      # a fork of ours (multiprocessing): the arena is shared with us
            raise RzrtError("this session (processes > 1) belongs to the process that created it; in a "
                            "forked child, create a new session")
        if not self.workers:
            self._start(feeds)
        if any(_dead(pid) for pid, _ in self.workers):
            raise RzrtError("a worker process of this session has died; create the session again "
                            "(or use processes=1)")
        mask = cores.allowed()
        held = blas.hold(1)                # before the pin below: threads BLAS starts inherit our mask
        self.gen += 1
        gen, ctl = self.gen, self.ctl
        try:
            ctl[CORE] = cores.current(mask) if mask else -1     # where rank 0 works this run
            ctl[GEN] = gen                 # wake the workers first: they take a while
            for r, (_, w) in enumerate(self.workers, 1):
                if ctl[SLEEP + PER_RANK * r]:
                    os.write(w, b"r")
            env = dict(self.constants)
            env.update(feeds)
            for n, buf in self.inputs.items():
                np.copyto(buf, feeds[n])
                env[n] = buf
            ctl[PROGRESS] = gen * STEP     # the inputs are in place: step 0 may start
            cores.pin({int(ctl[CORE])} if mask else None)
            self._steps(env, gen, None)
        except BaseException:
            ctl[ABORT] = gen               # the workers drop the run at their next check ...
            self._leave(gen)               # ... and rank 0 returns only once they have
            raise
        finally:
            cores.unpin(mask or None)      # (what we had, also when a Ctrl-C cut the pin short)
            blas.release(held)
        return env

    def _leave(self, gen: int) -> None:
        """After a failed run: wait until every worker inside run `gen` has left it (DONE), so none
        writes into the arena after we return; a worker that does not within LEAVE seconds is
        stopped. A worker not yet inside (READY) meets ABORT at its first check, and no JOIN comes."""
        end = time.perf_counter() + LEAVE
        for r, (pid, _) in enumerate(self.workers, 1):
            while self.ctl[READY + PER_RANK * r] == gen and self.ctl[DONE + PER_RANK * r] < gen and not _dead(pid):
                if time.perf_counter() > end:
                    self.close()
                    return
                time.sleep(1e-4)

    def _steps(self, env: dict, gen: int, parent) -> None:
        rank, base, ctl = self.rank, gen * STEP, self.ctl
        start, joined, waited = 0, False, False
        if rank:                                         # say so, then learn where to join
            ctl[READY + PER_RANK * rank] = gen
            self._wait_slot(JOIN, base, gen, parent)
            start = int(ctl[JOIN]) - base
        for i in range(start, len(self.steps)):
            step, split = self.steps[i], self.split[i]
            if rank and i > self.last_split:
                return
            if split and not rank and not joined:        # the workers are awake: they join here
                if not waited:                           # the first split step: give them a moment
                    self._wait_ready(gen)
                    waited = True
                joined = all(ctl[READY + PER_RANK * r] == gen for r in range(1, self.ranks))
                if joined:
                    ctl[JOIN] = base + i
            if split and rank:                           # rank 0 has made every input of step i
                self._wait(0, base + i, gen, parent)
            if split or not rank:
                self._part = (rank, self.ranks) if split and (rank or joined) else (0, 1)
                self.run_step(step, env)
            ctl[PROGRESS + PER_RANK * rank] = base + i + 1
            if split and joined:                         # every rank's part is in the arena
                for r in range(1, self.ranks):
                    self._wait(r, base + i + 1, gen, parent)
        if not rank and not joined:                      # the workers woke too late: nothing for them
            ctl[JOIN] = base + len(self.steps)

    def _wait_ready(self, gen: int) -> None:
        """Spin up to WAKE seconds for the workers to be ready: a sleeping worker wakes in 0.3-0.5 ms
        here, and the step it helps with is usually longer than that."""
        end = time.perf_counter() + WAKE
        while any(self.ctl[READY + PER_RANK * r] != gen for r in range(1, self.ranks)) and time.perf_counter() < end:
            pass

    def _wait(self, rank: int, target: int, gen: int, parent) -> None:
        self._wait_slot(PROGRESS + PER_RANK * rank, target, gen, parent, rank)

    def _wait_slot(self, slot: int, target: int, gen: int, parent, rank: int = 0) -> None:
        """Spin until ctl[slot] reaches target. A worker (parent set) drops the run when it is
        aborted or a newer one has begun, checked before every step it starts; rank 0 raises a
        worker's error, and notices a worker that died."""
        ctl, spins = self.ctl, 0
        if parent is not None and (ctl[ABORT] == gen or ctl[GEN] != gen):
            raise _Aborted()
        while ctl[slot] < target:
            spins += 1
            if parent is not None and (ctl[ABORT] == gen or ctl[GEN] != gen):
                raise _Aborted()
            if spins & 0x3FFF == 0:
                if ctl[ERROR] == gen:
                    text = bytes(self.message).split(b"\0", 1)[0].decode(errors="replace")
                    raise KernelError(f"worker process {rank}: {text}")
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
    """This run was aborted by rank 0, or a newer one has begun: the worker drops it."""


def _stop(workers, ctl, owner: int) -> None:
    """Stop the workers (only from the process that started them: a fork of it exiting must not)."""
    if os.getpid() != owner:
        return
    ctl[ABORT] = ctl[GEN]                  # a worker inside a run leaves it
    for _, w in workers:
        try:
            os.write(w, b"q")
        except OSError:
            pass
        finally:
            _PIPES.discard(w)
            os.close(w)
    end = time.perf_counter() + 2.0
    for pid, _ in workers:
        while not _dead(pid):
            if time.perf_counter() > end:              # stuck: it holds nothing we need
                os.kill(pid, signal.SIGKILL)
                _dead(pid)
                break
            time.sleep(1e-3)
