"""`rzrt run MODEL IMAGE...`: classify pictures, print the top-k classes with probabilities."""
from __future__ import annotations

import json
import sys

import click
import numpy as np

from rzrt.cli.main import cli
from rzrt.cli.options import floats, open_session, session_options
from rzrt.errors import InputError, RzrtError
from rzrt.image import IMAGENET_MEAN, IMAGENET_STD, expand_paths, preprocess
from rzrt.labels import resolve_labels


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="classes to print per image")
@click.option("--size", type=click.IntRange(min=1), help="resize the shorter side to SIZE  [default: crop*256/224]")
@click.option("--crop", type=click.IntRange(min=1), help="center crop CROP x CROP  [default: the model's input size, else 224]")
@click.option("--mean", default=",".join(map(str, IMAGENET_MEAN)), show_default=True, help="per-channel mean, R,G,B")
@click.option("--std", default=",".join(map(str, IMAGENET_STD)), show_default=True, help="per-channel std, R,G,B")
@click.option("--labels", "labels_file", help="class names, one a line (default: the model's metadata, else ImageNet for 1000 classes)")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1), help="images per run")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@session_options
def run(model, images, top_k, size, crop, mean, std, labels_file, batch, as_json, **session_kw):
    """Classify IMAGE(s) (files or folders) with MODEL and print the top-k classes.

    \b
    rzrt run resnet50.onnx cat.jpg
    rzrt run resnet50.onnx photos/ --top-k 3 --json
    """
    mean, std = floats(mean, "--mean", 3), floats(std, "--std", 3)
    if not np.isfinite(mean + std).all() or 0 in std:
        raise InputError(f"--mean and --std expect finite numbers and a non-zero std, "
                         f"got --mean {','.join(map(str, mean))} --std {','.join(map(str, std))}")
    sess = open_session(model, **session_kw)
    inp = _image_input(sess)
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    nhwc = inp.shape[-1] == 3 and inp.shape[1] != 3
    hw = inp.shape[1:3] if nhwc else inp.shape[2:4]
    if crop is None:
        crop = hw[0] if isinstance(hw[0], int) and hw[0] > 0 else 224
    size = size or int(crop * 256 / 224)
    dtype = np.dtype(np.float32) if "float)" in inp.type else _np_dtype(inp.type)

    paths = expand_paths(images)
    if not paths:
        raise InputError(f"no images found in {', '.join(images)}; expected picture files or folders with some")
    results, errors = [], []
    per_run = fixed_batch or batch
    chunks = [paths[i:i + per_run] for i in range(0, len(paths), per_run)]
    n_classes = _class_count(sess.get_outputs()[0].shape)
    meta = sess.get_modelmeta().custom_metadata_map
    labels = resolve_labels(n_classes, meta, labels_file)[0] if n_classes else None  # a bad --labels fails now
    show = sys.stderr.isatty() and len(chunks) > 1
    with click.progressbar(chunks, label="classifying", file=sys.stderr) if show else _nullbar(chunks) as bar:
        for chunk in bar:
            tensors, ok = [], []
            for p in chunk:
                try:
                    tensors.append(preprocess(p, size, crop, mean, std))
                    ok.append(p)
                except RzrtError as e:
                    errors.append({"image": str(p), "error": str(e)})
                    if not as_json:
                        click.echo(f"rzrt: skipped {p}: {e}", err=True)
            if not ok:
                continue
            x = np.stack(tensors).astype(dtype)
            if nhwc:
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            if fixed_batch and len(ok) < fixed_batch:   # pad a fixed-batch model's last run
                x = np.concatenate([x, np.zeros((fixed_batch - len(ok),) + x.shape[1:], x.dtype)])
            (logits,) = sess.run([sess.get_outputs()[0].name], {inp.name: x})
            probs = _probabilities(np.asarray(logits, dtype=np.float64).reshape(len(x), -1))[:len(ok)]
            if labels is None or len(labels) != probs.shape[1]:
                labels, _ = resolve_labels(probs.shape[1], meta, labels_file)
            for p, row in zip(ok, probs):
                top = np.argsort(-row, kind="stable")[:top_k]
                results.append({"image": str(p), "top": [
                    {"index": int(i), "label": labels[i], "probability": float(row[i])} for i in top]})
    if as_json:
        click.echo(json.dumps({"model": model, "results": results, "errors": errors}, indent=2))
    else:
        for r in results:
            click.echo(r["image"])
            for rank, t in enumerate(r["top"], 1):
                click.echo(f"  {rank}. {t['probability'] * 100:6.2f}%  {t['label']}  ({t['index']})")
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(paths)} image(s) could not be read")


def _image_input(sess):
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"rzrt run needs a model with one image input; this one has {len(inputs)}: "
                         f"{', '.join(i.name for i in inputs)}")
    inp = inputs[0]
    if inp.shape is None or len(inp.shape) != 4:
        raise InputError(f"rzrt run needs a 4-D image input (N, 3, H, W); input {inp.name!r} has shape {inp.shape}")
    return inp


def _class_count(shape):
    """Classes per image from the output's declared shape (N, C, ...), or None when not all known."""
    dims = list(shape or [])[1:]
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return int(np.prod(dims))


def _np_dtype(type_str: str):
    name = type_str[len("tensor("):-1]
    return np.dtype({"double": "float64", "float16": "float16"}.get(name, name))


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax, unless the model already outputs probabilities (rows in [0, 1] summing to 1)."""
    if logits.min() >= 0 and logits.max() <= 1 and np.allclose(logits.sum(axis=1), 1, atol=1e-3):
        return logits
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _nullbar:
    def __init__(self, items):
        self.items = items

    def __enter__(self):
        return self.items

    def __exit__(self, *exc):
        return False
