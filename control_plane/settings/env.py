"""The one reader of the control plane's environment.

Every integration is chosen by a URL or a variable read here; the settings modules
only call these functions. Defaults give the embedded platform: SQLite, the filesystem
broker and the in-memory channel layer under ``BERTH_DATA_DIR``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()


def data_dir() -> Path:
    """``BERTH_DATA_DIR`` (default ``./var`` in the repository), created when missing."""
    path = Path(env.str("BERTH_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret_key(folder: Path) -> str:
    """``SECRET_KEY``, or a key generated once into the data dir and reused after."""
    value: str = env.str("SECRET_KEY", default="")
    if value:
        return value
    key_file = folder / "secret_key"
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def database(folder: Path) -> dict[str, Any]:
    """``DATABASE_URL``, default SQLite under the data dir (WAL, immediate transactions)."""
    config: dict[str, Any] = env.db_url("DATABASE_URL", default=f"sqlite:///{folder / 'berth.sqlite3'}")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Several processes (web, control worker, beat) share the file: WAL lets readers
        # run beside a writer, and IMMEDIATE transactions avoid upgrade deadlocks.
        config.setdefault("OPTIONS", {}).update(
            {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            }
        )
    else:
        config.setdefault("CONN_MAX_AGE", 60)
        config.setdefault("CONN_HEALTH_CHECKS", True)
    return config


def channel_layers() -> dict[str, Any]:
    """``REDIS_URL`` selects the Redis channel layer; unset, the in-memory one."""
    redis_url: str = env.str("REDIS_URL", default="")
    if redis_url:
        return {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [redis_url], "prefix": "berth"},
            }
        }
    return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def cache() -> dict[str, Any]:
    """``REDIS_URL`` also backs the shared cache; unset, a per-process memory cache."""
    redis_url: str = env.str("REDIS_URL", default="")
    if redis_url:
        return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}}
    return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def artifact_storage(folder: Path) -> dict[str, Any]:
    """``BERTH_ARTIFACT_STORAGE``: ``file`` (default, under the data dir) or ``s3``.

    For ``s3`` (django-storages), set ``BERTH_S3_BUCKET`` and, for an S3-compatible store,
    ``BERTH_S3_ENDPOINT_URL``; credentials come from the usual ``AWS_*`` variables. Workers
    then fetch artifacts by presigned URL, never from a shared disk.
    """
    kind: str = env.str("BERTH_ARTIFACT_STORAGE", default="file")
    if kind == "s3":
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": env.str("BERTH_S3_BUCKET"),
                "endpoint_url": env.str("BERTH_S3_ENDPOINT_URL", default=None),
                "querystring_auth": True,
                "querystring_expire": env.int("BERTH_ARTIFACT_URL_TTL_S", default=600),
                "file_overwrite": False,
            },
        }
    return {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(folder / "artifacts")},
    }


def plotly_js_dir() -> Path:
    """The plotly package's folder holding ``plotly.min.js`` (served locally, never from a CDN)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise ImproperlyConfigured("the plotly package is missing; install requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data"


def price_per_hour(name: str, *, default: str) -> Decimal:
    """A price per device-hour from ``name``: a decimal number, zero or more."""
    raw = os.environ.get(name, default).strip()
    try:
        price = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number such as 2.50, not {raw!r}") from None
    if not price.is_finite() or price < 0 or price >= Decimal(10**6):
        raise ImproperlyConfigured(f"{name} must be between 0 and 1000000, not {raw!r}")
    return price
