"""Open Inference Protocol (v2) bodies ↔ numpy arrays: JSON and the binary tensor extension.

Decoding checks every input against the model's signature (name, datatype, rank, fixed
dimensions, element count) and names the input at fault in a 400.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inference_workers.datatypes import BINARY_ONLY, NUMPY_DTYPES
from inference_workers.errors import InvalidInputError, PayloadTooLargeError, UnsupportedEncodingError
from inference_workers.types import TensorSpec

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


@dataclass
class InferRequest:
    """A decoded infer request: arrays by input name, and how to answer."""

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    # (output name, binary? — None: as binary_data_output says) or None for all outputs
    requested: list[tuple[str, bool | None]] | None
    binary_default: bool = False
    timeout_us: int | None = field(default=None)


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"the request body is not valid JSON: {exc}") from None


def _split_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    if header_length is None:
        return _loads(body), memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInputError("Inference-Header-Content-Length must be a whole number") from None
    if length < 0 or length > len(body):
        raise InvalidInputError(f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes")
    return _loads(body[:length]), memoryview(body)[length:]


def _bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    elements = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInputError(f"input '{name}': BYTES data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInputError(f"input '{name}': a BYTES element runs past the end of its data")
        elements.append(bytes(raw[offset : offset + size]))
        offset += size
    if offset != len(raw):
        raise InvalidInputError(f"input '{name}': {len(raw) - offset} bytes left after {count} BYTES elements")
    return elements


def _check_shape(name: str, shape: Any, spec: TensorSpec) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInputError(f"input '{name}': shape must be a list of non-negative whole numbers")
    if len(shape) != len(spec.shape):
        raise InvalidInputError(
            f"input '{name}': shape {shape} has {len(shape)} dimensions; the model expects {len(spec.shape)} "
            f"({list(spec.shape)}, -1 = any)"
        )
    for position, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want != -1 and got != want:
            raise InvalidInputError(
                f"input '{name}': dimension {position} is {got}; the model expects {want} (shape {list(spec.shape)})"
            )
    return tuple(shape)


def _json_array(name: str, data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype in BINARY_ONLY:
        raise InvalidInputError(f"input '{name}': {datatype} cannot travel as JSON numbers; send it as binary data")
    if not isinstance(data, list):
        raise InvalidInputError(f"input '{name}': 'data' must be a list (flat or nested, row-major)")
    try:
        if datatype == "BYTES":
            items = _flatten(data)
            if not all(isinstance(item, str) for item in items):
                raise InvalidInputError(f"input '{name}': BYTES data in JSON must be strings")
            flat = np.array([item.encode() for item in items], dtype=object)
        else:
            flat = _strict_numbers(name, data, datatype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"input '{name}': data does not fit datatype {datatype}: {exc}") from None
    expected = math.prod(shape)
    if flat.size != expected:
        raise InvalidInputError(f"input '{name}': {flat.size} elements given for shape {list(shape)} ({expected})")
    return flat.reshape(shape)


_ACCEPTED_KINDS = {"BOOL": "b", "FP16": "iuf", "BF16": "iuf", "FP32": "iuf", "FP64": "iuf"}


def _strict_numbers(name: str, data: list[Any], datatype: str) -> np.ndarray:
    """JSON numbers as ``datatype``, refusing what would convert silently and wrongly:
    strings, nulls, booleans for numbers, fractions for integers, out-of-range values."""
    source = np.asarray(data)
    allowed = _ACCEPTED_KINDS.get(datatype, "iu")
    if source.size and source.dtype.kind not in allowed:
        wanted = {"b": "true/false", "iu": "whole numbers", "iuf": "numbers"}[allowed]
        raise InvalidInputError(f"input '{name}': {datatype} data must be {wanted} (got {source.dtype.kind!r} values)")
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu" and source.size:
        info = np.iinfo(dtype)
        if source.min() < info.min or source.max() > info.max:
            raise InvalidInputError(f"input '{name}': a value is outside the range of {datatype}")
    converted = source.astype(dtype).reshape(-1)
    if dtype.kind == "f" and source.size and np.isinf(converted).any() and np.isfinite(source).all():
        raise InvalidInputError(f"input '{name}': a value is too large for {datatype}")
    return converted


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def decode_request(body: bytes, *, header_length: str | None, signature_inputs: Sequence[TensorSpec]) -> InferRequest:
    """Decodes and validates an infer request body against the model's inputs.

    Raises:
        InvalidInputError: Malformed JSON, unknown or missing input, wrong datatype or
            shape, or binary data whose length does not match.
    """
    header, binary = _split_body(body, header_length)
    if not isinstance(header, dict):
        raise InvalidInputError("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError("the request needs a non-empty 'inputs' list")
    specs = {spec.name: spec for spec in signature_inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError("each input needs a 'name', 'shape', 'datatype' and 'data'")
        name = item["name"]
        spec = specs.get(name)
        if spec is None:
            raise InvalidInputError(f"input '{name}' is not an input of this model; it takes {sorted(specs)}")
        if name in arrays:
            raise InvalidInputError(f"input '{name}' is given twice")
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            raise InvalidInputError(f"input '{name}' has datatype {datatype}; the model expects {spec.datatype}")
        shape = _check_shape(name, item.get("shape"), spec)
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInputError(f"input '{name}': 'parameters' must be a JSON object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInputError(f"input '{name}': binary_data_size must be a non-negative whole number")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            raw = binary[offset : offset + size]
            offset += size
            count = math.prod(shape)
            if datatype == "BYTES":
                arrays[name] = np.array(_bytes_elements(raw, count, name), dtype=object).reshape(shape)
            else:
                dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
                if size != count * dtype.itemsize:
                    raise InvalidInputError(
                        f"input '{name}': {size} bytes of binary data, but shape {list(shape)} of {datatype} "
                        f"needs {count * dtype.itemsize}"
                    )
                arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        else:
            if "data" not in item:
                raise InvalidInputError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
            arrays[name] = _json_array(name, item["data"], datatype, shape)
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes of binary data follow the inputs and belong to none")
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise InvalidInputError(f"missing input(s) {missing}; the model takes {sorted(specs)}")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("'parameters' must be a JSON object")
    requested: list[tuple[str, bool | None]] | None = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise InvalidInputError("'outputs' must be a list of {\"name\": …}")
        requested = []
        for output in header["outputs"]:
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise InvalidInputError("each requested output needs a 'name'")
            output_parameters = output.get("parameters") or {}
            if not isinstance(output_parameters, dict):
                raise InvalidInputError(f"output '{output['name']}': 'parameters' must be a JSON object")
            as_binary = output_parameters.get("binary_data")
            if as_binary is not None and not isinstance(as_binary, bool):
                raise InvalidInputError(f"output '{output['name']}': binary_data must be true or false")
            requested.append((output["name"], as_binary))
    timeout = parameters.get("timeout")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInputError("binary_data_output must be true or false")
    request_id = header.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        parameters=parameters,
        inputs=arrays,
        requested=requested,
        binary_default=binary_default,
        timeout_us=int(timeout) if isinstance(timeout, int) and not isinstance(timeout, bool) else None,
    )


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    output_specs: Sequence[TensorSpec],
) -> tuple[bytes, dict[str, str]]:
    """Encodes outputs as v2 JSON, or JSON header + binary tensors when asked for.

    Returns:
        The body and the response headers (content type, and the header length when binary).
    """
    datatypes = {spec.name: spec.datatype for spec in output_specs}
    if request.requested is None:
        wanted = [(spec.name, request.binary_default) for spec in output_specs]
    else:
        unknown = sorted(name for name, _ in request.requested if name not in outputs)
        if unknown:
            raise InvalidInputError(f"requested output(s) {unknown} do not exist; the model has {sorted(outputs)}")
        # An output's own binary_data wins over the request's binary_data_output.
        wanted = [(name, request.binary_default if binary is None else binary) for name, binary in request.requested]
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        array = outputs[name]
        datatype = datatypes.get(name) or _datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary or datatype in BINARY_ONLY:
            blob = _to_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)
            ]
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": JSON_TYPE}
    return b"".join([header, *blobs]), {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}


def _datatype_of(array: np.ndarray) -> str:
    from inference_workers.datatypes import DATATYPES_BY_NUMPY

    return DATATYPES_BY_NUMPY.get(array.dtype, "BYTES")


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def error_body(message: str) -> bytes:
    """``{"error": message}`` as bytes."""
    return orjson.dumps({"error": message})


def decode_tensors(
    body: bytes, *, header_length: str | None, key: str, max_elements: int = 4096
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads the tensors under ``key`` ("inputs" or "outputs") of a v2 body that has already
    been served, for prediction logs: each as name, datatype, shape and its elements as a flat
    JSON list (at most ``max_elements``; ``truncated`` when there were more), binary ones
    included. Returns the JSON header too. Lenient: what it cannot read it leaves out.

    Raises:
        InvalidInputError: The body's JSON header cannot be read at all.
    """
    header, binary = _split_body(body, header_length)
    if not isinstance(header, dict):
        raise InvalidInputError("the body is not a JSON object")
    tensors: list[dict[str, Any]] = []
    offset = 0
    for item in header.get(key) or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        datatype = str(item.get("datatype", ""))
        raw_shape = item.get("shape")
        shape: list[Any] = raw_shape if isinstance(raw_shape, list) else []
        entry: dict[str, Any] = {"name": item["name"], "datatype": datatype, "shape": shape}
        size = (
            (item.get("parameters") or {}).get("binary_data_size") if isinstance(item.get("parameters"), dict) else None
        )
        data: list[Any] | None = None
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= len(binary) - offset:
            raw = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                try:
                    count = math.prod([int(d) for d in shape])
                    data = [e.decode("utf-8", "replace") for e in _bytes_elements(raw, count, item["name"])]
                except (InvalidInputError, ValueError, TypeError):
                    data = None
            elif datatype in NUMPY_DTYPES:
                dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
                usable = len(raw) - len(raw) % dtype.itemsize
                data = np.frombuffer(raw[:usable], dtype=dtype)[: max_elements + 1].tolist()
        elif "data" in item:
            data = _flatten(item["data"]) if isinstance(item["data"], list) else [item["data"]]
        if data is not None:
            entry["truncated"] = len(data) > max_elements
            entry["data"] = data[:max_elements]
        tensors.append(entry)
    return header, tensors


def decompress(body: bytes, encoding: bytes, *, limit: int) -> bytes:
    """A ``gzip`` or ``deflate`` request body, inflated to at most ``limit`` bytes
    (``identity``: the body as it is).

    Raises:
        UnsupportedEncodingError: Another encoding (415).
        PayloadTooLargeError: It inflates past ``limit`` (a small body can expand a
            thousandfold; inflating stops at the limit).
        InvalidInputError: The bytes are not what the encoding says, or are cut short.
    """
    if encoding == b"identity":
        return body
    if encoding == b"gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == b"deflate":
        inflater = zlib.decompressobj()
    else:
        raise UnsupportedEncodingError(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send gzip, deflate or identity"
        )
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"the body is not valid {encoding.decode()} data: {exc}") from None
    if len(inflated) > limit:
        raise PayloadTooLargeError(f"the body inflates past this worker's limit of {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise InvalidInputError(f"the {encoding.decode()} body is cut short or has bytes after its end")
    return inflated
