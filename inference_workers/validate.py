"""``python -m inference_workers.validate``: check, load, run and measure one artifact.

The registry runs this in a separate process with a time limit and a memory limit (see
``apps.registry.sandbox``). It uses the very runtime code the inference workers serve
with, prints one JSON object on stdout, and exits 0 when the model is usable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from inference_workers.errors import WorkerError
from inference_workers.inspection import UnsafeArtifactError, check_onnx_external_data, inspect_artifact
from inference_workers.runtimes import RuntimeOptions, measure_footprint
from inference_workers.runtimes.base import ModelExecutionError, RuntimeLoadError
from inference_workers.types import MessageError, TensorSpec


def _specs(text: str, what: str) -> tuple[TensorSpec, ...]:
    if not text:
        return ()
    try:
        return tuple(TensorSpec.from_message(item) for item in json.loads(text))
    except (json.JSONDecodeError, TypeError, MessageError) as exc:
        raise UnsafeArtifactError(f"the {what} signature is not a list of {{name, datatype, shape}}: {exc}") from None


def validate(
    path: Path,
    *,
    declared_format: str,
    max_batch: int,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    max_uncompressed_bytes: int,
    device: str,
) -> dict[str, Any]:
    """Validates an artifact; returns what the registry stores, or raises with the reason."""
    detected = inspect_artifact(path, max_uncompressed_bytes=max_uncompressed_bytes).format
    if declared_format and declared_format != detected:
        raise UnsafeArtifactError(f"the upload says format '{declared_format}' but the file is {detected}")
    if detected == "onnx":
        import onnx

        check_onnx_external_data(path)
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise UnsafeArtifactError(f"onnx.checker refused the model: {exc}") from None
    if detected == "torchscript" and not inputs:
        raise UnsafeArtifactError(
            "a TorchScript file carries no signature: send 'inputs' and 'outputs' as JSON lists of "
            '{"name", "datatype", "shape"} with the upload'
        )
    options = RuntimeOptions(device=device, intra_op_threads=1)
    batch = max(max_batch, 1)
    last_error: Exception | None = None
    while batch >= 1:
        try:
            runner, footprint = measure_footprint(
                path, detected, options, max_batch=batch, inputs=inputs, outputs=outputs
            )
        except ModelExecutionError as exc:
            last_error = exc
            batch //= 2
            continue
        signature = runner.signature
        return {
            "ok": True,
            "format": detected,
            "platform": runner.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.outputs],
            "batched": signature.batched,
            "max_batch_size": batch if signature.batched else 0,
            "footprint_bytes": footprint.bytes,
            "device_kind": footprint.device_kind,
            "load_seconds": round(footprint.load_seconds, 4),
        }
    raise ModelExecutionError(f"the model fails even at batch 1: {last_error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference_workers.validate")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--format", default="")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--inputs", default="")
    parser.add_argument("--outputs", default="")
    parser.add_argument("--max-uncompressed", type=int, default=16 * 1024**3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--result", type=Path, required=True, help="where the JSON verdict is written")
    args = parser.parse_args(argv)
    # The model runs in this process and may print: whatever it writes goes to stderr, and
    # the verdict goes only to --result, so no model can forge it.
    sys.stdout.flush()
    os.dup2(2, 1)
    verdict = _validate_to_verdict(args)
    args.result.write_text(json.dumps(verdict))
    return 0 if verdict.get("ok") else 1


def _validate_to_verdict(args: argparse.Namespace) -> dict[str, Any]:
    try:
        result = validate(
            args.artifact,
            declared_format=args.format,
            max_batch=args.max_batch,
            inputs=_specs(args.inputs, "inputs"),
            outputs=_specs(args.outputs, "outputs"),
            max_uncompressed_bytes=args.max_uncompressed,
            device=args.device,
        )
    except (WorkerError, RuntimeLoadError) as exc:
        return {"ok": False, "reason": str(exc)}
    except MemoryError:
        return {"ok": False, "reason": "the model needs more memory than the validation limit"}
    except Exception as exc:  # noqa: BLE001 — anything an untrusted model raises is its failure, reported
        return {"ok": False, "reason": f"the model failed during validation: {type(exc).__name__}: {exc}"}
    return result


if __name__ == "__main__":
    sys.exit(main())
