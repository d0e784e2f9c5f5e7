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


def test_every_tenant_scoped_console_page_is_404_for_another_tenant_and_asks_strangers_to_sign_in(
    client, world_a, world_b
):
    from django.urls import URLPattern, URLResolver, get_resolver

    console = next(r for r in get_resolver().url_patterns if isinstance(r, URLResolver) and r.app_name == "console")
    templates = [
        "/" + str(p.pattern).replace("<slug:slug>", "{slug}")
        for p in console.url_patterns
        if isinstance(p, URLPattern) and "<slug:slug>" in str(p.pattern)
    ]
    assert "/t/{slug}/dashboard/" in templates  # the walk finds the console's tenant pages
    for template in templates:
        assert client.get(template.format(slug="bravo")).status_code == 302, template  # sign in first
    client.force_login(world_a.users["owner"])
    for template in templates:
        assert client.get(template.format(slug="bravo")).status_code == 404, template
        assert client.get(template.format(slug="no-such-tenant")).status_code == 404, template
        assert client.get(template.format(slug="alpha")).status_code == 200, template
