"""Remove what no graph output depends on.

Before:  nodes and initializers that reach no graph output (e.g. left over by other passes)
After:   they are gone; graph inputs always stay
Conditions: none; ONNX inference ops have no side effects.
"""
from __future__ import annotations


def eliminate_dead(graph) -> bool:
    needed = set(graph.output_names)
    live = []
    for n in reversed(graph.toposort()):
        if any(o in needed for o in n.outputs if o):
            live.append(n)
            needed.update(i for i in n.inputs if i)
    dead_nodes = len(graph.nodes) - len(live)
    dead_inits = [k for k in graph.initializers if k not in needed]
    if live and dead_nodes:
        keep = {id(n) for n in live}
        graph.nodes = [n for n in graph.nodes if id(n) in keep]
    elif not live and graph.nodes:
        graph.nodes = []
    for k in dead_inits:
        del graph.initializers[k]
    return bool(dead_nodes or dead_inits)
