"""Peers side by side: MLServer and KServe's Python model server serving the reference MLP
on this machine, in the same run as Berth, measured by the same load generator.

The issue's speed targets name peers' figures measured elsewhere ("on this machine class":
MLServer c=1 p50 0.59 ms, TorchServe c=16 2,685 req/s); a VM several times slower or faster
than that machine moves Berth's figures and not those constants. Measured beside Berth, the
peers move with the VM too, so the comparison no longer rests on the VM matching that
machine (though not every cost moves alike: Berth's path is two hops and the peers' one,
and on some VMs a wake-up across processes costs far more than on others). Each peer runs
from its own virtual environment (both need a protobuf older than the platform's, and their
Starlette pins conflict with each other), named by a flag or an environment variable:

    python3 -m venv /tmp/peer-mlserver
    /tmp/peer-mlserver/bin/pip install mlserver==1.7.1 'uvicorn[standard]' onnxruntime
    python3 -m venv /tmp/peer-kserve
    /tmp/peer-kserve/bin/pip install kserve==0.21.0 onnxruntime
    .venv/bin/python -m bench.peers --mlserver /tmp/peer-mlserver/bin/python \\
        --kserve /tmp/peer-kserve/bin/python

(``BERTH_BENCH_MLSERVER_PYTHON`` / ``BERTH_BENCH_KSERVE_PYTHON`` instead of the flags;
``bench.gateway`` takes the same.) ``uvicorn[standard]`` gives MLServer's uvicorn the
httptools parser and uvloop that Berth's web process and KServe have (MLServer alone
installs the pure-Python h11 parser). MLServer runs as the issue measured it, with parallel
workers off (``parallel_workers: 0``: inference in its one server process); KServe with one
uvicorn worker and no gRPC. Each is one hop with no tenancy and no authentication, serving
the same ONNX file with onnxruntime on the CPU in a custom model class of a few lines
(``bench/peer_servers/``) with Berth's worker's session options (one intra-op thread, no
spin-waiting), and logs no line per request, as Berth's web process does not. Requests are
JSON (the v2 body Berth's bench sends). TorchServe needs a JVM, which this machine lacks: it
is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import REPO_ROOT, Result, add_client_cpus, pinned_to, run_load, split_cpus, summary, v2_json_body

SERVERS = REPO_ROOT / "bench" / "peer_servers"
ENV = {"mlserver": "BERTH_BENCH_MLSERVER_PYTHON", "kserve": "BERTH_BENCH_KSERVE_PYTHON"}
LABEL = {"mlserver": "MLServer", "kserve": "KServe"}
MODEL = "mlp"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1 (each held until all are found)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


@dataclass(frozen=True)
class Peer:
    kind: str  # "mlserver" or "kserve"
    python: Path

    @property
    def label(self) -> str:
        return LABEL[self.kind]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for kind, variable in ENV.items():
        parser.add_argument(
            f"--{kind}",
            metavar="PYTHON",
            default=os.environ.get(variable, ""),
            help=f"the Python of a virtual environment with {LABEL[kind]} and onnxruntime installed "
            f"(or ${variable}); measured beside Berth when given",
        )


def peers_from(args: argparse.Namespace) -> list[Peer]:
    """The peers the flags (or their environment variables) name; an unusable one stops the bench."""
    found = []
    for kind in ENV:
        python = getattr(args, kind)
        if not python:
            continue
        if not Path(python).exists():
            raise SystemExit(f"--{kind}: no Python at {python}")
        # The server's packages, and the HTTP parser Berth's web process has (uvicorn falls
        # back to the pure-Python h11 without it: no comparison).
        modules = f"{kind}, httptools, onnxruntime"
        check = subprocess.run([python, "-c", f"import {modules}"], capture_output=True, text=True, check=False)
        if check.returncode:
            raise SystemExit(f"--{kind}: {python} cannot import {modules}: {check.stderr.strip()[-300:]}")
        found.append(Peer(kind, Path(python)))
    return found


def _command(peer: Peer, artifact: Path, folder: Path, ports: list[int]) -> list[str]:
    """The peer's command line serving ``artifact`` on ``ports[0]`` (MLServer's gRPC and
    metrics servers on the other two)."""
    if peer.kind == "mlserver":
        named = dict(zip(("http_port", "grpc_port", "metrics_port"), ports, strict=True))
        # MLServer's debug (on by default) turns uvicorn's access log on: a line per request.
        settings = {"parallel_workers": 0, "host": "127.0.0.1", "debug": False, **named}
        (folder / "settings.json").write_text(json.dumps(settings))
        model = {"name": MODEL, "implementation": "mlserver_mlp.OnnxMlp", "parameters": {"uri": str(artifact)}}
        (folder / "model-settings.json").write_text(json.dumps(model))
        for module in ("mlserver_mlp.py", "mlp_session.py"):
            shutil.copy(SERVERS / module, folder / module)
        # The ``mlserver`` script beside the environment's Python (the package has no __main__).
        return [str(peer.python.parent / "mlserver"), "start", str(folder)]
    return [str(peer.python), str(SERVERS / "kserve_mlp.py"), str(artifact), str(ports[0])]


@contextlib.contextmanager
def peer_server(peer: Peer, artifact: Path, *, timeout: float = 120, cpus: set[int] | None = None) -> Iterator[str]:
    """Starts ``peer`` serving ``artifact`` as ``mlp`` on a free port of 127.0.0.1 (on ``cpus``
    when given); yields its inference URL once the model is ready; stops it on the way out."""
    folder = Path(tempfile.mkdtemp(prefix=f"berth-bench-{peer.kind}-"))
    ports = free_ports(3)
    port = ports[0]
    log = folder / "server.log"
    process: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{port}/v2/models/{MODEL}"
    # KServe's own loggers (its timing middleware's two lines per request) at WARNING.
    env = {**os.environ, "KSERVE_LOGLEVEL": "WARNING"}
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                _command(peer, artifact, folder, ports), cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=pinned_to(cpus),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{peer.label} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.label} not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield f"{base}/infer"
    finally:
        if process is not None:  # its whole process group: a server's children go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def peer_runs(peer: Peer, artifact: Path, body: bytes, *, seconds: float, cpus: set[int] | None = None) -> list[Result]:
    """``peer``'s c=1 and c=16 runs with the JSON ``body``; checks first that it answers it
    with the MLP's output (a peer answering 400 fast would be no comparison)."""
    with peer_server(peer, artifact, cpus=cpus) as url:
        answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
        outputs = answer.json().get("outputs") if answer.status_code == 200 else None
        if not outputs or outputs[0].get("shape") != [1, 10]:
            raise RuntimeError(f"{peer.label} answered {answer.status_code}: {answer.text[:500]}")
        name = f"{peer.label} (JSON, one hop)"
        headers = {"Content-Type": "application/json"}
        runs = [
            run_load(name, url, body, headers=headers, concurrency=concurrency, seconds=seconds)
            for concurrency in (1, 16)
        ]
    if not all(run.latencies for run in runs):
        raise RuntimeError(f"{peer.label} answered no request with 200 in a run: {[r.row() for r in runs]}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="each load run")
    add_arguments(parser)
    add_client_cpus(parser)
    args = parser.parse_args()
    peers = peers_from(args)
    if not peers:
        raise SystemExit("name at least one peer: --mlserver PYTHON and/or --kserve PYTHON (see --help)")
    server_cpus = split_cpus(args.client_cpus)

    import numpy as np
    import onnxruntime as ort
    import torch

    from bench.common import time_direct
    from bench.worker import export
    from tests.inference_workers.models import Mlp

    folder = Path(tempfile.mkdtemp(prefix="berth-bench-peers-"))
    try:
        artifact = export(Mlp(), torch.zeros(2, 256), folder / "mlp.onnx")
        one = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
        session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        results = [time_direct("direct onnxruntime (MLP)", lambda: session.run(None, {"input": one}))]
        for peer in peers:
            print(f"{peer.label} …", flush=True)
            results += peer_runs(peer, artifact, v2_json_body(one), seconds=args.seconds, cpus=server_cpus)
        summary(results)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
