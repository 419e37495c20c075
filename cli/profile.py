"""`rzrt profile MODEL [IMAGE]`: where the time goes, op by op and node by node."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import click

from rzrt.cli.main import cli
from rzrt.cli.options import ellipsize, example_feeds, open_session, progress, session_options, shape_str
from rzrt.profiler import by_node, by_op_type, run_stats, write_chrome_trace


@cli.command()
@click.argument("model")
@click.argument("image", required=False)
@click.option("--shape", help="input shape, e.g. 1x3x224x224  [default: the model's, dynamic dims 1]")
@click.option("--runs", default=10, show_default=True, type=click.IntRange(min=1), help="measured runs")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="runs before measuring")
@click.option("--top", "top_n", default=15, show_default=True, type=click.IntRange(min=0), help="slowest nodes to list")
@click.option("--trace", type=click.Path(dir_okay=False, writable=True), help="write a chrome trace (chrome://tracing, Perfetto)")
@click.option("--json", "as_json", is_flag=True, help="print everything as JSON")
@click.option("--csv", "as_csv", is_flag=True, help="print one CSV row per node")
@session_options
def profile(model, image, shape, runs, warmup, top_n, trace, as_json, as_csv, **session_kw):
    """Time every node of MODEL over --runs runs (after --warmup) on IMAGE or random input.

    \b
    rzrt profile resnet50.onnx
    rzrt profile resnet50.onnx cat.jpg --runs 20 --trace trace.json
    """
    sess = open_session(model, profile=True, **session_kw)
    feeds = example_feeds(sess, shape, image)
    with progress(range(warmup + runs), "profiling") as bar:
        for i in bar:
            if i == warmup:
                sess.clear_profile()
            sess.run(None, feeds)
    records = sess.profile()
    plan = sess.memory_plan()
    at_plan = Counter(n.op_type for n in sess.plan_time_nodes())
    stats, ops, nodes = run_stats(records), by_op_type(records), by_node(records)
    if trace:
        write_chrome_trace(records, trace)
    if as_json:
        click.echo(json.dumps({"model": model, "inputs": {k: list(v.shape) for k, v in feeds.items()},
                               "level": sess.level, "passes": sess.pass_report, "plan_time": dict(at_plan),
                               "channels_last_nodes": len(sess.channels_last_nodes()), "stats": stats, "op_types": ops,
                               "nodes": nodes, "memory": {k: v for k, v in plan.as_dict().items() if k != "values"},
                               "trace": trace}, indent=2))
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["node", "op", "ms", "share", "gflops", "inputs", "outputs"])
        for r in nodes:
            w.writerow([r["node"], r["op"], f"{r['ms']:.4f}", f"{r['share']:.4f}",
                        f"{r['gflops']:.2f}" if r["gflops"] else "", " ".join(shape_str(s) for s in r["inputs"]),
                        " ".join(shape_str(s) for s in r["outputs"])])
        click.echo(buf.getvalue(), nl=False)
        return
    inputs = ", ".join(f"{k} {shape_str(v.shape)}" for k, v in feeds.items())
    click.echo(f"{Path(model).name}: {runs} runs after {warmup} warm-up, level {sess.level}, {inputs}")
    click.echo(f"run: mean {stats['mean_ms']:.2f} ms  (min {stats['min_ms']:.2f}, p50 {stats['p50_ms']:.2f}, "
               f"max {stats['max_ms']:.2f});  in kernels {stats['kernels_ms']:.2f} ms "
               f"({stats['kernels_ms'] / stats['mean_ms']:.1%})")
    click.echo("")
    click.echo(f"{'op type':<28}{'count':>7}{'ms/run':>11}{'share':>9}{'GFLOP/s':>10}")
    for r in ops:
        gf = f"{r['gflops']:.1f}" if r["gflops"] else ""
        click.echo(f"{ellipsize(r['op'], 27, False):<28}{r['count']:>7}{r['ms']:>11.3f}{r['share']:>9.1%}{gf:>10}")
    if top_n:
        click.echo("")
        click.echo(f"{'top ' + str(min(top_n, len(nodes))) + ' nodes':<34}{'op':<16}{'ms':>8}{'share':>7}  shape in -> out")
        for r in nodes[:top_n]:
            io_ = f"{shape_str(r['inputs'][0] if r['inputs'] else None)} -> {shape_str(r['outputs'][0] if r['outputs'] else None)}"
            click.echo(f"{ellipsize(r['node'], 33):<34}{ellipsize(r['op'].replace('rzrt.', ''), 15, False):<16}"
                       f"{r['ms']:>8.3f}{r['share']:>7.1%}  {io_}")
    click.echo("")
    click.echo(f"memory plan: {plan.summary()}")
    if at_plan:
        click.echo(f"computed once at plan time (shape arithmetic): "
                   f"{', '.join(f'{v} {k}' for k, v in at_plan.most_common())}")
    relaid = sess.channels_last_nodes()
    if relaid:
        click.echo(f"channels-last (N, H, W, C) values between {len(relaid)} nodes (MobileNet blocks, Winograd "
                   f"3x3 -> 3x3):\n  their shapes above read N x H x W x C, or N x Hp x stride x width x C "
                   f"for a padded input\n  written by the convolution before")
    click.echo("passes:" + ("" if sess.pass_report else " none"))
    for line in sess.pass_report:
        click.echo(f"  {line}")
    if trace:
        click.echo(f"trace: {trace} ({len(records['nodes'])} node events; open in chrome://tracing or ui.perfetto.dev)")
