"""Flows through the tenants REST API: staff, owners, members; errors; query counts."""

from __future__ import annotations

import base64

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.tenants.models import AuditEvent, Membership, Quota, Tenant
from tests.apps.tenants.factories import MembershipFactory, TenantFactory, UserFactory, make_api_key

pytestmark = pytest.mark.django_db


def test_staff_create_a_tenant_with_an_owner_and_default_quota(staff_client):
    UserFactory(username="carol")
    response = staff_client.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme", "owner": "carol"}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json() == {
        "slug": "acme",
        "name": "Acme",
        "active": True,
        "created_at": response.json()["created_at"],
    }
    tenant = Tenant.objects.get(slug="acme")
    assert Membership.objects.get(tenant=tenant).role == "owner"
    assert Quota.objects.filter(tenant=tenant).exists()
    event = AuditEvent.objects.get(action="tenant.create")
    assert event.actor_label == "platform-staff" and event.target == "acme"


@pytest.mark.parametrize("slug", ["Acme", "-acme", "acme-", "ac_me", "a" * 64, "acme corp", ""])
def test_bad_slugs_are_refused_with_a_field_error(staff_client, slug):
    response = staff_client.post("/api/v1/tenants/", {"slug": slug}, format="json")
    assert response.status_code == 400
    assert "slug" in response.json()["field_errors"]
    assert not Tenant.objects.exists()


def test_duplicate_slug_is_409(staff_client):
    TenantFactory(slug="acme")
    response = staff_client.post("/api/v1/tenants/", {"slug": "acme"}, format="json")
    assert response.status_code == 409
    assert "already exists" in response.json()["error"]


def test_unknown_owner_is_400_and_nothing_is_created(staff_client):
    response = staff_client.post("/api/v1/tenants/", {"slug": "acme", "owner": "ghost"}, format="json")
    assert response.status_code == 400
    assert "owner" in response.json()["error"] or "username" in response.json().get("field_errors", {})
    assert not Tenant.objects.exists()


def test_non_staff_cannot_create_tenants(world_a):
    response = world_a.session("owner").post("/api/v1/tenants/", {"slug": "mine"}, format="json")
    assert response.status_code == 403
    assert "staff" in response.json()["error"]


def test_each_caller_lists_only_their_tenants(world_a, world_b, staff_client):
    TenantFactory(slug="charlie")
    assert [t["slug"] for t in world_a.session("viewer").get("/api/v1/tenants/").json()] == ["alpha"]
    assert [t["slug"] for t in world_b.bearer("read").get("/api/v1/tenants/").json()] == ["bravo"]
    assert [t["slug"] for t in staff_client.get("/api/v1/tenants/").json()] == ["alpha", "bravo", "charlie"]


