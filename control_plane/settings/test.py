"""Settings for the test suite: the base settings in a throwaway data dir, fast hashing."""

from __future__ import annotations

import os
import tempfile

# Before base reads it: tests never write into the repository's ./var. Subprocesses the
# tests start inherit the variable, so they share the test run's embedded broker.
os.environ.setdefault("BERTH_DATA_DIR", tempfile.mkdtemp(prefix="berth-test-"))

from control_plane.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Close connections at the end of each request, including those opened in asgiref's
# worker threads by async tests, so the test database can be dropped at teardown.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not SQLite's shared in-memory database: concurrent tests (racing uploads)
    # then lock and wait as the real platform does (WAL, busy timeout).
    DATABASES["default"]["TEST"] = {"NAME": str(BERTH_DATA_DIR / "test-db.sqlite3")}  # noqa: F405
