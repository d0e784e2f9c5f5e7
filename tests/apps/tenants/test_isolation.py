"""Tenant isolation, proven by walking every URL pattern under ``tenants/<slug>/``.

Patterns are discovered from the URLconf, so endpoints added by later apps are covered
automatically; a pattern with a URL parameter this file has no sample for fails the test
(add a sample of tenant B's object for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.apps.tenants.conftest import TenantWorld

pytestmark = pytest.mark.django_db

TENANT_SCOPED = "tenants/<slug:slug>/"
METHODS = ("get", "post", "put", "patch", "delete")
SAFE = {"get"}
PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


@dataclass(frozen=True)
class Route:
    template: str
    methods: tuple[str, ...]
    params: tuple[str, ...]

    def url(self, values: dict[str, str]) -> str:
        missing = [name for name in self.params if name not in values]
        assert not missing, f"{self.template}: add a sample value for URL parameter(s) {missing} to the walker"
        return "/" + PARAM.sub(lambda m: values[m.group("name")], self.template)


def _walk(patterns, prefix: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def tenant_routes() -> list[Route]:
    routes = []
    for template, callback in _walk(get_resolver().url_patterns):
        # Staff console pages (staff/tenants/<slug>/) are 404 to all but staff: tests/apps/console.
        if TENANT_SCOPED not in template or template.startswith("staff/"):
            continue
        view_class = getattr(callback, "view_class", None)
        # Function views (the console's, later) answer GET and POST.
        methods = tuple(m for m in METHODS if hasattr(view_class, m)) if view_class else ("get", "post")
        params = tuple(m.group("name") for m in PARAM.finditer(template))
        routes.append(Route(template=template, methods=methods, params=params))
    return routes


def samples(world: TenantWorld) -> dict[str, str]:
    """A value for every URL parameter, naming one of ``world``'s own objects."""
    return {
        "slug": world.tenant.slug,
        "username": f"{world.tenant.slug}-viewer",
        "prefix": world.key_rows["read"].prefix,
        "name": world.model_name,
        "number": "1",
    }


def _call(client, method: str, url: str):
    return getattr(client, method)(url, data={}, format="json")


def test_the_walker_finds_the_tenant_endpoints():
    templates = {route.template for route in tenant_routes()}
    assert "api/v1/tenants/<slug:slug>/members/" in templates
    assert "api/v1/tenants/<slug:slug>/api-keys/<str:prefix>/" in templates
    assert len(templates) >= 7


def _other_tenant_requests(world_a: TenantWorld, world_b: TenantWorld):
    """Every (url, method, twin) aimed at tenant B's things.

    By B's slug, ``twin`` is None and the answer must be 404. Under A's slug with B's
    object, ``twin`` is the same URL naming an object that exists nowhere: the answer must
    be the same as for that twin (404, or the 403 the caller's role gets before any
    lookup), so it tells nothing about B's object.
    """
    b_values = samples(world_b)
    mixed = {**b_values, "slug": world_a.tenant.slug}
    nowhere = dict.fromkeys(b_values, "zz-missing-object") | {"slug": world_a.tenant.slug, "number": "999"}
    for route in tenant_routes():
        for method in route.methods:
            yield route.url(b_values), method, None
            if len(route.params) > 1:
                yield route.url(mixed), method, route.url(nowhere)


def _check(who: str, client, world_b: TenantWorld, requests) -> list[str]:
    failures = []
    for url, method, twin in requests:
        response = _call(client, method, url)
        expected = 404 if twin is None else _call(client, method, twin).status_code
        if response.status_code != expected or expected < 400:
            failures.append(f"{who} {method.upper()} {url} -> {response.status_code}, expected {expected}")
        elif world_b.tenant.name in response.content.decode():
            failures.append(f"{who} {method.upper()} {url} leaked tenant B's name")
    return failures


def test_members_of_a_get_404_for_everything_of_b(world_a, world_b):
    requests = list(_other_tenant_requests(world_a, world_b))
    failures = []
    for role in ("owner", "admin", "member", "viewer"):
        failures += _check(f"session:{role}", world_a.session(role), world_b, requests)
    assert not failures, "\n".join(failures)


def test_keys_of_a_get_404_for_everything_of_b(world_a, world_b):
    requests = list(_other_tenant_requests(world_a, world_b))
    failures = []
    for scope in ("infer", "read", "manage"):
        failures += _check(f"key[{scope}]", world_a.bearer(scope), world_b, requests)
    assert not failures, "\n".join(failures)


def test_missing_and_foreign_look_the_same(world_a, world_b):
    client = world_a.session("owner")
    foreign = client.get(f"/api/v1/tenants/{world_b.tenant.slug}/members/")
    missing = client.get("/api/v1/tenants/no-such-tenant/members/")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"].replace(world_b.tenant.slug, "X") == missing.json()["error"].replace(
        "no-such-tenant", "X"
    )


# Writes that are part of inference, open to callers with "infer" (and refused to viewers).
INFER_WRITES = {("api/v1/tenants/<slug:slug>/models/<str:name>/feedback/", "post")}


def _writes_not_refused(who: str, client, world: TenantWorld, *, may_infer: bool = False) -> list[str]:
    """Every write method on every tenant route of ``world`` that ``client`` was not refused."""
    failures = []
    for route in tenant_routes():
        url = route.url(samples(world))
        for method in route.methods:
            if method in SAFE or (may_infer and (route.template, method) in INFER_WRITES):
                continue
            response = _call(client, method, url)
            if response.status_code != 403:
                failures.append(f"{who} {method.upper()} {url} -> {response.status_code}")
    return failures


def test_viewers_cannot_use_any_write_method(world_a):
    failures = _writes_not_refused("viewer", world_a.session("viewer"), world_a)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("scope", ["read", "infer"])
def test_keys_without_manage_cannot_use_any_write_method(world_a, scope):
    failures = _writes_not_refused(f"key[{scope}]", world_a.bearer(scope), world_a, may_infer=scope == "infer")
    assert not failures, "\n".join(failures)


def test_infer_only_keys_cannot_read_the_control_api(world_a):
    client = world_a.bearer("infer")
    for route in tenant_routes():
        if "get" in route.methods:
            response = client.get(route.url(samples(world_a)))
            assert response.status_code == 403, route.template


def test_viewers_and_read_keys_can_read_the_tenant(world_a):
    for client in (world_a.session("viewer"), world_a.bearer("read")):
        assert client.get(f"/api/v1/tenants/{world_a.tenant.slug}/").status_code == 200
        assert client.get(f"/api/v1/tenants/{world_a.tenant.slug}/members/").status_code == 200
        assert client.get(f"/api/v1/tenants/{world_a.tenant.slug}/quota/").status_code == 200
