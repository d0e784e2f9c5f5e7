"""Per-tenant admission control for the inference gateway.

Each request is admitted only if its tenant is under two limits:

* a token bucket (``rate_per_s`` tokens added per second, at most ``burst`` held; a
  request takes one token), and
* a concurrency limit (at most ``max_concurrent`` requests in flight).

Concurrency is checked first, so a request refused for concurrency takes no token, and a
request refused for rate holds no slot. An admitted request holds a :class:`Ticket`
until the gateway hands it back with ``release``.

Two implementations share the :class:`Admission` protocol:

* :class:`LocalAdmission` keeps the state in this process; for a single gateway process
  or when no Redis is configured.
* :class:`RedisAdmission` keeps it in Redis so every gateway process draws on the same
  bucket and the same concurrency pool; one round trip per ``acquire`` and per
  ``release`` (none for a rate refusal while the bucket is known empty).

:func:`admission_for` picks one from the configured Redis URL. This module is plain
asyncio and imports nothing from Django: it runs on the gateway's hot path.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import secrets
import time
from dataclasses import dataclass
from typing import Final, Literal, Protocol
from urllib.parse import urlsplit

from redis import asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

RefusalReason = Literal["rate", "concurrency"]

# A limit of zero never lets a request through, so there is no honest time to wait;
# this keeps well-behaved clients from retrying in a tight loop meanwhile.
CLOSED_RETRY_AFTER_S: Final = 60.0
# Nobody can tell when one of the in-flight requests will finish; a second is a short,
# polite wait that the Retry-After header can carry as a whole number.
CONCURRENCY_RETRY_AFTER_S: Final = 1.0
# A refill that is due "now" still yields a positive Retry-After.
_MIN_RETRY_AFTER_S: Final = 0.001


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's admission limits.

    Attributes:
        rate_per_s: Tokens added to the bucket per second; 0 means no request is admitted.
        burst: The bucket's capacity: how many requests may arrive at once after a quiet spell.
        max_concurrent: Most requests in flight at once; 0 means no request is admitted.
    """

    rate_per_s: float
    burst: int
    max_concurrent: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s >= 0):
            raise ValueError(f"Limits.rate_per_s must be a finite number >= 0, not {self.rate_per_s!r}")
        if self.burst < 0:
            raise ValueError(f"Limits.burst must be >= 0, not {self.burst!r}")
        if self.max_concurrent < 0:
            raise ValueError(f"Limits.max_concurrent must be >= 0, not {self.max_concurrent!r}")


@dataclass(frozen=True, slots=True)
class Ticket:
    """Proof that a request was admitted; hand it back to ``release`` when the request ends.

    Attributes:
        tenant: The tenant the request was admitted for.
        ticket_id: Unique among the tenant's in-flight requests.
    """

    tenant: str
    ticket_id: str


