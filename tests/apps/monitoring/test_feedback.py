"""Prediction logging and accuracy from feedback: decoding, joins, scoring, retention, access."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from apps.deployments.models import Deployment
from apps.monitoring.models import Feedback, PredictionLog
from apps.monitoring.services import LoggedPrediction, prediction_logs_prune, prediction_logs_record
from apps.registry.models import Model, ModelVersion
from inference_workers.codec import InferRequest, decode_tensors, encode_response
from inference_workers.types import TensorSpec

pytestmark = pytest.mark.django_db

OUTPUTS = [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]


def _request(rows: list[list[float]], request_id: str | None = None) -> bytes:
    body: dict[str, object] = {"inputs": [{"name": "x", "shape": [len(rows), 2], "datatype": "FP32", "data": rows}]}
    if request_id:
        body["id"] = request_id
    return json.dumps(body).encode()


def _response(scores: np.ndarray, *, binary: bool = False) -> tuple[bytes, str | None]:
    request = InferRequest(id=None, parameters={}, inputs={}, requested=None, binary_default=binary)
    body, headers = encode_response(
        model_name="clf",
        model_version="1",
        request=request,
        outputs={"scores": scores.astype(np.float32)},
        output_specs=[TensorSpec("scores", "FP32", (-1, 3))],
    )
    return body, headers.get("inference-header-content-length")


def _log(request_id: str, scores: list[list[float]], *, binary: bool = False, tenant: str = "alpha", **kw) -> None:
    body, length = _response(np.array(scores), binary=binary)
    prediction_logs_record(
        entries=[
            LoggedPrediction(
                tenant=tenant,
                model=kw.get("model", "clf"),
                version=kw.get("version", 1),
                request_id=request_id,
                at=kw.get("at", time.time()),
                request_body=_request([[0.0, 1.0]] * len(scores), kw.get("inference_id")),
                request_header_length=None,
                response_body=body,
                response_header_length=length,
                retention_days=kw.get("retention_days", 7),
            )
        ]
    )


@pytest.fixture
def clf(world_a):
    model = Model.objects.create(tenant=world_a.tenant, name="clf")
    ModelVersion.objects.create(
        model=model, number=1, artifact="a/clf/1", sha256="a" * 64, size_bytes=1, format="onnx",
        status=ModelVersion.Status.READY, outputs=OUTPUTS, footprint_bytes=1,
    )  # fmt: skip
    config = {"sample_rate": 1.0, "retention_days": 7, "task": "classification"}
    Deployment.objects.create(model=model, traffic={"1": 100}, prediction_log=config)
    return model


def test_tensors_are_read_from_json_and_binary_bodies_and_bounded():
    body, length = _response(np.arange(6).reshape(2, 3), binary=True)
    _, (tensor,) = decode_tensors(body, header_length=length, key="outputs")
    assert tensor == {
        "name": "scores", "datatype": "FP32", "shape": [2, 3], "truncated": False, "data": [0, 1, 2, 3, 4, 5],
    }  # fmt: skip
    body, length = _response(np.arange(6).reshape(2, 3))
    _, (tensor,) = decode_tensors(body, header_length=length, key="outputs", max_elements=4)
    assert tensor["data"] == [0, 1, 2, 3] and tensor["truncated"] is True
    header, (given,) = decode_tensors(_request([[1, 2], [3, 4]], "abc"), header_length=None, key="inputs")
    assert header["id"] == "abc" and given["data"] == [1, 2, 3, 4] and given["shape"] == [2, 2]


def test_logged_predictions_keep_inputs_outputs_and_ids_and_bad_bodies_do_not_break_the_batch(world_a, clf):
    _log("req-1", [[0.1, 0.7, 0.2]], binary=True, inference_id="client-1")
    prediction_logs_record(
        entries=[
            LoggedPrediction("alpha", "clf", 1, "req-bad", time.time(), b"{not json", None, b"\x00\xff", "9", 7),
            LoggedPrediction("ghost", "clf", 1, "req-ghost", time.time(), b"{}", None, b"{}", None, 7),
        ]
    )
    logs = {log.request_id: log for log in PredictionLog.objects.all()}
    assert set(logs) == {"req-1", "req-bad"}  # an unknown tenant's entry is dropped
    assert logs["req-1"].inference_id == "client-1"
    assert logs["req-1"].outputs[0]["data"] == pytest.approx([0.1, 0.7, 0.2])
    assert logs["req-1"].inputs[0]["name"] == "x"
    assert "omitted" in logs["req-bad"].inputs[0] and "omitted" in logs["req-bad"].outputs[0]


def test_a_compressed_request_is_logged_inflated(world_a, clf):
    import gzip

    body, length = _response(np.array([[0.2, 0.3, 0.5]]))
    packed = gzip.compress(_request([[5.0, 6.0]], "zipped"))
    prediction_logs_record(
        entries=[
            LoggedPrediction(
                "alpha", "clf", 1, "req-gz", time.time(), packed, None, body, length, 7, request_encoding="gzip"
            ),
            LoggedPrediction(
                "alpha", "clf", 1, "req-junk", time.time(), b"junk", None, body, length, 7, request_encoding="gzip"
            ),
        ]
    )
    logs = {log.request_id: log for log in PredictionLog.objects.all()}
    assert logs["req-gz"].inference_id == "zipped" and logs["req-gz"].inputs[0]["data"] == [5.0, 6.0]
    assert "not valid gzip" in logs["req-junk"].inputs[0]["omitted"]  # a bad body does not break the batch
    assert logs["req-junk"].outputs[0]["data"] == pytest.approx([0.2, 0.3, 0.5])


def test_feedback_scores_classification_by_the_top_class_joins_either_id_and_replaces(world_a, clf):
    _log("req-1", [[0.1, 0.7, 0.2]], inference_id="client-1")
    _log("req-2", [[0.9, 0.0, 0.1], [0.0, 0.1, 0.9]])
    _log("req-old", [[1, 0, 0]], at=time.time() - 3600)
    client = world_a.bearer("infer")
    url = "/api/v1/tenants/alpha/models/clf/feedback/"
    items = [
        {"request_id": "client-1", "ground_truth": 1},  # by the v2 body's id
        {"request_id": "req-2", "ground_truth": [0, 1]},  # two rows: one right, one wrong
        {"request_id": "req-old", "ground_truth": 0},
        {"request_id": "never-made", "ground_truth": 0},
        {"request_id": "req-1", "ground_truth": [0, 1]},  # the prediction has one row
    ]
    answer = client.post(url, {"feedback": items}, format="json")
    assert answer.status_code == 200, answer.json()
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["scored", "scored", "scored", "unknown", "error"]
    assert results[0]["predicted"] == [1] and results[0]["correct"] == 1
    assert results[1]["predicted"] == [0, 2] and results[1]["correct"] == 1
    assert "2 value(s)" in results[4]["error"] and answer.json()["scored"] == 3
    # Sent again, feedback replaces the earlier: the model was right after all.
    client.post(url, {"feedback": [{"request_id": "req-2", "ground_truth": [0, 2]}]}, format="json")
    assert Feedback.objects.count() == 3
    series = world_a.session("viewer").get("/api/v1/tenants/alpha/models/clf/accuracy/?range=24h").json()
    assert series["task"] == "classification"
    assert series["versions"] == [{"version": 1, "rows": 4, "accuracy": 1.0, "mae": None}]
    assert len(series["points"]) == 2  # an hour ago, and now
    listed = world_a.bearer("read").get("/api/v1/tenants/alpha/models/clf/predictions/?limit=2").json()
    assert [row["request_id"] for row in listed] == ["req-2", "req-1"]
    assert listed[0]["feedback"]["ground_truth"] == [0, 2] and listed[0]["feedback"]["correct"] == 2


def test_feedback_scores_regression_as_mean_absolute_error(world_a, clf):
    Deployment.objects.filter(model=clf).update(prediction_log={"sample_rate": 1.0, "task": "regression"})
    body, _ = _response(np.array([[2.5, 0, 0]]))
    single = body.replace(b'"shape":[1,3]', b'"shape":[1,1]').replace(b"[2.5,0.0,0.0]", b"[2.5]")
    prediction_logs_record(
        entries=[LoggedPrediction("alpha", "clf", 2, "r1", time.time(), _request([[0, 0]]), None, single, None, 7)]
    )
    _log("r2", [[1, 2, 3]])  # three values a row: not a regression output
    results = (
        world_a.bearer("infer")
        .post(
            "/api/v1/tenants/alpha/models/clf/feedback/",
            {"feedback": [{"request_id": "r1", "ground_truth": 3.0}, {"request_id": "r2", "ground_truth": 1}]},
            format="json",
        )
        .json()["results"]
    )
    assert results[0]["status"] == "scored" and results[0]["abs_error"] == pytest.approx(0.5)
    assert results[1]["status"] == "error" and "one value per row" in results[1]["error"]
    series = world_a.session("viewer").get("/api/v1/tenants/alpha/models/clf/accuracy/?range=7d").json()
    assert series["versions"] == [{"version": 2, "rows": 1, "accuracy": None, "mae": 0.5}]


def test_retention_deletes_logs_but_feedback_keeps_its_score(world_a, clf):
    _log("short", [[0, 1, 0]], retention_days=1)
    _log("long", [[0, 1, 0]], retention_days=30)
    world_a.bearer("infer").post(
        "/api/v1/tenants/alpha/models/clf/feedback/",
        {"feedback": [{"request_id": "short", "ground_truth": 1}]},
        format="json",
    )
    assert prediction_logs_prune(now=datetime.now(tz=UTC) + timedelta(days=2)) == 1
    assert list(PredictionLog.objects.values_list("request_id", flat=True)) == ["long"]
    (kept,) = Feedback.objects.all()
    assert kept.prediction is None and kept.correct == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [({}, "feedback"), ({"feedback": []}, "feedback"), ({"feedback": [{"request_id": "x"}]}, "feedback[0]"),
     ({"feedback": [{"request_id": "x", "ground_truth": {"a": 1}}]}, "feedback[0]"),
     ({"feedback": [{"request_id": "x", "ground_truth": 1}] * 1001}, "feedback")],
)  # fmt: skip
def test_malformed_feedback_is_refused_naming_the_field(world_a, clf, body, named):
    answer = world_a.bearer("infer").post("/api/v1/tenants/alpha/models/clf/feedback/", body, format="json")
    assert answer.status_code == 400 and named in answer.json()["field_errors"], answer.json()


def test_feedback_accuracy_and_logs_are_the_tenants_own(world_a, world_b, clf):
    _log("req-1", [[0, 1, 0]])
    for path in ("accuracy/", "predictions/"):
        assert world_b.session("owner").get(f"/api/v1/tenants/alpha/models/clf/{path}").status_code == 404
        assert world_b.bearer("read").get(f"/api/v1/tenants/alpha/models/clf/{path}").status_code == 404
    feedback = {"feedback": [{"request_id": "req-1", "ground_truth": 1}]}
    url = "/api/v1/tenants/alpha/models/clf/feedback/"
    assert world_b.bearer("infer").post(url, feedback, format="json").status_code == 404
    # In its own tenant, the same request id names nothing of alpha's.
    Model.objects.create(tenant=world_b.tenant, name="clf")
    results = world_b.bearer("infer").post(url.replace("alpha", "bravo"), feedback, format="json").json()["results"]
    assert results == [{"request_id": "req-1", "status": "unknown"}]
    # Viewers read accuracy but do not send ground truth.
    assert world_a.session("viewer").post(url, feedback, format="json").status_code == 403
    assert not Feedback.objects.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [({"sample_rate": 2}, "sample_rate"), ({"sample_rate": 0.5, "retention_days": 0}, "retention_days"),
     ({"task": "ranking"}, "task"), ({"output": "nope"}, "no output"), ({"rate": 1}, "no rate")],
)  # fmt: skip
def test_prediction_logging_settings_are_checked(world_a, clf, config, message):
    url = "/api/v1/tenants/alpha/models/clf/deployment/"
    answer = world_a.session("owner").patch(url, {"prediction_log": config}, format="json")
    assert answer.status_code == 400 and message in answer.json()["error"], answer.json()


def test_prediction_logging_is_set_on_the_deployment_with_defaults(world_a, clf):
    url = "/api/v1/tenants/alpha/models/clf/deployment/"
    config = {"sample_rate": 0.25, "output": "scores"}
    answer = world_a.session("owner").patch(url, {"prediction_log": config}, format="json")
    assert answer.status_code == 200, answer.json()
    assert answer.json()["prediction_log"] == {
        "sample_rate": 0.25, "retention_days": 7, "task": "classification", "output": "scores",
    }  # fmt: skip
    from apps.gateway.selectors import routing_snapshot_load

    route = routing_snapshot_load().tenants[world_a.tenant.pk].models["clf"]
    assert route.log is not None and route.log.sample_rate == 0.25 and route.log.retention_days == 7


def test_regression_ground_truth_must_be_finite(world_a, clf):
    Deployment.objects.filter(model=clf).update(prediction_log={"sample_rate": 1.0, "task": "regression"})
    body = b'{"outputs":[{"name":"scores","datatype":"FP32","shape":[1,1],"data":[2.5]}]}'
    prediction_logs_record(
        entries=[LoggedPrediction("alpha", "clf", 1, "r1", time.time(), _request([[0, 0]]), None, body, None, 7)]
    )
    for bad in ("nan", "1e999", "-inf"):
        answer = world_a.bearer("infer").post(
            "/api/v1/tenants/alpha/models/clf/feedback/",
            {"feedback": [{"request_id": "r1", "ground_truth": bad}]},
            format="json",
        )
        (result,) = answer.json()["results"]
        assert result["status"] == "error" and "finite" in result["error"], result
    assert not Feedback.objects.exists()


def test_nul_characters_never_reach_the_database(world_a, clf):
    body = b'{"outputs":[{"name":"scores","datatype":"BYTES","shape":[1],"data":["c\\u0000t"]}]}'
    request = b'{"id":"x\\u0000y","inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["a\\u0000"]}]}'
    assert (
        prediction_logs_record(
            entries=[LoggedPrediction("alpha", "clf", 1, "nul", time.time(), request, None, body, None, 7)]
        )
        == 1
    )
    logged = PredictionLog.objects.get(request_id="nul")
    assert logged.outputs[0]["data"] == ["ct"] and logged.inference_id == "xy"
    answer = world_a.bearer("infer").post(
        "/api/v1/tenants/alpha/models/clf/feedback/",
        {"feedback": [{"request_id": "nul", "ground_truth": "c\x00t"}]},
        format="json",
    )
    assert answer.status_code == 400 and "feedback[0]" in answer.json()["field_errors"]
