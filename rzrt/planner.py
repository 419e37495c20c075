"""Static memory plan: every intermediate value gets an (offset, nbytes) in one arena.

Plain data in, plain data out; the planner knows sizes and lifetimes, never kernels.

    lifetime(v)  = [step that writes v, last step that reads v]
    two values may share bytes only if their lifetimes do not overlap

Placement is best fit, onnxruntime's MemPatternPlanner way: walk the steps in order, and
give each new value the smallest gap between the blocks still live that fits it (else the
top of the arena). Greedy-by-size (TFLite's way: largest value first, lowest offset that
does not collide with a placed value whose lifetime overlaps) often packs tighter; both run
and the smaller arena wins. The lower bound is the largest total of values live at once:
no plan can be smaller.

In place: a value may take over the block of an input that dies at the step that writes
it (Relu into its input, Add into a dying operand); a view (Reshape, Flatten) shares its
input's block outright. Both merge into one block whose lifetime is the union.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Request:
    """One value the plan must place: written at step `start`, last read at step `end`."""
    name: str
    nbytes: int
    start: int
    end: int


@dataclass
class MemoryPlan:
    offsets: dict = field(default_factory=dict)      # value -> (offset, nbytes)
    arena_bytes: int = 0
    naive_bytes: int = 0          # every intermediate allocated on its own
    lower_bound_bytes: int = 0    # the most bytes live at one time
    shared: dict = field(default_factory=dict)       # value -> the value whose block it reuses (in place, view)
    dynamic: list = field(default_factory=list)      # values of unknown size: allocated at run time
    strategy: str = ""

    def summary(self) -> str:
        mb = 2 ** 20
        saved = self.naive_bytes / self.arena_bytes if self.arena_bytes else 0
        s = (f"arena {self.arena_bytes / mb:.1f} MB (naive {self.naive_bytes / mb:.1f} MB, {saved:.1f}x smaller; "
             f"lower bound {self.lower_bound_bytes / mb:.1f} MB)")
        if self.dynamic:
            s += f"; {len(self.dynamic)} value(s) of unknown size allocated at run time"
        return s

    def as_dict(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
                "lower_bound_bytes": self.lower_bound_bytes, "strategy": self.strategy,
                "values": {k: {"offset": o, "nbytes": n} for k, (o, n) in self.offsets.items()},
                "shared": dict(self.shared), "dynamic": list(self.dynamic)}


def plan(requests: list, shares: dict | None = None, dynamic=()) -> MemoryPlan:
    """Place `requests`; `shares` maps a value to the earlier value whose block it reuses."""
    shares = dict(shares or {})
    by_name = {r.name: r for r in requests}
    # merge each sharing value into its root block, extending the root's lifetime
    root = {}

    def find(n):
        while n in shares and shares[n] in by_name:
            n = shares[n]
        return n

    blocks = {}
    for r in requests:
        k = find(r.name)
        root[r.name] = k
        b = blocks.setdefault(k, Request(k, 0, r.start, r.end))
        b.nbytes = max(b.nbytes, _align(r.nbytes))
        b.start, b.end = min(b.start, r.start), max(b.end, r.end)
    blocks = list(blocks.values())

    candidates = [(best_fit(blocks), "best fit"), (greedy_by_size(blocks), "greedy by size")]
    placed, strategy = min(candidates, key=lambda c: arena_size(blocks, c[0]))
    out = MemoryPlan(strategy=strategy)
    for r in requests:
        out.offsets[r.name] = (placed[root[r.name]], r.nbytes)
        if root[r.name] != r.name:
            out.shared[r.name] = root[r.name]
    out.arena_bytes = arena_size(blocks, placed)
    out.naive_bytes = sum(r.nbytes for r in requests)
    out.lower_bound_bytes = lower_bound(blocks)
    out.dynamic = list(dynamic)
    return out


def arena_size(blocks, offsets: dict) -> int:
    return max((offsets[b.name] + b.nbytes for b in blocks), default=0)


def lower_bound(blocks) -> int:
    """max over steps t of the bytes of all blocks live at t."""
    events = {}
    for b in blocks:
        events[b.start] = events.get(b.start, 0) + b.nbytes
        events[b.end + 1] = events.get(b.end + 1, 0) - b.nbytes
    live = best = 0
    for t in sorted(events):
        live += events[t]
        best = max(best, live)
    return best


def _overlap(a: Request, b: Request) -> bool:
    return a.start <= b.end and b.start <= a.end


def best_fit(blocks) -> dict:
    """In order of first write: the smallest gap among live blocks that fits, else the top."""
    offsets, live = {}, []
    for b in sorted(blocks, key=lambda b: (b.start, -b.nbytes)):
        live = [x for x in live if x.end >= b.start]
        offsets[b.name] = _best_gap(b.nbytes, sorted((offsets[x.name], x.nbytes) for x in live))
        live.append(b)
    return offsets


def greedy_by_size(blocks) -> dict:
    """Largest first: the best-fitting gap among already placed blocks whose lifetimes overlap."""
    offsets, placed = {}, []
    for b in sorted(blocks, key=lambda b: (-b.nbytes, b.start)):
        busy = sorted((offsets[x.name], x.nbytes) for x in placed if _overlap(x, b))
        offsets[b.name] = _best_gap(b.nbytes, busy)
        placed.append(b)
    return offsets


def _best_gap(size: int, busy: list) -> int:
    """The offset of the smallest free gap >= size between busy (offset, size) ranges; else the top."""
    best, best_gap, cursor = None, None, 0
    for off, n in busy:
        gap = off - cursor
        if gap >= size and (best_gap is None or gap < best_gap):
            best, best_gap = cursor, gap
        cursor = max(cursor, off + n)
    return cursor if best is None else best
