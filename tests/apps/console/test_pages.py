"""Console pages through Django's client: each action calls the services, refusals show inline
next to their field, and nothing is half-saved."""

from __future__ import annotations

import pytest

from apps.deployments.models import Deployment, Worker
from apps.registry.models import Model, ModelVersion
from apps.tenants.models import ApiKey, AuditEvent, Membership, Tenant
from tests.apps.deployments.factories import WorkerFactory
from tests.apps.tenants.factories import UserFactory

pytestmark = pytest.mark.django_db

DEPLOY = {
    "action": "save", "min_replicas": 1, "max_replicas": 1, "target_inflight_per_replica": 8,
    "scale_to_zero_after_s": 0, "device_kind": "cpu",
}  # fmt: skip


@pytest.fixture
def two_versions(world_a):
    model = Model.objects.get(tenant=world_a.tenant, name=world_a.model_name)
    ModelVersion.objects.create(
        model=model, number=2, artifact="alpha/2", sha256="1" * 64, size_bytes=1,
        status=ModelVersion.Status.READY, format="onnx",
    )  # fmt: skip
    return model


def test_the_canary_steps_keep_the_stable_version_over_the_api(world_a, two_versions):
    owner = world_a.session("owner")
    base = f"/api/v1/tenants/alpha/models/{two_versions.name}/deployment/"
    assert owner.put(base, {"traffic": {"1": 100}}, format="json").status_code == 200
    shifted = owner.post(base + "canary/", {"version": 2, "percent": 60}, format="json")
    assert shifted.status_code == 200, shifted.json()
    assert shifted.json()["traffic"] == {"1": 40, "2": 60} and shifted.json()["stable_version"] == 1
    # Over half the traffic on the canary, a roll back still goes to the stable version.
    back = owner.post(base + "rollback/", {}, format="json").json()
    assert back["traffic"] == {"1": 100} and back["stable_version"] == 1
    owner.post(base + "canary/", {"version": 2, "percent": 10}, format="json")
    promoted = owner.post(base + "promote/", {}, format="json").json()  # the canary, unnamed
    assert promoted["traffic"] == {"2": 100} and promoted["stable_version"] == 2
    assert owner.post(base + "promote/", {}, format="json").status_code == 409  # no canary left
    refused = owner.post(base + "canary/", {"version": 2, "percent": 10}, format="json")
    assert refused.status_code == 400 and "version" in refused.json()["field_errors"]
    assert owner.post(base + "canary/", {"version": 2}, format="json").status_code == 400
    assert world_a.bearer("read").post(base + "rollback/", {}, format="json").status_code == 403


def test_saving_the_form_keeps_batching_set_over_the_api(client, world_a, two_versions):
    owner = world_a.session("owner")
    base = f"/api/v1/tenants/alpha/models/{two_versions.name}/deployment/"
    batching = {"max_batch_size": 8, "preferred_batch_sizes": [4], "default_timeout_us": 5000}
    assert owner.put(base, {"traffic": {"1": 100}, "batching": batching}, format="json").status_code == 200
    client.force_login(world_a.users["owner"])
    url = f"/t/alpha/models/{two_versions.name}/deployment/"
    assert client.post(url, {**DEPLOY, "traffic_1": 100, "max_batch_size": 4}).status_code == 302
    assert Deployment.objects.get().batching == {**batching, "max_batch_size": 4}


def test_the_deployment_editor_deploys_shifts_promotes_and_rolls_back(client, world_a, two_versions):
    client.force_login(world_a.users["member"])
    url = f"/t/alpha/models/{two_versions.name}/deployment/"
    bad = client.post(url, {**DEPLOY, "traffic_1": 60, "traffic_2": 30})
    assert bad.status_code == 400 and bad.content.decode().count("sum to 100") == 1  # once, above the traffic
    assert not Deployment.objects.exists()  # nothing half-saved
    assert client.post(url, {**DEPLOY, "traffic_1": 100, "traffic_2": 0}).status_code == 302
    assert Deployment.objects.get().traffic == {"1": 100}
    assert client.post(url, {"action": "canary", "version": 2, "percent": 10}).status_code == 302
    assert Deployment.objects.get().traffic == {"1": 90, "2": 10}
    page = client.get(url).content.decode()
    assert "Stable version: v1" in page and 'id="replicas"' in page
    assert client.post(url, {"action": "rollback"}).status_code == 302
    assert Deployment.objects.get().traffic == {"1": 100}
    client.post(url, {"action": "canary", "version": 2, "percent": 50})
    assert client.post(url, {"action": "promote", "version": 2, "percent": 0}).status_code == 302
    assert Deployment.objects.get().traffic == {"2": 100}
    # A canary to the stable version itself is not offered, and refused if posted.
    same = client.post(url, {"action": "canary", "version": 2, "percent": 10})
    assert same.status_code == 400 and 'id="error-version"' in same.content.decode()
    assert client.post(url, {"action": "bogus"}).status_code == 400
    assert client.post(url, {"action": "undeploy"}).status_code == 302
    assert not Deployment.objects.exists()
    actions = list(AuditEvent.objects.filter(target=two_versions.name).values_list("action", flat=True))
    assert "deployment.create" in actions and "deployment.update" in actions  # the same services as the API


