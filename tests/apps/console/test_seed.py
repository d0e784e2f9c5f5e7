import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.console.services import demo_seed
from apps.registry.models import ModelVersion
from apps.tenants.models import ApiKey, Membership, Tenant

pytestmark = pytest.mark.django_db


def test_first_run_creates_admin_demo_tenant_owner_and_key(tmp_path):
    login = demo_seed(data_dir=tmp_path)
    assert login.created and len(login.password) >= 12
    admin = authenticate(username="admin", password=login.password)
    assert admin is not None and admin.is_staff and admin.is_superuser
    assert (tmp_path / "admin-password").stat().st_mode & 0o777 == 0o600
    owner = authenticate(username="demo-owner", password=login.owner_password)
    assert owner is not None and not owner.is_staff
    tenant = Tenant.objects.get(slug="demo")
    assert Membership.objects.get(tenant=tenant, user=owner).role == "owner"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {login.api_key}")
    assert client.get("/api/v1/tenants/demo/").status_code == 200
    assert (tmp_path / "demo-api-key").stat().st_mode & 0o777 == 0o600
    version = ModelVersion.objects.get(model__tenant=tenant, model__name="demo-mlp")
    assert version.status == "validating" and version.number == 1


def test_second_run_changes_nothing_and_recalls_the_secrets(tmp_path):
    first = demo_seed(data_dir=tmp_path)
    second = demo_seed(data_dir=tmp_path)
    assert not second.created
    assert (second.password, second.owner_password, second.api_key) == (
        first.password,
        first.owner_password,
        first.api_key,
    )
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert Tenant.objects.count() == 1 and ApiKey.objects.count() == 1
    assert ModelVersion.objects.count() == 1


def test_a_revoked_demo_key_is_replaced_on_the_next_run(tmp_path):
    first = demo_seed(data_dir=tmp_path)
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")
    second = demo_seed(data_dir=tmp_path)
    assert second.api_key != first.api_key
    assert ApiKey.objects.filter(revoked_at=None).count() == 1


def test_an_explicit_password_is_applied_every_time(tmp_path):
    demo_seed(data_dir=tmp_path)
    login = demo_seed(data_dir=tmp_path, admin_password="chosen-password-9")
    assert login.password == "chosen-password-9"
    assert authenticate(username="admin", password="chosen-password-9") is not None
    assert authenticate(username="demo-owner", password="chosen-password-9") is not None


def test_the_command_prints_the_logins_and_key(monkeypatch, capsys):
    monkeypatch.setenv("BERTH_ADMIN_PASSWORD", "printed-password-3")
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "admin / printed-password-3" in out
    assert "demo-owner / printed-password-3" in out
    assert "API key brt_" in out
