"""The transport-agnostic v2 data plane over the model host.

The HTTP adapter (``server.py``) only moves bytes and headers; everything the protocol
means lives here: health, server and model metadata, readiness, and infer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from inference_workers.codec import InferRequest, decode_request, encode_response
from inference_workers.errors import InvalidInputError, UnavailableError
from inference_workers.host import HostedEntry, ModelHost

SERVER_NAME = "berth-worker"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]


def parse_version(version: str | None) -> int | None:
    """A version from the URL path as a number (None when absent)."""
    if version is None:
        return None
    if not version.isdigit() or len(version) > 9:
        raise InvalidInputError(f"model version '{version}' is not a whole number")
    return int(version)


class DataPlane:
    """What the worker answers, independent of transport."""

    def __init__(self, host: ModelHost, *, is_draining: Callable[[], bool]) -> None:
        self.host = host
        self._is_draining = is_draining
        self.last_infer_at = 0.0  # time.monotonic() of the last infer request (the SIGTERM handover waits for quiet)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self._is_draining()

    def _entry(self, name: str, version: str | None) -> HostedEntry:
        return self.host.resolve(name, parse_version(version))

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]``."""
        entry = self._entry(name, version)
        assert entry.runner is not None
        signature = entry.runner.signature
        versions = sorted(str(state.key.version) for state in self.host.states() if state.key.dataplane_name == name)
        return {
            "name": entry.key.model,
            "versions": versions,
            "platform": entry.runner.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.outputs],
        }

    def model_ready(self, name: str, version: str | None) -> bool:
        """``GET …/ready``: hosted and ready (raises 404 for a model not hosted here)."""
        try:
            self._entry(name, version)
        except UnavailableError:
            return False
        return not self._is_draining()

    async def infer(
        self, name: str, version: str | None, body: bytes, *, header_length: str | None
    ) -> tuple[bytes, dict[str, str]]:
        """``POST …/infer``: decode, batch, run, encode.

        Returns:
            The response body and headers.
        """
        self.last_infer_at = time.monotonic()
        if self._is_draining():
            raise UnavailableError("the worker is draining; send requests to another replica")
        entry = self._entry(name, version)
        assert entry.runner is not None and entry.batcher is not None
        signature = entry.runner.signature
        request: InferRequest = decode_request(body, header_length=header_length, signature_inputs=signature.inputs)
        outputs = await entry.batcher.submit(request.inputs, timeout_us=request.timeout_us)
        return encode_response(
            model_name=entry.key.model,
            model_version=str(entry.key.version),
            request=request,
            outputs=outputs,
            output_specs=signature.outputs,
        )
