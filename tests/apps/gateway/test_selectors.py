"""The gateway's routing read on real rows: compiled once, rebuilt only when a row changed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from apps.deployments.models import Deployment, Replica, Worker
from apps.gateway.routing import RoutingSnapshot
from apps.gateway.selectors import routing_snapshot_load
from apps.registry.models import Model, ModelVersion
from apps.tenants.models import Quota, Tenant
from tests.apps.deployments.factories import WorkerFactory
from tests.apps.tenants.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def served(world_a) -> Replica:
    """alpha's model deployed, one replica ready on a ready worker."""
    model = Model.objects.get(tenant=world_a.tenant)
    version = ModelVersion.objects.get(model=model)
    version.inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    version.save()
    deployment = Deployment.objects.create(model=model, traffic={"1": 100})
    worker = WorkerFactory.create(worker_id="w1", state=Worker.State.READY)
    return Replica.objects.create(deployment=deployment, version=version, worker=worker, state=Replica.State.READY)


def _served_route(snapshot: RoutingSnapshot, world_a):
    return snapshot.tenants[world_a.tenant.pk].models[world_a.model_name]


def test_the_read_builds_the_route_from_every_table(served, world_a):
    snapshot = routing_snapshot_load()
    tenant = snapshot.tenants[world_a.tenant.pk]
    quota = Quota.objects.get(tenant=world_a.tenant)
    assert (tenant.slug, tenant.limits.rate_per_s, tenant.limits.max_concurrent) == (
        "alpha",
        float(quota.requests_per_second),
        quota.max_concurrent_requests,
    )
    route = _served_route(snapshot, world_a)
    assert route.deployment_id == served.deployment_id
    assert route.traffic == ((1, 100),)
    assert route.log is None
    version = route.versions[1]
    assert version.inputs == ({"name": "x", "datatype": "FP32", "shape": [-1, 4]},)  # JSON decoded
    assert [(r.replica_id, r.worker_id, r.url) for r in version.replicas] == [
        (served.pk, "w1", served.worker.dataplane_url)
    ]


def test_replicas_not_ready_or_on_a_dead_worker_are_left_out_and_say_why(served, world_a):
    draining = WorkerFactory.create(worker_id="w2", state=Worker.State.DRAINING)
    dead = WorkerFactory.create(worker_id="w3", state=Worker.State.DEAD)
    common = {"deployment": served.deployment, "version": served.version, "state": Replica.State.READY}
    on_draining = Replica.objects.create(**common, index=1, worker=draining)
    Replica.objects.create(**common, index=2, worker=dead)
    Replica.objects.create(
        deployment=served.deployment, version=served.version, index=3, state=Replica.State.PENDING, reason="no room"
    )  # no worker yet
    ModelVersion.objects.filter(pk=served.version_id).update(inputs=[])
    Deployment.objects.filter(pk=served.deployment_id).update(prediction_log={})

    route = _served_route(routing_snapshot_load(), world_a)
    version = route.versions[1]
    # A draining worker's replica serves until its replacement is ready; a dead one's does not.
    assert [r.replica_id for r in version.replicas] == [served.pk, on_draining.pk]
    assert version.loading is True  # the pending one
    assert version.reason == "no room"  # the replica's reason, the version having none
    assert version.inputs == ()
    assert route.log is None
    Deployment.objects.filter(pk=served.deployment_id).update(prediction_log={"sample_rate": 0.25})
    log = _served_route(routing_snapshot_load(), world_a).log
    assert log is not None and (log.sample_rate, log.retention_days) == (0.25, 7)


