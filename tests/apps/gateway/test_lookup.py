"""``Gateway.model_found``: a model or version missing from a routing table read before the
request arrived is looked up again in a fresh read, once; a miss in a fresh table stands."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from apps.gateway.app import MISS_READ_S, Gateway, GatewayError, GatewaySettings
from apps.gateway.routing import ModelRoute, RoutingSnapshot, TenantRoute, VersionRoute


def _snapshot(*versions_of_m: int) -> RoutingSnapshot:
    """Tenant 1 ("acme"), with model "m" holding ``versions_of_m`` (none: no model "m")."""
    models = {}
    if versions_of_m:
        versions = {
            n: VersionRoute(number=n, status="ready", platform="onnx", inputs=(), outputs=(), replicas=())
            for n in versions_of_m
        }
        models["m"] = ModelRoute(
            tenant_slug="acme", name="m", model_id=1, deployment_id=None, versions=versions, traffic=()
        )
    tenant = TenantRoute(tenant_id=1, slug="acme", limits=None, models=models)  # type: ignore[arg-type]
    return RoutingSnapshot(tenants={1: tenant}, loaded_at=time.monotonic())


class _Database:
    """Stands in for the database threads: each read returns the next table, after a pause."""

    def __init__(self, *tables: RoutingSnapshot, pause_s: float = 0.02) -> None:
        self.tables = list(tables)
        self.reads = 0
        self.pause_s = pause_s

    async def run(self, function: Any, /, **kwargs: Any) -> RoutingSnapshot:
        self.reads += 1
        await asyncio.sleep(self.pause_s)
        return self.tables[min(self.reads, len(self.tables)) - 1]


def _gateway(database: _Database) -> Gateway:
    settings = GatewaySettings(
        max_body_bytes=1 << 20, timeout_s=10, cold_start_s=1, refresh_s=3600, key_cache_s=1.5,
        worker_token="t", redis_url="",
    )  # fmt: skip
    gateway = Gateway(settings)
    gateway.database = database  # type: ignore[assignment]
    return gateway


async def test_a_model_made_after_the_last_read_is_found_in_a_fresh_one():
    database = _Database(_snapshot(), _snapshot(1))
    gateway = _gateway(database)
    await gateway.refresh()  # the table before the model was made
    stale = (await gateway.routes()).tenants[1]
    with pytest.raises(GatewayError, match="model 'm' not found"):
        gateway.model_of(stale, "m")

    tenant, model = await gateway.model_found(stale, "m", "1", time.monotonic())
    assert model.name == "m" and 1 in model.versions
    assert tenant.models["m"] is model
    assert database.reads == 2


async def test_a_miss_in_a_table_read_after_the_request_arrived_stands_without_a_read():
    database = _Database(_snapshot(1))
    gateway = _gateway(database)
    arrived = time.monotonic()
    await gateway.refresh()
    tenant = (await gateway.routes()).tenants[1]
    with pytest.raises(GatewayError, match="model 'other' not found") as missing:
        await gateway.model_found(tenant, "other", None, arrived)
    assert missing.value.status == 404
    with pytest.raises(GatewayError, match="has no version 2"):
        await gateway.model_found(tenant, "m", "2", arrived)
    assert database.reads == 1


async def test_a_missing_version_is_read_again_once_and_then_reported():
    database = _Database(_snapshot(1), _snapshot(1), _snapshot(1, 2))
    gateway = _gateway(database)
    await gateway.refresh()
    tenant = (await gateway.routes()).tenants[1]
    with pytest.raises(GatewayError, match="has no version 2"):
        await gateway.model_found(tenant, "m", "2", time.monotonic())
    assert database.reads == 2  # one fresh read, not a read per try
    await asyncio.sleep(MISS_READ_S)
    _, model = await gateway.model_found(tenant, "m", "2", time.monotonic())
    assert 2 in model.versions and database.reads == 3


async def test_misses_begin_a_read_at_most_every_quarter_second_and_a_400_never():
    database = _Database(_snapshot(1))
    gateway = _gateway(database)
    await gateway.refresh()
    tenant = (await gateway.routes()).tenants[1]
    for name in ("a", "b", "c", "d"):  # a stream of unknown names
        with pytest.raises(GatewayError, match=f"model '{name}' not found"):
            await gateway.model_found(tenant, name, None, time.monotonic())
    assert database.reads == 2  # the first miss read again; the rest, within 0.25 s, did not
    await asyncio.sleep(MISS_READ_S)
    with pytest.raises(GatewayError, match="not a whole number"):
        await gateway.model_found(tenant, "m", "abc", time.monotonic())
    assert database.reads == 2


async def test_a_miss_whose_read_fails_stands_as_the_404():
    database = _Database(_snapshot(1))
    gateway = _gateway(database)
    await gateway.refresh()
    tenant = (await gateway.routes()).tenants[1]

    async def down(function: Any, /, **kwargs: Any) -> RoutingSnapshot:
        raise ConnectionError("the database is down")

    database.run = down  # type: ignore[method-assign]
    with pytest.raises(GatewayError, match="model 'x' not found") as missing:
        await gateway.model_found(tenant, "x", None, time.monotonic())
    assert missing.value.status == 404


async def test_misses_arriving_together_share_one_fresh_read():
    database = _Database(_snapshot(), _snapshot(1), pause_s=0.05)
    gateway = _gateway(database)
    await gateway.refresh()
    stale = (await gateway.routes()).tenants[1]
    arrived = time.monotonic()
    found = await asyncio.gather(*(gateway.model_found(stale, "m", None, arrived) for _ in range(20)))
    assert all(model.name == "m" for _, model in found)
    assert database.reads == 2


async def test_a_read_begun_before_the_request_arrived_is_not_taken_as_fresh():
    # The background refresh is mid-read (of a table without the model) when the request
    # arrives: its result is stale for this request, so one more read follows.
    database = _Database(_snapshot(), _snapshot(), _snapshot(1), pause_s=0.1)
    gateway = _gateway(database)
    await gateway.refresh()
    stale = (await gateway.routes()).tenants[1]
    in_flight = asyncio.ensure_future(gateway.refresh())
    await asyncio.sleep(0.02)
    _, model = await gateway.model_found(stale, "m", None, time.monotonic())
    await in_flight
    assert model.name == "m" and database.reads == 3


async def test_a_tenant_deactivated_since_is_refused_on_the_fresh_read():
    database = _Database(_snapshot(), RoutingSnapshot(tenants={}, loaded_at=time.monotonic()))
    gateway = _gateway(database)
    await gateway.refresh()
    stale = (await gateway.routes()).tenants[1]
    with pytest.raises(GatewayError, match="tenant 'acme' is not active") as refused:
        await gateway.model_found(stale, "m", None, time.monotonic())
    assert refused.value.status == 403
