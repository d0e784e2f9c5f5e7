"""The worker token: the shared secret the gateway sends and every worker checks.

Both planes call ``worker_token`` with ``BERTH_WORKER_TOKEN`` (when set) and the data dir,
so on one machine they agree on a token generated once into the data dir, as the control
plane's secret key is; a fleet sets ``BERTH_WORKER_TOKEN`` everywhere.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def worker_token(*, configured: str, data_dir: Path) -> str:
    """The configured token, or the one generated once into ``<data dir>/worker-token``."""
    if configured:
        return configured
    path = data_dir / "worker-token"
    if path.exists():
        return path.read_text().strip()
    # Written whole to a private file, then linked into place: a reader never sees it empty,
    # and of two processes racing, the first link wins and the other reads that token.
    token = secrets.token_urlsafe(32)
    fd, draft = tempfile.mkstemp(dir=data_dir, prefix=".worker-token-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        try:
            os.link(draft, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        os.unlink(draft)
    return token