def test_anonymous_calls_get_401_with_a_bearer_challenge():
    response = APIClient().get("/api/v1/tenants/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "authentication required" in response.json()["error"]


def test_staff_deactivate_and_reactivate(staff_client, world_a):
    url = f"/api/v1/tenants/{world_a.tenant.slug}/"
    assert staff_client.patch(url, {"active": False}, format="json").json()["active"] is False
    assert world_a.session("owner").get(url).status_code == 403
    assert staff_client.patch(url, {"active": True}, format="json").json()["active"] is True
    assert world_a.session("owner").get(url).status_code == 200
    actions = list(AuditEvent.objects.filter(tenant=world_a.tenant).values_list("action", flat=True))
    assert "tenant.deactivate" in actions and "tenant.activate" in actions


def test_owners_cannot_deactivate_their_own_tenant(world_a):
    response = world_a.session("owner").patch(
        f"/api/v1/tenants/{world_a.tenant.slug}/", {"active": False}, format="json"
    )
    assert response.status_code == 403


def test_owner_manages_members(world_a):
    UserFactory(username="dave")
    client = world_a.session("owner")
    base = f"/api/v1/tenants/{world_a.tenant.slug}/members/"
    assert client.post(base, {"username": "dave", "role": "viewer"}, format="json").status_code == 201
    assert client.post(base, {"username": "dave", "role": "viewer"}, format="json").status_code == 409
    assert client.patch(f"{base}dave/", {"role": "admin"}, format="json").json()["role"] == "admin"
    assert client.delete(f"{base}dave/").status_code == 204
    assert client.get(f"{base}dave/").status_code == 404
    actions = set(AuditEvent.objects.filter(tenant=world_a.tenant, target="dave").values_list("action", flat=True))
    assert actions == {"member.add", "member.update", "member.remove"}


def test_admins_cannot_manage_members_or_keys(world_a):
    client = world_a.session("admin")
    base = f"/api/v1/tenants/{world_a.tenant.slug}"
    assert client.post(f"{base}/members/", {"username": "x", "role": "viewer"}, format="json").status_code == 403
    assert client.post(f"{base}/api-keys/", {"name": "k", "scopes": ["read"]}, format="json").status_code == 403
    assert client.get(f"{base}/audit/").status_code == 200


def test_the_last_owner_cannot_be_removed_or_demoted(world_a):
    client = world_a.session("owner")
    url = f"/api/v1/tenants/{world_a.tenant.slug}/members/{world_a.tenant.slug}-owner/"
    assert client.delete(url).status_code == 409
    response = client.patch(url, {"role": "viewer"}, format="json")
    assert response.status_code == 409
    assert "last owner" in response.json()["error"]


def test_invalid_role_names_the_field(world_a):
    UserFactory(username="erin")
    response = world_a.session("owner").post(
        f"/api/v1/tenants/{world_a.tenant.slug}/members/", {"username": "erin", "role": "god"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["field_errors"]


def test_quota_is_readable_by_members_with_usage_and_writable_by_staff(world_a, staff_client):
    url = f"/api/v1/tenants/{world_a.tenant.slug}/quota/"
    body = world_a.session("viewer").get(url).json()
    assert body["quota"]["max_models"] == 10
    assert body["usage"]["active_api_keys"] == 3
    assert world_a.session("owner").patch(url, {"max_models": 99}, format="json").status_code == 403
    response = staff_client.patch(url, {"max_models": 99, "gpu_memory_mb": 40960}, format="json")
    assert response.status_code == 200
    assert response.json()["quota"]["max_models"] == 99
    event = AuditEvent.objects.get(action="quota.update")
    assert event.details["to"] == {"max_models": 99, "gpu_memory_mb": 40960}
    assert staff_client.patch(url, {"max_models": -1}, format="json").status_code == 400


def test_audit_is_newest_first_and_paginated(world_a, staff_client):
    url = f"/api/v1/tenants/{world_a.tenant.slug}/quota/"
    for value in range(5):
        staff_client.patch(url, {"max_models": value}, format="json")
    events = world_a.session("admin").get(f"/api/v1/tenants/{world_a.tenant.slug}/audit/?limit=2").json()
    assert [e["details"]["to"]["max_models"] for e in events] == [4, 3]
    older = world_a.session("admin").get(f"/api/v1/tenants/{world_a.tenant.slug}/audit/?limit=2&offset=2").json()
    assert [e["details"]["to"]["max_models"] for e in older] == [2, 1]
    assert world_a.session("admin").get(f"/api/v1/tenants/{world_a.tenant.slug}/audit/?limit=x").status_code == 400


def test_session_writes_need_the_csrf_token(world_a):
    client = APIClient(enforce_csrf_checks=True)
    client.login(username=f"{world_a.tenant.slug}-owner", password="pw-test-123")
    response = client.post(
        f"/api/v1/tenants/{world_a.tenant.slug}/api-keys/", {"name": "k", "scopes": ["read"]}, format="json"
    )
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]


def test_malformed_json_is_a_clear_400(world_a):
    response = world_a.session("owner").generic(
        "POST", f"/api/v1/tenants/{world_a.tenant.slug}/members/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


@pytest.mark.parametrize("suffix", ["members/", "api-keys/", "audit/"])
def test_list_endpoints_cost_constant_queries(world_a, suffix, staff_client):
    url = f"/api/v1/tenants/{world_a.tenant.slug}/{suffix}"
    client = world_a.session("owner")
    before = _queries(client, url)
    for n in range(10):
        MembershipFactory(tenant=world_a.tenant, user=UserFactory(username=f"extra{n}"))
        make_api_key(world_a.tenant, ["read"], name=f"extra{n}")
    staff_client.patch(f"/api/v1/tenants/{world_a.tenant.slug}/quota/", {"max_models": 3}, format="json")
    assert _queries(client, url) == before


def test_tenant_list_costs_constant_queries(staff_client):
    TenantFactory()
    before = _queries(staff_client, "/api/v1/tenants/")
    TenantFactory.create_batch(10)
    assert _queries(staff_client, "/api/v1/tenants/") == before


def test_renaming_a_tenant_is_audited(staff_client, world_a):
    url = f"/api/v1/tenants/{world_a.tenant.slug}/"
    assert staff_client.patch(url, {"name": "Alpha Corp"}, format="json").json()["name"] == "Alpha Corp"
    event = AuditEvent.objects.get(action="tenant.update")
    assert event.details == {"name": "Alpha Corp"}


def test_unknown_api_paths_and_methods_answer_json(world_a):
    client = world_a.session("owner")
    missing = client.get("/api/v1/no-such-endpoint/")
    assert missing.status_code == 404 and "/api/v1/docs/" in missing.json()["error"]
    wrong = client.put(f"/api/v1/tenants/{world_a.tenant.slug}/members/", {}, format="json")
    assert wrong.status_code == 405
    assert "use GET, POST" in wrong.json()["error"]


@pytest.mark.parametrize("query", ["limit=%C2%B2", "offset=99999999999999999999999", "limit=-1", "limit=1e3"])
def test_odd_pagination_values_are_400_not_500(world_a, query):
    response = world_a.session("admin").get(f"/api/v1/tenants/{world_a.tenant.slug}/audit/?{query}")
    assert response.status_code == 400


def test_deactivated_tenant_key_asking_for_html_gets_a_json_403(world_a, staff_client):
    staff_client.patch(f"/api/v1/tenants/{world_a.tenant.slug}/", {"active": False}, format="json")
    from django.core.cache import cache

    cache.clear()
    client = world_a.bearer("read")
    response = client.get(f"/api/v1/tenants/{world_a.tenant.slug}/", HTTP_ACCEPT="text/html")
    assert response.status_code in (403, 406)
    assert response.status_code != 500


def test_http_basic_is_for_staff_only(world_a):
    client = APIClient()
    credentials = base64.b64encode(b"alpha-owner:pw-test-123").decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {credentials}")
    response = client.get("/api/v1/tenants/")
    assert response.status_code == 401
    assert "staff" in response.json()["error"]
