"""Control flow: If, Loop, Scan, SequenceMap run their subgraphs (graph attributes, see
rzrt.graph.Body) with rzrt's own executor. `outer` are the values of the enclosing graph
that a subgraph reads by name; the session passes them after the node's own inputs."""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _split_outer(args, names):
    k = len(names)
    own = args[:len(args) - k] if k else args
    return list(own), dict(zip(names, args[len(args) - k:] if k else ()))


@kernel("If", since=1)
def If(cond, *outer, then_branch, else_branch, _outer=()):
    """outputs = then_branch() if cond else else_branch()"""
    _, env = _split_outer((cond,) + outer, _outer)
    body = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
    return tuple(body([], env))


@kernel("Loop", since=1)
def Loop(M=None, cond=None, *rest, body, _outer=()):
    """for i in range(M) while cond: (cond, v..., scan...) = body(i, cond, v...); scans stacked on axis 0"""
    v, env = _split_outer(rest, _outer)
    trips = None if M is None else int(np.asarray(M).reshape(-1)[0])
    keep = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    n_scan = len(body.proto.output) - 1 - len(v)
    scans, i = [[] for _ in range(n_scan)], 0
    while keep and (trips is None or i < trips):
        outs = body([np.array(i, dtype=np.int64), np.array(keep), *v], env)
        keep = bool(np.asarray(outs[0]).reshape(-1)[0])
        v = list(outs[1:1 + len(v)])
        for k, y in enumerate(outs[1 + len(v):]):
            scans[k].append(y)
        i += 1
    stacked = []
    for k, ys in enumerate(scans):
        if ys and isinstance(ys[0], list):
            stacked.append([t for y in ys for t in y])
        elif ys:
            stacked.append(np.stack(ys))
        else:
            elem = body.proto.output[1 + len(v) + k].type.tensor_type.elem_type
            from rzrt.graph import dtype_of
            stacked.append(np.zeros((0,), dtype=dtype_of(elem) or np.float32))
    return tuple(v + stacked)


@kernel("Scan", since=9)
def Scan(*args, body, num_scan_inputs, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None, _outer=()):
    """states, x_t -> body -> states, y_t for t along each scan input's axis; ys stacked along their axes"""
    own, env = _split_outer(args, _outer)
    m = num_scan_inputs
    states, xs = own[:len(own) - m], own[len(own) - m:]
    in_axes = [a % x.ndim for a, x in zip(scan_input_axes or [0] * m, xs)]
    in_dirs = scan_input_directions or [0] * m
    steps = xs[0].shape[in_axes[0]] if xs else 0
    ys = []
    for t in range(steps):
        sl = [np.take(x, steps - 1 - t if d else t, axis=a) for x, a, d in zip(xs, in_axes, in_dirs)]
        outs = body(states + sl, env)
        states = list(outs[:len(states)])
        ys.append(outs[len(states):])
    n_out = len(body.proto.output) - len(states)
    out_axes = scan_output_axes or [0] * n_out
    out_dirs = scan_output_directions or [0] * n_out
    results = []
    for k in range(n_out):
        seq = [y[k] for y in ys]
        if out_dirs[k]:
            seq = seq[::-1]
        stacked = np.stack(seq)
        results.append(np.moveaxis(stacked, 0, out_axes[k] % stacked.ndim))
    return tuple(states + results)


@kernel("SequenceMap", since=17)
def SequenceMap(input_sequence, *additional_inputs, body, _outer=()):
    """out_k[i] = body(seq[i], extra[i] or extra...)[k] for each position i"""
    extra, env = _split_outer(additional_inputs, _outer)
    n_out = len(body.proto.output)
    outs = [[] for _ in range(n_out)]
    for i, x in enumerate(input_sequence):
        args = [x] + [e[i] if isinstance(e, list) else e for e in extra]
        for k, y in enumerate(body(args, env)):
            outs[k].append(y)
    return tuple(outs)


@kernel("Scan", since=8)
def Scan_8(sequence_lens=None, *args, body, num_scan_inputs, directions=None, _outer=()):
    """Opset 8: batched along axis 0 (the scan axis is 1); each batch entry is a Scan-9 over its slice."""
    own, env = _split_outer(args, _outer)
    m = num_scan_inputs
    states, xs = own[:len(own) - m], own[len(own) - m:]
    per_batch = []
    for b in range(xs[0].shape[0]):
        n = xs[0].shape[1] if sequence_lens is None else int(sequence_lens[b])
        inputs = [s[b] for s in states] + [x[b, :n] for x in xs]
        per_batch.append(Scan(*inputs, *env.values(), body=body, num_scan_inputs=m,
                              scan_input_directions=directions, _outer=tuple(env)))
    return tuple(np.stack([r[k] for r in per_batch]) for k in range(len(per_batch[0])))
