"""The worker token: the shared secret the gateway sends and every worker checks.

Both planes call ``worker_token`` with ``BERTH_WORKER_TOKEN`` (when set) and the data dir,
so on one machine they agree on a token generated once into the data dir, as the control
plane's secret key is; a fleet sets ``BERTH_WORKER_TOKEN`` everywhere.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def worker_token(*, configured: str, data_dir: Path) -> str:
    """The configured token, or the one generated once into ``<data dir>/worker-token``."""
    if configured:
        return configured
    path = data_dir / "worker-token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token
