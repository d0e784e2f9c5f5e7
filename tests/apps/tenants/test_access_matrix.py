"""Every role and every key scope against every action, through the real endpoints."""

from __future__ import annotations

import itertools

import pytest

from apps.tenants.access import ROLE_ACTIONS, SCOPE_ACTIONS, Action

pytestmark = pytest.mark.django_db

# One request per action, each needing exactly that action (and nothing else) to pass
# the permission check. Bodies are invalid on purpose: allowed callers get 400, refused 403.
PROBES: dict[Action, tuple[str, str]] = {
    Action.READ: ("get", "members/"),
    Action.AUDIT: ("get", "audit/"),
    Action.MANAGE_ACCESS: ("post", "api-keys/"),
}


def _probe(client, slug: str, action: Action):
    method, suffix = PROBES[action]
    return getattr(client, method)(f"/api/v1/tenants/{slug}/{suffix}", data={}, format="json")


@pytest.mark.parametrize("role", ["owner", "admin", "member", "viewer"])
@pytest.mark.parametrize("action", [Action.READ, Action.AUDIT, Action.MANAGE_ACCESS])
def test_each_role_gets_exactly_its_actions(world_a, role, action):
    response = _probe(world_a.session(role), world_a.tenant.slug, action)
    if action in ROLE_ACTIONS[role]:
        assert response.status_code in (200, 400), response.json()
    else:
        assert response.status_code == 403, response.json()


@pytest.mark.parametrize("scope", ["infer", "read", "manage"])
@pytest.mark.parametrize("action", [Action.READ, Action.AUDIT, Action.MANAGE_ACCESS])
def test_each_key_scope_gets_exactly_its_actions(world_a, scope, action):
    response = _probe(world_a.bearer(scope), world_a.tenant.slug, action)
    if action in SCOPE_ACTIONS[scope]:
        assert response.status_code in (200, 400), response.json()
    else:
        assert response.status_code == 403, response.json()


def test_no_scope_can_manage_access_or_read_the_audit():
    for actions in SCOPE_ACTIONS.values():
        assert Action.MANAGE_ACCESS not in actions and Action.AUDIT not in actions


def test_roles_are_nested():
    order = ["viewer", "member", "admin", "owner"]
    for lower, higher in itertools.pairwise(order):
        assert ROLE_ACTIONS[lower] < ROLE_ACTIONS[higher]
