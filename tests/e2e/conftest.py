"""Boot the platform the way ``make run`` does, on free ports and a temporary data dir.

With ``DATABASE_URL`` pointing at PostgreSQL each boot gets a fresh database; with
``CELERY_BROKER_URL`` / ``REDIS_URL`` set the boot uses those servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx
import psutil
import pytest

from tests.conftest import PYTHON, REPO_ROOT, free_port, subprocess_env

ADMIN_PASSWORD = "e2e-admin-password-1"


@dataclass
class Platform:
    """A running platform: its runner process, base URL, worker id and log file."""

    process: subprocess.Popen[bytes]
    base_url: str
    worker_id: str
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=("admin", ADMIN_PASSWORD), timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus counter's series on ``/metrics`` whose labels include ``labels``."""
        with self.admin() as admin:
            text = admin.get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the platform exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise AssertionError(f"/healthz not healthy within {timeout}s:\n{self.log()[-4000:]}")


@contextlib.contextmanager
def _database_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        yield ""
        return
    import psycopg

    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    parsed = urlparse(url)
    admin_url = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(parsed._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM the runner and wait; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError("the runner did not stop within the timeout after SIGTERM") from None


@contextlib.contextmanager
def boot_platform(tmp_path: Path, **extra_env: str) -> Iterator[Platform]:
    """Runs ``python -m control_plane.launcher`` on a free port and a fresh data dir (and database)."""
    with _database_url() as database_url:
        port = free_port()
        worker_id = f"e2e-{uuid.uuid4().hex[:8]}"
        overrides = {
            "BERTH_DATA_DIR": str(tmp_path / "var"),
            "BERTH_PORT": str(port),
            "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "BERTH_WORKER_ID": worker_id,
            "DJANGO_SETTINGS_MODULE": "control_plane.settings.base",
            # Heartbeats every second: a silent worker is dead after 3 s.
            "BERTH_WORKER_HEARTBEAT_S": "1",
            "BERTH_HEARTBEAT_INTERVAL_S": "1",
            # Tests that need the demo deployed deploy it themselves.
            "BERTH_SEED_DEMO_DEPLOY": "0",
            **extra_env,
        }
        env = subprocess_env(**overrides)
        env.pop("DATABASE_URL", None)
        if database_url:
            env["DATABASE_URL"] = database_url
        log_path = tmp_path / "platform.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [PYTHON, "-m", "control_plane.launcher"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Platform(
            process=process, base_url=f"http://127.0.0.1:{port}", worker_id=worker_id, log_path=log_path, env=env
        )
        try:
            yield running
        finally:
            leftovers = running.descendants()
            if process.poll() is None:
                stop(process)
            for child in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with boot_platform(tmp_path) as running:
        yield running
