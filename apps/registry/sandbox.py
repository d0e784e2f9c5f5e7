"""The validation sandbox: ``inference_workers.validate`` in a separate, limited process.

The child gets a bare environment (no database URL, no secret key), its own session, a
CPU-time limit, an address-space limit, a watchdog on its resident memory, and a wall
clock timeout. Whatever it does, the control plane gets a result or a reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Python with torch and onnxruntime imported maps ~0.7 GiB of address space before any
# model; the address-space limit is this plus the memory limit.
RUNTIME_ADDRESS_SPACE = 1536 * 1024**2
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class SandboxResult:
    """The validator's verdict: its JSON on success, or the reason it failed."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] | None = None


def run_validation(
    path: Path,
    *,
    declared_format: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    max_batch: int,
    timeout_s: float,
    memory_bytes: int,
    max_uncompressed_bytes: int,
    device: str = "cpu",
) -> SandboxResult:
    """Validates one artifact in a limited child process."""
    command = [
        sys.executable,
        "-m",
        "inference_workers.validate",
        str(path),
        "--format",
        declared_format,
        "--max-batch",
        str(max_batch),
        "--max-uncompressed",
        str(max_uncompressed_bytes),
        "--device",
        device,
    ]
    if inputs:
        command += ["--inputs", json.dumps(inputs)]
    if outputs:
        command += ["--outputs", json.dumps(outputs)]
    scratch = tempfile.mkdtemp(prefix="berth-validate-")
    result_file = Path(scratch) / "verdict.json"
    command += ["--result", str(result_file)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO_ROOT),
        "HOME": scratch,
        "TMPDIR": scratch,
        "OMP_NUM_THREADS": "1",
    }

    def limit() -> None:
        os.setsid()
        address_space = memory_bytes + RUNTIME_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        cpu = int(timeout_s) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # Output goes to a file, not a pipe: a chatty model cannot block on a full pipe.
    with open(Path(scratch) / "output.log", "w+b") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=scratch,
            preexec_fn=limit,
        )
        verdict = _watch(process, timeout_s=timeout_s, memory_bytes=memory_bytes)
        output.seek(0)
        tail = output.read()[-4000:].decode(errors="replace")
    try:
        result = json.loads(result_file.read_text()) if result_file.exists() else None
    except (json.JSONDecodeError, OSError):
        result = None
    shutil.rmtree(scratch, ignore_errors=True)
    if verdict:
        return SandboxResult(ok=False, reason=verdict)
    code = process.returncode
    if isinstance(result, dict) and result.get("ok") is True and code == 0:
        missing = sorted(REQUIRED_FIELDS - set(result))
        if missing:
            return SandboxResult(ok=False, reason=f"validation gave an incomplete result (no {', '.join(missing)})")
        return SandboxResult(ok=True, details=result)
    if isinstance(result, dict) and result.get("ok") is False and result.get("reason"):
        return SandboxResult(ok=False, reason=str(result["reason"])[:2000])
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return SandboxResult(
            ok=False,
            reason=f"validation was killed by {name}: the model exceeded a limit "
            "(memory or CPU time) or crashed the runtime",
        )
    if "MemoryError" in tail or "bad_alloc" in tail:
        return SandboxResult(ok=False, reason="the model needs more memory than the validation limit")
    last = tail.strip().splitlines()[-1:] or ["no output"]
    return SandboxResult(ok=False, reason=f"validation failed: {last[0][:500]}")


REQUIRED_FIELDS = frozenset(
    {"format", "inputs", "outputs", "batched", "max_batch_size", "footprint_bytes", "device_kind", "load_seconds"}
)


def _watch(process: subprocess.Popen[bytes], *, timeout_s: float, memory_bytes: int) -> str:
    """Waits for the child; kills it (returning why) past the time or memory limit."""
    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + timeout_s
    verdict = ""
    while process.poll() is None:
        if time.monotonic() > deadline:
            verdict = f"validation took longer than {timeout_s:g} s; the model is too slow or never finishes"
            break
        try:
            if watched.memory_info().rss > memory_bytes:
                verdict = f"the model used more than {memory_bytes // 1024**2} MiB of memory during validation"
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if verdict:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return verdict
