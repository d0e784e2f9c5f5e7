import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from apps.console.services import demo_seed

pytestmark = pytest.mark.django_db


def test_first_run_creates_a_staff_admin_with_a_generated_password(tmp_path):
    login = demo_seed(data_dir=tmp_path)
    assert login.created and len(login.password) >= 12
    user = authenticate(username="admin", password=login.password)
    assert user is not None and user.is_staff and user.is_superuser
    assert (tmp_path / "admin-password").stat().st_mode & 0o777 == 0o600


def test_second_run_changes_nothing_and_recalls_the_password(tmp_path):
    first = demo_seed(data_dir=tmp_path)
    second = demo_seed(data_dir=tmp_path)
    assert not second.created
    assert second.password == first.password
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert authenticate(username="admin", password=first.password) is not None


def test_an_explicit_password_is_applied_every_time(tmp_path):
    demo_seed(data_dir=tmp_path)
    login = demo_seed(data_dir=tmp_path, admin_password="chosen-password-9")
    assert login.password == "chosen-password-9"
    assert authenticate(username="admin", password="chosen-password-9") is not None


def test_the_command_prints_the_login(monkeypatch, capsys):
    monkeypatch.setenv("BERTH_ADMIN_PASSWORD", "printed-password-3")
    call_command("seed_demo")
    assert "admin / printed-password-3" in capsys.readouterr().out
