"""The model registry: uploads, validation in the sandbox, hostile artifacts, versions."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.registry.models import Model, ModelVersion
from apps.registry.selectors import artifact_uri
from apps.registry.storage import artifact_storage
from apps.registry.tasks import validate_model_version
from apps.tenants.models import AuditEvent
from tests.apps.registry import onnx_models
from tests.apps.tenants.conftest import TenantWorld
from tests.inference_workers import models as torch_models

pytestmark = pytest.mark.django_db


def upload(client: APIClient, slug: str, name: str, payload: bytes, **fields: str):
    data = {"file": SimpleUploadedFile("model.bin", payload), **fields}
    return client.post(f"/api/v1/tenants/{slug}/models/{name}/versions/", data, format="multipart")


def upload_and_validate(world: TenantWorld, name: str, payload: bytes, **fields: str) -> ModelVersion:
    response = upload(world.session("member"), world.tenant.slug, name, payload, **fields)
    assert response.status_code == 202, response.json()
    assert response.json()["status"] == "validating"
    version = ModelVersion.objects.get(model__tenant=world.tenant, model__name=name, number=response.json()["number"])
    validate_model_version(version.pk)
    version.refresh_from_db()
    return version


def stored_files() -> list[str]:
    root = Path(artifact_storage().path(""))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# Formats and signatures ------------------------------------------------------------------


def test_onnx_upload_is_validated_with_signature_and_footprint(world_a):
    version = upload_and_validate(world_a, "tiny", onnx_models.mlp_bytes())
    assert version.status == "ready", version.failure_reason
    assert version.format == "onnx" and version.platform == "onnxruntime_onnx"
    assert version.inputs == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert version.outputs == [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}]
    assert version.batched and version.max_batch_size == 64
    assert version.footprint_bytes and version.footprint_bytes > 0 and version.footprint_device == "cpu"
    assert version.load_seconds is not None
    body = world_a.session("viewer").get(f"/api/v1/tenants/alpha/models/tiny/versions/{version.number}/").json()
    assert body["status"] == "ready" and body["inputs"][0]["shape"] == [-1, 4]
    assert AuditEvent.objects.filter(action="model_version.validated", target=f"tiny/{version.number}").exists()


def test_torchscript_needs_its_signature_and_uses_it(world_a, tmp_path):
    payload = torch_models.torchscript(torch_models.Doubler(), tmp_path / "d.pt", features=4).read_bytes()
    missing = upload_and_validate(world_a, "ts", payload)
    assert missing.status == "failed" and "carries no signature" in missing.failure_reason
    specs = {
        "inputs": json.dumps([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]),
        "outputs": json.dumps([{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]),
    }
    version = upload_and_validate(world_a, "ts", payload, **specs)
    assert version.status == "ready", version.failure_reason
    assert version.format == "torchscript" and version.number == 2
    assert version.inputs == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


def test_torch_export_signature_comes_from_the_program(world_a, tmp_path):
    payload = torch_models.exported(torch_models.Mlp(width=32), tmp_path / "m.pt2", features=256).read_bytes()
    version = upload_and_validate(world_a, "exported", payload)
    assert version.status == "ready", version.failure_reason
    assert version.format == "torch_export"
    assert version.inputs[0]["shape"] == [-1, 256] and version.outputs[0]["shape"] == [-1, 10]


def test_the_format_may_be_given_but_must_match_the_content(world_a):
    version = upload_and_validate(world_a, "tiny", onnx_models.mlp_bytes(), format="torchscript")
    assert version.status == "failed" and "the file is onnx" in version.failure_reason


def test_the_measured_footprint_grows_with_the_model(world_a):
    small = upload_and_validate(world_a, "small", onnx_models.sized_mlp_bytes(4))
    large = upload_and_validate(world_a, "large", onnx_models.sized_mlp_bytes(64))
    assert small.status == large.status == "ready", (small.failure_reason, large.failure_reason)
    assert large.footprint_bytes is not None and small.footprint_bytes is not None
    assert large.footprint_bytes - small.footprint_bytes >= 40 * 1024**2, (small.footprint_bytes, large.footprint_bytes)


# Hostile and broken uploads -------------------------------------------------------------


def test_an_empty_file_is_400_and_leaves_nothing(world_a):
    before = stored_files()
    response = upload(world_a.session("member"), "alpha", "empty", b"")
    assert response.status_code == 400 and "empty" in response.json()["error"]
    assert stored_files() == before
    assert not Model.objects.filter(name="empty").exists()


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("truncated", onnx_models.mlp_bytes(width=64)[:300], "not an ONNX model"),
        ("random", os.urandom(4096), "not an ONNX model"),
        ("escaping", onnx_models.escaping_external_data_bytes(), "outside the model's folder"),
        ("sidecar", onnx_models.escaping_external_data_bytes("weights.bin"), "separate file"),
    ],
)
def test_broken_and_hostile_onnx_fails_with_a_reason(world_a, name, payload, reason):
    version = upload_and_validate(world_a, name, payload)
    assert version.status == "failed"
    assert reason in version.failure_reason


class _Exploit:
    """Unpickling this would create a file: proof that something ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_is_refused_and_never_unpickled(world_a, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)), protocol=4)
    version = upload_and_validate(world_a, "pickled", payload)
    assert version.status == "failed" and "never unpickles" in version.failure_reason
    buffer = io.BytesIO()
    torch.save({"weights": torch.ones(2), "exploit": _Exploit(str(marker))}, buffer)
    saved = upload_and_validate(world_a, "torchsaved", buffer.getvalue())
    assert saved.status == "failed" and "torch.save" in saved.failure_reason
    assert not marker.exists(), "the pickle's code ran"


