"""API keys: shown once, stored hashed, refused when revoked/expired, constant-time checks."""

from __future__ import annotations

import contextlib
import hashlib
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from apps.tenants.access import Actor
from apps.tenants.keys import ApiKeyRefused, api_key_authenticate, key_cache_forget, key_digest
from apps.tenants.models import ApiKey, AuditEvent
from apps.tenants.services import api_key_revoke, tenant_update
from control_plane.errors import PermissionDeniedError
from tests.apps.tenants.factories import UserFactory, make_api_key

pytestmark = pytest.mark.django_db


def _create(world, **body):
    client = world.session("owner")
    return client.post(
        f"/api/v1/tenants/{world.tenant.slug}/api-keys/",
        {"name": "ci", "scopes": ["infer", "read"], **body},
        format="json",
    )


def test_create_shows_the_key_once_and_stores_only_its_hash(world_a):
    response = _create(world_a)
    assert response.status_code == 201, response.json()
    raw = response.json()["key"]
    prefix = response.json()["api_key"]["prefix"]
    assert raw.startswith(f"brt_{prefix}_") and len(raw) > 40
    row = ApiKey.objects.get(prefix=prefix)
    assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    secret = raw.split("_", 2)[2]
    stored = " ".join(str(getattr(row, f.attname)) for f in ApiKey._meta.fields)
    assert secret not in stored and raw not in stored
    # Listing and reading it never show the key again.
    client = world_a.session("owner")
    listed = client.get(f"/api/v1/tenants/{world_a.tenant.slug}/api-keys/").content.decode()
    detail = client.get(f"/api/v1/tenants/{world_a.tenant.slug}/api-keys/{prefix}/").content.decode()
    assert secret not in listed and secret not in detail
    assert prefix in listed
    # The audit log names the key by prefix only.
    event = AuditEvent.objects.get(action="api_key.create", target=f"brt_{prefix}")
    assert secret not in str(event.details)