@pytest.mark.django_db(transaction=True)  # read on the gateway's own database threads
async def test_the_gateways_refresh_keeps_its_snapshot_until_a_row_changes(served, world_a):
    from asgiref.sync import sync_to_async

    from apps.gateway.app import Gateway, GatewaySettings

    settings = GatewaySettings(
        max_body_bytes=1 << 20, timeout_s=1, cold_start_s=1, refresh_s=60, key_cache_s=1, worker_token="t",
        redis_url="",
    )  # fmt: skip
    gateway = Gateway(settings)
    try:
        await gateway.refresh()
        first = gateway.snapshot
        await gateway.refresh()
        assert gateway.snapshot is not None and first is not None
        assert gateway.snapshot.tenants is first.tenants
        await sync_to_async(_quota_rate)(served)
        await gateway.refresh()
        assert gateway.snapshot.tenants[world_a.tenant.pk].limits.rate_per_s == 7.0
    finally:
        await gateway.close()


def test_a_tenant_without_a_quota_row_gets_the_default_limits(db):
    tenant = TenantFactory.create(slug="bare", quota=None)
    limits = routing_snapshot_load().tenants[tenant.pk].limits
    defaults = Quota()
    assert (limits.rate_per_s, limits.burst, limits.max_concurrent) == (
        float(defaults.requests_per_second),
        defaults.requests_per_second,
        defaults.max_concurrent_requests,
    )


def test_a_read_is_one_query_a_table_and_compiles_nothing_after_the_first(
    served, world_a, monkeypatch, django_assert_num_queries
):
    from django.db.models.sql.query import Query

    routing_snapshot_load()  # compiled here (or by an earlier test in this process)

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("the routing read compiled a queryset again")

    monkeypatch.setattr(Query, "get_compiler", no_compile)
    with django_assert_num_queries(5):
        snapshot = routing_snapshot_load()
    assert _served_route(snapshot, world_a).versions[1].replicas[0].replica_id == served.pk


def _quota_rate(replica: Replica) -> None:
    Quota.objects.filter(tenant=replica.deployment.model.tenant).update(requests_per_second=7)


def _traffic(replica: Replica) -> None:
    ModelVersion.objects.create(
        model=replica.version.model, number=2, artifact="a/2", sha256="1" * 64, size_bytes=1, format="onnx"
    )
    Deployment.objects.filter(pk=replica.deployment_id).update(traffic={"1": 90, "2": 10})


def _prediction_log(replica: Replica) -> None:
    Deployment.objects.filter(pk=replica.deployment_id).update(prediction_log={"sample_rate": 0.5})


def _replica_loading(replica: Replica) -> None:
    Replica.objects.filter(pk=replica.pk).update(state=Replica.State.LOADING)


def _worker_gone(replica: Replica) -> None:
    Worker.objects.filter(replicas=replica).update(state=Worker.State.DEAD)


def _worker_moved(replica: Replica) -> None:
    Worker.objects.filter(replicas=replica).update(dataplane_url="http://127.0.0.1:1")


def _version_failed(replica: Replica) -> None:
    ModelVersion.objects.filter(pk=replica.version_id).update(failure_reason="bad artifact")


def _model_added(replica: Replica) -> None:
    Model.objects.create(tenant=replica.deployment.model.tenant, name="another")


def _tenant_added(replica: Replica) -> None:
    TenantFactory.create(slug="newcomer")


def _tenant_deactivated(replica: Replica) -> None:
    Tenant.objects.filter(pk=replica.deployment.model.tenant_id).update(active=False)


@pytest.mark.parametrize(
    "change",
    [
        _quota_rate,
        _traffic,
        _prediction_log,
        _replica_loading,
        _worker_gone,
        _worker_moved,
        _version_failed,
        _model_added,
        _tenant_added,
        _tenant_deactivated,
    ],
)
def test_an_unchanged_read_keeps_the_snapshot_and_any_change_is_read(served, change: Callable[[Replica], None]):
    first = routing_snapshot_load()
    again = routing_snapshot_load(previous=first)
    assert again.tenants is first.tenants  # nothing built again
    assert again.loaded_at >= first.loaded_at
    change(served)  # most with ``update`` (no signal, no save()), as the reconcile loop writes
    changed = routing_snapshot_load(previous=again)
    assert changed.tenants is not first.tenants
    assert changed.tenants != first.tenants
    assert changed.tenants == routing_snapshot_load().tenants  # as a read from scratch
