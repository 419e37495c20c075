"""Class names for a classifier's outputs.

Where they come from, first match wins:
  1. --labels FILE given by the user (one name a line, or a JSON list), checked against the class count
  2. the model's metadata_props["labels"] (a JSON list, or one name a line), as models/export.py writes;
     skipped (not an error) when its count does not match the output
  3. the bundled ImageNet-1k list, when the output has 1000 classes
  4. the class indices themselves
"""
from __future__ import annotations

import json
from pathlib import Path

from rzrt.errors import InputError

METADATA_KEYS = ("labels", "classes", "class_names")
IMAGENET = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"


def parse_labels(text: str) -> list:
    """A JSON list of names, or one name a line (blank lines skipped). Text that merely starts
    with "[" (a name such as "[PAD]") is read line by line."""
    text = text.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except ValueError:
            names = None
        if isinstance(names, list):
            return [str(x) for x in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_labels() -> list:
    return parse_labels(IMAGENET.read_text(encoding="utf-8"))


def resolve_labels(n_classes: int, metadata: dict, labels_file=None) -> tuple:
    """(list of n_classes names, where they came from)."""
    if labels_file:
        try:
            labels = parse_labels(Path(labels_file).read_text(encoding="utf-8-sig"))
        except OSError as e:
            raise InputError(f"cannot read labels file {labels_file}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise InputError(f"cannot read labels file {labels_file}: not UTF-8 text ({e.reason} at byte "
                             f"{e.start}); expected one class name a line, UTF-8") from None
        if len(labels) != n_classes:
            raise InputError(f"labels file {labels_file} has {len(labels)} names but the model outputs "
                             f"{n_classes} classes; expected one name a line, {n_classes} lines")
        return labels, str(labels_file)
    for key in METADATA_KEYS:
        if key in metadata:
            labels = parse_labels(metadata[key])
            if len(labels) == n_classes:
                return labels, f"model metadata {key!r}"
    if n_classes == 1000:
        return imagenet_labels(), "ImageNet-1k (bundled)"
    return [str(i) for i in range(n_classes)], "class indices"
