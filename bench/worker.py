"""Benchmark of the inference worker's data plane, side by side with its floors.

Prints, in one run, for the reference MLP (FP32 [batch, 256] → 1024 → 1024 → 10):
direct in-process onnxruntime (the floor), a minimal aiohttp v2 server around the same
session (the floor for one Python HTTP hop: once with ONNX Runtime's default session, once
with the session made as the worker's default makes it), and Berth's worker, at concurrency 1 and 16,
batch-1 requests, JSON and binary; then a small conv net at c=16 through the worker
without and with dynamic batching; then the worker in its latency configuration (every
core per execution, spinning threads) at c=1 and c=16. Ratios against the targets are printed at the end.

    .venv/bin/python -m bench.worker [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.common import REPO_ROOT, Result, WorkerProcess, run_load, summary, time_direct, v2_binary_body, v2_json_body

# Measured on this machine class with the same load (see the worker issue).
KSERVE_C1_P50_MS = 0.62
KSERVE_C16_RPS = 1970.0


class ConvNet(nn.Module):
    """A small compute-bound image model: FP32 [batch, 3, 64, 64] → 10."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    module.eval()
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        external_data=False,
        dynamo=True,
        verbose=False,
    )
    return path


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def bare_runs(
    mlp: Path, body: bytes, *, seconds: float, threads: int | None = None, spin: bool = True
) -> tuple[Result, Result]:
    """The bare aiohttp floor at c=1 and c=16 (JSON): ONNX Runtime's default session, or one
    with ``threads`` intra-op threads, spinning only when ``spin``."""
    port = 18000 + os.getpid() % 1000
    argv = [sys.executable, "-m", "bench.bare_server", str(mlp), str(port)]
    label = "bare aiohttp v2 (JSON)"
    if threads is not None:
        argv += [str(threads), "1" if spin else "0"]
        label = f"bare aiohttp v2 (JSON, threads={threads}, spin={int(spin)})"
    bare = subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
        return (
            run_load(label, url, body, concurrency=1, seconds=seconds),
            run_load(label, url, body, concurrency=16, seconds=seconds),
        )
    finally:
        bare.terminate()
        bare.wait()