def test_a_deployment_over_the_quota_is_refused_inline(client, world_a, two_versions):
    ModelVersion.objects.filter(model=two_versions).update(footprint_bytes=10 * 1024**3)
    client.force_login(world_a.users["member"])
    answer = client.post(f"/t/alpha/models/{two_versions.name}/deployment/", {**DEPLOY, "traffic_1": 100})
    assert answer.status_code == 409 and "cpu_memory_mb" in answer.content.decode()  # the service's status
    assert not Deployment.objects.exists()


def test_a_key_is_shown_once_and_revoked_with_a_post(client, world_a):
    client.force_login(world_a.users["owner"])
    made = client.post("/t/alpha/keys/", {"name": "ci", "scopes": ["infer"]})
    assert made.status_code == 302  # a reload of the page that shows the key creates nothing
    shown = client.get("/t/alpha/keys/")
    raw = shown.context["shown"]
    assert raw.startswith("brt_") and raw in shown.content.decode()
    assert "no-store" in shown["Cache-Control"]
    assert raw not in client.get("/t/alpha/keys/").content.decode()  # shown once
    assert ApiKey.objects.filter(name="ci").count() == 1
    prefix = raw.split("_")[1]
    missing_scope = client.post("/t/alpha/keys/", {"name": "none"})
    assert missing_scope.status_code == 400 and 'id="error-scopes"' in missing_scope.content.decode()
    assert client.post(f"/t/alpha/keys/{prefix}/revoke/").status_code == 302
    assert ApiKey.objects.get(prefix=prefix).revoked_at is not None


def test_members_are_added_changed_and_removed_with_errors_inline(client, world_a):
    client.force_login(world_a.users["owner"])
    unknown = client.post("/t/alpha/members/", {"username": "nobody-here", "role": "viewer"})
    assert unknown.status_code == 400 and 'id="error-username"' in unknown.content.decode()
    UserFactory.create(username="newcomer")
    assert client.post("/t/alpha/members/", {"username": "newcomer", "role": "viewer"}).status_code == 302
    assert client.post("/t/alpha/members/newcomer/", {"action": "role", "role": "member"}).status_code == 302
    assert Membership.objects.get(user__username="newcomer").role == "member"
    assert client.post("/t/alpha/members/newcomer/", {"action": "remove"}).status_code == 302
    assert not Membership.objects.filter(user__username="newcomer").exists()
    # The last owner cannot be removed: said on the page, nothing changed.
    answer = client.post("/t/alpha/members/alpha-owner/", {"action": "remove"})
    assert answer.status_code == 409 and 'id="error-member-alpha-owner"' in answer.content.decode()
    assert "last owner" in answer.content.decode()
    assert Membership.objects.filter(user__username="alpha-owner").exists()


def test_a_model_is_created_and_a_bad_name_is_refused_inline(client, world_a):
    client.force_login(world_a.users["member"])
    bad = client.post("/t/alpha/models/", {"name": "Not Valid!"})
    assert bad.status_code == 400 and 'id="error-name"' in bad.content.decode()
    assert client.post("/t/alpha/models/", {"name": "fresh"}).status_code == 302
    assert client.get("/t/alpha/models/fresh/").status_code == 200


def test_usage_quota_and_audit_pages_show_the_tenants_figures(client, world_a):
    client.force_login(world_a.users["owner"])
    assert b"Download CSV" in client.get("/t/alpha/usage/").content
    quota = client.get("/t/alpha/quota/").content.decode()
    assert "CPU memory (MiB)" in quota and "4096" in quota
    client.post("/t/alpha/models/", {"name": "audited"})
    assert b"model.create" in client.get("/t/alpha/audit/").content


def test_staff_create_tenants_set_quotas_deactivate_and_drain(client, staff_client, world_a):
    staff = UserFactory.create(username="operator", is_staff=True)
    client.force_login(staff)
    bad = client.post("/staff/tenants/", {"slug": "Bad Slug", "name": "x"})
    assert bad.status_code == 400 and 'id="error-slug"' in bad.content.decode()
    assert not Tenant.objects.filter(name="x").exists()
    gamma = {"slug": "gamma", "name": "Gamma", "owner_username": "alpha-owner"}
    assert client.post("/staff/tenants/", gamma).status_code == 302
    quota = {"gpu_memory_mb": 1, "cpu_memory_mb": 2, "max_replicas": 3, "max_models": 4, "max_artifact_mb": 5,
             "requests_per_second": 6, "max_concurrent_requests": 7, "action": "quota"}  # fmt: skip
    assert client.post("/staff/tenants/gamma/", quota).status_code == 302
    assert Tenant.objects.get(slug="gamma").quota.requests_per_second == 6
    negative = client.post("/staff/tenants/gamma/", {**quota, "max_models": -1})
    assert negative.status_code == 400 and 'id="error-max_models"' in negative.content.decode()
    assert client.post("/staff/tenants/gamma/", {"action": "deactivate"}).status_code == 302
    assert not Tenant.objects.get(slug="gamma").active
    WorkerFactory(worker_id="cpu-1")
    assert client.post("/staff/workers/cpu-1/drain/", {"action": "drain"}).status_code == 302
    assert Worker.objects.get(worker_id="cpu-1").drain_requested_at is not None
    assert b"Put back in service" in client.get("/fleet/").content
    assert client.post("/staff/workers/cpu-1/drain/", {"action": "undrain"}).status_code == 302
    assert Worker.objects.get(worker_id="cpu-1").drain_requested_at is None