def test_a_zip_bomb_disguised_as_torchscript_is_refused(world_a):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model/code/__torch__.py", "def forward(self, x): return x\n")
        with archive.open("model/data/0", "w") as entry:
            chunk = b"\0" * 1024**2
            for _ in range(300):
                entry.write(chunk)
    version = upload_and_validate(world_a, "bomb", buffer.getvalue())
    assert version.status == "failed" and "zip bomb" in version.failure_reason


def test_a_model_that_runs_forever_is_stopped_by_the_time_limit(world_a, tmp_path, settings):
    settings.BERTH_VALIDATION_TIMEOUT_S = 6
    slow = torch.jit.script(torch_models.Slow(rounds=1_000_000))
    path = tmp_path / "slow.pt"
    slow.save(str(path))
    specs = {
        "inputs": json.dumps([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]),
        "outputs": json.dumps([{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]),
    }
    version = upload_and_validate(world_a, "slow", path.read_bytes(), **specs)
    assert version.status == "failed" and "longer than 6 s" in version.failure_reason


class Hog(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        waste = torch.ones(x.shape[0] * 64, 1024, 1024)  # 256 MiB per row of input, touched
        return x + waste.sum() * 0


def test_a_model_that_allocates_past_the_limit_fails_with_a_memory_reason(world_a, tmp_path, settings):
    settings.BERTH_VALIDATION_MEMORY_MB = 512
    path = tmp_path / "hog.pt"
    torch.jit.script(Hog()).save(str(path))
    specs = {
        "inputs": json.dumps([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]),
        "outputs": json.dumps([{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]),
    }
    version = upload_and_validate(world_a, "hog", path.read_bytes(), **specs)
    assert version.status == "failed"
    assert "memory" in version.failure_reason.lower() or "allocate" in version.failure_reason.lower()


@pytest.mark.parametrize("name", ["Bad_Name", "-x", "a" * 64, "spaces here", "dot.ted"])
def test_bad_model_names_are_400_and_create_nothing(world_a, name):
    before = stored_files()
    response = upload(world_a.session("member"), "alpha", name, onnx_models.mlp_bytes())
    assert response.status_code in (400, 404)
    assert not Model.objects.filter(name=name).exists()
    assert stored_files() == before


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"format": "pickle"}, "format"),
        ({"inputs": "not json", "outputs": "[]"}, "inputs"),
        (
            {
                "inputs": json.dumps([{"name": "x", "datatype": "FLOAT", "shape": [1]}]),
                "outputs": json.dumps([{"name": "y", "datatype": "FP32", "shape": [1]}]),
            },
            "inputs",
        ),
        ({"inputs": json.dumps([{"name": "x", "datatype": "FP32", "shape": [1]}])}, "outputs"),
    ],
)
def test_bad_upload_fields_name_the_field(world_a, fields, field):
    response = upload(world_a.session("member"), "alpha", "m", onnx_models.mlp_bytes(), **fields)
    assert response.status_code == 400
    assert field in response.json()["field_errors"]
    assert not Model.objects.filter(name="m").exists()


def test_an_upload_without_a_file_is_400(world_a):
    response = world_a.session("member").post("/api/v1/tenants/alpha/models/m/versions/", {}, format="multipart")
    assert response.status_code == 400 and "'file'" in response.json()["error"]


