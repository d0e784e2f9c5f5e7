"""What an uploaded artifact is, and whether it is safe to open: format detection,
pickle refusal, zip-bomb checks, and ONNX external-data paths.

Nothing here unpickles or executes anything: it reads bytes, zip directories and
protobuf fields only.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from inference_workers.errors import WorkerError
from inference_workers.types import ModelFormat

# Pickle protocol 2+ streams start with PROTO (0x80) then the protocol number.
_PICKLE_PREFIXES = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
MAX_ZIP_RATIO = 200  # uncompressed / compressed; weights barely compress, a bomb does


class UnsafeArtifactError(WorkerError):
    """The artifact is refused before anything opens it; the message says what to upload."""


@dataclass(frozen=True)
class Inspection:
    """The detected format of an artifact."""

    format: ModelFormat


def inspect_artifact(path: Path, *, max_uncompressed_bytes: int) -> Inspection:
    """Detects the format from the content and refuses what must not be opened.

    Raises:
        UnsafeArtifactError: Empty, pickled, a zip bomb, or not a model format Berth serves.
    """
    size = path.stat().st_size
    if size == 0:
        raise UnsafeArtifactError("the file is empty; upload an ONNX, TorchScript or torch.export file")
    with path.open("rb") as handle:
        head = handle.read(16)
    if zipfile.is_zipfile(path):
        return Inspection(format=_inspect_zip(path, size=size, max_uncompressed_bytes=max_uncompressed_bytes))
    if head.startswith(_PICKLE_PREFIXES):
        raise UnsafeArtifactError(
            "this is a pickled file (torch.save of a module or state dict); Berth never unpickles uploads. "
            "Upload TorchScript (torch.jit.script/trace(...).save) or torch.export (torch.export.save) instead"
        )
    return Inspection(format="onnx")


def _inspect_zip(path: Path, *, size: int, max_uncompressed_bytes: int) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArtifactError(f"the archive is damaged: {exc}") from None
    total = sum(member.file_size for member in members)
    if total > max_uncompressed_bytes or total > MAX_ZIP_RATIO * max(size, 1):
        raise UnsafeArtifactError(
            f"the archive expands to {total} bytes from {size}; that is a zip bomb or far over the size limit"
        )
    names = [member.filename for member in members]
    if any(name.startswith("/") or ".." in Path(name).parts for name in names):
        raise UnsafeArtifactError("the archive has entries with absolute or '..' paths")
    if any(name.endswith("serialized_exported_program.json") or "/models/model.json" in name for name in names) or any(
        name.endswith(".json") and "exported_program" in name for name in names
    ):
        return "torch_export"
    has_code = any("/code/" in name for name in names)
    has_pickle = any(name.endswith("data.pkl") for name in names)
    if has_code:
        return "torchscript"
    if has_pickle:
        raise UnsafeArtifactError(
            "this is a torch.save archive (a pickle of Python objects); Berth never unpickles uploads. "
            "Upload TorchScript (torch.jit.script/trace(...).save) or torch.export (torch.export.save) instead"
        )
    raise UnsafeArtifactError("this zip archive is neither a TorchScript nor a torch.export file")


def check_onnx_external_data(path: Path) -> None:
    """Refuses ONNX external-data locations that leave the artifact's folder.

    Raises:
        UnsafeArtifactError: Naming the offending location.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 — protobuf raises DecodeError and others: all mean "not ONNX"
        raise UnsafeArtifactError(f"this is not an ONNX model (or it is truncated): {exc}") from None
    folder = path.parent.resolve()
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                tensors.append(attribute.t)
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UnsafeArtifactError(
                f"tensor '{tensor.name}' keeps its data at '{location}', outside the model's folder; "
                "export with external_data=False (one file) instead"
            )
        raise UnsafeArtifactError(
            f"tensor '{tensor.name}' keeps its data in a separate file '{location}'; "
            "upload one self-contained file (export with external_data=False)"
        )