def test_the_new_key_works_with_its_scopes(world_a):
    raw = _create(world_a).json()["key"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get(f"/api/v1/tenants/{world_a.tenant.slug}/members/").status_code == 200
    # read + infer, no manage: writes are refused.
    response = client.post(f"/api/v1/tenants/{world_a.tenant.slug}/members/", {}, format="json")
    assert response.status_code == 403
    assert "scopes: infer, read" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_key_requests_name_the_field(world_a, body, field):
    response = _create(world_a, **body)
    assert response.status_code == 400
    assert field in response.json()["field_errors"]
    assert ApiKey.objects.filter(name="ci").count() == 0


def test_revoked_key_is_refused_at_once_through_the_api(world_a, django_capture_on_commit_callbacks):
    raw = world_a.keys["read"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    url = f"/api/v1/tenants/{world_a.tenant.slug}/"
    assert client.get(url).status_code == 200  # now cached
    prefix = world_a.key_rows["read"].prefix
    with django_capture_on_commit_callbacks(execute=True):  # the cache is forgotten after commit
        revoked = world_a.session("owner").delete(f"/api/v1/tenants/{world_a.tenant.slug}/api-keys/{prefix}/")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    response = client.get(url)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_revocation_another_process_missed_takes_effect_within_2_seconds(world_a):
    # Another process's cache is not invalidated; only the cache lifetime bounds it.
    raw = world_a.keys["read"]
    api_key_authenticate(raw=raw)  # cached in "this" process
    ApiKey.objects.filter(pk=world_a.key_rows["read"].pk).update(revoked_at=timezone.now())
    started = time.monotonic()
    while True:
        try:
            api_key_authenticate(raw=raw)
        except ApiKeyRefused:
            break
        assert time.monotonic() - started < 2.1, "a revoked key still worked after 2 s"
        time.sleep(0.05)


def test_expired_key_is_refused(world_a):
    row, raw = make_api_key(world_a.tenant, ["read"], name="short-lived")
    ApiKey.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ApiKeyRefused, match="expired"):
        api_key_authenticate(raw=raw)


@pytest.mark.parametrize("raw", ["", "brt_", "brt_deadbeef_wrong", "not-a-key", "x" * 5000, "brt_\udcff"])
def test_unknown_and_malformed_keys_are_401_not_500(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}".encode("utf-8", "surrogateescape").decode("latin-1"))
    response = client.get("/api/v1/tenants/")
    assert response.status_code == 401
    assert "error" in response.json()


def test_keys_of_a_deactivated_tenant_get_403_with_the_reason(world_a):
    staff = Actor(user=UserFactory(username="ops", is_staff=True))
    tenant_update(actor=staff, tenant=world_a.tenant, active=False)
    cache.clear()
    response = world_a.bearer("read").get(f"/api/v1/tenants/{world_a.tenant.slug}/")
    assert response.status_code == 403
    assert "deactivated" in response.json()["error"]
    member = world_a.session("owner").get(f"/api/v1/tenants/{world_a.tenant.slug}/")
    assert member.status_code == 403 and "deactivated" in member.json()["error"]
    with pytest.raises(PermissionDeniedError):
        api_key_authenticate(raw=world_a.keys["infer"])


def test_last_used_is_written_once_a_minute_not_per_request(world_a, django_assert_num_queries):
    raw = world_a.keys["read"]
    row = world_a.key_rows["read"]
    assert row.last_used_at is None
    api_key_authenticate(raw=raw)
    first = ApiKey.objects.get(pk=row.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(0):  # cached key, and the last-use mark is still fresh
        for _ in range(20):
            api_key_authenticate(raw=raw)
    assert ApiKey.objects.get(pk=row.pk).last_used_at == first


def test_revoking_twice_changes_nothing(world_a):
    row = world_a.key_rows["manage"]
    owner = Actor(user=world_a.users["owner"])
    first = api_key_revoke(actor=owner, api_key=row).revoked_at
    second = api_key_revoke(actor=owner, api_key=ApiKey.objects.get(pk=row.pk)).revoked_at
    assert first == second
    assert AuditEvent.objects.filter(action="api_key.revoke").count() == 1


def _work_done(raw: str, monkeypatch) -> list[tuple[str, int]]:
    """What checking ``raw`` does before it decides: every digest (by input length) and lookup."""
    import apps.tenants.keys as keys_module

    steps: list[tuple[str, int]] = []
    real_digest, real_lookup = keys_module.key_digest, keys_module.api_key_lookup

    def digest(value: str) -> str:
        steps.append(("digest", len(value)))
        return real_digest(value)

    def lookup(*, digest: str):
        steps.append(("lookup", len(digest)))
        return real_lookup(digest=digest)

    monkeypatch.setattr(keys_module, "key_digest", digest)
    monkeypatch.setattr(keys_module, "api_key_lookup", lookup)
    key_cache_forget(key_hash=real_digest(raw))  # the full check, not a cache hit
    with contextlib.suppress(ApiKeyRefused):
        api_key_authenticate(raw=raw)
    monkeypatch.undo()
    return steps


def test_a_wrong_key_does_the_same_work_as_a_right_one(world_a, monkeypatch):
    # Counted, not timed (timings are for bench/): one digest of the whole presented key and
    # one lookup by that digest, whether the key is right, shares the right key's prefix, or
    # names no key at all. Nothing compares secrets or prefixes, so nothing can leak by timing.
    right = world_a.keys["read"]
    prefix = world_a.key_rows["read"].prefix
    same_prefix_wrong_secret = f"brt_{prefix}_" + "A" * (len(right) - len(prefix) - 5)
    unknown_prefix = "brt_00000000_" + "A" * (len(right) - 13)
    assert len(same_prefix_wrong_secret) == len(unknown_prefix) == len(right)
    expected = [("digest", len(right)), ("lookup", 64)]
    assert _work_done(right, monkeypatch) == expected
    assert _work_done(same_prefix_wrong_secret, monkeypatch) == expected
    assert _work_done(unknown_prefix, monkeypatch) == expected


def _lookup_sql(raw: str) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    key_cache_forget(key_hash=key_digest(raw))
    with CaptureQueriesContext(connection) as captured, contextlib.suppress(ApiKeyRefused):
        api_key_authenticate(raw=raw)
    return [q["sql"] for q in captured if "tenants_apikey" in q["sql"] and q["sql"].lstrip().startswith("SELECT")]


def test_the_lookup_is_one_query_by_digest_whatever_the_key(world_a):
    right = world_a.keys["read"]
    prefix = world_a.key_rows["read"].prefix
    variants = [right, f"brt_{prefix}_" + "A" * 43, "brt_00000000_" + "A" * 43, "garbage"]
    shapes = set()
    for raw in variants:
        selects = _lookup_sql(raw)
        assert len(selects) == 1, selects
        sql = selects[0]
        assert key_digest(raw) in sql or "%s" in sql or "?" in sql
        where = sql.split("WHERE", 1)[1]
        # Only the digest decides: no prefix comparison, no second query on a near miss.
        assert "key_hash" in where and "prefix" not in where, sql
        shapes.add(sql.replace(key_digest(raw), "<digest>"))
    assert len(shapes) == 1, shapes


def test_last_used_is_written_again_once_the_minute_mark_expires(world_a):
    raw = world_a.keys["read"]
    row = world_a.key_rows["read"]
    api_key_authenticate(raw=raw)
    first = ApiKey.objects.get(pk=row.pk).last_used_at
    assert first is not None
    later = first + timedelta(minutes=2)
    cache.delete(f"berth:apikey-used:{row.pk}")  # what 60 s would do
    api_key_authenticate(raw=raw, now=later)
    assert ApiKey.objects.get(pk=row.pk).last_used_at == later