def test_destructive_buttons_ask_with_text_not_inline_code():
    from pathlib import Path

    from tests.conftest import REPO_ROOT

    templates = list((REPO_ROOT / "frontend" / "templates").rglob("*.html"))
    assert templates
    for template in templates:
        text = Path(template).read_text()
        assert "onclick=" not in text and "onsubmit=" not in text, template  # no code built from data


def test_roles_see_keys_and_audit_only_when_they_may(client, world_a):
    expected = {"viewer": (403, 403), "member": (403, 403), "admin": (403, 200), "owner": (200, 200)}
    for role, (keys, audit) in expected.items():
        client.force_login(world_a.users[role])
        assert client.get("/t/alpha/keys/").status_code == keys, role
        assert client.get("/t/alpha/audit/").status_code == audit, role


def test_the_tenant_switcher_works_without_javascript(client, world_a):
    client.force_login(world_a.users["viewer"])
    answer = client.get("/?tenant=alpha")
    assert answer.status_code == 302 and answer["Location"] == "/t/alpha/models/"


def test_refusals_land_next_to_the_field_they_concern(client, world_a, two_versions):
    client.force_login(world_a.users["owner"])
    url = f"/t/alpha/models/{two_versions.name}/deployment/"
    ModelVersion.objects.filter(model=two_versions).update(batched=True, max_batch_size=4)
    over = client.post(url, {**DEPLOY, "traffic_1": 100, "max_batch_size": 8})
    assert over.status_code == 400 and 'id="error-max_batch_size"' in over.content.decode()
    staff = UserFactory.create(username="operator", is_staff=True)
    client.force_login(staff)
    nobody = client.post("/staff/tenants/", {"slug": "delta", "name": "Delta", "owner_username": "no-such-user"})
    assert nobody.status_code == 400 and 'id="error-owner_username"' in nobody.content.decode()
    assert not Tenant.objects.filter(slug="delta").exists()


def test_an_emptied_batching_field_goes_back_to_its_default(client, world_a, two_versions):
    owner = world_a.session("owner")
    base = f"/api/v1/tenants/alpha/models/{two_versions.name}/deployment/"
    owner.put(base, {"traffic": {"1": 100}, "batching": {"max_batch_size": 8, "max_queue_size": 64}}, format="json")
    client.force_login(world_a.users["owner"])
    client.post(f"/t/alpha/models/{two_versions.name}/deployment/", {**DEPLOY, "traffic_1": 100})
    assert Deployment.objects.get().batching == {"max_queue_size": 64}  # emptied: default; API-only kept
    assert owner.post(base + "rollback/", {}, format="json").status_code == 409  # nothing to roll back


def test_refused_and_missing_pages_say_why_in_the_console_style(client, world_a):
    client.force_login(world_a.users["viewer"])
    refused = client.get("/t/alpha/keys/")
    assert refused.status_code == 403 and "does not allow" in refused.content.decode()
    assert "/static/berth/berth.css" in refused.content.decode()
    missing = client.get("/t/bravo-nowhere/models/")
    assert missing.status_code == 404 and "/static/berth/berth.css" in missing.content.decode()


def test_members_and_admins_cannot_manage_access_in_the_console(client, world_a, two_versions):
    from apps.tenants.models import AuditEvent

    prefix = world_a.key_rows["read"].prefix
    writes = [
        ("/t/alpha/keys/", {"name": "k", "scopes": ["read"]}),
        (f"/t/alpha/keys/{prefix}/revoke/", {}),
        ("/t/alpha/members/", {"username": "alpha-viewer", "role": "owner"}),
        ("/t/alpha/members/alpha-viewer/", {"action": "role", "role": "owner"}),
        ("/t/alpha/members/alpha-viewer/", {"action": "remove"}),
    ]
    before = AuditEvent.objects.count()
    for role in ("member", "admin"):
        client.force_login(world_a.users[role])
        for url, body in writes:
            assert client.post(url, body).status_code == 403, (role, url)
    # Viewers' canary steps and undeploy are refused too (writes need the write role).
    client.force_login(world_a.users["viewer"])
    for action in ("canary", "promote", "rollback", "undeploy"):
        answer = client.post(f"/t/alpha/models/{two_versions.name}/deployment/", {"action": action, "version": 2})
        assert answer.status_code == 403, action
    assert AuditEvent.objects.count() == before
