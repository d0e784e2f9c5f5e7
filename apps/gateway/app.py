"""The gateway: a plain ASGI app for ``/v2/...`` (Open Inference Protocol v2), per tenant.

It sits in front of Django in the same server but runs none of Django's middleware: a
request pays for a dictionary lookup of its API key, a token from its tenant's bucket, a
weighted draw of a version, two random replicas compared by requests in flight, and one
write and one read on a pooled keep-alive connection to the worker. The body travels to
the worker as it came (JSON or binary), and the worker's answer travels back as it left.

State lives in memory and is refreshed off the event loop: the routing table (tenants,
limits, models, versions, ready replicas) every ``BERTH_GATEWAY_REFRESH_S``, API keys for
at most ``BERTH_API_KEY_CACHE_S`` (so a revoked key stops within 2 s). The database is
only touched from a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from apps.gateway import fastpath, metrics
from apps.gateway.admission import Admission, AdmissionRefused, AdmissionUnavailable, admission_for
from apps.gateway.routing import (
    ModelRoute,
    ReplicaRoute,
    RoutingSnapshot,
    TenantRoute,
    VersionRoute,
    replica_choose,
)
from apps.gateway.upstream import Upstream, UpstreamBrokenError, UpstreamConnectError, UpstreamResponse
from apps.tenants.access import Action, ApiKeyPrincipal

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
if TYPE_CHECKING:
    from apps.monitoring.services import LoggedPrediction

T = TypeVar("T")

SERVER_NAME = "berth"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
HEADER_LENGTH = b"inference-header-content-length"
CONTENT_ENCODING = b"content-encoding"
REQUEST_ID = b"x-request-id"
_REQUEST_ID_SHAPE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
# What apps.tenants.keys.key_mint makes: brt_<8 hex>_<urlsafe secret>.
_KEY_SHAPE = re.compile(r"^brt_[0-9a-f]{8}_[A-Za-z0-9_\-]{20,}$")
# A worker that refused a connection is left out of routing for this long.
SUSPECT_S = 5.0
# How often the deployments a gateway served are marked as used (scale to zero).
DEMAND_FLUSH_S = 1.0
# Sampled predictions waiting for the next flush: at most this many bytes of bodies (past it,
# new samples are skipped), and bodies over the log's limit are not kept at all.
PREDICTION_BUFFER_BYTES = 64 << 20
OVERSIZED_SAMPLE_BYTES = 1024  # what an entry kept without its bodies counts against that
# Rollup points a failed store left behind, kept for the next flushes (the oldest go first).
UNSAVED_POINTS_MAX = 100_000


class GatewayError(Exception):
    """An answer in the protocol's error shape: ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.allow = allow


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's settings, read once from Django's."""

    max_body_bytes: int
    timeout_s: float
    cold_start_s: float
    refresh_s: float
    key_cache_s: float
    worker_token: str
    redis_url: str
    max_connections_per_worker: int = 256

    @property
    def longest_request_s(self) -> float:
        """How long one request may hold its concurrency slot at most: its body (up to the
        timeout), a cold start, a first attempt whose worker answers 404 (no longer hosts the
        model) just before the deadline, a second cold start for the retry, and the retry's
        fresh timeout."""
        return 3 * self.timeout_s + 2 * self.cold_start_s

    @classmethod
    def from_django(cls) -> GatewaySettings:
        from django.conf import settings

        from inference_workers.tokens import worker_token

        return cls(
            max_body_bytes=settings.BERTH_GATEWAY_MAX_BODY_MB * 1024 * 1024,
            timeout_s=settings.BERTH_GATEWAY_TIMEOUT_S,
            cold_start_s=settings.BERTH_GATEWAY_COLD_START_S,
            refresh_s=settings.BERTH_GATEWAY_REFRESH_S,
            key_cache_s=settings.BERTH_API_KEY_CACHE_S,
            worker_token=worker_token(configured=settings.BERTH_WORKER_TOKEN, data_dir=settings.BERTH_DATA_DIR),
            redis_url=settings.REDIS_URL,
            max_connections_per_worker=settings.BERTH_GATEWAY_MAX_CONNECTIONS_PER_WORKER,
        )


# Request ids: unique, not secret (a client may send its own), so drawn from a generator
# seeded from the OS once per process (and again in a forked child) rather than with a
# getrandom system call per request.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def _request_id(sent: bytes | None) -> bytes:
    """The client's ``X-Request-ID`` when it is a sane one, else a fresh id: 128 random bits
    in hex (as ``uuid4().hex``)."""
    if sent is not None and _REQUEST_ID_SHAPE.match(sent):
        return sent
    return _ids.getrandbits(128).to_bytes(16).hex().encode()


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _retry_after(seconds: float) -> bytes:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, round(seconds + 0.49))).encode()


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    content_type: bytes = b"application/json",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(
                413, f"the body is over the gateway's limit of {limit} bytes (BERTH_GATEWAY_MAX_BODY_MB)"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _DatabaseThreads:
    """Runs ORM work on a small pool of threads, each closing stale connections first.

    A thread keeps its SQLite connection from one call to the next (closed after a database
    error, or if a call left a transaction open): opening one (the file, the WAL pragmas,
    Django's SQL functions) cost as much CPU as the routing read itself, twice a second, and
    the event loop waits for the GIL meanwhile. Other databases follow their own
    ``CONN_MAX_AGE``. The threads, and their connections, end with the pool.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-db")

    def close(self) -> None:
        """Waits for the calls in flight and ends the threads (blocking: call it off the loop)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, function: Callable[..., T], /, **kwargs: Any) -> T:
        def call() -> T:
            from django.db import DatabaseError

            _connections_checked()
            try:
                return function(**kwargs)
            except DatabaseError:
                _connections_closed()  # the next call starts afresh, in or out of a transaction
                raise
            finally:
                _connections_checked()

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


def _connections_checked() -> None:
    """Closes this thread's connections that are unusable or past their age, as Django's
    ``close_old_connections``, except that an SQLite one is kept unless an error occurred
    on it or it is inside a transaction (Django's or one begun below it)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.vendor != "sqlite":
            connection.close_if_unusable_or_obsolete()
        elif connection.connection is not None and (
            connection.errors_occurred
            or connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"]
            or connection.connection.in_transaction
        ):
            connection.close()


def _connections_closed() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()


# Reads of the routing table begun for a miss (an unknown model or version), at most one per:
MISS_READ_S = 0.25
# Keys this process never had a verdict for, looked up in the database at once, at most: a
# stream of made-up keys would otherwise queue a read each on the database threads without
# bound, ahead of the routing table's refresh and other tenants' key checks.
MAX_KEY_LOOKUPS = 64


class KeyCache:
    """API key (by SHA-256) → principal, each verdict kept at most ``ttl_s``."""

    def __init__(self, database: _DatabaseThreads, ttl_s: float) -> None:
        self._database = database
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, ApiKeyPrincipal | None]] = {}
        # Key (as the header carries it) → (expiry, principal) for verdicts that let the key
        # infer, kept only as long as the verdict by digest they rest on: a revoke still stops
        # it within ``ttl_s``. Bounded: one valid key is one entry however the header is padded.
        self._good: dict[bytes, tuple[float, ApiKeyPrincipal]] = {}
        self._lookups: dict[str, asyncio.Future[ApiKeyPrincipal | None]] = {}
        self._unseen_pending = 0  # of those, reads of keys this process had no verdict for
        self._touched: dict[int, float] = {}
        self.background: set[asyncio.Task[None]] = set()  # last_used_at writes

    async def principal(self, authorization: bytes | None) -> ApiKeyPrincipal:
        """Who presents this ``Authorization`` header, checked for the ``infer`` scope.

        Raises:
            GatewayError: 401 for a missing, unknown, revoked or expired key; 403 for a key
                without the ``infer`` scope or of a deactivated tenant.
        """
        from apps.tenants.keys import UNKNOWN_KEY_MESSAGE

        now = time.monotonic()
        good = self.cached(authorization, now)  # a good verdict for this very header: no hashing
        if good is not None:
            self._touch_now(good, now)
            return good
        digest = self._digest(authorization)
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            # A key known to exist waits for its re-check; an unknown one's verdict gives no
            # such right (made-up keys would otherwise come back as "seen" ones).
            found = await self._lookup(digest, seen=entry is not None and entry[1] is not None)
            entry = (time.monotonic() + self._ttl_s, found)
            self._entries[digest] = entry
            if len(self._entries) > 10_000:
                self._prune(now)
        principal = entry[1]
        if principal is None:
            raise GatewayError(401, UNKNOWN_KEY_MESSAGE)
        self._check(principal, _now())
        token = _bearer_token(authorization)
        assert token is not None  # _digest refused a missing one
        if len(self._good) >= 10_000:
            self._good = {token: hit for token, hit in self._good.items() if hit[0] > now}
            if len(self._good) >= 10_000:
                self._good.clear()
        self._good[token] = (entry[0], principal)  # as long as the verdict it rests on
        self._touch_now(principal, now)
        return principal

    def cached(self, authorization: bytes | None, now: float | None = None) -> ApiKeyPrincipal | None:
        """The principal of this header's key when a fresh good verdict is cached (it exists,
        is not revoked, lets its key infer, and its tenant is active); None otherwise
        (``principal`` then decides, and says why). No I/O, no hashing."""
        token = _bearer_token(authorization)
        hit = self._good.get(token) if token else None
        if hit is None or hit[0] <= (time.monotonic() if now is None else now):
            return None
        principal = hit[1]
        if principal.expires_at is not None and principal.expires_at <= _now():
            return None
        return principal

    def _touch_now(self, principal: ApiKeyPrincipal, now: float) -> None:
        """Records the key's use (``last_used_at``) at most once a minute, off the hot path."""
        if self._touched.get(principal.key_id, 0.0) <= now:
            self._touched[principal.key_id] = now + 60.0
            task = asyncio.get_running_loop().create_task(self._touch(principal.key_id, _now()))
            _keep(self.background, task)

    @staticmethod
    def _digest(authorization: bytes | None) -> str:
        """The SHA-256 of the key in an ``Authorization: Bearer`` header.

        Raises:
            GatewayError: 401 when there is no key or it cannot be one (no database read).
        """
        from apps.tenants.keys import MAX_KEY_LENGTH, TOO_LONG_MESSAGE, UNKNOWN_KEY_MESSAGE, key_digest

        token = _bearer_token(authorization)
        if token is None:
            raise GatewayError(401, "send your tenant API key as 'Authorization: Bearer brt_…'")
        raw = token.decode("latin-1")
        if len(raw) > MAX_KEY_LENGTH:
            raise GatewayError(401, TOO_LONG_MESSAGE)
        if not _KEY_SHAPE.match(raw):  # never costs a database read
            raise GatewayError(401, UNKNOWN_KEY_MESSAGE)
        return key_digest(raw)

    @staticmethod
    def _check(principal: ApiKeyPrincipal, wall: datetime) -> None:
        """Raises GatewayError (401 expired or revoked, 403 inactive tenant or no ``infer``)."""
        from apps.tenants.keys import api_key_check
        from control_plane.errors import ApplicationError

        try:
            api_key_check(principal=principal, now=wall)
        except ApplicationError as refused:
            raise GatewayError(refused.status_code, refused.message) from None
        if Action.INFER not in principal.actions():
            raise GatewayError(403, f"API key brt_{principal.prefix} lacks the 'infer' scope; create a key with it")

    async def _lookup(self, digest: str, *, seen: bool) -> ApiKeyPrincipal | None:
        """The key's row, read on the database threads (concurrent lookups of one key share
        one read). A key this process found before (``seen``, its verdict expired since)
        always waits for its read; any other is refused while ``MAX_KEY_LOOKUPS`` such reads
        are pending."""
        from apps.tenants.keys import api_key_lookup

        pending = self._lookups.get(digest)
        if pending is None:
            if not seen and self._unseen_pending >= MAX_KEY_LOOKUPS:
                raise GatewayError(
                    503,
                    f"the gateway is already checking {MAX_KEY_LOOKUPS} API keys it does not know yet; retry shortly",
                    retry_after_s=1,
                )
            pending = asyncio.ensure_future(self._database.run(api_key_lookup, digest=digest))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(digest, None))
            if not seen:
                self._unseen_pending += 1
                pending.add_done_callback(self._unseen_done)
        try:
            return await asyncio.shield(pending)
        except Exception as exc:
            log.exception("API key lookup failed")
            raise GatewayError(503, f"the gateway cannot check API keys right now ({exc}); retry shortly") from None

    def _unseen_done(self, _: asyncio.Future[ApiKeyPrincipal | None]) -> None:
        self._unseen_pending -= 1

    async def _touch(self, key_id: int, wall: datetime) -> None:
        from apps.tenants.keys import api_key_touch

        try:
            await self._database.run(api_key_touch, key_id=key_id, now=wall)
        except Exception:
            log.warning("could not record the use of API key %s", key_id, exc_info=True)

    def _prune(self, now: float) -> None:
        for digest in [d for d, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[digest]


def _bearer_token(authorization: bytes | None) -> bytes | None:
    """The key in an ``Authorization: Bearer …`` header, or None when there is none."""
    if not authorization or authorization[:7].lower() != b"bearer ":
        return None
    return authorization[7:].strip()


def _keep(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    """Holds a fire-and-forget task until it ends (the loop keeps only weak references)."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


class Gateway:
    """One process's gateway state: routing snapshot, keys, admission, pools, cold starts."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.database = _DatabaseThreads()
        self.keys = KeyCache(self.database, settings.key_cache_s)
        self.admission: Admission = admission_for(
            settings.redis_url or None, longest_request_s=settings.longest_request_s
        )
        self.upstream = Upstream(max_connections_per_worker=settings.max_connections_per_worker)
        self.snapshot: RoutingSnapshot | None = None
        self.outstanding: defaultdict[int, int] = defaultdict(int)
        self._worker_auth = f"Bearer {settings.worker_token}".encode()
        self._suspects: dict[str, float] = {}
        # Replicas whose worker answered 404 (unloaded since the last refresh): left out of
        # routing for a while, though their worker stays in it.
        self._gone: dict[int, float] = {}
        self._cold_starts: dict[tuple[int, int], asyncio.Task[tuple[ReplicaRoute, ...]]] = {}
        self._served: set[int] = set()
        self._refreshing: asyncio.Task[None] | None = None
        self._read_started = float("-inf")  # when the read behind ``snapshot`` began (monotonic)
        self._miss_read_at = float("-inf")  # when a miss last began a read of its own
        self._loop_task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.background: set[asyncio.Task[None]] = set()
        self.predictions: deque[LoggedPrediction] = deque()
        self._prediction_bytes = 0
        self._unsaved_points: list[Any] = []

    # Prediction logs ----------------------------------------------------------------
    def log_prediction(
        self,
        model: ModelRoute,
        version: VersionRoute,
        request_id: bytes,
        scope: Scope,
        body: bytes,
        response: UpstreamResponse,
    ) -> None:
        """Keeps a sampled answered request for the prediction log (written at the next flush;
        decoding waits until then, off the request path). A full buffer drops the oldest."""
        from apps.monitoring.services import LoggedPrediction

        log = model.log
        if log is None or self._rng.random() >= log.sample_rate:
            return
        from apps.monitoring.services import PREDICTION_LOG_MAX_BODY

        request_length = _header(scope, HEADER_LENGTH)
        encoding = _header(scope, CONTENT_ENCODING)
        response_length = next((v for k, v in response.headers if k.lower() == HEADER_LENGTH), None)
        too_large = max(len(body), len(response.body)) > PREDICTION_LOG_MAX_BODY
        size = OVERSIZED_SAMPLE_BYTES if too_large else len(body) + len(response.body)
        if self._prediction_bytes + size > PREDICTION_BUFFER_BYTES:
            return  # the database is behind: skip this sample rather than grow without bound
        self._prediction_bytes += size
        self.predictions.append(
            LoggedPrediction(
                tenant=model.tenant_slug,
                model=model.name,
                version=version.number,
                request_id=request_id.decode("latin-1"),
                at=time.time(),
                request_body=b"" if too_large else body,
                request_header_length=request_length.decode("latin-1") if request_length else None,
                response_body=b"" if too_large else response.body,
                response_header_length=response_length.decode("latin-1") if response_length else None,
                retention_days=log.retention_days,
                too_large=max(len(body), len(response.body)) if too_large else 0,
                request_encoding=encoding.decode("latin-1").strip().lower() if encoding else "",
            )
        )

    async def _flush_predictions(self) -> None:
        if not self.predictions:
            return
        from apps.monitoring.services import prediction_logs_record

        entries = list(self.predictions)
        self.predictions.clear()
        try:
            await self.database.run(prediction_logs_record, entries=entries)
        except Exception:  # kept for the next flush, ahead of newer ones (the byte cap still holds)
            log.warning("could not store %d prediction logs; keeping them for later", len(entries), exc_info=True)
            self.predictions.extendleft(reversed(entries))
        else:
            self._prediction_bytes -= sum(
                OVERSIZED_SAMPLE_BYTES if e.too_large else len(e.request_body) + len(e.response_body) for e in entries
            )

    # Routing table ------------------------------------------------------------------
    def start(self) -> None:
        """Starts the background refresh on the running loop (idempotent)."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stops the background work and waits for the database calls in flight: a read still
        running on a database thread holds its tables' locks, which a test's teardown (a
        TRUNCATE of every table) would otherwise deadlock against."""
        tasks = [task for task in (self._loop_task, self._refreshing) if task is not None]
        tasks += [*self.background, *self.keys.background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.database.close)

    async def _refresh_forever(self) -> None:
        flushed = time.monotonic()
        while True:
            try:
                await self._flush_rollups()
            except Exception:
                log.exception("the gateway could not hand its rollups on")
            try:
                await self._flush_predictions()
            except Exception:
                log.exception("the gateway could not store its prediction logs")
            try:
                await self.refresh()
                if self._served and time.monotonic() - flushed >= DEMAND_FLUSH_S:
                    from apps.gateway.services import deployment_record_requests

                    served, self._served = self._served, set()
                    flushed = time.monotonic()
                    await self.database.run(deployment_record_requests, deployment_ids=served)
            except Exception:
                log.exception("the gateway could not refresh its routing table; keeping the last one")
            await asyncio.sleep(self.settings.refresh_s)

    async def _flush_rollups(self) -> None:
        """Hands the seconds that ended to the monitoring pipeline: stored, and pushed to the
        tenants' dashboards over the channel layer."""
        cells = metrics.ROLLUPS.drain(time.time())
        if not cells and not self._unsaved_points:
            return
        from channels.layers import get_channel_layer

        from apps.monitoring.consumers import tenant_metrics_group
        from apps.monitoring.selectors import metric_point
        from apps.monitoring.services import RollupPoint, rollups_record

        points = [
            RollupPoint(
                second=cell.second,
                tenant=cell.labels[0],
                model=cell.labels[1],
                version=int(cell.labels[2]),
                requests=cell.requests,
                errors=cell.errors,
                statuses=cell.statuses,
                latency=cell.latency,
                inflight_max=cell.inflight_max,
            )
            for cell in cells
        ]
        layer = get_channel_layer()
        if layer is not None and self.snapshot is not None:
            # Dashboards first: they stay live even while the database cannot take the rows.
            tenant_ids = {tenant.slug: tenant.tenant_id for tenant in self.snapshot.tenants.values()}
            by_tenant: dict[int, list[dict[str, Any]]] = {}
            for cell in cells:
                tenant_id = tenant_ids.get(cell.labels[0])
                if tenant_id is not None:
                    start = datetime.fromtimestamp(cell.second, tz=UTC)
                    point = metric_point(start=start, model=cell.labels[1], version=int(cell.labels[2]), rows=[cell])
                    # With the histogram, so a page merges several gateways' points exactly.
                    latency = {str(index): count for index, count in cell.latency.items()}
                    by_tenant.setdefault(tenant_id, []).append({**point, "step_s": 1, "latency": latency})
            try:
                for tenant_id, tenant_points in by_tenant.items():
                    await layer.group_send(
                        tenant_metrics_group(tenant_id), {"type": "metrics.update", "points": tenant_points}
                    )
            except Exception:  # the channel layer is down: dashboards miss these seconds; they are still stored
                log.warning("could not push %d live points", len(cells), exc_info=True)
        # Points a failed store left are written with these, never pushed live again.
        unsaved, self._unsaved_points = self._unsaved_points, []
        try:
            await self.database.run(rollups_record, points=unsaved + points)
        except Exception:  # kept for the next flush (bounded: the oldest go first), written late
            kept = (unsaved + points)[-UNSAVED_POINTS_MAX:]
            log.warning("could not store %d rollup points; keeping %d", len(points), len(kept), exc_info=True)
            self._unsaved_points = kept

    async def refresh(self) -> None:
        """Re-reads the routing table; concurrent callers share one read."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._refreshing)

    async def _load(self) -> None:
        from apps.gateway.selectors import routing_snapshot_load

        started = time.monotonic()
        self.snapshot = await self.database.run(routing_snapshot_load, previous=self.snapshot)
        self._read_started = started

    async def routes(self) -> RoutingSnapshot:
        if self.snapshot is None:
            try:
                await self.refresh()
            except Exception as exc:  # the database is down: say so in the protocol's shape
                log.exception("the gateway could not load its routing table")
                raise GatewayError(
                    503, f"the gateway has no routing table yet ({exc}); retry shortly", retry_after_s=1
                ) from None
        assert self.snapshot is not None
        return self.snapshot

    # Lookups ------------------------------------------------------------------------
    async def tenant_of(self, scope: Scope) -> TenantRoute:
        principal = await self.keys.principal(_header(scope, b"authorization"))
        snapshot = await self.routes()
        tenant = snapshot.tenants.get(principal.tenant_id)
        if tenant is None:  # created a moment ago: read again once
            await self.refresh()
            tenant = (await self.routes()).tenants.get(principal.tenant_id)
        if tenant is None:
            raise GatewayError(403, f"tenant '{principal.tenant_slug}' is not active")
        return tenant

    async def model_found(
        self, tenant: TenantRoute, name: str, version_text: str | None, arrived: float
    ) -> tuple[TenantRoute, ModelRoute]:
        """The tenant's model ``name`` (with the version named, when one is, in it).

        A 404 from a routing table read before the request ``arrived`` (monotonic) is looked
        up once more in a table read after it: a model or version made a moment ago is found
        whatever the refresh period. Concurrent misses share one read, and such reads begin
        at most every ``MISS_READ_S`` (a stream of unknown names cannot keep the database
        reading the table); a miss that cannot be read again, or whose read fails, stands.
        """
        for _ in range(3):
            try:
                model = self.model_of(tenant, name)
                if version_text is not None:
                    self.version_of(model, version_text)
                return tenant, model
            except GatewayError as miss:
                if miss.status != 404 or self._read_started >= arrived:
                    raise
                if self._refreshing is None or self._refreshing.done():  # none in flight to share
                    now = time.monotonic()
                    if now - self._miss_read_at < MISS_READ_S:
                        raise
                    self._miss_read_at = now
                try:
                    await self.refresh()  # one in flight may have begun before ``arrived``: then again
                except Exception:
                    log.warning("routing table read after a miss failed", exc_info=True)
                    raise miss from None
            found = (await self.routes()).tenants.get(tenant.tenant_id)
            if found is None:
                raise GatewayError(403, f"tenant '{tenant.slug}' is not active")
            tenant = found
        return tenant, self.model_of(tenant, name)

    @staticmethod
    def model_of(tenant: TenantRoute, name: str) -> ModelRoute:
        model = tenant.models.get(name)
        if model is None:
            raise GatewayError(404, f"model '{name}' not found; POST /v2/repository/index lists your models")
        return model

    @staticmethod
    def version_of(model: ModelRoute, version: str | None) -> VersionRoute:
        if version is None:
            if model.traffic:
                number = max(model.traffic, key=lambda pair: (pair[1], pair[0]))[0]
            else:
                ready = [v for v in model.versions.values() if v.status == "ready"]
                if not ready:
                    raise GatewayError(404, f"model '{model.name}' has no validated version yet")
                number = max(v.number for v in ready)
        else:
            if not version.isdigit() or len(version) > 9:
                raise GatewayError(400, f"model version '{version}' is not a whole number")
            number = int(version)
        found = model.versions.get(number)
        if found is None:
            raise GatewayError(404, f"model '{model.name}' has no version {number}")
        return found

    # Cold start ---------------------------------------------------------------------
    def _suspect_workers(self) -> frozenset[str]:
        if not self._suspects:
            return frozenset()
        now = time.monotonic()
        for worker_id in [w for w, until in self._suspects.items() if until <= now]:
            del self._suspects[worker_id]
        return frozenset(self._suspects)

    def _usable(self, version: VersionRoute) -> tuple[ReplicaRoute, ...]:
        """The version's replicas, less those on suspect workers and those known gone."""
        suspects = self._suspect_workers()
        if self._gone:
            now = time.monotonic()
            for replica_id in [r for r, until in self._gone.items() if until <= now]:
                del self._gone[replica_id]
        return tuple(r for r in version.replicas if r.worker_id not in suspects and r.replica_id not in self._gone)

    def _mark_suspect(self, replica: ReplicaRoute) -> None:
        from apps.gateway.services import replica_mark_suspect

        self._suspects[replica.worker_id] = time.monotonic() + SUSPECT_S
        self.upstream.forget(replica.url)

        async def record() -> None:
            try:
                await self.database.run(replica_mark_suspect, replica_id=replica.replica_id)
            except Exception:
                log.warning("could not mark replica %s suspect", replica.replica_id, exc_info=True)

        _keep(self.background, asyncio.get_running_loop().create_task(record()))

    async def ready_replicas(
        self, tenant: TenantRoute, model: ModelRoute, version: VersionRoute
    ) -> tuple[ReplicaRoute, ...]:
        """The version's usable replicas, waiting for a cold start when there are none."""
        usable = self._usable(version)
        if usable:
            return usable
        if model.deployment_id is None:
            raise _not_deployed(tenant, model)
        if version.number not in dict(model.traffic):
            raise GatewayError(
                503,
                f"version {version.number} of model '{model.name}' gets no traffic in its deployment, so none of its "
                "replicas is loaded; give it a weight first",
            )
        key = (model.model_id, version.number)
        task = self._cold_starts.get(key)
        if task is None:
            metrics.COLD_STARTS.labels(tenant.slug, model.name).inc()
            task = asyncio.get_running_loop().create_task(self._cold_start(tenant.tenant_id, model, version.number))
            self._cold_starts[key] = task
            task.add_done_callback(lambda _: self._cold_starts.pop(key, None))
        return await asyncio.shield(task)

    async def _cold_start(self, tenant_id: int, model: ModelRoute, number: int) -> tuple[ReplicaRoute, ...]:
        from apps.gateway.services import deployment_cold_start

        assert model.deployment_id is not None
        started = time.monotonic()
        deadline = started + self.settings.cold_start_s
        log.info("cold start: %s/%s version %d", model.tenant_slug, model.name, number)
        try:
            await self.database.run(deployment_cold_start, deployment_id=model.deployment_id)
        except Exception as exc:  # the database is down: a clear 503, not a 500 for every waiter
            log.exception("cold start of %s/%s could not be requested", model.tenant_slug, model.name)
            raise GatewayError(
                503, f"model '{model.name}' needs a cold start that cannot be requested now ({exc})", retry_after_s=5
            ) from None
        asked = time.monotonic()
        reason = "it is still loading"
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
            if time.monotonic() - asked >= DEMAND_FLUSH_S / 2:
                # Waiting requests are demand too: a short scale-to-zero window must not
                # unload the replica they wait for before it is ready.
                self._served.add(model.deployment_id)
                asked = time.monotonic()
            try:
                await self.refresh()
            except Exception:  # keep waiting on the last table; the deadline still holds
                log.warning("routing table refresh failed during a cold start", exc_info=True)
            assert self.snapshot is not None
            tenant = self.snapshot.tenants.get(tenant_id)
            current = tenant.models.get(model.name) if tenant else None
            version = current.versions.get(number) if current else None
            if current is None or version is None:
                raise GatewayError(404, f"model '{model.name}' version {number} was deleted while it loaded")
            if current.deployment_id is None:
                raise GatewayError(503, f"model '{model.name}' was undeployed while it loaded")
            usable = self._usable(version)
            if usable:
                log.info("cold start: %s/%s ready in %.2f s", model.tenant_slug, model.name, time.monotonic() - started)
                return usable
            reason = version.reason or reason
        raise GatewayError(
            503,
            f"model '{model.name}' version {number} has no ready replica after {self.settings.cold_start_s:.0f} s "
            f"(BERTH_GATEWAY_COLD_START_S): {reason}; retry later",
            retry_after_s=5,
        )

    # Infer ----------------------------------------------------------------------------
    async def forward(
        self,
        tenant: TenantRoute,
        model: ModelRoute,
        version: VersionRoute,
        *,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> UpstreamResponse:
        """Sends the request to a ready replica; retries once elsewhere if it could not connect,
        or if the worker no longer hosts the model, and when no other replica is left for that
        retry, waits for one the control plane loads (a cold start)."""
        path = f"/v2/models/{tenant.slug}.{model.name}/versions/{version.number}/infer"
        worker_headers = [(b"authorization", self._worker_auth), *headers]
        replicas = await self.ready_replicas(tenant, model, version)
        # One deadline for the answer, whichever replica gives it (a retry does not restart it).
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        tried: set[str] = set()
        failure = ""
        last: UpstreamResponse | None = None
        for attempt in range(2):
            replica = replica_choose(replicas, self.outstanding, exclude=frozenset(tried), rng=self._rng)
            if replica is None and attempt and last is None:
                # Nothing ran (no connection, or the model was gone) and no other replica is
                # left: the retry waits for a replica the control plane loads, on its own clock.
                replicas = await self.ready_replicas(tenant, model, version)
                deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
                replica = replica_choose(replicas, self.outstanding, exclude=frozenset(), rng=self._rng)
            if replica is None:
                break
            if attempt:
                metrics.RETRIES.labels(tenant.slug, model.name).inc()
            self.outstanding[replica.replica_id] += 1
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self.upstream.request(replica.url, "POST", path, headers=worker_headers, body=body)
            except UpstreamConnectError as exc:
                self._mark_suspect(replica)
                tried.add(replica.worker_id)
                failure = str(exc)
                continue
            except UpstreamBrokenError as exc:
                self._mark_suspect(replica)
                raise GatewayError(
                    502,
                    f"the worker running model '{model.name}' failed while it had the request ({exc}); it was not "
                    "retried because it may have run",
                ) from None
            except TimeoutError:
                raise GatewayError(
                    504,
                    f"model '{model.name}' did not answer within {self.settings.timeout_s:g} s "
                    "(BERTH_GATEWAY_TIMEOUT_S)",
                ) from None
            finally:
                self.outstanding[replica.replica_id] -= 1
            if response.status == 404 and attempt == 0:
                # The worker no longer hosts it (unloaded since the last refresh): nothing ran.
                self._gone[replica.replica_id] = time.monotonic() + SUSPECT_S
                tried.add(replica.worker_id)
                failure = "its worker no longer hosts it"
                continue
            if response.status == 503 and attempt == 0 and len(replicas) > 1:
                # The worker is draining or full: nothing ran there, so another may take it.
                tried.add(replica.worker_id)
                failure = "its worker refused it"
                last = response
                continue
            if response.status == 404:
                failure = "its worker no longer hosts it"
                break
            return _passed_on(response, tenant, model)
        if last is not None and last.status == 503:
            return _passed_on(last, tenant, model)
        raise GatewayError(
            503,
            f"no replica of model '{model.name}' version {version.number} could take the request ({failure}); "
            "retry shortly",
            retry_after_s=1,
        )

    def note_served(self, model: ModelRoute) -> None:
        if model.deployment_id is not None:
            self._served.add(model.deployment_id)

    def refused_now(
        self, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[AdmissionRefused, tuple[str, str, str]] | None:
        """The admission refusal an inference request (POST to ``path``) gets now, with its
        labels, when this process can tell with no I/O: a fresh cached key verdict, the
        model in the routing table, and the tenant over a limit as admission knows it here.
        None otherwise: the request takes the usual way, which decides (and explains) all."""
        snapshot = self.snapshot
        parts = path.split("/")[2:]  # after "", "v2"
        if snapshot is None or parts[-1:] != ["infer"] or parts[:1] != ["models"]:
            return None
        if len(parts) == 3:
            version_text = None
        elif len(parts) == 5 and parts[2] == "versions":
            version_text = parts[3]
        else:
            return None
        authorization = length = None
        for name, value in headers:  # the first of each, as the usual way reads them
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"content-length" and length is None:
                length = value
        if length is not None and (not length.isdigit() or int(length) > self.settings.max_body_bytes):
            return None  # the usual way answers 413 first
        principal = self.keys.cached(authorization)
        tenant = snapshot.tenants.get(principal.tenant_id) if principal is not None else None
        model = tenant.models.get(parts[1]) if tenant is not None else None
        if tenant is None or model is None:
            return None
        refused = self.admission.refused_now(tenant.slug, tenant.limits)
        if refused is None:
            return None
        try:
            version = self.version_of(model, version_text) if version_text else self.pick_version(tenant, model)
        except GatewayError:
            return None
        return refused, (tenant.slug, model.name, str(version.number))

    def pick_version(self, tenant: TenantRoute, model: ModelRoute) -> VersionRoute:
        if model.deployment_id is None or not model.traffic:
            raise _not_deployed(tenant, model)
        number = model.pick_version(self._rng.random())
        found = model.versions.get(number)
        if found is None:
            raise GatewayError(
                503, f"model '{model.name}' version {number} is in the traffic split but gone", retry_after_s=1
            )
        return found


def _passed_on(response: UpstreamResponse, tenant: TenantRoute, model: ModelRoute) -> UpstreamResponse:
    """A worker's answer as the client gets it. An error's message names the model as the
    tenant does: workers know it as ``<tenant>/<model>/<version>`` or ``<tenant>.<model>``,
    names the tenant never used (``model acme/m/1 has 8 requests queued`` goes out as
    ``model 'm' version 1 has 8 requests queued``). A 503 (draining, its queue full) goes
    out with ``Retry-After: 1``, as the gateway's own 503s and 429s do, so a client knows it
    may come back at once."""
    if response.status < 400:
        return response
    slug = tenant.slug.encode()
    if slug in response.body:
        # Slugs and model names are DNS labels: neither holds a '.', a '/' or a quote.
        internal = re.compile(re.escape(slug) + rb"[./]" + re.escape(model.name.encode()) + rb"(?:/(\d+))?\b")
        own = f"'{model.name}'".encode()
        body = internal.sub(lambda m: own + (b" version " + m[1] if m[1] else b""), response.body)
        response = replace(response, body=body)
    if response.status == 503 and all(name != b"retry-after" for name, _ in response.headers):
        response.headers.append((b"retry-after", b"1"))
    return response


def _index_filter(body: bytes) -> bool:
    """The repository index request's ``ready`` flag (an empty body asks for everything)."""
    if not body.strip():
        return False
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"the repository index request is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("ready", False), bool):
        raise GatewayError(400, 'the repository index request is a JSON object like {"ready": true}')
    return bool(request.get("ready", False))


def _not_deployed(tenant: TenantRoute, model: ModelRoute) -> GatewayError:
    return GatewayError(
        503,
        f"model '{model.name}' is not deployed; deploy it with PUT "
        f"/api/v1/tenants/{tenant.slug}/models/{model.name}/deployment/",
    )


def _version_metadata(model: ModelRoute, version: VersionRoute) -> dict[str, Any]:
    ready = sorted(v.number for v in model.versions.values() if v.status == "ready")
    return {
        "name": model.name,
        "versions": [str(n) for n in ready],
        "platform": version.platform,
        "inputs": list(version.inputs),
        "outputs": list(version.outputs),
    }


def _repository_state(model: ModelRoute, version: VersionRoute) -> tuple[str, str]:
    if version.replicas:
        return "READY", ""
    if version.status == "failed":
        return "UNAVAILABLE", version.reason or "validation failed"
    if version.status != "ready":
        return "UNAVAILABLE", f"the version is {version.status}"
    if model.deployment_id is None:
        return "UNAVAILABLE", "not deployed"
    if version.number not in dict(model.traffic):
        return "UNAVAILABLE", "no traffic in the deployment"
    if version.loading:
        return "LOADING", version.reason
    return "UNAVAILABLE", version.reason or "not loaded (an infer request loads it)"


class GatewayApp:
    """The ASGI app: routes ``/v2/...`` to the gateway's handlers."""

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self._settings = settings
        self._gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def gateway(self) -> Gateway:
        """This event loop's gateway (a server has one loop; tests start a loop per test)."""
        loop = asyncio.get_running_loop()
        if self._gateway is None or self._loop is not loop:
            self._settings = self._settings or GatewaySettings.from_django()
            self._gateway, self._loop = Gateway(self._settings), loop
            fastpath.install(loop, self.refusal)
        self._gateway.start()
        return self._gateway

    async def close(self) -> None:
        """Closes this loop's gateway, if one started (a server's shutdown, a test's end)."""
        gateway, self._gateway, self._loop = self._gateway, None, None
        if gateway is not None:
            await gateway.close()

    def refusal(self, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
        """The 429 (its headers, less the length, and body) for an inference request that
        admission refuses now, decided with no I/O, or None. The server's protocol
        (``fastpath.GatewayHttpProtocol``) asks as a request's headers complete: a tenant
        far over its rate is refused without an ASGI cycle. The answer is the one the usual
        path gives, counted in the metrics alike."""
        started = time.perf_counter()
        gateway = self._gateway
        found = gateway.refused_now(path, headers) if gateway is not None else None
        if found is None:
            return None
        refused, labels = found
        request_id = _request_id(next((value for name, value in headers if name == REQUEST_ID), None))
        reply = [
            (b"content-type", b"application/json"),
            (REQUEST_ID, request_id),
            (b"retry-after", _retry_after(refused.retry_after_s)),
        ]
        metrics.observe(labels, 429, time.perf_counter() - started)
        return reply, _error_body(refused.message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_id = _request_id(_header(scope, REQUEST_ID))
        reply_headers = [(REQUEST_ID, request_id)]
        labels = ("", "", "")
        started = time.perf_counter()
        status = 500
        try:
            status, labels = await self._route(scope, receive, send, request_id, reply_headers)
        except GatewayError as error:
            status = error.status
            if isinstance(error, _Labelled):
                labels = error.labels
            headers = list(reply_headers)
            if error.retry_after_s is not None:
                headers.append((b"retry-after", _retry_after(error.retry_after_s)))
            if error.allow:
                headers.append((b"allow", error.allow.encode()))
            if status != 499:
                await _send(send, status, _error_body(error.message), headers)
        except Exception:
            log.exception("gateway error on %s %s", scope["method"], scope["path"])
            await _send(send, 500, _error_body("internal error in the gateway; see its log"), reply_headers)
        finally:
            if labels[1]:
                metrics.observe(labels, status, time.perf_counter() - started)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, request_id: bytes, reply_headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, tuple[str, str, str]]:
        parts = scope["path"].rstrip("/").split("/")[2:]  # after "", "v2"
        method = scope["method"]
        gateway = self.gateway()
        no_labels = ("", "", "")
        if len(parts) <= 2 and parts[:1] != ["models"] and parts[:1] != ["repository"]:
            answer = self._server_route(parts)
            if answer is None:
                raise GatewayError(404, f"no route {method} {scope['path']}; see GET /v2 for the server's protocol")
            _require(method, "GET", scope)
            if parts == ["health", "ready"]:
                snapshot = await gateway.routes()
                if time.monotonic() - snapshot.loaded_at > 10 * gateway.settings.refresh_s + 5:
                    raise GatewayError(
                        503, "the gateway's routing table is stale: the database is unreachable", retry_after_s=1
                    )
            await _send(send, 200, orjson.dumps(answer), reply_headers)
            return 200, no_labels
        if parts == ["repository", "index"]:
            _require(method, "POST", scope)
            tenant = await gateway.tenant_of(scope)
            body = await _read_body(receive, 65536)
            only_ready = _index_filter(body)
            index = []
            for model in sorted(tenant.models.values(), key=lambda m: m.name):
                for version in sorted(model.versions.values(), key=lambda v: v.number):
                    state, reason = _repository_state(model, version)
                    if only_ready and state != "READY":
                        continue
                    index.append({"name": model.name, "version": str(version.number), "state": state, "reason": reason})
            await _send(send, 200, orjson.dumps(index), reply_headers)
            return 200, no_labels
        if len(parts) < 2 or parts[0] != "models":
            raise GatewayError(404, f"no route {method} {scope['path']}; see GET /v2 for the server's protocol")
        name, rest = parts[1], parts[2:]
        version_text: str | None = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version_text, rest = rest[1], rest[2:]
        if rest not in ([], ["ready"], ["infer"]):
            raise GatewayError(404, f"no route {method} {scope['path']}; see GET /v2 for the server's protocol")
        arrived = time.monotonic()
        tenant = await gateway.tenant_of(scope)
        tenant, model = await gateway.model_found(tenant, name, version_text, arrived)
        if rest == []:
            _require(method, "GET", scope)
            version = gateway.version_of(model, version_text)
            await _send(send, 200, orjson.dumps(_version_metadata(model, version)), reply_headers)
            return 200, no_labels
        if rest == ["ready"]:
            _require(method, "GET", scope)
            if version_text is None:
                ready = any(model.versions[v].replicas for v, _ in model.traffic if v in model.versions)
            else:
                ready = bool(gateway.version_of(model, version_text).replicas)
            if not ready:
                raise GatewayError(503, f"model '{name}' has no ready replica now; an infer request will load one")
            await _send(send, 200, b'{"ready":true}', reply_headers)
            return 200, no_labels
        _require(method, "POST", scope)
        return await self._infer(gateway, tenant, model, version_text, scope, receive, send, request_id, reply_headers)

    async def _infer(
        self,
        gateway: Gateway,
        tenant: TenantRoute,
        model: ModelRoute,
        version_text: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> tuple[int, tuple[str, str, str]]:
        version = (
            gateway.version_of(model, version_text) if version_text is not None else gateway.pick_version(tenant, model)
        )
        labels = (tenant.slug, model.name, str(version.number))
        limit = gateway.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Labelled(
                GatewayError(
                    413,
                    f"the body has {int(declared)} bytes; the gateway takes at most {limit} "
                    "(BERTH_GATEWAY_MAX_BODY_MB)",
                ),
                labels,
            )
        with metrics.ROLLUPS.in_flight(labels):
            return await self._admitted(
                gateway, tenant, model, version, labels, scope, receive, send, request_id, reply_headers
            )

    async def _admitted(
        self,
        gateway: Gateway,
        tenant: TenantRoute,
        model: ModelRoute,
        version: VersionRoute,
        labels: tuple[str, str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> tuple[int, tuple[str, str, str]]:
        limit = gateway.settings.max_body_bytes
        try:
            ticket = await gateway.admission.acquire(tenant.slug, tenant.limits)
        except AdmissionRefused as refused:
            raise _Labelled(GatewayError(429, refused.message, retry_after_s=refused.retry_after_s), labels) from None
        except AdmissionUnavailable as down:
            raise _Labelled(GatewayError(503, str(down), retry_after_s=1), labels) from None
        try:
            try:
                async with asyncio.timeout(gateway.settings.timeout_s):
                    body = await _read_body(receive, limit)
            except TimeoutError:
                raise GatewayError(
                    408, f"the request body did not arrive within {gateway.settings.timeout_s:g} s"
                ) from None
            headers = [
                (b"content-type", _header(scope, b"content-type") or b"application/json"),
                (REQUEST_ID, request_id),
            ]
            header_length = _header(scope, HEADER_LENGTH)
            if header_length is not None:
                headers.append((HEADER_LENGTH, header_length))
            encoding = _header(scope, CONTENT_ENCODING)
            if encoding is not None:  # the worker inflates it (gzip, deflate), within its body limit
                headers.append((CONTENT_ENCODING, encoding))
            gateway.note_served(model)
            response = await gateway.forward(tenant, model, version, body=body, headers=headers)
        except GatewayError as error:
            raise _Labelled(error, labels) from None
        finally:
            try:
                await gateway.admission.release(ticket)
            except AdmissionUnavailable:  # the slot expires by itself; the answer still goes out
                log.warning("could not release an admission slot of tenant %s", tenant.slug, exc_info=True)
        content_type = b"application/json"
        passed = list(reply_headers)
        for header, value in response.headers:
            if header == b"content-type":
                content_type = value
            else:
                passed.append((header, value))
        await _send(send, response.status, response.body, passed, content_type=content_type)
        if model.log is not None and response.status == 200:
            gateway.log_prediction(model, version, request_id, scope, body, response)
        return response.status, labels

    @staticmethod
    def _server_route(parts: list[str]) -> dict[str, Any] | None:
        if parts == []:
            return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
        if parts == ["health", "live"]:
            return {"live": True}
        if parts == ["health", "ready"]:
            return {"ready": True}
        return None


class _Labelled(GatewayError):
    """A GatewayError that knows which (tenant, model, version) it counts against."""

    def __init__(self, error: GatewayError, labels: tuple[str, str, str]) -> None:
        super().__init__(error.status, error.message, retry_after_s=error.retry_after_s)
        self.labels = labels


def _require(method: str, allowed: str, scope: Scope) -> None:
    if method != allowed:
        raise GatewayError(405, f"{method} is not allowed on {scope['path']}; use {allowed}", allow=allowed)
