"""Fixtures for the data plane: real models built once per session, a loop thread, a host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_workers.artifacts import ArtifactCache
from inference_workers.devices import CpuDevice
from inference_workers.host import ModelHost
from inference_workers.loop import EventLoopThread
from inference_workers.runtimes import RuntimeOptions
from inference_workers.types import BatchingConfig, LoadCommand, ModelKey
from tests.inference_workers import models


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "doubler": models.doubler_onnx(folder / "doubler.onnx"),
        "mlp": models.mlp_onnx(folder / "mlp.onnx"),
        "adder": models.adder_onnx(folder / "adder.onnx"),
        "big": models.mlp_onnx(folder / "big.onnx", width=4096),
        "raiser": models.raiser_torchscript(folder / "raiser.pt"),
        "collapser": models.collapser_torchscript(folder / "collapser.pt"),
        "doubler_ts": models.torchscript(models.Doubler(), folder / "doubler.pt", features=4),
        "mlp_export": models.exported(models.Mlp(width=64), folder / "mlp.pt2", features=256),
    }


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread().start()
    yield thread
    thread.stop()


@pytest.fixture
def make_host(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator:
    hosts: list[ModelHost] = []

    def build(budget: int = 2 * 1024**3, headroom: int = 0) -> ModelHost:
        host = ModelHost(
            device=CpuDevice(memory_budget_bytes=budget),
            options=RuntimeOptions(device="cpu", intra_op_threads=1),
            cache=ArtifactCache(tmp_path / f"cache-{len(hosts)}"),
            loop=loop_thread,
            headroom_bytes=headroom,
        )
        hosts.append(host)
        return host

    yield build
    for host in hosts:
        host.close()


def load_command(
    path: Path,
    *,
    tenant: str = "acme",
    model: str = "doubler",
    version: int = 1,
    model_format: str = "onnx",
    reservation: int = 1 << 20,
    allow_evict: bool = False,
    batching: BatchingConfig | None = None,
    sha256: str | None = None,
    inputs=(),
    outputs=(),
) -> LoadCommand:
    return LoadCommand(
        key=ModelKey(tenant, model, version),
        artifact_uri=path.as_uri(),
        sha256=sha256 or models.sha256_of(path),
        format=model_format,  # type: ignore[arg-type]
        batching=batching or BatchingConfig(max_batch_size=8),
        reservation_bytes=reservation,
        allow_evict=allow_evict,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )
