"""The deployments issue's GPU check, prepared to run in one go on a machine with a GPU.

Two inference workers share one device, each given half of its memory as its budget
(``BERTH_WORKER_GPU_MEMORY_BUDGET``); six models of different sizes are deployed through
the REST API and placed by measured memory; the script prints, per worker, what placement
planned (the replicas' reservations) against what the device really holds for that process
(NVML's per-process figure; RSS with ``--device cpu``), calls each model through the
gateway, then kills one worker (SIGKILL) and times how long until every replica is ready on
the other (target: within 10 s) and answering again.

    .venv/bin/python -m bench.gpu_check                 # cuda:0, needs a GPU and NVML
    .venv/bin/python -m bench.gpu_check --device cpu    # the same path on CPU workers
    .venv/bin/python -m bench.gpu_check --format torch_export   # torch.export models on CUDA

On a GPU it first probes the path piece by piece: NVML's device memory, torch on CUDA,
ONNX Runtime's execution providers (a session on the CUDA provider, or the worker's error
where the installed ONNX Runtime has none), and one model measured the way a worker
measures it against what torch's allocator and NVML then hold.

It asserts nothing; it prints what it saw.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.common import v2_json_body
from bench.gateway import Platform, booted_platform, tenant_create

MiB = 1024**2
# Hidden widths of the six models: weights from about 1 MiB to about 260 MiB (two square
# layers of FP32), a spread of sizes for placement to pack.
WIDTHS = (256, 768, 1536, 3072, 4608, 5888)
INPUT = 64
RECOVERY_TARGET_S = 10.0


def _model(width: int, path: Path) -> Path:
    import torch

    from bench.worker import export

    return export(_wide(width), torch.zeros(2, INPUT), path)


def _exported(width: int, path: Path) -> Path:
    from tests.inference_workers.models import exported

    return exported(_wide(width), path, features=INPUT)


def _wide(width: int) -> Any:
    import torch
    from torch import nn

    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(INPUT, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    return Wide()


def _probe(index: int, folder: Path) -> None:
    """NVML, torch on CUDA, ONNX Runtime's providers and one measured load, one by one."""
    import onnxruntime as ort
    import pynvml
    import torch

    from inference_workers.devices import open_device
    from inference_workers.runtimes.base import (
        RuntimeLoadError,
        RuntimeOptions,
        measure_footprint,
        release_freed_memory,
    )

    print("probe:", flush=True)
    state = open_device(f"cuda:{index}", memory_budget_bytes=1).state()
    print(
        f"  NVML (the worker's NvmlDevice): {state.name} {state.uuid}, total {state.total_bytes / MiB:,.0f} MiB, "
        f"used {state.used_bytes / MiB:,.0f} MiB, free {state.free_bytes / MiB:,.0f} MiB, "
        f"busy {state.utilisation_pct}%; driver {pynvml.nvmlSystemGetDriverVersion()}"
    )
    print(
        f"  torch {torch.__version__}: cuda available {torch.cuda.is_available()}, "
        f"{torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda}"
    )
    print(f"  onnxruntime {ort.__version__}: providers available {ort.get_available_providers()}")
    options = RuntimeOptions(device=f"cuda:{index}", gpu_mem_limit_bytes=4 * 1024 * MiB)
    onnx_path = _model(WIDTHS[2], folder / "probe.onnx")
    try:
        runner, footprint = measure_footprint(onnx_path, "onnx", options, max_batch=8)
        print(
            f"  ONNX on cuda:{index}: providers {getattr(runner, 'providers', '?')}, "
            f"measured {footprint.bytes / MiB:,.1f} MiB"
        )
        runner.close()
    except (RuntimeLoadError, RuntimeError, ValueError, OSError) as exc:
        print(f"  ONNX on cuda:{index}: the worker refuses it: {type(exc).__name__}: {exc}")
    pt2 = _exported(WIDTHS[-1], folder / "probe.pt2")
    weights = sum(p.numel() * 4 for p in _wide(WIDTHS[-1]).parameters())
    runner, footprint = measure_footprint(pt2, "torch_export", options, max_batch=32)
    print(
        f"  torch.export on cuda:{index}: weights {weights / MiB:,.1f} MiB; measured {footprint.bytes / MiB:,.1f} MiB "
        f"in {footprint.load_seconds:.2f} s; torch allocated {torch.cuda.memory_allocated(index) / MiB:,.1f} MiB, "
        f"reserved {torch.cuda.memory_reserved(index) / MiB:,.1f} MiB; this process per NVML "
        f"{_measured(f'cuda:{index}', os.getpid()) / MiB:,.1f} MiB"
    )
    second, again = measure_footprint(pt2, "torch_export", options, max_batch=32)
    print(f"  the same model loaded a second time (CUDA context already up): measured {again.bytes / MiB:,.1f} MiB")
    for open_runner in (runner, second):
        open_runner.close()
    del runner, second
    release_freed_memory(something_was_freed=True)  # as the worker does after an unload
    print(
        f"  after both closed: torch allocated {torch.cuda.memory_allocated(index) / MiB:,.1f} MiB, "
        f"reserved {torch.cuda.memory_reserved(index) / MiB:,.1f} MiB\n",
        flush=True,
    )


def _device_total(device: str) -> int:
    if device == "cpu":
        return psutil.virtual_memory().total
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(int(device.split(":")[1]))
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)


def _measured(device: str, pid: int) -> int:
    """What the device holds for one process: NVML's per-process use, or RSS on CPU."""
    if device == "cpu":
        return int(psutil.Process(pid).memory_info().rss)
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(int(device.split(":")[1]))
    for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if process.pid == pid:
            return int(process.usedGpuMemory or 0)
    return 0


def _deploy(platform: Platform, name: str, artifact: Path, kind: str) -> None:
    base = f"/api/v1/tenants/gpucheck/models/{name}"
    with platform.admin() as admin:
        uploaded = admin.post(f"{base}/versions/", files={"file": (artifact.name, artifact.read_bytes())}, timeout=300)
        if uploaded.status_code != 202:
            raise RuntimeError(f"upload of {name}: {uploaded.status_code} {uploaded.text}")
        deadline = time.monotonic() + 300
        while (status := admin.get(f"{base}/versions/1/").json()["status"]) in ("uploaded", "validating"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} still {status} after 300 s")
            time.sleep(0.5)
        if status != "ready":
            raise RuntimeError(f"{name} failed validation: {admin.get(f'{base}/versions/1/').text}")
        spec = {"traffic": {"1": 100}, "device_kind": kind}
        deployed = admin.put(f"{base}/deployment/", json=spec)
        if deployed.status_code != 200:
            raise RuntimeError(f"deploy of {name}: {deployed.status_code} {deployed.text}")


def _replicas(platform: Platform, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    with platform.admin() as admin:
        return {
            name: admin.get(f"/api/v1/tenants/gpucheck/models/{name}/deployment/").json()["replicas"] for name in names
        }


def _all_ready_on(replicas: dict[str, list[dict[str, Any]]], workers: set[str]) -> bool:
    return all(any(r["state"] == "ready" and r["worker"] in workers for r in rows) for rows in replicas.values())


def _call_each(platform: Platform, key: str, names: list[str]) -> dict[str, int]:
    """Each model's status code for one call through the gateway, its input named as its
    metadata says (``input`` for the ONNX exports, ``x`` for torch.export programs)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    codes = {}
    for name in names:
        url = f"{platform.base_url}/v2/models/{name}"
        metadata = httpx.get(url, headers=headers, timeout=60)
        if metadata.status_code != 200:
            codes[name] = metadata.status_code
            continue
        body = v2_json_body(np.ones((1, INPUT), dtype=np.float32), name=metadata.json()["inputs"][0]["name"])
        codes[name] = httpx.post(f"{url}/infer", content=body, headers=headers, timeout=60).status_code
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0", help="cuda:N (default cuda:0) or cpu")
    parser.add_argument("--format", default="onnx", choices=("onnx", "torch_export"), help="the six models' format")
    parser.add_argument("--no-probe", action="store_true", help="skip the piece-by-piece probe of the GPU path")
    args = parser.parse_args()
    device, kind = args.device, ("cpu" if args.device == "cpu" else "cuda")
    total = _device_total(device)
    # On CPU, a budget that holds the six models with room, not half the host's memory.
    share = total // 2 if kind == "cuda" else 2 * 1024 * MiB
    variable = "BERTH_WORKER_GPU_MEMORY_BUDGET" if kind == "cuda" else "BERTH_WORKER_MEMORY_BUDGET"
    os.environ[variable] = str(share)
    print(f"device {device}: {total / MiB:,.0f} MiB; each of two workers gets {share / MiB:,.0f} MiB ({variable})")

    if kind == "cuda" and not args.no_probe:
        with tempfile.TemporaryDirectory(prefix="berth-gpu-probe-") as folder:
            try:
                _probe(int(device.split(":")[1]), Path(folder))
            except Exception as exc:  # noqa: BLE001 - the platform run below still tells what it can
                print(f"the probe failed: {type(exc).__name__}: {exc}\n", flush=True)

    with booted_platform() as platform:
        names = [f"wide-{width}" for width in WIDTHS]
        make, suffix = (_model, "onnx") if args.format == "onnx" else (_exported, "pt2")
        artifacts = [
            make(width, platform.data_dir / f"{name}.{suffix}") for width, name in zip(WIDTHS, names, strict=True)
        ]
        platform.wait_healthy()
        first = platform.wait_worker()
        second_id = f"{first['worker_id']}-b"
        with (platform.data_dir / "second-worker.log").open("wb") as log:
            second = subprocess.Popen(
                [sys.executable, "-m", "inference_workers", "--device", device, "--worker-id", second_id],
                env=platform.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            while True:
                with platform.admin() as admin:
                    workers = {w["worker_id"]: w for w in admin.get("/api/v1/workers/").json() if w["state"] == "ready"}
                if len(workers) >= 2:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the second worker never registered")
                time.sleep(0.5)
            quota = {"gpu_memory_mb": 2 * share // MiB, "cpu_memory_mb": 2 * share // MiB, "max_replicas": 100}
            key = tenant_create(platform, "gpucheck", quota=quota)
            print(f"deploying {len(names)} models ({', '.join(names)}) …", flush=True)
            for name, artifact in zip(names, artifacts, strict=True):
                _deploy(platform, name, artifact, kind)
            deadline = time.monotonic() + 180
            while not _all_ready_on(replicas := _replicas(platform, names), set(workers)):
                failed = [r for rows in replicas.values() for r in rows if r["state"] == "failed"]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"not every model became ready: {failed or replicas}")
                time.sleep(0.5)
            time.sleep(3)  # a heartbeat with the loaded models' measures
            pids = {first["worker_id"]: platform.find("inference_workers").pid, second_id: second.pid}
            with platform.admin() as admin:
                rows = {w["worker_id"]: w for w in admin.get("/api/v1/workers/").json()}
            print()
            # capacity: what the worker offers models (its budget less its own use).
            print(
                f"{'worker':<34} {'models':>6} {'planned MiB':>12} {'measured MiB':>13} "
                f"{'capacity MiB':>13} {'device used MiB':>16}"
            )
            for worker_id, pid in pids.items():
                row = rows[worker_id]
                hosted = [h for h in row["hosted"] if h.get("state") == "ready"]
                print(
                    f"{worker_id:<34} {len(hosted):>6} {row['reserved_bytes'] / MiB:>12,.1f} "
                    f"{_measured(device, pid) / MiB:>13,.1f} {row['capacity_bytes'] / MiB:>13,.1f} "
                    f"{row['used_bytes'] / MiB:>16,.1f}"
                )
                for model in hosted:
                    key_text = "{tenant}.{model}/{version}".format(**model)
                    print(
                        f"    {key_text:<30} reserved {model['reserved_bytes'] / MiB:9,.1f} MiB   "
                        f"measured {model['measured_bytes'] / MiB:9,.1f} MiB"
                    )
            print(f"\ncalls through the gateway: {_call_each(platform, key, names)}")

            by_worker = {w: sum(r["worker"] == w for rows_ in replicas.values() for r in rows_) for w in pids}
            victim = max(by_worker, key=lambda w: by_worker[w])
            survivor = next(w for w in pids if w != victim)
            print(f"\nkill -9 {victim} (hosting {by_worker[victim]} replicas) …", flush=True)
            os.kill(pids[victim], signal.SIGKILL)
            killed_at = time.monotonic()
            marks: dict[str, float] = {}  # what happened when, in seconds after the kill
            while not _all_ready_on(replicas := _replicas(platform, names), {survivor}):
                since = time.monotonic() - killed_at
                if since > 120:
                    raise RuntimeError(f"not back within 120 s: {replicas}")
                with platform.admin() as admin:
                    states = {w["worker_id"]: w["state"] for w in admin.get("/api/v1/workers/").json()}
                if states.get(victim) == "dead":
                    marks.setdefault(f"{victim} dead", since)
                for name, model_rows in replicas.items():
                    if any(r["worker"] == survivor and r["state"] == "loading" for r in model_rows):
                        marks.setdefault(f"{name} loading", since)
                    if any(r["worker"] == survivor and r["state"] == "ready" for r in model_rows):
                        marks.setdefault(f"{name} ready", since)
                time.sleep(0.1)
            back_s = time.monotonic() - killed_at
            print("  " + ", ".join(f"{what} {at:.1f} s" for what, at in sorted(marks.items(), key=lambda m: m[1])))
            print(
                f"every replica ready on {survivor} {back_s:.1f} s after the kill "
                f"(target <= {RECOVERY_TARGET_S:.0f} s); calls: {_call_each(platform, key, names)}"
            )
            if logs := os.environ.get("BERTH_GPU_CHECK_LOGS"):
                for log_file in (platform.log_path, platform.data_dir / "second-worker.log"):
                    shutil.copy(log_file, Path(logs) / log_file.name)
        finally:
            if second.poll() is None:
                second.terminate()
                try:
                    second.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    second.kill()


if __name__ == "__main__":
    main()
