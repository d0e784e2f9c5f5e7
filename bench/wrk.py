"""Load with wrk (C, from Debian's package) when it is installed: a cheaper load generator.

A Python load generator on the same 2 cores takes CPU from the server it measures; wrk
takes far less, so its figures are closer to the server's own. The bench falls back to
the Python generator when wrk is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import Result

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua(body: bytes, headers: dict[str, str]) -> str:
    escaped = "".join(f"\\{byte}" for byte in body)
    lines = ['wrk.method = "POST"', f'wrk.body = "{escaped}"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    lines.append(
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("BERTH p50=%d p99=%d non2xx=%d\\n", latency:percentile(50), '
        "latency:percentile(99), summary.errors.status))\nend"
    )
    return "\n".join(lines)


def run(name: str, url: str, body: bytes, *, headers: dict[str, str], concurrency: int, seconds: float) -> Result:
    """Runs wrk and converts its summary into a ``Result`` (latencies from its percentiles)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(_lua(body, {"Content-Type": "application/json", **headers}))
    threads = 1 if concurrency == 1 else 2
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    match = re.search(r"BERTH p50=(\d+) p99=(\d+) non2xx=(\d+)", out)
    requests = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not match or not requests:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    p50, p99, errors = (int(value) for value in match.groups())
    count = int(requests.group(1))
    elapsed = float(requests.group(2)) * _UNITS.get(requests.group(3), 1.0)
    # wrk reports percentiles, not every latency: keep a two-point sample that gives them.
    latencies = [p50 / 1e6] * 98 + [p99 / 1e6] * 2
    return Result(name, concurrency, latencies, errors, elapsed, count=count - errors)
