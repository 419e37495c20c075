"""Sequences and optionals: a sequence value is a Python list of arrays, an empty optional is None."""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _index(seq, position, default):
    i = default if position is None else int(np.asarray(position).reshape(-1)[0])
    n = len(seq)
    if not -n - (default == n) <= i <= n:
        raise IndexError(f"position {i} is out of range for a sequence of {n}")
    return i + n if i < 0 else i


@kernel("SequenceEmpty", since=11)
def SequenceEmpty(*, dtype=1):
    return []


@kernel("SequenceConstruct", since=11)
def SequenceConstruct(*inputs):
    return list(inputs)


@kernel("SequenceLength", since=11)
def SequenceLength(input_sequence):
    return np.array(len(input_sequence), dtype=np.int64)


@kernel("SequenceAt", since=11)
def SequenceAt(input_sequence, position):
    return input_sequence[_index(input_sequence, position, 0)]


@kernel("SequenceInsert", since=11)
def SequenceInsert(input_sequence, tensor, position=None):
    seq = list(input_sequence)
    seq.insert(_index(seq, position, len(seq)), tensor)
    return seq


@kernel("SequenceErase", since=11)
def SequenceErase(input_sequence, position=None):
    seq = list(input_sequence)
    del seq[_index(seq, position, len(seq) - 1)]
    return seq


@kernel("SplitToSequence", since=11)
def SplitToSequence(input, split=None, *, axis=0, keepdims=1):
    n = input.shape[axis]
    if split is None:
        parts = np.split(input, n, axis=axis)
        return [np.squeeze(p, axis=axis) for p in parts] if not keepdims else parts
    split = np.asarray(split)
    if split.ndim == 0:
        k = int(split)
        return np.split(input, range(k, n, k), axis=axis)
    return np.split(input, np.cumsum(split)[:-1], axis=axis)


@kernel("ConcatFromSequence", since=11)
def ConcatFromSequence(input_sequence, *, axis, new_axis=0):
    return np.stack(input_sequence, axis=axis) if new_axis else np.concatenate(input_sequence, axis=axis)


@kernel("Optional", since=15)
def Optional(input=None, *, type=None):
    return input


@kernel("OptionalHasElement", since=15)
def OptionalHasElement(input=None):
    return np.array(input is not None)


@kernel("OptionalGetElement", since=15)
def OptionalGetElement(input):
    if input is None:
        raise ValueError("the optional is empty")
    return input