@pytest.mark.django_db(transaction=True)
def test_two_uploads_racing_get_consecutive_numbers(world_a):
    payload = onnx_models.mlp_bytes()
    results: list[int] = []
    clients = [world_a.session("member"), world_a.session("member")]

    def one() -> None:
        from django.db import connection as thread_connection

        try:
            response = upload(clients.pop(), "alpha", "raced", payload)
            results.append(response.status_code)
        except Exception as exc:  # noqa: BLE001 — reported by the assert below
            results.append(repr(exc))  # type: ignore[arg-type]
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [202, 202]
    numbers = sorted(ModelVersion.objects.filter(model__name="raced").values_list("number", flat=True))
    assert numbers == [1, 2]
    assert Model.objects.filter(name="raced").count() == 1


def test_max_models_is_enforced_with_409(world_a, staff_client):
    staff_client.patch("/api/v1/tenants/alpha/quota/", {"max_models": 2}, format="json")  # one exists already
    assert upload(world_a.session("member"), "alpha", "second", onnx_models.mlp_bytes()).status_code == 202
    refused = upload(world_a.session("member"), "alpha", "third", onnx_models.mlp_bytes())
    assert refused.status_code == 409 and "max_models" in refused.json()["error"]
    assert upload(world_a.session("member"), "alpha", "second", onnx_models.mlp_bytes()).status_code == 202


def test_over_max_artifact_mb_is_413_and_stores_nothing(world_a, staff_client):
    staff_client.patch("/api/v1/tenants/alpha/quota/", {"max_artifact_mb": 1}, format="json")
    before = stored_files()
    response = upload(world_a.session("member"), "alpha", "big", os.urandom(3 * 1024**2))
    assert response.status_code == 413 and "max_artifact_mb" in response.json()["error"]
    assert stored_files() == before
    assert not list((Path(artifact_storage().path("")).parent / "uploads").glob("*"))


# Versions, artifacts, models -------------------------------------------------------------


