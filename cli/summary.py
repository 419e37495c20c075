"""`rzrt summary MODEL`: a torchsummary-style table of nodes, shapes, parameters and MACs."""
from __future__ import annotations

import json

import click
from rzrt.cli.main import cli
from rzrt.cli.options import ellipsize, mb, open_session, parse_shape, session_options, shape_str
from rzrt.profiler import node_macs


@cli.command()
@click.argument("model")
@click.option("--shape", help="input shape, e.g. 1x3x224x224  [default: the model's, dynamic dims 1]")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@session_options(level=0)
def summary(model, shape, as_json, **session_kw):
    """Nodes of MODEL with output shape, parameters and MACs, and the totals.

    Runs at --level 0 by default, so it describes the model as exported.
    """
    sess = open_session(model, **session_kw)
    first = sess.graph.inputs[0] if sess.graph.inputs else None
    input_shapes = {first.name: parse_shape(shape)} if (shape and first) else None
    shapes = sess.value_shapes(input_shapes)
    plan = sess.memory_plan(input_shapes)
    inits = sess.graph.initializers
    owner = {}
    rows = []
    for s in sess._steps:
        node = s.node
        params = 0
        for i in node.inputs:
            if i in inits and i not in owner:
                owner[i] = node.name
                params += int(inits[i].size)
        ins = [shapes.get(i)[0] if shapes.get(i) else None for i in s.inputs]
        outs = [shapes.get(o)[0] if shapes.get(o) else None for o in s.outputs]
        rows.append({"node": node.name, "op": node.qualified_op, "output": list(outs[0]) if outs and outs[0] else None,
                     "params": params, "macs": node_macs(node.op_type, ins, outs, s.kwargs)})
    unused = sum(int(a.size) for k, a in inits.items() if k not in owner)
    total_params = sum(int(a.size) for a in inits.values())
    param_bytes = sum(int(a.nbytes) for a in inits.values())
    macs = sum(r["macs"] for r in rows)
    totals = {"params": total_params, "param_bytes": param_bytes, "unused_params": unused, "macs": macs,
              "activation_bytes_naive": plan.naive_bytes, "activation_bytes_planned": plan.arena_bytes,
              "activation_bytes_lower_bound": plan.lower_bound_bytes}
    if as_json:
        click.echo(json.dumps({"model": model, "level": sess.level, "nodes": rows, "totals": totals}, indent=2))
        return
    click.echo(f"{'node':<34}{'op':<20}{'output shape':<18}{'params':>12}{'MACs':>15}")
    click.echo("-" * 99)
    for r in rows:
        click.echo(f"{ellipsize(r['node'], 33):<34}{ellipsize(r['op'], 19, False):<20}{ellipsize(shape_str(r['output']), 17):<18}"
                   f"{r['params']:>12,}{r['macs']:>15,}")
    click.echo("-" * 99)
    click.echo(f"parameters: {total_params:,} ({mb(param_bytes)})" + (f", {unused:,} unused" if unused else ""))
    click.echo(f"MACs: {macs / 1e9:.2f} G ({macs:,}) for input {shape_str(_input_shape(shapes, first))}")
    click.echo(f"activations: naive {mb(plan.naive_bytes)}, planned {mb(plan.arena_bytes)} "
               f"(lower bound {mb(plan.lower_bound_bytes)}); level {sess.level}, {len(rows)} nodes")


def _input_shape(shapes, first):
    return shapes.get(first.name)[0] if first is not None and shapes.get(first.name) else None