class AdmissionRefused(Exception):
    """The tenant is over a limit; the gateway answers 429 with ``Retry-After``.

    Attributes:
        tenant: The tenant that was refused.
        reason: ``"rate"`` or ``"concurrency"``: which limit refused it.
        retry_after_s: Seconds to wait before retrying, > 0 (round up for ``Retry-After``).
        message: A sentence for the client saying which limit and what to do.
    """

    def __init__(self, *, tenant: str, reason: RefusalReason, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.reason: RefusalReason = reason
        self.retry_after_s = retry_after_s
        self.message = message


class AdmissionUnavailable(Exception):
    """The shared admission state cannot be reached; the gateway answers 503.

    Requests are refused rather than admitted unchecked, so a Redis outage cannot let
    one tenant flood the workers.

    Attributes:
        message: A sentence naming the store that could not be reached and why.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Admission(Protocol):
    """Per-tenant admission control: one ``acquire`` and one ``release`` per request."""

    async def acquire(self, tenant: str, limits: Limits) -> Ticket:
        """Admits one request for ``tenant`` under ``limits``.

        Raises:
            AdmissionRefused: The tenant is over its rate or concurrency limit.
            AdmissionUnavailable: The shared state cannot be reached (Redis only).
        """
        ...

    async def release(self, ticket: Ticket) -> None:
        """Frees the concurrency slot ``ticket`` holds; releasing twice is harmless."""
        ...

    def refused_now(self, tenant: str, limits: Limits) -> AdmissionRefused | None:
        """The refusal a request of ``tenant`` would get now, when this process can tell
        without I/O; None when it would be admitted or only the shared state can tell.
        Takes nothing: a request it does not refuse still goes through ``acquire``."""
        ...

    async def close(self) -> None:
        """Lets go of connections and state."""
        ...


def _format_rate(rate_per_s: float) -> str:
    rate = float(rate_per_s)  # an int passed as a rate has no is_integer() before 3.12
    return str(int(rate)) if rate.is_integer() else f"{rate:.3g}"


def _rate_refusal(tenant: str, limits: Limits, retry_after_s: float) -> AdmissionRefused:
    retry_after_s = max(retry_after_s, _MIN_RETRY_AFTER_S)
    return AdmissionRefused(
        tenant=tenant,
        reason="rate",
        retry_after_s=retry_after_s,
        message=(
            f"tenant {tenant!r} is over its rate limit of {_format_rate(limits.rate_per_s)} requests/s; "
            f"retry after {math.ceil(retry_after_s)} s"
        ),
    )


@functools.lru_cache(maxsize=4096)
def _rate_refusal_whole(tenant: str, limits: Limits, retry_after_s: int) -> AdmissionRefused:
    """``_rate_refusal`` for a wait of whole seconds, made once per tenant, limits and wait:
    the no-I/O refusals (``refused_now``) are answered, never raised, so one may be shared."""
    return _rate_refusal(tenant, limits, float(retry_after_s))


def _concurrency_refusal(tenant: str, in_flight: int) -> AdmissionRefused:
    return AdmissionRefused(
        tenant=tenant,
        reason="concurrency",
        retry_after_s=CONCURRENCY_RETRY_AFTER_S,
        message=f"tenant {tenant!r} has {in_flight} requests in flight, its limit; retry when one finishes",
    )


def _refuse_if_closed(tenant: str, limits: Limits) -> None:
    """Refuses at once when a limit of zero means nothing can ever be admitted."""
    if limits.max_concurrent == 0:
        raise AdmissionRefused(
            tenant=tenant,
            reason="concurrency",
            retry_after_s=CLOSED_RETRY_AFTER_S,
            message=(
                f"tenant {tenant!r} has a concurrency limit of 0 requests in flight, so no request is admitted; "
                "ask an operator to raise it"
            ),
        )
    if limits.rate_per_s == 0 or limits.burst < 1:
        what = "a rate limit of 0 requests/s" if limits.rate_per_s == 0 else f"a burst of {limits.burst} requests"
        raise AdmissionRefused(
            tenant=tenant,
            reason="rate",
            retry_after_s=CLOSED_RETRY_AFTER_S,
            message=f"tenant {tenant!r} has {what}, so no request is admitted; ask an operator to raise it",
        )


class _TenantState:
    """One tenant's bucket and in-flight tickets, in :class:`LocalAdmission`."""

    __slots__ = ("in_flight", "tokens", "updated_at")

    def __init__(self, tokens: float, updated_at: float) -> None:
        self.tokens = tokens
        self.updated_at = updated_at
        self.in_flight: set[str] = set()


class LocalAdmission:
    """Admission control with state in this process: O(1) dict and set operations per call.

    No lock is taken: ``acquire`` and ``release`` never await, so on one event loop each
    runs to completion before another starts. Do not share an instance across threads
    or event loops. Limits hold per process, so with N gateway processes a tenant gets
    up to N times its limits; use :class:`RedisAdmission` there.

    A tenant's state stays until ``close``; the gateway only admits authenticated
    tenants, so it grows with the number of tenants, not with requests.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, _TenantState] = {}
        self._ticket_ids = itertools.count()

    async def acquire(self, tenant: str, limits: Limits) -> Ticket:
        """Admits one request for ``tenant`` under ``limits``.

        Raises:
            AdmissionRefused: The tenant is over its rate or concurrency limit.
        """
        state = self._checked(tenant, limits)
        state.tokens -= 1.0
        ticket = Ticket(tenant, str(next(self._ticket_ids)))
        state.in_flight.add(ticket.ticket_id)
        return ticket

    def refused_now(self, tenant: str, limits: Limits) -> AdmissionRefused | None:
        """The refusal a request of ``tenant`` would get now, or None; takes nothing and
        raises nothing (a tenant far over its rate asks this for every request it sends)."""
        if limits.max_concurrent == 0 or limits.rate_per_s == 0 or limits.burst < 1:
            try:
                _refuse_if_closed(tenant, limits)
            except AdmissionRefused as refused:
                return refused
        state = self._tenants.get(tenant)
        if state is None:
            return None  # a bucket not made yet is full
        in_flight = len(state.in_flight)
        if in_flight >= limits.max_concurrent:
            return _concurrency_refusal(tenant, in_flight)
        tokens = state.tokens + (time.monotonic() - state.updated_at) * limits.rate_per_s
        if tokens >= 1.0:
            return None
        return _rate_refusal_whole(
            tenant, limits, math.ceil(max((1.0 - tokens) / limits.rate_per_s, _MIN_RETRY_AFTER_S))
        )

    def _checked(self, tenant: str, limits: Limits) -> _TenantState:
        """The tenant's state with its bucket refilled to now, if a request fits both limits.

        Raises:
            AdmissionRefused: It does not.
        """
        _refuse_if_closed(tenant, limits)
        now = time.monotonic()
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _TenantState(float(limits.burst), now)
        in_flight = len(state.in_flight)
        if in_flight >= limits.max_concurrent:
            raise _concurrency_refusal(tenant, in_flight)
        state.tokens = min(float(limits.burst), state.tokens + (now - state.updated_at) * limits.rate_per_s)
        state.updated_at = now
        if state.tokens < 1.0:
            raise _rate_refusal(tenant, limits, (1.0 - state.tokens) / limits.rate_per_s)
        return state

    async def release(self, ticket: Ticket) -> None:
        """Frees the concurrency slot ``ticket`` holds; releasing twice is harmless."""
        state = self._tenants.get(ticket.tenant)
        if state is not None:
            state.in_flight.discard(ticket.ticket_id)

    async def close(self) -> None:
        """Forgets every tenant's state."""
        self._tenants.clear()


# Both checks in one atomic step, timed by the Redis server's clock so gateways on hosts
# with skewed clocks still agree. Needs Redis >= 5 (scripts replicated by effect, which
# allows TIME before writes). Times are integer microseconds: exact in a Lua double.
#
# KEYS[1] bucket: hash {tokens, ts_us}; an absent bucket reads as full.
# KEYS[2] slots: sorted set of ticket id -> expiry (µs), so a crashed gateway's slots expire.
# ARGV: rate per second, burst, max concurrent, ticket id, slot ttl (µs).
# Returns {1, ""} admitted, {2, in_flight} over concurrency, {3, retry_after_s} over rate.
_ACQUIRE_LUA: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local slot_ttl_us = tonumber(ARGV[5])
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_us)
local in_flight = redis.call('ZCARD', KEYS[2])
if in_flight >= max_concurrent then
  return {2, tostring(in_flight)}
