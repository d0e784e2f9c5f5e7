import json

import pytest

from inference_workers.types import DeviceState, MessageError, WorkerHeartbeat


def _heartbeat() -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id="w1",
        host="127.0.0.1",
        dataplane_url="http://127.0.0.1:9000",
        queue="worker.w1",
        state="ready",
        device=DeviceState(
            kind="cuda",
            index=0,
            name="H200",
            uuid="GPU-1",
            total_bytes=10,
            used_bytes=4,
            free_bytes=6,
            utilisation_pct=12.5,
        ),
        sent_at=1700000000.25,
    )


def test_heartbeat_survives_a_json_round_trip():
    heartbeat = _heartbeat()
    assert WorkerHeartbeat.from_message(json.loads(json.dumps(heartbeat.to_message()))) == heartbeat


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda m: m.pop("worker_id"), "worker_id"),
        (lambda m: m.update(state="sleeping"), "sleeping"),
        (lambda m: m["device"].update(kind="tpu"), "tpu"),
        (lambda m: m["device"].update(total_bytes="lots"), "total_bytes"),
        (lambda m: m.update(device=[]), "device"),
    ],
)
def test_malformed_heartbeats_are_refused_with_the_field_named(mutate, complaint):
    message = _heartbeat().to_message()
    mutate(message)
    with pytest.raises(MessageError, match=complaint):
        WorkerHeartbeat.from_message(message)


def test_a_non_object_is_refused():
    with pytest.raises(MessageError):
        WorkerHeartbeat.from_message(["not", "a", "dict"])


def test_a_heartbeat_with_a_worker_id_that_is_not_an_id_is_refused():
    from inference_workers.types import MessageError, WorkerHeartbeat

    good = {
        "worker_id": "gpu-node-1.a_b",
        "host": "h",
        "dataplane_url": "http://127.0.0.1:1",
        "queue": "worker.gpu-node-1",
        "state": "ready",
        "sent_at": 1.0,
        "device": {"kind": "cpu", "index": 0, "name": "cpu", "uuid": "", "total_bytes": 1, "used_bytes": 0,
                   "free_bytes": 1},
    }  # fmt: skip
    assert WorkerHeartbeat.from_message(good).worker_id == "gpu-node-1.a_b"
    for bad in ("x');alert(1)//", "a/b", "", "-lead", "x" * 129):
        with pytest.raises(MessageError, match="worker_id"):
            WorkerHeartbeat.from_message({**good, "worker_id": bad})
