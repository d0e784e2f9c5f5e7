"""The validation sandbox: ``inference_workers.validate`` in a separate, limited process.

The child gets a bare environment (no database URL, no secret key), its own session, a
CPU-time limit, an address-space limit, a watchdog on its resident memory, and a wall
clock timeout. Whatever it does, the control plane gets a result or a reason.
"""

from __future__ import annotations

import json
import os
import resource
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
    ]
    if inputs:
        command += ["--inputs", json.dumps(inputs)]
    if outputs:
        command += ["--outputs", json.dumps(outputs)]
    scratch = tempfile.mkdtemp(prefix="berth-validate-")
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

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=scratch, preexec_fn=limit
    )
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
        os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    _remove(scratch)
    if verdict:
        return SandboxResult(ok=False, reason=verdict)
    last = stdout.decode(errors="replace").strip().splitlines()[-1:] or [""]
    try:
        result = json.loads(last[0])
    except json.JSONDecodeError:
        result = None
    if isinstance(result, dict) and result.get("ok"):
        return SandboxResult(ok=True, details=result)
    if isinstance(result, dict) and result.get("reason"):
        return SandboxResult(ok=False, reason=str(result["reason"]))
    code = process.returncode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return SandboxResult(
            ok=False,
            reason=f"validation was killed by {name}: the model exceeded a limit "
            "(memory or CPU time) or crashed the runtime",
        )
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    if "MemoryError" in stderr.decode(errors="replace") or "bad_alloc" in stderr.decode(errors="replace"):
        return SandboxResult(ok=False, reason="the model needs more memory than the validation limit")
    return SandboxResult(ok=False, reason=f"validation failed: {tail[0][:500]}")


def _remove(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
