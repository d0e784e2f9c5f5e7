import pytest

from inference_workers.errors import SettingsError
from inference_workers.settings import WorkerSettings, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("2G", 2 * 1000**3),
        ("1048576", 1048576),
        ("1.5GiB", 1610612736),
    ],
)
def test_sizes_parse(text, expected):
    assert parse_size(text, variable="X") == expected


@pytest.mark.parametrize("text", ["", "four", "-1GiB", "0", "12XB"])
def test_bad_sizes_name_the_variable(text):
    with pytest.raises(SettingsError, match="BERTH_WORKER_MEMORY_BUDGET"):
        parse_size(text, variable="BERTH_WORKER_MEMORY_BUDGET")


def test_defaults_give_a_cpu_worker_on_the_embedded_broker(tmp_path):
    settings = WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path)})
    assert settings.device == "cpu"
    assert settings.memory_budget_bytes == 4 * 1024**3
    assert settings.port == 0
    assert settings.queue == f"worker.{settings.worker_id}"
    assert settings.broker.embedded
    assert (tmp_path / "broker" / "queue").is_dir()


def test_worker_variables_override_the_shared_ones(tmp_path):
    settings = WorkerSettings.from_env(
        {
            "BERTH_DATA_DIR": str(tmp_path),
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
            "BERTH_WORKER_BROKER_URL": "redis://127.0.0.1:6379/5",
            "BERTH_WORKER_ID": "gpu-box-7",
            "BERTH_WORKER_DEVICE": "cuda:1",
            "BERTH_WORKER_PORT": "9001",
        }
    )
    assert settings.broker.url == "redis://127.0.0.1:6379/5"
    assert settings.broker.result_backend == "redis://127.0.0.1:6379/5"
    assert (settings.worker_id, settings.device, settings.port) == ("gpu-box-7", "cuda:1", 9001)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BERTH_WORKER_DEVICE", "gpu0"),
        ("BERTH_WORKER_PORT", "eighty"),
        ("BERTH_WORKER_PORT", "-5"),
        ("BERTH_WORKER_PORT", "70000"),
        ("BERTH_WORKER_HEARTBEAT_S", "0"),
        ("BERTH_WORKER_ID", "has space"),
        ("BERTH_WORKER_MEMORY_BUDGET", "lots"),
        ("BERTH_WORKER_INTER_OP_THREADS", "-1"),
        ("BERTH_WORKER_SPIN_WAIT", "maybe"),
        ("BERTH_WORKER_HANDOVER_S", "-1"),
        ("BERTH_WORKER_ACCESS_LOG", "verbose"),
    ],
)
def test_each_bad_value_is_refused_naming_its_variable(tmp_path, variable, value):
    with pytest.raises(SettingsError, match=variable):
        WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path), variable: value})


def test_embedded_broker_keeps_every_folder_under_the_data_dir(tmp_path):
    settings = WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path)})
    options = settings.broker.transport_options
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert options[key].startswith(str(tmp_path)), key
    assert settings.broker.result_backend.startswith(f"file://{tmp_path}")


def test_serving_knobs_parse_and_the_token_is_generated_once(tmp_path):
    env = {
        "BERTH_DATA_DIR": str(tmp_path),
        "BERTH_WORKER_HEADROOM": "512MiB",
        "BERTH_WORKER_MAX_BODY": "1MiB",
        "BERTH_WORKER_DRAIN_S": "5",
        "BERTH_WORKER_THREADS": "2",
        "BERTH_WORKER_INTER_OP_THREADS": "3",
    }
    defaults = WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path)})
    assert (defaults.intra_op_threads, defaults.spin_wait) == (1, False)  # least CPU per request
    assert not defaults.access_log
    first = WorkerSettings.from_env({**env, "BERTH_WORKER_SPIN_WAIT": "yes", "BERTH_WORKER_ACCESS_LOG": "1"})
    assert first.inter_op_threads == 3 and first.spin_wait and first.access_log
    assert (first.headroom_bytes, first.max_body_bytes, first.drain_seconds, first.intra_op_threads) == (
        512 * 1024**2,
        1024**2,
        5.0,
        2,
    )
    assert len(first.token) >= 32
    assert WorkerSettings.from_env(env).token == first.token  # the control plane reads the same file
    assert (tmp_path / "worker-token").stat().st_mode & 0o777 == 0o600
    assert WorkerSettings.from_env({**env, "BERTH_WORKER_TOKEN": "shared-secret"}).token == "shared-secret"
    with pytest.raises(SettingsError, match="BERTH_WORKER_HEADROOM"):
        WorkerSettings.from_env({**env, "BERTH_WORKER_HEADROOM": "a lot"})


def test_the_embedded_broker_never_shows_a_consumer_a_half_written_message(tmp_path, monkeypatch):
    """A message becomes visible only by an atomic rename, once whole; drafts are never read."""
    import os
    import queue as stdlib_queue

    from kombu import Connection

    from inference_workers import fs_broker

    settings = WorkerSettings.from_env({"BERTH_DATA_DIR": str(tmp_path)})
    folder = settings.broker.transport_options["data_folder_out"]
    seen: list[tuple[bool, int]] = []
    real_replace = os.replace

    def spy(draft: str, final: str) -> None:
        seen.append((os.path.exists(final), os.path.getsize(draft)))
        real_replace(draft, final)

    monkeypatch.setattr(fs_broker.os, "replace", spy)
    with Connection(settings.broker.url, transport_options=settings.broker.transport_options) as connection:
        channel_queue = connection.SimpleQueue("race")
        # A draft (what a producer is still writing) sits in the folder: consumers skip it.
        with open(os.path.join(folder, ".123_draft.race.msg.part"), "wb") as draft:
            draft.write(b'{"half": ')
        with pytest.raises(stdlib_queue.Empty):
            channel_queue.get(timeout=0.2)
        channel_queue.put({"blob": "x" * 100_000})
        message = channel_queue.get(timeout=5)
        assert message.payload == {"blob": "x" * 100_000}
        message.ack()
        channel_queue.close()
    assert len(seen) == 1
    exists_before, size = seen[0]
    assert not exists_before and size > 100_000  # invisible until whole, then renamed into place


def test_a_gpu_worker_may_take_a_share_of_its_device(tmp_path):
    env = {"BERTH_DATA_DIR": str(tmp_path), "BERTH_WORKER_DEVICE": "cuda:0"}
    assert WorkerSettings.from_env(env).gpu_memory_budget_bytes == 0  # all of it
    shared = WorkerSettings.from_env({**env, "BERTH_WORKER_GPU_MEMORY_BUDGET": "40GiB"})
    assert shared.gpu_memory_budget_bytes == 40 * 1024**3
    with pytest.raises(SettingsError, match="BERTH_WORKER_GPU_MEMORY_BUDGET"):
        WorkerSettings.from_env({**env, "BERTH_WORKER_GPU_MEMORY_BUDGET": "half"})
