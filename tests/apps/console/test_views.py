import pytest

from tests.apps.deployments.factories import WorkerFactory

pytestmark = pytest.mark.django_db


def test_console_requires_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_sign_in_page_renders_with_local_css(client):
    response = client.get("/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/berth/berth.css" in html
    assert "http://" not in html and "https://" not in html  # no CDN


def test_signing_in_with_the_form_reaches_the_overview(client, staff_user):
    response = client.post("/login/", {"username": "operator", "password": "pw-operator-1"}, follow=True)
    assert response.status_code == 200
    assert b"Overview" in response.content


def test_staff_overview_lists_workers(client, staff_user):
    WorkerFactory(worker_id="gpu-node-3")
    client.force_login(staff_user)
    assert b"gpu-node-3" in client.get("/").content


def test_non_staff_overview_hides_workers(client, plain_user):
    WorkerFactory(worker_id="gpu-node-3")
    client.force_login(plain_user)
    response = client.get("/")
    assert response.status_code == 200
    assert b"gpu-node-3" not in response.content


def test_static_css_is_served_without_collectstatic(client):
    response = client.get("/static/berth/berth.css")
    assert response.status_code == 200


def test_members_see_their_tenants_dashboard_with_local_plotly(client, world_a):
    client.force_login(world_a.users["viewer"])
    overview = client.get("/").content.decode()
    assert "/t/alpha/dashboard/" in overview
    page = client.get("/t/alpha/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/vendor/plotly/plotly.min.js" in html and "/static/berth/dashboard.js" in html
    assert 'data-tenant="alpha"' in html
    assert "https://" not in html and "http://" not in html  # no CDN
    assert client.get("/static/vendor/plotly/plotly.min.js").status_code == 200


def test_another_tenants_dashboard_is_404_like_a_missing_one(client, world_a, world_b):
    client.force_login(world_a.users["owner"])
    assert client.get("/t/bravo/dashboard/").status_code == 404
    assert client.get("/t/no-such-tenant/dashboard/").status_code == 404
    assert b"/t/bravo/" not in client.get("/").content


def test_the_fleet_page_is_for_staff_only(client, staff_user, world_a):
    client.force_login(world_a.users["owner"])
    assert client.get("/fleet/").status_code == 404
    client.force_login(staff_user)
    page = client.get("/fleet/")
    assert page.status_code == 200 and b"/static/berth/fleet.js" in page.content
    assert client.get("/t/alpha/dashboard/").status_code == 200  # staff act in every tenant


def _tenant_pages():
    from django.urls import URLPattern, URLResolver, get_resolver

    console = next(r for r in get_resolver().url_patterns if isinstance(r, URLResolver) and r.app_name == "console")
    return [
        "/" + str(p.pattern).replace("<slug:slug>", "{slug}").replace("<str:", "{").replace(">", "}")
        for p in console.url_patterns
        if isinstance(p, URLPattern) and "<slug:slug>" in str(p.pattern) and not str(p.pattern).startswith("staff/")
    ]


def _objects(world):
    return {
        "slug": world.tenant.slug,
        "name": world.model_name,
        "prefix": world.key_rows["read"].prefix,
        "username": world.users["member"].username,
    }


POST_ONLY = {"/t/{slug}/keys/{prefix}/revoke/", "/t/{slug}/members/{username}/"}


def test_every_tenant_scoped_console_page_is_404_for_another_tenant_and_asks_strangers_to_sign_in(
    client, world_a, world_b
):
    templates = _tenant_pages()
    # The walk finds the console's tenant pages, including those naming a model, key or member.
    for page in ("/t/{slug}/dashboard/", "/t/{slug}/models/{name}/deployment/", "/t/{slug}/keys/{prefix}/revoke/"):
        assert page in templates
    for template in templates:
        assert client.get(template.format(**_objects(world_b))).status_code == 302, template  # sign in first
    client.force_login(world_a.users["owner"])
    missing = {**_objects(world_b), "slug": "no-such-tenant"}
    for template in templates:
        # bravo's real objects, named by alpha's owner: as if they did not exist; a write too.
        assert client.get(template.format(**_objects(world_b))).status_code in (404, 405), template
        assert client.post(template.format(**_objects(world_b)), {"role": "owner"}).status_code == 404, template
        assert client.get(template.format(**missing)).status_code in (404, 405), template
        if template not in POST_ONLY:
            assert client.get(template.format(**_objects(world_a))).status_code == 200, template
        # alpha's slug with bravo's objects: no different from objects that exist nowhere.
        mixed = {**_objects(world_b), "slug": "alpha"}
        nowhere = {**dict.fromkeys(_objects(world_b), "zz-missing"), "slug": "alpha"}
        if template.count("{") > 1:
            for method in ("get", "post"):
                got = getattr(client, method)(template.format(**mixed)).status_code
                assert got == getattr(client, method)(template.format(**nowhere)).status_code, (template, method)
    # Nothing of bravo's changed.
    assert world_b.key_rows["read"].__class__.objects.get(pk=world_b.key_rows["read"].pk).revoked_at is None
    assert world_b.tenant.memberships.get(user=world_b.users["member"]).role == "member"


def test_viewers_see_read_only_pages_and_cannot_change_anything(client, world_a):
    from apps.tenants.models import AuditEvent

    client.force_login(world_a.users["viewer"])
    objects = _objects(world_a)
    before = AuditEvent.objects.count()
    for page in ("/t/{slug}/models/", "/t/{slug}/models/{name}/", "/t/{slug}/models/{name}/deployment/",
                 "/t/{slug}/members/", "/t/{slug}/quota/", "/t/{slug}/usage/"):  # fmt: skip
        html = client.get(page.format(**objects)).content.decode()
        assert '<form method="post" id=' not in html, page  # no create/edit form is offered
        assert 'id="upload"' not in html
    assert client.get("/t/alpha/keys/").status_code == 403  # keys are for those who manage access
    assert client.get("/t/alpha/audit/").status_code == 403
    writes = [
        ("/t/alpha/models/", {"name": "sneaky"}),
        ("/t/alpha/models/alpha-model/deployment/", {"action": "save", "traffic_1": 100, "min_replicas": 1,
          "max_replicas": 1, "target_inflight_per_replica": 8, "scale_to_zero_after_s": 0, "device_kind": "cpu"}),
        ("/t/alpha/keys/", {"name": "k", "scopes": ["read"]}),
        (f"/t/alpha/keys/{objects['prefix']}/revoke/", {}),
        ("/t/alpha/members/", {"username": "alpha-viewer", "role": "owner"}),
        ("/t/alpha/members/alpha-viewer/", {"role": "owner"}),
    ]  # fmt: skip
    for url, body in writes:
        assert client.post(url, body).status_code == 403, url
    assert AuditEvent.objects.count() == before


def test_staff_pages_are_404_to_tenant_owners(client, world_a):
    client.force_login(world_a.users["owner"])
    for url in ("/staff/tenants/", "/staff/tenants/alpha/", "/fleet/"):
        assert client.get(url).status_code == 404, url
    assert client.post("/staff/tenants/", {"slug": "mine", "name": "Mine"}).status_code == 404
    assert client.post("/staff/workers/w1/drain/").status_code == 404
