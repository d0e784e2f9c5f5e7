"""API keys: minting, and checking a presented key in constant time with a short cache.

A key looks like ``brt_<prefix>_<secret>``. Only SHA-256 of the whole key is stored, and
a presented key is looked up by that digest: the work done for a right key, a wrong
secret, or an unknown prefix is the same hash and the same indexed query, so timing tells
nothing about which part was wrong. Results (including "no such key") are cached for at
most ``BERTH_API_KEY_CACHE_S`` seconds (default 2), which bounds how long a revoked key
can keep working in any process; revoking also deletes the entry from the shared cache.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from apps.tenants.access import ApiKeyPrincipal
from apps.tenants.models import ApiKey
from control_plane.compiled import CompiledQuery
from control_plane.errors import ApplicationError, PermissionDeniedError

KEY_PREFIX = "brt_"
MAX_KEY_LENGTH = 200
_CACHE_PREFIX = "berth:apikey:"
_USED_PREFIX = "berth:apikey-used:"
_NO_SUCH_KEY = "missing"
# How often last_used_at is written for one key (per cache): "current to the minute".
LAST_USED_RESOLUTION_S = 60


class ApiKeyRefused(ApplicationError):
    """The presented key is unknown, malformed, revoked or expired (401)."""

    status_code: int = 401


@dataclass(frozen=True)
class MintedKey:
    """A new key: the full secret (shown once) and what is stored of it."""

    raw: str
    prefix: str
    key_hash: str


def key_digest(raw: str) -> str:
    """The stored form of a key: SHA-256 hex of the whole key string."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def key_mint() -> MintedKey:
    """Makes a new random key (8 hex characters of prefix, 256 bits of secret)."""
    prefix = secrets.token_hex(4)
    raw = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return MintedKey(raw=raw, prefix=prefix, key_hash=key_digest(raw))


def _cache_key(digest: str) -> str:
    return f"{_CACHE_PREFIX}{digest}"


def key_cache_forget(*, key_hash: str) -> None:
    """Drops a key's cached verdict (on revoke), so the next request re-reads the row."""
    cache.delete(_cache_key(key_hash))


# Run for every key re-check (each key every ``BERTH_API_KEY_CACHE_S`` on each gateway
# process's database threads), so compiled once: the ORM's compile is most of its CPU.
_BY_DIGEST = CompiledQuery(
    lambda digest: ApiKey.objects.filter(key_hash=digest).values_list(
        "id", "prefix", "tenant_id", "tenant__slug", "tenant__active", "scopes", "expires_at", "revoked_at"
    ),
    "digest",
)


def api_key_lookup(*, digest: str) -> ApiKeyPrincipal | None:
    """The key stored under ``digest`` (read from the database, never from a cache)."""
    rows = _BY_DIGEST.rows(digest=digest)
    if not rows:
        return None
    key_id, prefix, tenant_id, tenant_slug, tenant_active, scopes, expires_at, revoked_at = rows[0]
    return ApiKeyPrincipal(
        key_id=key_id,
        prefix=prefix,
        tenant_id=tenant_id,
        tenant_slug=tenant_slug,
        tenant_active=tenant_active,
        scopes=frozenset(scopes),
        expires_at=expires_at,
        revoked_at=revoked_at,
    )


def api_key_check(*, principal: ApiKeyPrincipal, now: datetime) -> None:
    """Refuses a revoked or expired key, or one of a deactivated tenant.

    Raises:
        ApiKeyRefused: Revoked or expired key (401).
        PermissionDeniedError: The key's tenant is deactivated (403).
    """
    if principal.revoked_at is not None:
        raise ApiKeyRefused(f"API key brt_{principal.prefix} was revoked; create a new key")
    if principal.expires_at is not None and principal.expires_at <= now:
        raise ApiKeyRefused(f"API key brt_{principal.prefix} expired at {principal.expires_at.isoformat()}")
    if not principal.tenant_active:
        raise PermissionDeniedError(
            f"tenant '{principal.tenant_slug}' is deactivated; its API keys are refused until platform staff "
            "reactivate it"
        )


def api_key_touch(*, key_id: int, now: datetime) -> None:
    """Records a use of the key (``last_used_at``), at most once a minute per cache."""
    if cache.add(f"{_USED_PREFIX}{key_id}", 1, timeout=LAST_USED_RESOLUTION_S):
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now)


UNKNOWN_KEY_MESSAGE = "invalid API key: check that you copied the whole key (brt_…)"
TOO_LONG_MESSAGE = "invalid API key: it is longer than any key Berth issues"


def api_key_authenticate(*, raw: str, now: datetime | None = None) -> ApiKeyPrincipal:
    """Checks a presented API key and returns who it is.

    Raises:
        ApiKeyRefused: Unknown, malformed, revoked or expired key (401).
        PermissionDeniedError: The key's tenant is deactivated (403).
    """
    now = now or timezone.now()
    if len(raw) > MAX_KEY_LENGTH:
        raise ApiKeyRefused(TOO_LONG_MESSAGE)
    digest = key_digest(raw)
    cache_key = _cache_key(digest)
    cached = cache.get(cache_key)
    if cached is None:
        cached = api_key_lookup(digest=digest) or _NO_SUCH_KEY
        cache.set(cache_key, cached, timeout=settings.BERTH_API_KEY_CACHE_S)
    if not isinstance(cached, ApiKeyPrincipal):
        raise ApiKeyRefused(UNKNOWN_KEY_MESSAGE)
    api_key_check(principal=cached, now=now)
    api_key_touch(key_id=cached.key_id, now=now)
    return cached