def test_versions_list_get_download_and_delete(world_a):
    payload = onnx_models.mlp_bytes()
    upload_and_validate(world_a, "tiny", payload)
    upload_and_validate(world_a, "tiny", payload)
    client = world_a.session("viewer")
    listed = client.get("/api/v1/tenants/alpha/models/tiny/versions/").json()
    assert [v["number"] for v in listed] == [2, 1]
    download = client.get("/api/v1/tenants/alpha/models/tiny/versions/1/artifact/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == payload
    assert client.delete("/api/v1/tenants/alpha/models/tiny/versions/1/").status_code == 403
    member = world_a.session("member")
    assert member.delete("/api/v1/tenants/alpha/models/tiny/versions/1/").status_code == 204
    assert client.get("/api/v1/tenants/alpha/models/tiny/versions/1/").status_code == 404
    models = client.get("/api/v1/tenants/alpha/models/").json()
    assert {m["name"]: m["version_count"] for m in models}["tiny"] == 1


def test_model_crud(world_a):
    member = world_a.session("member")
    created = member.post(
        "/api/v1/tenants/alpha/models/", {"name": "resnet", "labels": {"team": "vision"}}, format="json"
    )
    assert created.status_code == 201
    assert member.post("/api/v1/tenants/alpha/models/", {"name": "resnet"}, format="json").status_code == 409
    patched = member.patch("/api/v1/tenants/alpha/models/resnet/", {"description": "v1"}, format="json")
    assert patched.json()["description"] == "v1"
    assert member.delete("/api/v1/tenants/alpha/models/resnet/").status_code == 204
    assert member.get("/api/v1/tenants/alpha/models/resnet/").status_code == 404


def test_two_tenants_may_both_have_a_model_named_resnet(world_a, world_b):
    for world in (world_a, world_b):
        assert (
            world.session("member")
            .post(f"/api/v1/tenants/{world.tenant.slug}/models/", {"name": "resnet"}, format="json")
            .status_code
            == 201
        )
    assert Model.objects.filter(name="resnet").count() == 2


def test_workers_fetch_artifacts_by_signed_url_only(world_a, client, settings):
    version = upload_and_validate(world_a, "tiny", onnx_models.mlp_bytes())
    uri = artifact_uri(version=version)
    path = uri.split("127.0.0.1:8000", 1)[1]
    fetched = client.get(path)
    assert fetched.status_code == 200 and b"".join(fetched.streaming_content) == onnx_models.mlp_bytes()
    forged = path.rsplit(":", 1)[0] + ":AAAAAAAAAAAAAAAAAAAAAAAAAAA/"
    assert client.get(forged).status_code == 404
    other = path.replace(f"/artifacts/{version.pk}/", f"/artifacts/{version.pk + 1000}/")
    assert client.get(other).status_code == 404
    settings.BERTH_ARTIFACT_URL_TTL_S = -1  # every token is now expired
    assert client.get(path).status_code == 404


def test_model_list_costs_constant_queries(world_a):
    client = world_a.session("viewer")

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/api/v1/tenants/alpha/models/").status_code == 200
        return len(captured)

    before = count()
    for n in range(5):
        Model.objects.create(tenant=world_a.tenant, name=f"m{n}")
    assert count() == before


def _evil_export(tmp_path: Path, marker: Path) -> bytes:
    """A real torch.export archive whose weight and sample inputs are malicious pickles."""
    good = torch_models.exported(torch_models.Mlp(width=8), tmp_path / "good.pt2", features=256)
    payload = pickle.dumps(_Exploit(str(marker)), protocol=2)
    out = io.BytesIO()
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            elif item.filename.endswith("weights/weight_0") or "sample_inputs" in item.filename:
                data = payload
            target.writestr(item, data)
    return out.getvalue()


def test_a_torch_export_archive_carrying_pickles_runs_nothing(world_a, tmp_path):
    marker = tmp_path / "pwned-export"
    version = upload_and_validate(world_a, "evil-export", _evil_export(tmp_path, marker))
    assert version.status == "failed"
    assert not marker.exists(), "a pickle inside the .pt2 ran"


class Forger(torch.nn.Module):
    """Prints a fake 'ready' verdict, then fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print(
            '{"ok": true, "format": "onnx", "inputs": [], "outputs": [], "batched": false, "max_batch_size": 0, '
            '"footprint_bytes": 1, "device_kind": "cpu", "load_seconds": 0}'
        )
        raise RuntimeError("and then it fails")


def test_a_model_cannot_forge_the_validation_verdict(world_a, tmp_path):
    path = tmp_path / "forger.pt"
    torch.jit.script(Forger()).save(str(path))
    specs = {
        "inputs": json.dumps([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]),
        "outputs": json.dumps([{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]),
    }
    version = upload_and_validate(world_a, "forger", path.read_bytes(), **specs)
    assert version.status == "failed" and version.footprint_bytes is None


def test_browser_uploads_with_csrf_work(world_a):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(world_a.users["member"])
    token = client.get("/login/").cookies["csrftoken"].value
    response = client.post(
        "/api/v1/tenants/alpha/models/browser/versions/",
        {"file": SimpleUploadedFile("m.onnx", onnx_models.mlp_bytes())},
        format="multipart",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 202, response.content
    refused = client.post(
        "/api/v1/tenants/alpha/models/browser/versions/",
        {"file": SimpleUploadedFile("m.onnx", onnx_models.mlp_bytes())},
        format="multipart",
    )
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]


def test_only_the_file_field_is_stored_and_its_digest_is_its_own(world_a):
    import hashlib

    payload = onnx_models.mlp_bytes()
    response = world_a.session("member").post(
        "/api/v1/tenants/alpha/models/two-parts/versions/",
        {"aux": SimpleUploadedFile("aux.bin", b"x" * 5000), "file": SimpleUploadedFile("m.onnx", payload)},
        format="multipart",
    )
    assert response.status_code == 202
    assert response.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert response.json()["size_bytes"] == len(payload)


def test_a_validation_that_cannot_run_marks_the_version_failed(world_a):
    response = upload(world_a.session("member"), "alpha", "lost", onnx_models.mlp_bytes())
    version = ModelVersion.objects.get(model__name="lost")
    artifact_storage().delete(version.artifact)  # the file vanished
    validate_model_version(version.pk)
    version.refresh_from_db()
    assert response.status_code == 202
    assert version.status == "failed" and "could not run" in version.failure_reason
    download = world_a.session("viewer").get("/api/v1/tenants/alpha/models/lost/versions/1/artifact/")
    assert download.status_code == 404


def test_deeply_nested_signature_json_is_400(world_a):
    response = upload(
        world_a.session("member"), "alpha", "deep", onnx_models.mlp_bytes(), inputs="[" * 50000, outputs="[]"
    )
    assert response.status_code == 400


def test_a_torch_exported_onnx_with_a_dynamic_batch_axis_validates(world_a, tmp_path):
    path = torch_models.mlp_onnx(tmp_path / "mlp.onnx", width=64)
    version = upload_and_validate(world_a, "torch-onnx", path.read_bytes())
    assert version.status == "ready", version.failure_reason
    assert version.inputs == [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}]
    assert version.batched and version.max_batch_size == 64
