"""Load an ONNX model from a path, bytes or a ModelProto, with its external data.

Everything that can be wrong with the file becomes a ModelError that names the file and
says what was expected: missing, a directory, unreadable, empty, not ONNX, truncated,
without opset imports, external data that cannot be found or is cut short.
A ModelProto given by the caller is never modified.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

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
        model, base = _parse(_read(path), where), path.parent
    else:
        raise ModelError(f"cannot load a model from a {type(source).__name__} object; "
                         "expected a path, bytes or an onnx.ModelProto")
    _check_plausible(model, where)
    _load_external(model, base, where)
    return model


def _read(path: Path) -> bytes:
    try:
        if not path.exists():
            raise ModelError(f"model file not found: {path}; expected a path to an .onnx file")
        if path.is_dir():
            raise ModelError(f"{path} is a directory; expected a path to an .onnx file")
        return path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read the model file {path} ({e.strerror or e}); "
                         "expected a readable path to an .onnx file") from None


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{where} is empty; expected an ONNX model (a protobuf ModelProto)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:   # DecodeError mostly; whatever protobuf raises, the bytes are not a model
        raise ModelError(f"{where} is not a valid ONNX model (truncated or not ONNX: {e}); "
                         "re-export it or check the download") from None
    return model


def _check_plausible(model: onnx.ModelProto, where: str) -> None:
    # Protobuf happily parses many byte strings as a mostly-empty message; an ONNX model
    # always has an IR version and a graph with at least one output.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{where} is not an ONNX model (no IR version or no graph outputs); "
                         "expected a file written by onnx.save or torch.onnx.export")
    # Since IR version 3 a model must import at least one opset. Fields are written in number
    # order and opset_import (8) follows graph (7), so a file cut right after its graph parses
    # cleanly: without this check it would load and run every op at the newest opset.
    if model.ir_version >= 3 and not model.opset_import:
        raise ModelError(f"{where} imports no opset (IR version {model.ir_version} requires at least one, "
                         "e.g. ai.onnx 17); the file is truncated or was written incorrectly, re-export it")


def _location(tensor) -> str:
    return {e.key: e.value for e in tensor.external_data}.get("location", "")


def _load_external(model: onnx.ModelProto, base: Path | None, where: str) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    if not external:
        return
    if base is None:
        files = sorted({_location(t) or "?" for t in external})
        raise ModelError(f"{where}: tensor {external[0].name!r} keeps its data in the external file "
                         f"{', '.join(map(repr, files))}; load the model from its path so that file can be found")
    for t in external:
        loc = base / _location(t)
        try:
            found = bool(_location(t)) and loc.is_file()
        except OSError:
            found = False
        if not found:
            raise ModelError(f"{where}: tensor {t.name!r} keeps its data in {loc}, which does not exist; "
                             "copy the .data file next to the model")
    files = ", ".join(sorted({str(base / _location(t)) for t in external}))
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise ModelError(f"{where}: cannot read external data from {files} ({e}); "
                         "the .data file is truncated or corrupt, copy it again") from None
