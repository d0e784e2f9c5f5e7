import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


def test_healthy_platform_reports_each_part(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok", "status": "ok"}


def test_unreachable_broker_is_503_naming_the_broker(client):
    with override_settings(CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_BROKER_TRANSPORT_OPTIONS={}):
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok"
    assert body["error"].startswith("broker unreachable")


def test_missing_embedded_broker_folder_is_503(client, tmp_path):
    options = {"data_folder_out": str(tmp_path / "gone")}
    with override_settings(CELERY_BROKER_URL="berthfs://", CELERY_BROKER_TRANSPORT_OPTIONS=options):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert "broker folder" in response.json()["error"]


def test_unreachable_database_is_503_naming_the_database(client, monkeypatch):
    from django.db import DatabaseError
    from django.db.backends.utils import CursorWrapper

    def refuse(self, sql, params=None):
        raise DatabaseError("connection refused")

    monkeypatch.setattr(CursorWrapper, "execute", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["error"].startswith("database unreachable")
