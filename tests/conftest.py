"""Shared test helpers: free ports, the repository root, subprocess environments."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The test process's environment for a child process, with ``overrides`` applied."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="operator", password="pw-operator-1", is_staff=True)


@pytest.fixture
def plain_user(django_user_model):
    return django_user_model.objects.create_user(username="someone", password="pw-someone-1")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Removes the throwaway data dir the test settings made (see settings/test.py)."""
    import shutil
    import tempfile

    data_dir = os.environ.get("BERTH_DATA_DIR", "")
    if data_dir and Path(data_dir).name.startswith("berth-test-") and data_dir.startswith(tempfile.gettempdir()):
        shutil.rmtree(data_dir, ignore_errors=True)
