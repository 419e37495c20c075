"""Load an ONNX model from a path, bytes or a ModelProto, with its external data.

Everything that can be wrong with the file becomes a ModelError that names the file and
says what was expected: missing, a directory, empty, not ONNX, truncated, external data
that cannot be found.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from rzrt.errors import ModelError


def load_model(source) -> onnx.ModelProto:
    """Return a ModelProto with all external tensor data loaded into memory."""
    if isinstance(source, onnx.ModelProto):
        model, where, base = source, "the given ModelProto", None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model, where, base = _parse(bytes(source), "the given bytes"), "the given bytes", None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ModelError(f"model file not found: {where}; expected a path to an .onnx file")
        if path.is_dir():
            raise ModelError(f"{where} is a directory; expected a path to an .onnx file")
        model, base = _parse(path.read_bytes(), where), path.parent
    else:
        raise ModelError(f"cannot load a model from a {type(source).__name__}; "
                         "expected a path, bytes or an onnx.ModelProto")
    _check_plausible(model, where)
    _load_external(model, base, where)
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{where} is empty; expected an ONNX model (a protobuf ModelProto)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelError(f"{where} is not a valid ONNX model (truncated or not ONNX: {e}); "
                         "re-export it or check the download") from None
    return model


def _check_plausible(model: onnx.ModelProto, where: str) -> None:
    # Protobuf happily parses many byte strings as a mostly-empty message; an ONNX model
    # always has an IR version and a graph with at least one output.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{where} is not an ONNX model (no IR version or no graph outputs); "
                         "expected a file written by onnx.save or torch.onnx.export")


def _load_external(model: onnx.ModelProto, base: Path | None, where: str) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    if not external:
        return
    if base is None:
        name = {e.key: e.value for e in external[0].external_data}.get("location", "?")
        raise ModelError(f"{where}: tensor {external[0].name!r} keeps its data in the external file "
                         f"{name!r}; load the model from its path so that file can be found")
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        loc = base / info.get("location", "")
        if not loc.is_file():
            raise ModelError(f"{where}: tensor {t.name!r} keeps its data in {loc}, which does not exist; "
                             "copy the .data file next to the model")
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise ModelError(f"{where}: cannot read external data ({e}); the .data file is truncated or corrupt") \
            from None