end

local tokens = burst
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'ts_us')
if stored[1] and stored[2] then
  local elapsed_us = math.max(0, now_us - tonumber(stored[2]))
  tokens = math.min(burst, tonumber(stored[1]) + elapsed_us * rate / 1000000)
end
if tokens < 1 then
  return {3, string.format('%.17g', (1 - tokens) / rate)}
end

tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts_us', now_us)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1)
redis.call('ZADD', KEYS[2], now_us + slot_ttl_us, ARGV[4])
redis.call('PEXPIRE', KEYS[2], math.ceil(slot_ttl_us / 1000) + 1)
return {1, ''}
"""

_ADMITTED: Final = 1
_OVER_CONCURRENCY: Final = 2


def _redis_location(url: str) -> str:
    """``url`` without its credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisAdmission:
    """Admission control shared by every gateway process through Redis.

    ``acquire`` is one script call (concurrency, then bucket, atomically); ``release`` is
    one ``ZREM``. After a rate refusal, the tenant's requests are refused in this process
    with no call until its bucket can hold a token again (a tenant far over its rate costs
    Redis about one call per token, not one per request). Each tenant has two keys,
    ``<key_prefix>{<tenant>}:bucket`` and ``<key_prefix>{<tenant>}:slots`` (the braces keep
    both in one Redis Cluster slot); both expire once the tenant is idle.

    A slot that is never released (its gateway crashed) expires ``slot_ttl_s`` after it
    was taken, so ``slot_ttl_s`` must exceed the gateway's longest request.

    If Redis cannot be reached, calls raise :class:`AdmissionUnavailable` after one quick
    reconnect attempt: nothing is admitted unchecked.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "berth:admission:",
        slot_ttl_s: float = 120,
        connect_timeout_s: float = 0.5,
        socket_timeout_s: float = 0.5,
    ) -> None:
        """Prepares a client for ``url``; nothing connects until the first call.

        Args:
            url: A ``redis://``, ``rediss://`` or ``unix://`` URL.
            key_prefix: Prepended to every key this instance writes.
            slot_ttl_s: How long an unreleased concurrency slot lives.
            connect_timeout_s: How long to wait for a connection to Redis.
            socket_timeout_s: How long to wait for Redis to answer a call.
        """
        if not (math.isfinite(slot_ttl_s) and slot_ttl_s > 0):
            raise ValueError(f"RedisAdmission slot_ttl_s must be a finite number > 0, not {slot_ttl_s!r}")
        self._location = _redis_location(url)
        self._key_prefix = key_prefix
        self._slot_ttl_us = max(1, round(slot_ttl_s * 1_000_000))
        # One immediate retry heals a pooled connection Redis has dropped; more would keep a
        # request waiting on an outage. Timeouts are not retried: the script may have run.
        self._redis = redis_asyncio.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        )
        self._acquire_script = self._redis.register_script(_ACQUIRE_LUA)
        # Per tenant, when its bucket (as Redis last told this gateway) holds a token again,
        # under which limits. Gateways only take tokens, so until then no request of the
        # tenant can be admitted anywhere: a rate refusal needs no round trip.
        self._empty_until: dict[str, tuple[float, Limits]] = {}

    def _keys(self, tenant: str) -> tuple[str, str]:
        base = f"{self._key_prefix}{{{tenant}}}"
        return f"{base}:bucket", f"{base}:slots"

    def _unavailable(self, action: str, error: RedisError) -> AdmissionUnavailable:
        return AdmissionUnavailable(
            f"admission control cannot {action}: Redis at {self._location} failed ({error}); "
            "requests are refused until it is back"
        )

    async def acquire(self, tenant: str, limits: Limits) -> Ticket:
        """Admits one request for ``tenant`` under ``limits``, counted across all gateways.

        Raises:
            AdmissionRefused: The tenant is over its rate or concurrency limit.
            AdmissionUnavailable: Redis cannot be reached or failed the call.
        """
        _refuse_if_closed(tenant, limits)
        asked_at = time.monotonic()
        known = self._known_empty(tenant, limits, asked_at)
        if known is not None:  # a tenant over its rate: refused here
            raise known
        ticket = Ticket(tenant, secrets.token_hex(8))
        args = (repr(limits.rate_per_s), limits.burst, limits.max_concurrent, ticket.ticket_id, self._slot_ttl_us)
        try:
            code, value = await self._acquire_script(keys=self._keys(tenant), args=args)
        except RedisError as error:
            # The script may have run before the reply was lost: give back the slot it may hold.
            with contextlib.suppress(RedisError):
                await self._redis.zrem(self._keys(tenant)[1], ticket.ticket_id)
            raise self._unavailable(f"admit a request for tenant {tenant!r}", error) from error
        if code == _ADMITTED:
            return ticket
        if code == _OVER_CONCURRENCY:
            raise _concurrency_refusal(tenant, int(value))
        # Counted from before the call (Redis read its clock after): never later than the refill.
        self._empty_until[tenant] = (asked_at + float(value), limits)
        raise _rate_refusal(tenant, limits, float(value))

    def refused_now(self, tenant: str, limits: Limits) -> AdmissionRefused | None:
        """The rate refusal a request of ``tenant`` gets now while its bucket is known empty
        (or a zero limit's); None when only Redis can tell."""
        try:
            _refuse_if_closed(tenant, limits)
        except AdmissionRefused as refused:
            return refused
        return self._known_empty(tenant, limits, time.monotonic())

    def _known_empty(self, tenant: str, limits: Limits, now: float) -> AdmissionRefused | None:
        empty = self._empty_until.get(tenant)
        if empty is None:
            return None
        until, seen = empty
        if now < until and seen == limits:
            return _rate_refusal(tenant, limits, until - now)
        del self._empty_until[tenant]
        return None

    async def release(self, ticket: Ticket) -> None:
        """Frees the concurrency slot ``ticket`` holds; releasing twice is harmless.

        Raises:
            AdmissionUnavailable: Redis cannot be reached; the slot still expires after
                ``slot_ttl_s``, so a caller that has already replied may log this and go on.
        """
        try:
            await self._redis.zrem(self._keys(ticket.tenant)[1], ticket.ticket_id)
        except RedisError as error:
            raise self._unavailable(f"release a slot of tenant {ticket.tenant!r}", error) from error

    async def close(self) -> None:
        """Closes the connections to Redis; the shared state stays for other gateways."""
        await self._redis.aclose()


def admission_for(redis_url: str | None, *, longest_request_s: float = 60.0) -> Admission:
    """The admission control to use: shared through Redis when ``redis_url`` is set.

    Args:
        redis_url: The Redis URL from settings, or None / "" when there is no Redis.
        longest_request_s: How long one request may hold a concurrency slot at most (body,
            cold start and answer); a crashed gateway's slots expire a margin after it.

    Returns:
        A :class:`RedisAdmission` for ``redis_url``, else a :class:`LocalAdmission`.
    """
    if redis_url:
        return RedisAdmission(redis_url, slot_ttl_s=max(120.0, longest_request_s + 30.0))
    return LocalAdmission()
