"""`rzrt optimize IN.onnx OUT.onnx`: run the graph passes and write the result as ONNX."""
from __future__ import annotations

from pathlib import Path

import click
import onnx

from rzrt.cli.main import cli
from rzrt.cli.options import open_session, session_options


@cli.command()
@click.argument("model")
@click.argument("output")
@session_options
def optimize(model, output, **session_kw):
    """Optimize MODEL and write it to OUTPUT, printing what each pass did.

    Level 1 writes standard ONNX only; level 2 (the default) adds fused ops in the `rzrt`
    domain, which only rzrt runs.
    """
    sess = open_session(model, **session_kw)
    proto = sess.graph.to_onnx()
    out = Path(output)
    if out.parent and not out.parent.exists():
        raise click.ClickException(f"cannot write {output}: folder {out.parent} does not exist")
    big = proto.ByteSize() > 1_900_000_000
    onnx.save_model(proto, str(out), save_as_external_data=big,
                    location=out.name + ".data" if big else None)
    for line in sess.pass_report or ["no pass changed the graph"]:
        click.echo(line)
    click.echo(f"nodes: {_count(model)} -> {len(sess.graph.nodes)}; memory plan: {sess.memory_plan().summary()}")
    click.echo(f"wrote {out}")


def _count(model) -> int:
    from rzrt.model import load_model
    return len(load_model(model).graph.node)
