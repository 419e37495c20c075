"""Strings (tensors of Python str, numpy dtype object) and image decoding (pillow)."""
from __future__ import annotations

import io
import re

import numpy as np

from rzrt.ops.registry import kernel


def _str(x):
    return np.asarray(x).astype(np.str_)


@kernel("StringConcat", since=20)
def StringConcat(X, Y):
    """elementwise x + y, broadcast"""
    return np.char.add(_str(X), _str(Y)).astype(object)


@kernel("RegexFullMatch", since=20)
def RegexFullMatch(X, *, pattern=None):
    """True where the whole string matches `pattern` (Python's re, a superset of the RE2 the spec names)"""
    regex = re.compile(pattern)
    return np.vectorize(lambda s: regex.fullmatch(s) is not None, otypes=[np.bool_])(X) if X.size else \
        np.zeros(X.shape, dtype=bool)


@kernel("StringSplit", since=20)
def StringSplit(X, *, delimiter=None, maxsplit=None):
    """Y[..., k] = k-th piece (padded with "" to the longest), Z = number of pieces;
    no delimiter (or "") splits on runs of whitespace"""
    sep = delimiter or None
    parts = [str(s).split(sep, -1 if maxsplit is None else maxsplit) for s in np.asarray(X).reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    Y = np.array([p + [""] * (width - len(p)) for p in parts], dtype=object).reshape(X.shape + (width,))
    Z = np.array([len(p) for p in parts], dtype=np.int64).reshape(X.shape)
    return Y, Z


@kernel("StringNormalizer", since=10)
def StringNormalizer(X, *, case_change_action="NONE", is_case_sensitive=0, locale="", stopwords=None):
    """drop stopwords (case-(in)sensitively), then LOWER/UPPER/NONE; an all-stopword row leaves [""]"""
    x = np.asarray(X)
    stop = set(stopwords or [])
    lowered = {w.lower() for w in stop}

    def keep(s):
        return s not in stop if is_case_sensitive else s.lower() not in lowered

    def change(s):
        return s.lower() if case_change_action == "LOWER" else s.upper() if case_change_action == "UPPER" else s
    if x.ndim == 2:   # [1, C]: filter along the row
        rows = [[change(s) for s in row if keep(s)] for row in x]
        out = [r if r else [""] for r in rows]
        return np.array(out, dtype=object)
    kept = [change(s) for s in x.reshape(-1) if keep(s)]
    return np.array(kept or [""], dtype=object)


@kernel("ImageDecoder", since=20)
def ImageDecoder(encoded_stream, *, pixel_format="RGB"):
    """encoded bytes (JPEG, PNG, BMP, ...) -> HWC uint8, RGB / BGR / Grayscale (H, W, 1)"""
    from PIL import Image
    img = Image.open(io.BytesIO(np.asarray(encoded_stream).tobytes()))
    if pixel_format == "Grayscale":
        return np.asarray(img.convert("L"))[:, :, None]
    rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1]) if pixel_format == "BGR" else rgb
