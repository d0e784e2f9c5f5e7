"""Property-based fuzz of the REST API from its own OpenAPI schema: no input gives a 5xx.

schemathesis generates requests for every operation in ``/api/v1/schema/`` (bounded
examples per operation) and sends them in-process through Django's WSGI handler, as
platform staff (the widest surface), against a database with a tenant, members and keys.
"""

from __future__ import annotations

import base64
import zlib

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet

from tests.apps.tenants.conftest import build_world
from tests.apps.tenants.factories import UserFactory

FUZZED_KEY_PREFIX = ""
FUZZED_KEYS: dict[str, str] = {}


@pytest.fixture
def api_schema(db):
    global FUZZED_KEY_PREFIX
    world = build_world("fuzzed")
    FUZZED_KEY_PREFIX = world.key_rows["read"].prefix
    FUZZED_KEYS.update(world.keys)
    UserFactory.create(username="fuzz-staff", is_staff=True)
    # As Django's test client does: a request must not close the connection that holds
    # the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


schema = schemathesis.pytest.from_fixture("api_schema")


STAFF_AUTH = "Basic " + base64.b64encode(b"fuzz-staff:pw-test-123").decode()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.django_db
def test_no_request_makes_the_api_fail(case):
    # Random slugs would all stop at 404; aim at the real tenant and its objects so bodies
    # and query strings reach the services.
    real = {"slug": "fuzzed", "username": "fuzzed-viewer", "prefix": FUZZED_KEY_PREFIX}
    for name in list(case.path_parameters or {}):
        if name in real:
            case.path_parameters[name] = real[name]
    callers = [
        {"Authorization": STAFF_AUTH},  # staff over Basic: the widest surface
        {"Authorization": f"Bearer {FUZZED_KEYS['manage']}"},  # a tenant's manage key
        {"Authorization": f"Bearer {FUZZED_KEYS['read']}", "Accept": "text/html"},  # a read key asking for HTML
    ]
    # Every example goes as staff (the widest surface). One with something drawn goes also as
    # one of the two tenant keys, picked from the example (so hypothesis, replaying a failing
    # one, sends it the same way; each operation still meets both keys over its examples);
    # one with nothing drawn (an operation's only example) as both. Two calls where three were.
    drawn_path = {name: value for name, value in (case.path_parameters or {}).items() if name not in real}
    # schemathesis draws the security schemes' Authorization header too; each call sets its own.
    drawn_headers = {name: value for name, value in (case.headers or {}).items() if name.lower() != "authorization"}
    drawn = (drawn_path, case.query, drawn_headers, case.body)
    keys = callers[1:]
    if drawn_path or case.query or drawn_headers or not isinstance(case.body, NotSet):
        keys = [keys[zlib.crc32(repr(drawn).encode()) % len(keys)]]
    for headers in [callers[0], *keys]:
        response = case.call(headers=headers)
        case.validate_response(response, checks=[not_a_server_error])


def test_the_schema_is_valid_and_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/tenants/{slug}/api-keys/" in text
    assert "bearerFormat" in text


def test_swagger_ui_is_served_offline(client):
    html = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in html.lower()
    assert "cdn" not in html.lower() and "https://" not in html