def mlp_json_runs(
    worker: WorkerProcess, mlp: Path, body: bytes, *, seconds: float, suffix: str = ""
) -> tuple[Result, Result]:
    """Loads the MLP on ``worker`` and runs it at c=1 and at c=16 with batching, JSON."""
    worker.load("bench", "mlp", mlp, batching={"max_batch_size": 32, "max_queue_delay_us": 0})
    url = f"{worker.url}/v2/models/bench.mlp/infer"
    headers = {**worker.headers, "Content-Type": "application/json"}
    return (
        run_load(f"berth worker (JSON{suffix})", url, body, headers=headers, concurrency=1, seconds=seconds),
        run_load(f"berth worker (JSON, batching{suffix})", url, body, headers=headers, concurrency=16, seconds=seconds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from tests.inference_workers.models import Mlp

    folder = Path(tempfile.mkdtemp(prefix="berth-bench-models-"))
    mlp = export(Mlp(), torch.zeros(2, 256), folder / "mlp.onnx")
    conv = export(ConvNet(), torch.zeros(2, 3, 64, 64), folder / "conv.onnx")
    one = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    image = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    results: list[Result] = []

    session = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"])
    direct = time_direct("direct onnxruntime (MLP)", lambda: session.run(None, {"input": one}))
    results.append(direct)
    conv_session = ort.InferenceSession(str(conv), providers=["CPUExecutionProvider"])
    conv_direct = time_direct("direct onnxruntime (conv)", lambda: conv_session.run(None, {"input": image}))
    results.append(conv_direct)
    images = np.repeat(image, 32, axis=0)
    conv_direct_32 = time_direct(
        "direct onnxruntime (conv, batch 32)", lambda: conv_session.run(None, {"input": images})
    )

    json_body = v2_json_body(one)
    binary_body, binary_headers = v2_binary_body(one)
    bare_c1, bare_c16 = bare_runs(mlp, json_body, seconds=args.seconds)
    # The same floor around a session made as the worker's default makes its own.
    same_c1, same_c16 = bare_runs(mlp, json_body, seconds=args.seconds, threads=1, spin=False)
    results += [bare_c1, bare_c16, same_c1, same_c16]

    with WorkerProcess(worker_id="bench-worker") as worker:
        w_c1, w_c16 = mlp_json_runs(worker, mlp, json_body, seconds=args.seconds)
        worker.load("bench", "conv1", conv, batching={"max_batch_size": 1})
        worker.load("bench", "conv", conv, batching={"max_batch_size": 32, "max_queue_delay_us": 0})
        url = f"{worker.url}/v2/models/bench.mlp/infer"
        wb_c1 = run_load(
            "berth worker (binary)",
            url,
            binary_body,
            headers={**worker.headers, **binary_headers},
            concurrency=1,
            seconds=args.seconds,
        )
        wb_c16 = run_load(
            "berth worker (binary, batching)",
            url,
            binary_body,
            headers={**worker.headers, **binary_headers},
            concurrency=16,
            seconds=args.seconds,
        )
        results += [w_c1, w_c16, wb_c1, wb_c16]
        image_body, image_headers = v2_binary_body(image)
        headers = {**worker.headers, **image_headers}
        conv_unbatched = run_load(
            "berth worker conv (no batching)",
            f"{worker.url}/v2/models/bench.conv1/infer",
            image_body,
            headers=headers,
            concurrency=16,
            seconds=args.seconds,
        )
        conv_batched = run_load(
            "berth worker conv (batching)",
            f"{worker.url}/v2/models/bench.conv/infer",
            image_body,
            headers=headers,
            concurrency=16,
            seconds=args.seconds,
        )
        results += [conv_unbatched, conv_batched]

    # The latency configuration: every core per execution, idle threads spin-waiting (ONNX
    # Runtime's own defaults). It wins at c=1 on an idle machine and costs whole cores between
    # runs, which a gateway or other models on the same host then lack (see docs/workers.md).
    spin_env = {"BERTH_WORKER_THREADS": "0", "BERTH_WORKER_SPIN_WAIT": "1"}
    with WorkerProcess(worker_id="bench-worker-spin", extra_env=spin_env) as worker:
        s_c1, s_c16 = mlp_json_runs(worker, mlp, json_body, seconds=args.seconds, suffix=", spin")
        results += [s_c1, s_c16]

    print()
    summary(results)
    print()
    floor = bare_c1.pct(50)
    print(
        f"c=1 p50: worker {w_c1.pct(50):.3f} ms vs KServe {KSERVE_C1_P50_MS} ms "
        f"(ratio {w_c1.pct(50) / KSERVE_C1_P50_MS:.2f}, target < 1) and vs bare aiohttp {floor:.3f} ms "
        f"(ratio {w_c1.pct(50) / floor:.2f}, target <= 1.5)"
    )
    same = same_c1.pct(50)
    print(
        f"c=1 p50: worker {w_c1.pct(50):.3f} ms vs bare aiohttp around the same session (1 thread, no spinning) "
        f"{same:.3f} ms (ratio {w_c1.pct(50) / same:.2f}, target <= 1.5)"
    )
    print(
        f"c=1 p50 with BERTH_WORKER_THREADS=0 BERTH_WORKER_SPIN_WAIT=1 (ONNX Runtime's defaults, as the bare "
        f"server's): {s_c1.pct(50):.3f} ms (ratio to bare aiohttp {s_c1.pct(50) / floor:.2f}, target <= 1.5); "
        f"c=16 {s_c16.rps:.0f} req/s"
    )
    print(
        f"c=16 req/s: worker {w_c16.rps:.0f} vs KServe {KSERVE_C16_RPS:.0f} "
        f"(ratio {w_c16.rps / KSERVE_C16_RPS:.2f}, target >= 2); vs bare aiohttp {bare_c16.rps:.0f} "
        f"(ratio {w_c16.rps / bare_c16.rps:.2f})"
    )
    print(
        f"conv c=16 req/s: batched {conv_batched.rps:.0f} vs unbatched {conv_unbatched.rps:.0f} "
        f"(ratio {conv_batched.rps / max(conv_unbatched.rps, 1):.2f}, target >= 3)"
    )
    per_sample = conv_direct_32.pct(50) / 32
    print(
        f"direct onnxruntime p50: MLP {direct.pct(50):.3f} ms, conv {conv_direct.pct(50):.3f} ms at batch 1, "
        f"{per_sample:.3f} ms per sample at batch 32 (in-process batching gain "
        f"{conv_direct.pct(50) / per_sample:.2f}x: the ceiling for any server's batching gain on this CPU)"
    )


if __name__ == "__main__":
    main()
