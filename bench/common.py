"""Shared pieces of the benchmarks: models, a load generator, a worker process, printing."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_list(text: str) -> set[int]:
    """A CPU list as ``taskset -c`` takes it ("1", "2,3", "4-7,9") as a set of CPU numbers."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list such as 1 or 2,3 or 4-7") from None
    if not cpus:
        raise argparse.ArgumentTypeError(f"{text!r} names no CPU")
    return cpus


def add_client_cpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--client-cpus",
        type=cpu_list,
        help="CPUs for the load generators (1 or 2,3 or 4-7), the servers on the others: on a machine with cores "
        "to spare, clients then take none of the servers' cores, as callers on other machines would not",
    )


def split_cpus(clients: set[int] | None) -> set[int] | None:
    """With ``clients`` (``--client-cpus``): pins this process, so the load generators it
    runs and the processes it spawns, to those CPUs and returns the servers' CPUs: every
    other CPU this process may use. None without."""
    if clients is None:
        return None
    usable = os.sched_getaffinity(0)
    if not clients < usable:
        raise SystemExit(
            f"--client-cpus {sorted(clients)} must be some, not all, of the CPUs this process may use "
            f"({sorted(usable)}): the servers run on the others"
        )
    os.sched_setaffinity(0, clients)
    return usable - clients


def pinned_to(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins a child process, and everything it starts, to ``cpus``."""
    return None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)


@dataclass
class Result:
    """One load run: latencies (s) of successful requests, errors, elapsed seconds."""

    name: str
    concurrency: int
    latencies: list[float]
    errors: int
    elapsed: float

    count: int | None = None

    @property
    def rps(self) -> float:
        done = self.count if self.count is not None else len(self.latencies)
        return done / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def row(self) -> str:
        return (
            f"{self.name:<34} c={self.concurrency:<3} p50 {self.pct(50):7.3f} ms  p99 {self.pct(99):7.3f} ms  "
            f"{self.rps:9.0f} req/s  errors {self.errors}"
        )


async def _load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, warmup: float
) -> tuple[list[float], int, float]:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> bool:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status == 200

        warm_end = time.perf_counter() + warmup
        while time.perf_counter() < warm_end:
            await asyncio.gather(*(one() for _ in range(concurrency)))
        stop = time.perf_counter() + seconds
        started = time.perf_counter()

        async def user() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                ok = await one()
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def run_load(
    name: str,
    url: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    concurrency: int,
    seconds: float = 5.0,
    warmup: float = 1.0,
) -> Result:
    """Closed-loop load: ``concurrency`` clients each send the next request when answered.

    Uses wrk when installed (``apt-get install wrk``), else an aiohttp client.
    """
    from bench import wrk

    if wrk.available() and not os.environ.get("BERTH_BENCH_PYTHON_CLIENT"):
        wrk.run(name, url, body, headers=headers or {}, concurrency=concurrency, seconds=warmup)
        return wrk.run(name, url, body, headers=headers or {}, concurrency=concurrency, seconds=seconds)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    latencies, errors, elapsed = asyncio.run(_load(url, body, headers or {}, concurrency, seconds, warmup))
    return Result(name, concurrency, latencies, errors, elapsed)


def time_direct(name: str, call: Callable[[], object], *, seconds: float = 3.0) -> Result:
    """Times an in-process call back to back (the floor)."""
    for _ in range(200):
        call()
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    return Result(name, 1, latencies, 0, time.perf_counter() - started)


def v2_json_body(batch: np.ndarray, name: str = "input") -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}]}
    ).encode()


def v2_binary_body(batch: np.ndarray, name: str = "input") -> tuple[bytes, dict[str, str]]:
    raw = batch.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


class WorkerProcess:
    """A real inference worker (``python -m inference_workers``) on the embedded broker."""

    def __init__(self, *, worker_id: str = "bench", extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
        self.env = dict(
            os.environ,
            BERTH_DATA_DIR=str(self.data_dir),
            BERTH_WORKER_ID=worker_id,
            PYTHONPATH=str(REPO_ROOT),
            BERTH_LOG_LEVEL="WARNING",
            **(extra_env or {}),
        )
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.env.pop("CELERY_BROKER_URL", None)
        self.worker_id = worker_id
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        from celery import Celery

        from inference_workers.settings import WorkerSettings

        self.settings = WorkerSettings.from_env(self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference_workers", "--device", "cpu"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.app = Celery("bench", fixups=[])
        broker = self.settings.broker
        self.app.conf.update(
            broker_url=broker.url,
            broker_transport_options=broker.transport_options,
            result_backend=broker.result_backend,
        )
        status = self.app.send_task("berth.worker.status", queue=self.settings.queue).get(timeout=120)
        self.url = status["dataplane_url"]
        self.headers = {"Authorization": f"Bearer {self.settings.token}"}
        return self

    def load(self, tenant: str, model: str, path: Path, *, batching: dict[str, object]) -> dict[str, object]:
        import hashlib

        command = {
            "key": {"tenant": tenant, "model": model, "version": 1},
            "artifact_uri": path.as_uri(),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "format": "onnx",
            "batching": batching,
            "reservation_bytes": 1 << 20,
        }
        return self.app.send_task("berth.worker.load", args=[command], queue=self.settings.queue).get(timeout=300)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def summary(results: list[Result]) -> None:
    for result in results:
        print(result.row())
    sys.stdout.flush()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
